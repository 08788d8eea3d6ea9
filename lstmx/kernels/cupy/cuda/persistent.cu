// The PERSISTENT kernels (lstmx.kernels.cupy.persistent): one cooperative launch per direction.
// A Python string.Template, filled in per variant by lstmx.kernels.cupy.cuda_sources.source: its dollar-prefixed
// names (real: float or double; suffix: the variant's name, which ends every kernel's name; ...) are listed there.

#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// Where a thread of a persistent kernel works: unit j = blockIdx.x·32 + lane of batch row b = blockIdx.y·rows + row.
struct Place {
    int lane, row, rows, tid, threads, j0, b0, j, b;
    bool active;               // (b, j) lies inside the batch and the hidden size
    long long count, n, four;  // B·H, the (b, j) offset in a (B, H) block, 4H
};

__device__ Place place_of(const int batch, const int hidden)
{
    Place p;
    p.lane = threadIdx.x; p.row = threadIdx.y; p.rows = blockDim.y;
    p.tid = p.row * 32 + p.lane; p.threads = 32 * p.rows;
    p.j0 = blockIdx.x * 32; p.b0 = blockIdx.y * p.rows;
    p.j = p.j0 + p.lane; p.b = p.b0 + p.row;
    p.active = p.j < hidden && p.b < batch;
    p.count = (long long)batch * hidden; p.n = (long long)p.b * hidden + p.j; p.four = 4LL * hidden;
    return p;
}

// The block's 32 columns of each gate of W_h in shared memory, w_s[k][gate][lane] (the forward's layout).
// `inner` is the length of the products (H, or P for the projected cell, whose W_h is (P, 4H)).
__device__ __forceinline__ void forward_weights_to_shared($real* w_s, const $real* w_hidden, const Place& p,
                                                          const int hidden, const int inner)
{
    for (long long e = p.tid; e < 128LL * inner; e += p.threads) {
        const int l = (int)(e & 31), g = (int)((e >> 5) & 3);
        const long long k = e >> 7;
        w_s[e] = p.j0 + l < hidden ? w_hidden[k * p.four + g * hidden + p.j0 + l] : ($real)0;
    }
}

// The block's 32 rows of W_h in shared memory, w_s[column][lane] (the backward's layout), read along the rows
// (coalesced); `height` is W_h's number of rows (H, or P for the projected cell).
__device__ __forceinline__ void backward_weights_to_shared($real* w_s, const $real* w_hidden, const Place& p,
                                                           const int height)
{
    for (long long e = p.tid; e < 32LL * p.four; e += p.threads) {
        const int l = (int)(e / p.four);
        const long long col = e - l * p.four;
        w_s[col * 32 + l] = p.j0 + l < height ? w_hidden[(long long)(p.j0 + l) * p.four + col] : ($real)0;
    }
}

// The block's rows of the (batch, width) matrix at `source`, which other blocks wrote this step (read through
// L2, never a stale L1 line), into shared memory, zeros past the batch; then a block barrier. Index is the type
// of the element count (int where rows · width fits one, as for h; long long for dz's 4H columns).
template <typename Index>
__device__ __forceinline__ void stage_rows($real* staged, const $real* source, const Place& p, const int batch,
                                           const Index width)
{
    for (Index e = p.tid; e < p.rows * width; e += p.threads) {
        const int r = (int)(e / width);
        staged[e] = p.b0 + r < batch ? __ldcg(source + (long long)(p.b0 + r) * width + (e - r * width)) : ($real)0;
    }
    __syncthreads();
}

// The four gates' pre-activations of a unit: z (its input projection and bias) plus the dot products of its
// row's staged h_{t-1} (h) with its columns of W_h (w = w_s + lane), two sums per gate (half the dependent chain).
struct Dots {
    $real i, f, g, o;
};
__device__ __forceinline__ Dots forward_dots(const $real* h, const $real* w, const int hidden, $real zi, $real zf,
                                             $real zg, $real zo)
{
    $real zi2 = 0, zf2 = 0, zg2 = 0, zo2 = 0;
    int k = 0;
    #pragma unroll 4
    for (; k + 1 < hidden; k += 2, w += 256) {
        const $real h0 = h[k], h1 = h[k + 1];
        zi += h0 * w[0]; zf += h0 * w[32]; zg += h0 * w[64]; zo += h0 * w[96];
        zi2 += h1 * w[128]; zf2 += h1 * w[160]; zg2 += h1 * w[192]; zo2 += h1 * w[224];
    }
    if (k < hidden) {
        const $real hk = h[k];
        zi += hk * w[0]; zf += hk * w[32]; zg += hk * w[64]; zo += hk * w[96];
    }
    return Dots{zi + zi2, zf + zf2, zg + zg2, zo + zo2};
}

// A unit's dL/dh_{t-1} through W_h: its row's staged dz_t (d) times its row of W_h (w = w_s + lane), four
// independent sums (4H is a multiple of 4).
__device__ __forceinline__ $real backward_dot(const $real* d, const $real* w, const int hidden)
{
    $real acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
    #pragma unroll 2
    for (int col = 0; col < 4 * hidden; col += 4, w += 128) {
        acc0 += d[col] * w[0]; acc1 += d[col + 1] * w[32]; acc2 += d[col + 2] * w[64]; acc3 += d[col + 3] * w[96];
    }
    return (acc0 + acc1) + (acc2 + acc3);
}

// Grid (ceil(H / 32), ceil(B / rows)) of (32, rows) threads: thread (lane, row) owns unit j = blockIdx.x·32 + lane
// of batch row b = blockIdx.y·rows + row for the whole sequence. The block's 32 columns of each gate of W_h
// live in shared memory for the whole launch (w_s[k][gate][lane]); each step stages the block's rows of h_{t-1}
// in shared memory too, so the dot products read only shared memory.
// gates holds x_t W_x on entry (every step) and the activated gates on return; cells[0], hidden_states[0]
// hold c_0, h_0 on entry.
extern "C" __global__ void lstm_forward_persistent_$suffix(
    $real* __restrict__ gates,            // (T, B, 4H)
    const $real* __restrict__ w_hidden,   // (H, 4H): rows [D:] of the layer's weight
    const $real* __restrict__ bias,       // (4H,)
    $real* __restrict__ cells,            // (T + 1, B, H) carried
    $real* hidden_states,                 // (T + 1, B, H) carried; read by other blocks after the barrier
    $real* __restrict__ tanh_c,           // (T, B, H)
    $real* __restrict__ y,                // (T, B, H)
    const $real* __restrict__ step_mask,  // (T, B) or nullptr
    const int steps, const int batch, const int hidden)
{
    {  // a grid of two z-planes runs both directions of a layer, each on its half of every stacked array
        const long long d = blockIdx.z;
        gates += d * steps * batch * 4LL * hidden; w_hidden += d * 4LL * hidden * hidden; bias += d * 4LL * hidden;
        cells += d * (steps + 1LL) * batch * hidden; hidden_states += d * (steps + 1LL) * batch * hidden;
        tanh_c += d * (long long)steps * batch * hidden; y += d * (long long)steps * batch * hidden;
    }
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // (H, 4, 32)
    $real* h_s = w_s + 128LL * hidden;                     // (rows, H)
    cg::grid_group grid = cg::this_grid();
    const Place p = place_of(batch, hidden);
    const int lane = p.lane, row = p.row;
    const int j = p.j, b = p.b;
    const bool active = p.active;
    const long long count = p.count, n = p.n, four = p.four;
    forward_weights_to_shared(w_s, w_hidden, p, hidden, hidden);
    const $real one = 1;
    $real c = 0, bias_i = 0, bias_f = 0, bias_g = 0, bias_o = 0;
    if (active) {
        c = cells[n];
        bias_i = bias[j]; bias_f = bias[hidden + j]; bias_g = bias[2 * hidden + j]; bias_o = bias[3 * hidden + j];
    }
    // x_t W_x + b of the coming step, read before the barrier that precedes it (it does not depend on h)
    $real xi = 0, xf = 0, xg = 0, xo = 0, m = one;
    if (active && steps > 0) {
        xi = gates[(long long)b * four + j] + bias_i; xf = gates[(long long)b * four + hidden + j] + bias_f;
        xg = gates[(long long)b * four + 2 * hidden + j] + bias_g; xo = gates[(long long)b * four + 3 * hidden + j] + bias_o;
        if (step_mask != nullptr) m = step_mask[b];
    }
    for (int t = 0; t < steps; ++t) {
        stage_rows(h_s, hidden_states + t * count, p, batch, hidden);
        if (active) {
            $real* z = gates + ((long long)t * batch + b) * four;
            const Dots zs = forward_dots(h_s + row * hidden, w_s + lane, hidden, xi, xf, xg, xo);
            const Gates a = activate(zs.i, zs.f, zs.g, zs.o);
            z[j] = a.i; z[hidden + j] = a.f; z[2 * hidden + j] = a.g; z[3 * hidden + j] = a.o;
            const long long now = t * count + n, next = now + count;
            const bool masked = step_mask != nullptr;
            const CellOut out = cell_forward(a, c, masked ? h_s[row * hidden + j] : ($real)0, masked, m);
            tanh_c[now] = out.tanh_c; y[now] = out.y; hidden_states[next] = out.h; c = out.c;
            cells[next] = c;
            if (t + 1 < steps) {  // prefetch the next step's input projection and mask
                const $real* z_next = z + (long long)batch * four;
                xi = z_next[j] + bias_i; xf = z_next[hidden + j] + bias_f;
                xg = z_next[2 * hidden + j] + bias_g; xo = z_next[3 * hidden + j] + bias_o;
                if (step_mask != nullptr) m = step_mask[(long long)(t + 1) * batch + b];
            }
        }
        grid.sync();  // h_{t+1} of every unit is written (and h_s read) before the next step stages it
    }
}

// Mirror of the forward, steps in reverse, one grid barrier per step: a thread turns its unit's dL/dh_t and
// dL/dc_t into dz_t (written for the weight gradient and for the other threads) and dL/dc_{t-1}; after the
// barrier the block stages its rows of dz_t in shared memory and each thread forms
// dL/dh_{t-1} = Σ_c dz_t[b, c] W_h[j, c] (+ what a padded step passes through). The block's 32 rows of W_h
// live in shared memory (w_s[c][lane]). dh, dc hold dL/dh_T, dL/dc_T on entry and dL/dh_0, dL/dc_0 on return.
extern "C" __global__ void lstm_backward_persistent_$suffix(
    const $real* __restrict__ dy,          // (T, B, H)
    const $real* __restrict__ w_hidden,    // (H, 4H)
    const $real* __restrict__ gates,       // (T, B, 4H) activated
    const $real* __restrict__ cells,       // (T + 1, B, H) carried
    const $real* __restrict__ tanh_c,      // (T, B, H)
    const $real* __restrict__ step_mask,   // (T, B) or nullptr
    $real* dz,                             // (T, B, 4H); read by other blocks after the barrier
    $real* __restrict__ dh,                // (B, H)
    $real* __restrict__ dc,                // (B, H)
    const int steps, const int batch, const int hidden)
{
    {  // a grid of two z-planes runs both directions of a layer, each on its half of every stacked array
        const long long d = blockIdx.z;
        dy += d * (long long)steps * batch * hidden; w_hidden += d * 4LL * hidden * hidden;
        gates += d * steps * batch * 4LL * hidden; cells += d * (steps + 1LL) * batch * hidden;
        tanh_c += d * (long long)steps * batch * hidden; dz += d * steps * batch * 4LL * hidden;
        dh += d * (long long)batch * hidden; dc += d * (long long)batch * hidden;
    }
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // (4H, 32)
    $real* dz_s = w_s + 128LL * hidden;                    // (rows, 4H)
    cg::grid_group grid = cg::this_grid();
    const Place p = place_of(batch, hidden);
    const int lane = p.lane, row = p.row, rows = p.rows, tid = p.tid, threads = p.threads, b0 = p.b0;
    const int j = p.j, b = p.b;
    const bool active = p.active;
    const long long count = p.count, n = p.n, four = p.four;
    backward_weights_to_shared(w_s, w_hidden, p, hidden);
    const $real one = 1;
    $real dh_in = 0, dc_in = 0;  // dL/dh_t, dL/dc_t arriving from step t + 1
    // what the pointwise part of step t reads (it does not depend on other threads): loaded a step ahead
    $real m = one, dy_t = 0, i = 0, f = 0, g = 0, o = 0, tc = 0, c_prev = 0;
    auto load_step = [&](int t) {
        const long long now = t * count + n, row_start = ((long long)t * batch + b) * four;
        m = step_mask == nullptr ? one : step_mask[(long long)t * batch + b];
        dy_t = dy[now]; tc = tanh_c[now]; c_prev = cells[now];
        i = gates[row_start + j]; f = gates[row_start + hidden + j];
        g = gates[row_start + 2 * hidden + j]; o = gates[row_start + 3 * hidden + j];
    };
    if (active) { dh_in = dh[n]; dc_in = dc[n]; if (steps > 0) load_step(steps - 1); }
    for (int t = steps - 1; t >= 0; --t) {
        const $real m_t = m;
        if (active) {
            const long long row_start = ((long long)t * batch + b) * four;
            const CellGrad d = cell_backward(Gates{i, f, g, o}, tc, c_prev, dy_t, dh_in, dc_in, m);
            dz[row_start + j] = d.dz_i; dz[row_start + hidden + j] = d.dz_f;
            dz[row_start + 2 * hidden + j] = d.dz_g; dz[row_start + 3 * hidden + j] = d.dz_o;
            dc_in = d.dc_prev;
            if (t > 0) load_step(t - 1);
        }
        grid.sync();  // dz_t of every unit is written before any block stages its rows
        const $real* dz_now = dz + (long long)t * batch * four;  // staged inline: through stage_rows ptxas gives this
        // kernel 63 registers instead of 48, and fewer blocks fit on a multiprocessor
        for (long long e = tid; e < rows * four; e += threads) {
            const int r = (int)(e / four);
            dz_s[e] = b0 + r < batch ? __ldcg(dz_now + (long long)(b0 + r) * four + (e - r * four)) : ($real)0;
        }
        __syncthreads();
        if (active) dh_in = backward_dot(dz_s + row * four, w_s + lane, hidden) + (one - m_t) * dh_in;
        __syncthreads();  // dz_s is read by every thread before the next step's staging overwrites it
    }
    if (active) { dh[n] = dh_in; dc[n] = dc_in; }
}

// lstm_forward_persistent with cell options (peepholes, input_forget, cell_clip, zoneout): the same dot products,
// the cell of variant_cell_forward. Also writes each step's c'_t (c_new) and, with a clip, the inside values of
// the four gates (unclipped).
extern "C" __global__ void lstm_variant_forward_persistent_$suffix(
    $real* __restrict__ gates,            // (T, B, 4H)
    const $real* __restrict__ w_hidden,   // (H, 4H)
    const $real* __restrict__ bias,       // (4H,)
    $real* __restrict__ cells,            // (T + 1, B, H) carried
    $real* hidden_states,                 // (T + 1, B, H) carried; read by other blocks after the barrier
    $real* __restrict__ tanh_c,           // (T, B, H)
    $real* __restrict__ y,                // (T, B, H)
    const $real* __restrict__ step_mask,  // (T, B) or nullptr
    const $real* __restrict__ peephole,   // (3H,) p_i, p_f, p_o or nullptr
    const $real clip,                     // 0: no clipping
    const int input_forget,
    const $real* __restrict__ keep_c,     // (T, B, H) zoneout masks or nullptr
    const $real* __restrict__ keep_h,     // (T, B, H) or nullptr
    const $real zoneout_c, const $real zoneout_h,  // without masks: the expectation (0: no zoneout)
    $real* __restrict__ c_new,            // (T, B, H)
    $real* __restrict__ unclipped,        // (T, B, 4H) or nullptr (clip = 0)
    const int steps, const int batch, const int hidden)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // as lstm_forward_persistent's
    $real* h_s = w_s + 128LL * hidden;
    cg::grid_group grid = cg::this_grid();
    const Place p = place_of(batch, hidden);
    const int lane = p.lane, row = p.row;
    const int j = p.j, b = p.b;
    const bool active = p.active;
    const long long count = p.count, n = p.n, four = p.four;
    forward_weights_to_shared(w_s, w_hidden, p, hidden, hidden);
    const $real one = 1;
    UnitOptions u{0, 0, 0, clip, input_forget, peephole != nullptr};
    $real c = 0, bias_i = 0, bias_f = 0, bias_g = 0, bias_o = 0;
    if (active) {
        c = cells[n];
        bias_i = bias[j]; bias_f = bias[hidden + j]; bias_g = bias[2 * hidden + j]; bias_o = bias[3 * hidden + j];
        if (peephole != nullptr) { u.p_i = peephole[j]; u.p_f = peephole[hidden + j]; u.p_o = peephole[2 * hidden + j]; }
    }
    // what the coming step reads that does not depend on h, read before the barrier that precedes it
    $real xi = 0, xf = 0, xg = 0, xo = 0, m = one, kc = zoneout_c, kh = zoneout_h;
    auto load_step = [&](const int t) {
        const $real* z = gates + ((long long)t * batch + b) * four;
        xi = z[j] + bias_i; xf = z[hidden + j] + bias_f; xg = z[2 * hidden + j] + bias_g; xo = z[3 * hidden + j] + bias_o;
        if (step_mask != nullptr) m = step_mask[(long long)t * batch + b];
        if (keep_c != nullptr) kc = keep_c[t * count + n];
        if (keep_h != nullptr) kh = keep_h[t * count + n];
    };
    if (active && steps > 0) load_step(0);
    for (int t = 0; t < steps; ++t) {
        stage_rows(h_s, hidden_states + t * count, p, batch, hidden);
        if (active) {
            const long long row_start = ((long long)t * batch + b) * four;
            const Dots zs = forward_dots(h_s + row * hidden, w_s + lane, hidden, xi, xf, xg, xo);
            const VariantOut out = variant_cell_forward(zs.i, zs.f, zs.g, zs.o, c, h_s[row * hidden + j], u, kc, kh, m);
            $real* z = gates + row_start;
            z[j] = out.a.i; z[hidden + j] = out.a.f; z[2 * hidden + j] = out.a.g; z[3 * hidden + j] = out.a.o;
            if (unclipped != nullptr) {
                $real* s = unclipped + row_start;
                s[j] = out.inside[0]; s[hidden + j] = out.inside[1]; s[2 * hidden + j] = out.inside[2];
                s[3 * hidden + j] = out.inside[3];
            }
            const long long now = t * count + n, next = now + count;
            c_new[now] = out.c_new; tanh_c[now] = out.tanh_c; y[now] = out.y;
            hidden_states[next] = out.h; cells[next] = c = out.c;
            if (t + 1 < steps) load_step(t + 1);
        }
        grid.sync();  // h_{t+1} of every unit is written (and h_s read) before the next step stages it
    }
}

// lstm_backward_persistent with cell options, the cell of variant_cell_backward: dL/dh_t arriving from step t + 1
// is the product dz_{t+1} W_hᵀ plus the share zoneout and padding carry past W_h.
extern "C" __global__ void lstm_variant_backward_persistent_$suffix(
    const $real* __restrict__ dy,          // (T, B, H)
    const $real* __restrict__ w_hidden,    // (H, 4H)
    const $real* __restrict__ gates,       // (T, B, 4H) activated
    const $real* __restrict__ cells,       // (T, B, H) c_{t-1} per step (the first T of the carried cells)
    const $real* __restrict__ tanh_c,      // (T, B, H)
    const $real* __restrict__ step_mask,   // (T, B) or nullptr
    $real* dz,                             // (T, B, 4H); read by other blocks after the barrier
    $real* __restrict__ dh,                // (B, H)
    $real* __restrict__ dc,                // (B, H)
    const $real* __restrict__ peephole,    // (3H,) or nullptr
    const int input_forget,
    const $real* __restrict__ keep_c,      // (T, B, H) or nullptr
    const $real* __restrict__ keep_h,      // (T, B, H) or nullptr
    const $real zoneout_c, const $real zoneout_h,
    const $real* __restrict__ unclipped,   // (T, B, 4H) or nullptr
    const int steps, const int batch, const int hidden)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // as lstm_backward_persistent's
    $real* dz_s = w_s + 128LL * hidden;
    cg::grid_group grid = cg::this_grid();
    const Place p = place_of(batch, hidden);
    const int lane = p.lane, row = p.row;
    const int j = p.j, b = p.b;
    const bool active = p.active;
    const long long count = p.count, n = p.n, four = p.four;
    backward_weights_to_shared(w_s, w_hidden, p, hidden);
    const $real one = 1;
    UnitOptions u{0, 0, 0, 0, input_forget, peephole != nullptr};
    if (active && peephole != nullptr) { u.p_i = peephole[j]; u.p_f = peephole[hidden + j]; u.p_o = peephole[2 * hidden + j]; }
    $real dh_next = 0, dc_in = 0, carried = 0;  // dL/dh_t (both shares), dL/dc_t arriving from step t + 1
    $real m = one, dy_t = 0, i = 0, f = 0, g = 0, o = 0, tc = 0, c_prev = 0, kc = zoneout_c, kh = zoneout_h;
    $real inside[4] = {one, one, one, one};
    auto load_step = [&](const int t) {
        const long long now = t * count + n, row_start = ((long long)t * batch + b) * four;
        m = step_mask == nullptr ? one : step_mask[(long long)t * batch + b];
        dy_t = dy[now]; tc = tanh_c[now]; c_prev = cells[now];
        i = gates[row_start + j]; f = gates[row_start + hidden + j];
        g = gates[row_start + 2 * hidden + j]; o = gates[row_start + 3 * hidden + j];
        if (keep_c != nullptr) kc = keep_c[now];
        if (keep_h != nullptr) kh = keep_h[now];
        if (unclipped != nullptr) {
            inside[0] = unclipped[row_start + j]; inside[1] = unclipped[row_start + hidden + j];
            inside[2] = unclipped[row_start + 2 * hidden + j]; inside[3] = unclipped[row_start + 3 * hidden + j];
        }
    };
    if (active) { dh_next = dh[n]; dc_in = dc[n]; if (steps > 0) load_step(steps - 1); }
    for (int t = steps - 1; t >= 0; --t) {
        if (active) {
            const long long row_start = ((long long)t * batch + b) * four;
            const VariantGrad d = variant_cell_backward(Gates{i, f, g, o}, tc, c_prev, dy_t, dh_next, dc_in, u, inside,
                                                        kc, kh, m);
            dz[row_start + j] = d.dz_i; dz[row_start + hidden + j] = d.dz_f;
            dz[row_start + 2 * hidden + j] = d.dz_g; dz[row_start + 3 * hidden + j] = d.dz_o;
            dc_in = d.dc_prev; carried = d.dh_carried;
            if (t > 0) load_step(t - 1);
        }
        grid.sync();  // dz_t of every unit is written before any block stages its rows
        stage_rows(dz_s, dz + (long long)t * batch * four, p, batch, four);
        if (active) dh_next = backward_dot(dz_s + row * four, w_s + lane, hidden) + carried;
        __syncthreads();  // dz_s is read by every thread before the next step's staging overwrites it
    }
    if (active) { dh[n] = dh_next; dc[n] = dc_in; }
}

// Σ_k v[k]·w[32k] over n terms: a staged row of one matrix times one lane's column of a block's 32-wide slice of
// another in shared memory (the projected cell's products with W_hr), two independent sums.
__device__ __forceinline__ $real lane_dot(const $real* v, const $real* w, const int n)
{
    $real acc0 = 0, acc1 = 0;
    int k = 0;
    for (; k + 1 < n; k += 2) { acc0 += v[k] * w[32 * k]; acc1 += v[k + 1] * w[32 * (k + 1)]; }
    if (k < n) acc0 += v[k] * w[32 * k];
    return acc0 + acc1;
}

// The projected cell (LSTMP, proj_size P < H): the state h is r_t = (o_t ⊙ tanh c_t) W_hr, of width P, and W_h
// is (P, 4H). Two grid barriers per step: thread (lane, row) of block (x, y) owns unit j = x·32 + lane of batch
// row b for the cell, then column q = j of r_t for the projection (blocks with x·32 < P). The block's 32 columns
// of each gate of W_h (w_s[k][gate][lane], k < P) and its 32 columns of W_hr (wr_s[j][lane], j < H) live in
// shared memory; each phase stages the block's rows of what it multiplies (r_{t-1}, then o_t ⊙ tanh c_t).
// gates holds x_t W_x on entry and the activated gates on return; hidden_states[0] (B, P) and cells[0] hold h_0,
// c_0; unprojected (B, H) is the scratch the projection reads across blocks.
extern "C" __global__ void lstmp_forward_persistent_$suffix(
    $real* __restrict__ gates,             // (T, B, 4H)
    const $real* __restrict__ w_hidden,    // (P, 4H): rows [D:] of the layer's weight
    const $real* __restrict__ bias,        // (4H,)
    const $real* __restrict__ projection,  // (H, P): W_hr
    $real* __restrict__ cells,             // (T + 1, B, H) carried
    $real* hidden_states,                  // (T + 1, B, P) carried; read by other blocks after the barrier
    $real* __restrict__ tanh_c,            // (T, B, H)
    $real* unprojected,                    // (B, H) o_t ⊙ tanh c_t of the step; read by other blocks
    $real* __restrict__ y,                 // (T, B, P)
    const $real* __restrict__ step_mask,   // (T, B) or nullptr
    const int steps, const int batch, const int hidden, const int proj)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // (P, 4, 32)
    $real* wr_s = w_s + 128LL * proj;                      // (H, 32)
    $real* staged = wr_s + 32LL * hidden;                  // (rows, H): r_{t-1} (P wide), then o ⊙ tanh c
    cg::grid_group grid = cg::this_grid();
    const Place p = place_of(batch, hidden);
    const int lane = p.lane, row = p.row, j = p.j, b = p.b;
    const bool cell = p.active, projects = j < proj && b < batch;
    const long long count = p.count, n = p.n, four = p.four, r_count = (long long)batch * proj;
    const long long q_at = (long long)b * proj + j;  // (b, q = j) in a (B, P) block
    forward_weights_to_shared(w_s, w_hidden, p, hidden, proj);
    for (long long e = p.tid; e < 32LL * hidden; e += p.threads) {
        const int l = (int)(e & 31);
        const long long k = e >> 5;
        wr_s[e] = p.j0 + l < proj ? projection[k * proj + p.j0 + l] : ($real)0;
    }
    const $real one = 1;
    $real c = 0, r = 0, bias_i = 0, bias_f = 0, bias_g = 0, bias_o = 0;
    if (cell) {
        c = cells[n];
        bias_i = bias[j]; bias_f = bias[hidden + j]; bias_g = bias[2 * hidden + j]; bias_o = bias[3 * hidden + j];
    }
    if (projects) r = hidden_states[q_at];
    for (int t = 0; t < steps; ++t) {
        const $real m = step_mask == nullptr || b >= batch ? one : step_mask[(long long)t * batch + b];
        stage_rows(staged, hidden_states + t * r_count, p, batch, proj);
        if (cell) {
            $real* z = gates + ((long long)t * batch + b) * four;
            const Dots zs = forward_dots(staged + row * proj, w_s + lane, proj, z[j] + bias_i, z[hidden + j] + bias_f,
                                         z[2 * hidden + j] + bias_g, z[3 * hidden + j] + bias_o);
            const Gates a = activate(zs.i, zs.f, zs.g, zs.o);
            z[j] = a.i; z[hidden + j] = a.f; z[2 * hidden + j] = a.g; z[3 * hidden + j] = a.o;
            const CellOut out = cell_forward(a, c, ($real)0, false, one);
            tanh_c[t * count + n] = out.tanh_c; unprojected[n] = out.h;
            c = m * out.c + (one - m) * c;
            cells[(t + 1) * count + n] = c;
        }
        grid.sync();  // every unit's o ⊙ tanh c is written (and the staged r_{t-1} read) before the projection
        stage_rows(staged, unprojected, p, batch, hidden);
        if (projects) {
            const $real r_new = lane_dot(staged + row * hidden, wr_s + lane, hidden);
            y[t * r_count + q_at] = m * r_new;
            r = m * r_new + (one - m) * r;
            hidden_states[(t + 1) * r_count + q_at] = r;
        }
        grid.sync();  // r_t is written, and o ⊙ tanh c read, before the next step stages r_t and rewrites it
    }
}

// Mirror of lstmp_forward_persistent, steps in reverse, two grid barriers per step: the thread of column q turns
// dL/dy_t and dL/dr_t from step t + 1 into dL/dr_t (kept in dr for W_hr's gradient); after a barrier the thread
// of unit j forms dL/d(o ⊙ tanh c)_j = Σ_q dL/dr_t[q] W_hr[j, q] and runs the cell's backward into dz_t; after
// another, the thread of column q forms Σ_c dz_t[c] W_h[q, c] (+ what a padded step passes through). The block's
// 32 rows of W_hr (wr_s[q][lane]) and of W_h (w_s[c][lane]) live in shared memory. dh (B, P) and dc (B, H) hold
// dL/dh_T, dL/dc_T on entry and dL/dh_0, dL/dc_0 on return.
extern "C" __global__ void lstmp_backward_persistent_$suffix(
    const $real* __restrict__ dy,          // (T, B, P)
    const $real* __restrict__ w_hidden,    // (P, 4H)
    const $real* __restrict__ projection,  // (H, P)
    const $real* __restrict__ gates,       // (T, B, 4H) activated
    const $real* __restrict__ cells,       // (T, B, H) c_{t-1} per step
    const $real* __restrict__ tanh_c,      // (T, B, H)
    const $real* __restrict__ step_mask,   // (T, B) or nullptr
    $real* dz,                             // (T, B, 4H); read by other blocks after the barrier
    $real* dr,                             // (T, B, P) dL/dr_t; read by other blocks after the barrier
    $real* __restrict__ dh,                // (B, P)
    $real* __restrict__ dc,                // (B, H)
    const int steps, const int batch, const int hidden, const int proj)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // (4H, 32)
    $real* wr_s = w_s + 128LL * hidden;                    // (P, 32)
    $real* staged = wr_s + 32LL * proj;                    // (rows, 4H): dL/dr_t (P wide), then dz_t
    cg::grid_group grid = cg::this_grid();
    const Place p = place_of(batch, hidden);
    const int lane = p.lane, row = p.row, j = p.j, b = p.b;
    const bool cell = p.active, projects = j < proj && b < batch;
    const long long count = p.count, n = p.n, four = p.four, r_count = (long long)batch * proj;
    const long long q_at = (long long)b * proj + j;
    backward_weights_to_shared(w_s, w_hidden, p, proj);
    for (long long e = p.tid; e < 32LL * proj; e += p.threads) {
        const int l = (int)(e / proj);
        const long long q = e - (long long)l * proj;
        wr_s[q * 32 + l] = p.j0 + l < hidden ? projection[(long long)(p.j0 + l) * proj + q] : ($real)0;
    }
    const $real one = 1;
    $real dr_in = projects ? dh[q_at] : ($real)0, dc_in = cell ? dc[n] : ($real)0;  // arriving from step t + 1
    for (int t = steps - 1; t >= 0; --t) {
        const $real m = step_mask == nullptr || b >= batch ? one : step_mask[(long long)t * batch + b];
        $real passed = 0;  // the share of dL/dr_t a padded step hands to r_{t-1} directly
        if (projects) {
            const long long now = t * r_count + q_at;
            dr[now] = m * (dy[now] + dr_in);
            passed = (one - m) * dr_in;
        }
        grid.sync();  // dL/dr_t of every column is written before any block stages its rows
        stage_rows(staged, dr + t * r_count, p, batch, proj);
        if (cell) {
            const long long now = t * count + n, row_start = ((long long)t * batch + b) * four;
            const Gates a{gates[row_start + j], gates[row_start + hidden + j], gates[row_start + 2 * hidden + j],
                          gates[row_start + 3 * hidden + j]};
            const $real dm = lane_dot(staged + row * proj, wr_s + lane, proj);
            const CellGrad d = cell_backward(a, tanh_c[now], cells[now], ($real)0, dm, dc_in, m);
            dz[row_start + j] = d.dz_i; dz[row_start + hidden + j] = d.dz_f;
            dz[row_start + 2 * hidden + j] = d.dz_g; dz[row_start + 3 * hidden + j] = d.dz_o;
            dc_in = d.dc_prev;
        }
        grid.sync();  // dz_t of every unit is written (and the staged dL/dr_t read) before the blocks stage dz_t
        stage_rows(staged, dz + (long long)t * batch * four, p, batch, four);
        if (projects) dr_in = backward_dot(staged + row * four, w_s + lane, hidden) + passed;
    }
    if (projects) dh[q_at] = dr_in;
    if (cell) dc[n] = dc_in;
}
