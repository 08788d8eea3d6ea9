// The kernels of the stepwise CuPy path's layers with cell options (lstmx.kernels.cupy.variants): peepholes,
// input_forget, cell_clip, layer_norm, zoneout, recurrent dropout and step masks, as lstmx.nn.cells.LSTMCell writes
// them. A Python string.Template, filled in per variant by lstmx.kernels.cupy.cuda_sources.source.
//
// One block per batch row: the layer norms reduce over a row (4H values of h W_h, H of c), which the block sums
// in shared memory (blockDim.x a power of two, blockDim.x values of dynamic shared memory). An option that is
// off is a null pointer (or a zero scalar), tested uniformly by the whole block.

#define NORM_EPSILON 1e-5

// The sum of every thread's value, returned to every thread of the block (all of them must call it).
__device__ $real block_sum(const $real value, $real* shared)
{
    shared[threadIdx.x] = value;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    const $real total = shared[0];
    __syncthreads();  // shared is reused by the next sum
    return total;
}

__device__ __forceinline__ $real sigmoid(const $real z)
{
    const $real half = 0.5;
    return half * $tanh(half * z) + half;  // as the generic path and the other kernels
}

// z clipped to [-clip, clip] (clip = 0: no clipping); *inside records whether it lay within.
__device__ __forceinline__ $real clipped(const $real z, const $real clip, $real* inside)
{
    if (clip == ($real)0) return z;
    const bool within = z >= -clip && z <= clip;
    if (inside != nullptr) *inside = within ? ($real)1 : ($real)0;
    return within ? z : (z < 0 ? -clip : clip);
}

// LN of one row of width values by the whole block, each thread taking every blockDim.x-th value (as every loop
// here, so a thread reads back only what it wrote): normalized, and out = gain * normalized + bias (out may be
// values itself). Returns 1 / sqrt(var + eps).
__device__ $real normalise_row(const $real* values, const $real* gain_and_bias, $real* normalized, $real* out,
                               const int width, $real* shared)
{
    $real sum = 0;
    for (int k = threadIdx.x; k < width; k += blockDim.x) sum += values[k];
    const $real mean = block_sum(sum, shared) / width;
    $real squares = 0;
    for (int k = threadIdx.x; k < width; k += blockDim.x) squares += (values[k] - mean) * (values[k] - mean);
    const $real inverse = ($real)1 / $sqrt(block_sum(squares, shared) / width + ($real)NORM_EPSILON);
    for (int k = threadIdx.x; k < width; k += blockDim.x) {
        const $real n = (values[k] - mean) * inverse;
        normalized[k] = n;
        out[k] = n * gain_and_bias[k] + gain_and_bias[width + k];
    }
    return inverse;
}

// The mirror of normalise_row: dvalues from dout (dL/d its out).
__device__ void normalise_row_backward(const $real* dout, const $real* normalized, const $real inverse,
                                       const $real* gain_and_bias, $real* dvalues, const int width, $real* shared)
{
    $real sum = 0, weighted = 0;
    for (int k = threadIdx.x; k < width; k += blockDim.x) {
        sum += dout[k] * gain_and_bias[k];
        weighted += dout[k] * gain_and_bias[k] * normalized[k];
    }
    const $real mean = block_sum(sum, shared) / width, mean_weighted = block_sum(weighted, shared) / width;
    for (int k = threadIdx.x; k < width; k += blockDim.x)
        dvalues[k] = inverse * (dout[k] * gain_and_bias[k] - mean - normalized[k] * mean_weighted);
}

// LN over each row of values (rows, width), one block per row (out may be values itself).
extern "C" __global__ void row_norm_forward_$suffix(
    const $real* values, const $real* __restrict__ gain_and_bias, $real* __restrict__ normalized,
    $real* __restrict__ inverse_std, $real* out, const int rows, const int width)
{
    extern __shared__ $real shared[];
    const long long r = blockIdx.x;
    if (r >= rows) return;  // the whole block
    const $real inverse = normalise_row(values + r * width, gain_and_bias, normalized + r * width, out + r * width,
                                        width, shared);
    if (threadIdx.x == 0) inverse_std[r] = inverse;
}

// The mirror of row_norm_forward, per row.
extern "C" __global__ void row_norm_backward_$suffix(
    const $real* __restrict__ dout, const $real* __restrict__ normalized, const $real* __restrict__ inverse_std,
    const $real* __restrict__ gain_and_bias, $real* __restrict__ dvalues, const int rows, const int width)
{
    extern __shared__ $real shared[];
    const long long r = blockIdx.x;
    if (r >= rows) return;
    normalise_row_backward(dout + r * width, normalized + r * width, inverse_std[r], gain_and_bias, dvalues + r * width,
                           width, shared);
}

// One forward step t of row blockIdx.x. recurrent holds h_{t-1} W_h for this step (layer-normalised here, in
// place, with norm_h). Writes the activated gates, c'_t, tanh of (LN of) c'_t, the clip masks, the layer norms'
// caches, the output y_t and the carried state of step t + 1 (after zoneout and the step mask), and, with a
// recurrent-dropout mask, seen[t + 1] = h_t * mask, which the next step's GEMM reads.
extern "C" __global__ void lstm_variant_forward_step_$suffix(
    const $real* __restrict__ x_gates,       // (T, B, 4H): LN(x W_x) + b
    $real* __restrict__ recurrent,           // (B, 4H)
    const $real* __restrict__ norm_h,        // (2, 4H) or null
    const $real* __restrict__ norm_c,        // (2, H) or null
    const $real* __restrict__ peephole,      // (3H,) p_i, p_f, p_o or null
    const $real clip,                        // 0: no clipping
    const int input_forget,
    const $real* __restrict__ keep_c,        // (T, B, H) zoneout masks or null
    const $real* __restrict__ keep_h,        // (T, B, H) or null
    const $real zoneout_c, const $real zoneout_h,  // without masks: the expectation (0: no zoneout)
    const $real* __restrict__ recurrent_mask,  // (B, H) or null
    const $real* __restrict__ step_mask,     // (T, B) or null
    $real* __restrict__ gates,               // (T, B, 4H)
    $real* __restrict__ unclipped,           // (T, B, 4H) or null
    $real* __restrict__ h_normalized,        // (T, B, 4H) or null (with norm_h)
    $real* __restrict__ h_inverse_std,       // (T, B) or null
    $real* __restrict__ c_new,               // (T, B, H)
    $real* __restrict__ c_normalized,        // (T, B, H) or null (with norm_c)
    $real* __restrict__ c_inverse_std,       // (T, B) or null
    $real* __restrict__ tanh_c,              // (T, B, H)
    $real* __restrict__ cells,               // (T + 1, B, H) carried c
    $real* __restrict__ hidden_states,       // (T + 1, B, H) carried h
    $real* __restrict__ seen,                // (T + 1, B, H) or null (with recurrent_mask)
    $real* __restrict__ y,                   // (T, B, H)
    $real* __restrict__ unprojected,         // (B, H) or null: with a projection, o * tanh(c) goes here and
                                             // lstm_projected_state_forward_step makes h, y and seen of it
    const int t, const int batch, const int hidden)
{
    extern __shared__ $real shared[];
    const long long b = blockIdx.x;
    if (b >= batch) return;
    const int width = 4 * hidden;
    const long long step_row = (long long)t * batch + b;
    const $real one = 1;
    $real* rec = recurrent + b * width;
    if (norm_h != nullptr) {
        const $real inverse = normalise_row(rec, norm_h, h_normalized + step_row * width, rec, width, shared);
        if (threadIdx.x == 0) h_inverse_std[step_row] = inverse;
        __syncthreads();  // every unit reads gate values other threads normalised
    }
    const $real* xg = x_gates + step_row * width;
    $real* gate = gates + step_row * width;
    $real* inside = unclipped == nullptr ? nullptr : unclipped + step_row * width;
    const long long now = step_row * hidden;  // (t, b, 0) of a (T, B, H) array
    const long long before = (long long)b * hidden + (long long)t * batch * hidden;  // (t, b, 0) of cells
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        const $real cp = cells[before + j];
        $real zi = xg[j] + rec[j], zf = xg[hidden + j] + rec[hidden + j];
        const $real zg = xg[2 * hidden + j] + rec[2 * hidden + j];
        if (peephole != nullptr) {
            zi += peephole[j] * cp;
            zf += peephole[hidden + j] * cp;
        }
        const $real i = sigmoid(clipped(zi, clip, inside == nullptr ? nullptr : inside + j));
        const $real f_open = sigmoid(clipped(zf, clip, inside == nullptr ? nullptr : inside + hidden + j));
        const $real f = input_forget ? one - i : f_open;
        const $real g = $tanh(clipped(zg, clip, inside == nullptr ? nullptr : inside + 2 * hidden + j));
        const $real c = f * cp + i * g;
        $real zo = xg[3 * hidden + j] + rec[3 * hidden + j];
        if (peephole != nullptr) zo += peephole[2 * hidden + j] * c;
        const $real o = sigmoid(clipped(zo, clip, inside == nullptr ? nullptr : inside + 3 * hidden + j));
        gate[j] = i; gate[hidden + j] = f; gate[2 * hidden + j] = g; gate[3 * hidden + j] = o;
        c_new[now + j] = c;
    }
    if (norm_c != nullptr) {  // LN(c'_t) into tanh_c, whose tanh the loop below takes
        const $real inverse = normalise_row(c_new + now, norm_c, c_normalized + now, tanh_c + now, hidden, shared);
        if (threadIdx.x == 0) c_inverse_std[step_row] = inverse;
    }
    const $real m = step_mask == nullptr ? one : step_mask[step_row];
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        const $real cp = cells[before + j], c = c_new[now + j];
        const $real tc = $tanh(norm_c != nullptr ? tanh_c[now + j] : c);
        tanh_c[now + j] = tc;
        $real h = gate[3 * hidden + j] * tc, c_out = c;
        const $real kc = keep_c == nullptr ? zoneout_c : keep_c[now + j];
        if (kc != ($real)0) c_out = kc * cp + (one - kc) * c;
        cells[before + batch * hidden + j] = m * c_out + (one - m) * cp;
        if (unprojected != nullptr) {
            unprojected[b * hidden + j] = h;
            continue;
        }
        const $real hp = hidden_states[before + j];
        const $real kh = keep_h == nullptr ? zoneout_h : keep_h[now + j];
        if (kh != ($real)0) h = kh * hp + (one - kh) * h;
        const $real h_next = m * h + (one - m) * hp;
        y[now + j] = m * h;
        hidden_states[before + batch * hidden + j] = h_next;
        if (seen != nullptr) seen[before + batch * hidden + j] = h_next * recurrent_mask[b * hidden + j];
    }
}

// With a projection, after the GEMM h'_t = (o * tanh c_t) W_hr (projected, (B, P)): the zoneout of h, the step
// mask, y_t, the carried h of step t + 1 and seen[t + 1] over the P units of row blockIdx.x, as the last loop
// of lstm_variant_forward_step does over H without one.
extern "C" __global__ void lstm_projected_state_forward_step_$suffix(
    const $real* __restrict__ projected,     // (B, P)
    const $real* __restrict__ keep_h,        // (T, B, P) or null
    const $real zoneout_h,
    const $real* __restrict__ recurrent_mask,  // (B, P) or null
    const $real* __restrict__ step_mask,     // (T, B) or null
    $real* __restrict__ hidden_states,       // (T + 1, B, P)
    $real* __restrict__ seen,                // (T + 1, B, P) or null (with recurrent_mask)
    $real* __restrict__ y,                   // (T, B, P)
    const int t, const int batch, const int output)
{
    const long long b = blockIdx.x;
    if (b >= batch) return;
    const long long step_row = (long long)t * batch + b;
    const long long now = step_row * output, next = now + (long long)batch * output;
    const $real one = 1;
    const $real m = step_mask == nullptr ? one : step_mask[step_row];
    for (int j = threadIdx.x; j < output; j += blockDim.x) {
        const $real hp = hidden_states[now + j];
        $real h = projected[b * output + j];
        const $real kh = keep_h == nullptr ? zoneout_h : keep_h[now + j];
        if (kh != ($real)0) h = kh * hp + (one - kh) * h;
        const $real h_next = m * h + (one - m) * hp;
        y[now + j] = m * h;
        hidden_states[next + j] = h_next;
        if (seen != nullptr) seen[next + j] = h_next * recurrent_mask[b * output + j];
    }
}

// The mirror of lstm_variant_forward_step, step t of row blockIdx.x. dL/dh_t is dh_gemm * recurrent_mask (what
// step t + 1's W_h product sent back; the mask is 1 without recurrent dropout) + dh_carried (the rest: zoneout's
// and padding's share); dc holds dL/dc_t. Writes dz_t, dL/d(h W_h) (dh_product, with norm_h), dL/d(the tanh's
// input) (dc_through_h, for LN_c's gain), and in place dL/dc_{t-1} and the share of dL/dh_{t-1} that does not
// go through W_h (dh_carried). σ' and tanh' come from the stored outputs.
extern "C" __global__ void lstm_variant_backward_step_$suffix(
    const $real* __restrict__ dy,            // (T, B, H)
    const $real* __restrict__ dh_gemm,       // (B, H)
    const $real* __restrict__ recurrent_mask,  // (B, H) or null
    $real* __restrict__ dh_carried,          // (B, H)
    $real* __restrict__ dc,                  // (B, H)
    const $real* __restrict__ gates,         // (T, B, 4H) activated
    const $real* __restrict__ c_prev,        // (T, B, H) c_{t-1} per step
    const $real* __restrict__ c_new,         // (T, B, H)
    const $real* __restrict__ tanh_c,        // (T, B, H)
    const $real* __restrict__ unclipped,     // (T, B, 4H) or null
    const $real* __restrict__ peephole,      // (3H,) or null
    const int input_forget,
    const $real* __restrict__ norm_h,        // (2, 4H) or null
    const $real* __restrict__ norm_c,        // (2, H) or null
    const $real* __restrict__ h_normalized,  // (T, B, 4H) or null
    const $real* __restrict__ h_inverse_std, // (T, B) or null
    const $real* __restrict__ c_normalized,  // (T, B, H) or null
    const $real* __restrict__ c_inverse_std, // (T, B) or null
    const $real* __restrict__ keep_c,        // (T, B, H) or null
    const $real* __restrict__ keep_h,        // (T, B, H) or null
    const $real zoneout_c, const $real zoneout_h,
    const $real* __restrict__ step_mask,     // (T, B) or null
    $real* __restrict__ dz,                  // (T, B, 4H)
    $real* __restrict__ dh_product,          // (T, B, 4H) or null (without norm_h: dz itself)
    $real* __restrict__ dc_through_h,        // (T, B, H)
    const $real* __restrict__ dh_cell,       // (B, H) or null: with a projection, dL/d(o * tanh c_t) (through
                                             // W_hr; lstm_projected_state_backward_step did h's zoneout and mask)
    const int t, const int batch, const int hidden)
{
    extern __shared__ $real shared[];
    const long long b = blockIdx.x;
    if (b >= batch) return;
    const int width = 4 * hidden;
    const long long step_row = (long long)t * batch + b;
    const long long now = step_row * hidden, row = b * hidden;
    const $real one = 1;
    const $real m = step_mask == nullptr ? one : step_mask[step_row];
    const $real* gate = gates + step_row * width;
    $real* d = dz + step_row * width;
    const $real* inside = unclipped == nullptr ? nullptr : unclipped + step_row * width;
    $real sum = 0, weighted = 0;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        $real dh;
        if (dh_cell != nullptr) {
            dh = dh_cell[row + j];
        } else {
            const $real dh_next = dh_gemm[row + j] * (recurrent_mask == nullptr ? one : recurrent_mask[row + j])
                                  + dh_carried[row + j];
            const $real kh = keep_h == nullptr ? zoneout_h : keep_h[now + j];
            dh = (one - kh) * m * (dy[now + j] + dh_next);
        }
        const $real o = gate[3 * hidden + j], tc = tanh_c[now + j];
        $real dzo = dh * tc * o * (one - o);
        if (inside != nullptr) dzo *= inside[3 * hidden + j];
        d[3 * hidden + j] = dzo;
        const $real through = dh * o * (one - tc * tc);
        dc_through_h[now + j] = through;
        if (norm_c != nullptr) {
            sum += through * norm_c[j];
            weighted += through * norm_c[j] * c_normalized[now + j];
        }
    }
    $real mean = 0, mean_weighted = 0;
    if (norm_c != nullptr) {
        mean = block_sum(sum, shared) / hidden;
        mean_weighted = block_sum(weighted, shared) / hidden;
    }
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        const $real dc_next = dc[row + j];
        const $real kc = keep_c == nullptr ? zoneout_c : keep_c[now + j];
        const $real dc_t = m * dc_next;
        $real through = dc_through_h[now + j];
        if (norm_c != nullptr)
            through = c_inverse_std[step_row] * (through * norm_c[j] - mean - c_normalized[now + j] * mean_weighted);
        const $real i = gate[j], f = gate[hidden + j], g = gate[2 * hidden + j], dzo = d[3 * hidden + j];
        const $real cp = c_prev[now + j];
        $real dc_cell = (one - kc) * dc_t + through;
        if (peephole != nullptr) dc_cell += dzo * peephole[2 * hidden + j];
        $real di = dc_cell * g, df = dc_cell * cp;
        const $real dg = dc_cell * i;
        if (input_forget) {  // f = 1 - i: the forget gate's gradient reaches i with a minus sign
            di -= df;
            df = 0;
        }
        $real dzi = di * i * (one - i), dzf = df * f * (one - f), dzg = dg * (one - g * g);
        if (inside != nullptr) {
            dzi *= inside[j];
            dzf *= inside[hidden + j];
            dzg *= inside[2 * hidden + j];
        }
        d[j] = dzi; d[hidden + j] = dzf; d[2 * hidden + j] = dzg;
        $real dc_prev = dc_cell * f + kc * dc_t + (one - m) * dc_next;
        if (peephole != nullptr) dc_prev += dzi * peephole[j] + dzf * peephole[hidden + j];
        dc[row + j] = dc_prev;
        if (dh_cell == nullptr) {
            const $real dh_next = dh_gemm[row + j] * (recurrent_mask == nullptr ? one : recurrent_mask[row + j])
                                  + dh_carried[row + j];
            const $real kh = keep_h == nullptr ? zoneout_h : keep_h[now + j];
            dh_carried[row + j] = kh * m * (dy[now + j] + dh_next) + (one - m) * dh_next;
        }
    }
    if (norm_h == nullptr) return;  // the whole block: dz is the gradient of h W_h
    __syncthreads();  // the LN of h W_h reads the whole row of dz
    normalise_row_backward(d, h_normalized + step_row * width, h_inverse_std[step_row], norm_h,
                           dh_product + step_row * width, width, shared);
}

// With a projection, the h side of step t's backward over the P units of row blockIdx.x, before the W_hr
// product: dL/dh'_t = dh_gemm * recurrent_mask + dh_carried + dy_t under the step mask; zoneout's share of it
// goes straight to h_{t-1} (dh_carried, with what a padded step passes through), the rest to dh_projected[t],
// which the GEMM with W_hrᵀ turns into lstm_variant_backward_step's dh_cell.
extern "C" __global__ void lstm_projected_state_backward_step_$suffix(
    const $real* __restrict__ dy,            // (T, B, P)
    const $real* __restrict__ dh_gemm,       // (B, P)
    const $real* __restrict__ recurrent_mask,  // (B, P) or null
    $real* __restrict__ dh_carried,          // (B, P)
    const $real* __restrict__ keep_h,        // (T, B, P) or null
    const $real zoneout_h,
    const $real* __restrict__ step_mask,     // (T, B) or null
    $real* __restrict__ dh_projected,        // (T, B, P)
    const int t, const int batch, const int output)
{
    const long long b = blockIdx.x;
    if (b >= batch) return;
    const long long step_row = (long long)t * batch + b;
    const long long now = step_row * output, row = b * output;
    const $real one = 1;
    const $real m = step_mask == nullptr ? one : step_mask[step_row];
    for (int j = threadIdx.x; j < output; j += blockDim.x) {
        const $real dh_next = dh_gemm[row + j] * (recurrent_mask == nullptr ? one : recurrent_mask[row + j])
                              + dh_carried[row + j];
        const $real kh = keep_h == nullptr ? zoneout_h : keep_h[now + j];
        const $real dh_t = m * (dy[now + j] + dh_next);
        dh_projected[now + j] = (one - kh) * dh_t;
        dh_carried[row + j] = kh * dh_t + (one - m) * dh_next;
    }
}
