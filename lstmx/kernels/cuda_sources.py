"""CUDA C++ sources of the CuPy layer paths, one variant per dtype (and a TF32 variant of the tiled kernels).

Plain strings (no CuPy import), so the offline test compiles every variant with NVRTC on a machine without a
GPU (``tests/test_cuda_compile.py``), and g++ builds them for the CPU emulator that runs them in the tests
(``tests/cuda_emulator.h``). The CuPy modules of :mod:`lstmx.kernels` compile the same strings through CuPy.

Every kernel works on C-contiguous buffers laid out time-major; the four gate values of a unit are read from
the same row of the (B, 4H) gate block.

- ``STEPWISE``: one step per launch; the step index is an argument, so the Python loop passes base pointers
  and never slices an array per step. The recurrent GEMM runs in cuBLAS between launches.
- ``PERSISTENT``: one cooperative launch runs every step of a direction, with a grid-wide barrier between
  steps; each thread computes its unit's four recurrent dot products itself and keeps its cell state (and, in
  the backward, its dL/dh and dL/dc) in registers across steps. Values other blocks wrote during the launch
  are read with ``__ldcg`` (through L2, never a stale L1 line). One thread per (row b, unit j).
- ``TILED``: persistent too, tiled for larger hidden sizes: a block owns a few units of a group of rows, its
  threads split the reduction, and the partial sums meet in shared memory. The product is register-tiled FMAs
  (each thread a 4 × 4 tile of rows × gates from vector loads), or in the "tf32" variant warp-wide tensor-core
  MMAs (``mma.sync`` m16n8k8, TF32 operands, float32 sums). The tile shape is a launch argument
  (:mod:`lstmx.kernels.tiling`).
- ``OPTIM``: one optimizer step (Adam/AdamW, SGD) for one parameter tensor per launch, and clipping by the
  global norm in two launches for up to 8 tensors (:mod:`lstmx.kernels.cupy_optim`).
- ``LOSS``: the softmax cross-entropy's per-row loss and its gradient, a block per row
  (:mod:`lstmx.kernels.cupy_loss`).
"""

from __future__ import annotations

from string import Template

from . import tiling

# float32 and float64 (also the suffix of the kernels' names): the C type and its tanh, sqrt, exp and log.
DTYPES = {"float32": ("float", "tanhf", "sqrtf", "expf", "logf"), "float64": ("double", "tanh", "sqrt", "exp", "log")}

_CELL = r"""
// The LSTM cell every kernel here computes for one unit of one row (the equations: lstmx.layers.cell).
struct Gates {
    $real i, f, g, o;  // pre-activations on the way into activate(), activations after
};

// σ(z) = ½·tanh(½z) + ½, as in the generic path.
__device__ __forceinline__ Gates activate(const $real zi, const $real zf, const $real zg, const $real zo)
{
    const $real half = 0.5;
    return Gates{half * $tanh(half * zi) + half, half * $tanh(half * zf) + half, $tanh(zg),
                 half * $tanh(half * zo) + half};
}

struct CellOut {
    $real tanh_c, y, h, c;  // tanh of the new cell value, the output, the carried state
};

// One step of the cell. With a step mask m (1 on a real step, 0 on padding) a padded row outputs 0 and carries
// its state; without one (masked = false) h_prev is not read.
__device__ __forceinline__ CellOut cell_forward(const Gates& a, const $real c_prev, const $real h_prev,
                                                const bool masked, const $real m)
{
    const $real one = 1;
    const $real c = a.f * c_prev + a.i * a.g, tc = $tanh(c), h = a.o * tc;
    if (!masked) return CellOut{tc, h, h, c};
    return CellOut{tc, m * h, m * h + (one - m) * h_prev, m * c + (one - m) * c_prev};
}

struct CellGrad {
    $real dz_i, dz_f, dz_g, dz_o, dc_prev;  // dL/d(pre-activations) and dL/dc_{t-1}
};

// The mirror of cell_forward: from dy_t and dL/dh_t, dL/dc_t arriving from step t + 1, with σ' and tanh' from
// the stored outputs (a: activated gates, tc: tanh(c_t)). m = 1 without a mask.
__device__ __forceinline__ CellGrad cell_backward(const Gates& a, const $real tc, const $real c_prev, const $real dy,
                                                  const $real dh_next, const $real dc_next, const $real m)
{
    const $real one = 1;
    const $real dh_t = m * (dy + dh_next);
    const $real dc_t = m * dc_next + dh_t * a.o * (one - tc * tc);
    return CellGrad{dc_t * a.g * a.i * (one - a.i), dc_t * c_prev * a.f * (one - a.f), dc_t * a.i * (one - a.g * a.g),
                    dh_t * tc * a.o * (one - a.o), dc_t * a.f + (one - m) * dc_next};
}
"""

_STEPWISE = Template(_CELL + r"""
// gates[t] holds z = x_t W_x (+ h_{t-1} W_h, added by the GEMM before this kernel); bias is added here.
// Writes the activated gates i, f, g, o over z, the carried cell and hidden state of step t + 1, tanh(c'_t)
// and the output y_t. With a step mask m (one value per row), padded rows keep their state and output 0.
extern "C" __global__ void lstm_forward_step_$suffix(
    $real* __restrict__ gates,          // (T, B, 4H)
    const $real* __restrict__ bias,     // (4H,)
    $real* __restrict__ cells,          // (T + 1, B, H): c_0 .. c_T (carried)
    $real* __restrict__ hidden_states,  // (T + 1, B, H): h_0 .. h_T (carried)
    $real* __restrict__ tanh_c,         // (T, B, H): tanh(c'_t) of the cell's new value
    $real* __restrict__ y,              // (T, B, H)
    const $real* __restrict__ step_mask,  // (T, B) or nullptr: every step real
    const int t, const int batch, const int hidden)
{
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long count = (long long)batch * hidden;
    if (n >= count) return;
    const long long b = n / hidden, j = n - b * hidden;
    $real* z = gates + ((long long)t * batch + b) * 4 * hidden;
    const Gates a = activate(z[j] + bias[j], z[hidden + j] + bias[hidden + j], z[2 * hidden + j] + bias[2 * hidden + j],
                             z[3 * hidden + j] + bias[3 * hidden + j]);
    z[j] = a.i; z[hidden + j] = a.f; z[2 * hidden + j] = a.g; z[3 * hidden + j] = a.o;
    const long long now = (long long)t * count + n, next = now + count;
    const bool masked = step_mask != nullptr;
    const CellOut out = cell_forward(a, cells[now], masked ? hidden_states[now] : ($real)0, masked,
                                     masked ? step_mask[(long long)t * batch + b] : ($real)1);
    tanh_c[now] = out.tanh_c; y[now] = out.y; hidden_states[next] = out.h; cells[next] = out.c;
}

// Mirror of the forward step. On entry dh, dc hold dL/dh_t and dL/dc_t arriving from step t + 1; dy_t is added
// here. Writes dz_t (the gradient of the pre-activations) and, in place, dL/dc_{t-1}; with a step mask, dh is
// left holding the part of dL/dh_{t-1} that padded rows pass straight through, to which the GEMM after this
// kernel adds dz_t W_hᵀ (without a mask the GEMM overwrites dh). σ' and tanh' come from the stored outputs.
extern "C" __global__ void lstm_backward_step_$suffix(
    const $real* __restrict__ dy,       // (T, B, H)
    $real* __restrict__ dh,             // (B, H)
    $real* __restrict__ dc,             // (B, H)
    const $real* __restrict__ gates,    // (T, B, 4H) activated
    const $real* __restrict__ cells,    // (T + 1, B, H) carried
    const $real* __restrict__ tanh_c,   // (T, B, H)
    const $real* __restrict__ step_mask,  // (T, B) or nullptr
    $real* __restrict__ dz,             // (T, B, 4H)
    const int t, const int batch, const int hidden)
{
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long count = (long long)batch * hidden;
    if (n >= count) return;
    const long long b = n / hidden, j = n - b * hidden;
    const long long now = (long long)t * count + n;
    const long long row = ((long long)t * batch + b) * 4 * hidden;
    const $real one = 1;
    const $real m = step_mask == nullptr ? one : step_mask[(long long)t * batch + b];
    const $real dh_next = dh[n], dc_next = dc[n];
    const Gates a{gates[row + j], gates[row + hidden + j], gates[row + 2 * hidden + j], gates[row + 3 * hidden + j]};
    const CellGrad d = cell_backward(a, tanh_c[now], cells[now], dy[now], dh_next, dc_next, m);
    dz[row + j] = d.dz_i; dz[row + hidden + j] = d.dz_f; dz[row + 2 * hidden + j] = d.dz_g; dz[row + 3 * hidden + j] = d.dz_o;
    dc[n] = d.dc_prev;
    if (step_mask != nullptr) dh[n] = (one - m) * dh_next;
}
""")

_PERSISTENT = Template(_CELL + r"""
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
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // (H, 4, 32)
    $real* h_s = w_s + 128LL * hidden;                     // (rows, H)
    cg::grid_group grid = cg::this_grid();
    const Place p = place_of(batch, hidden);
    const int lane = p.lane, row = p.row, rows = p.rows, tid = p.tid, threads = p.threads, j0 = p.j0, b0 = p.b0;
    const int j = p.j, b = p.b;
    const bool active = p.active;
    const long long count = p.count, n = p.n, four = p.four;
    for (long long e = tid; e < 128LL * hidden; e += threads) {
        const int l = (int)(e & 31), g = (int)((e >> 5) & 3);
        const long long k = e >> 7;
        w_s[e] = j0 + l < hidden ? w_hidden[k * four + g * hidden + j0 + l] : ($real)0;
    }
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
        const $real* h_now = hidden_states + t * count;
        for (int e = tid; e < rows * hidden; e += threads) {
            const int r = e / hidden;
            h_s[e] = b0 + r < batch ? __ldcg(h_now + (long long)(b0 + r) * hidden + (e - r * hidden)) : ($real)0;
        }
        __syncthreads();
        if (active) {
            $real* z = gates + ((long long)t * batch + b) * four;
            $real zi = xi, zf = xf, zg = xg, zo = xo;
            const $real* h = h_s + row * hidden;
            const $real* w = w_s + lane;
            $real zi2 = 0, zf2 = 0, zg2 = 0, zo2 = 0;  // two sums per gate: half the dependent chain
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
            const Gates a = activate(zi + zi2, zf + zf2, zg + zg2, zo + zo2);
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
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // (4H, 32)
    $real* dz_s = w_s + 128LL * hidden;                    // (rows, 4H)
    cg::grid_group grid = cg::this_grid();
    const Place p = place_of(batch, hidden);
    const int lane = p.lane, row = p.row, rows = p.rows, tid = p.tid, threads = p.threads, j0 = p.j0, b0 = p.b0;
    const int j = p.j, b = p.b;
    const bool active = p.active;
    const long long count = p.count, n = p.n, four = p.four;
    for (long long e = tid; e < 128LL * hidden; e += threads) {  // read along rows of W_h (coalesced)
        const int l = (int)(e / four);
        const long long col = e - l * four;
        w_s[col * 32 + l] = j0 + l < hidden ? w_hidden[(long long)(j0 + l) * four + col] : ($real)0;
    }
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
        const $real* dz_now = dz + (long long)t * batch * four;
        for (long long e = tid; e < rows * four; e += threads) {
            const int r = (int)(e / four);
            dz_s[e] = b0 + r < batch ? __ldcg(dz_now + (long long)(b0 + r) * four + (e - r * four)) : ($real)0;
        }
        __syncthreads();
        if (active) {
            const $real* d = dz_s + row * four;
            const $real* w = w_s + lane;
            $real acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;  // 4H is a multiple of 4: four independent sums
            #pragma unroll 2
            for (int col = 0; col < 4 * hidden; col += 4, w += 128) {
                acc0 += d[col] * w[0]; acc1 += d[col + 1] * w[32]; acc2 += d[col + 2] * w[64]; acc3 += d[col + 3] * w[96];
            }
            dh_in = (acc0 + acc1) + (acc2 + acc3) + (one - m_t) * dh_in;
        }
        __syncthreads();  // dz_s is read by every thread before the next step's staging overwrites it
    }
    if (active) { dh[n] = dh_in; dc[n] = dc_in; }
}
""")

_TILED = Template(_CELL + r"""
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// 1: the recurrent products run on tensor cores in TF32 (the "tf32" variant, float32 data), 0: FMAs in $real.
#define LSTMX_MMA $mma

// Four consecutive values from (or to) shared memory in one or two vector accesses; p is 16-byte aligned.
__device__ __forceinline__ void load4(const float* p, float (&v)[4])
{
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4])
{
    const double2 a = *reinterpret_cast<const double2*>(p), b = *reinterpret_cast<const double2*>(p + 2);
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}
__device__ __forceinline__ void store4(float* p, const float (&v)[4])
{
    *reinterpret_cast<float4*>(p) = float4{v[0], v[1], v[2], v[3]};
}
__device__ __forceinline__ void store4(double* p, const double (&v)[4])
{
    *reinterpret_cast<double2*>(p) = double2{v[0], v[1]};
    *reinterpret_cast<double2*>(p + 2) = double2{v[2], v[3]};
}

// Where a thread of a tiled kernel works. Grid (ceil(H / units), ceil(B / rows)), block (units, rows / 4, splits):
// the block owns hidden units j0 .. j0 + units - 1 of batch rows b0 .. b0 + rows - 1. The product's partial sums
// meet in shared memory; then thread tid < rows·units owns the cell (row tid / units, unit tid % units) for the
// whole sequence. Both reductions (over k < H forward, over the 4H columns backward) are padded with zeros to a
// multiple of 8.
struct Tile {
    int units, groups, splits, rows, u, group, split, tid, threads, j0, b0;
    int cell_row, cell_unit, j, b;
    bool active;  // this thread owns a cell inside the batch and the hidden size
    long long count, n, four;
};

__device__ Tile tile_of(const int batch, const int hidden)
{
    Tile p;
    p.units = blockDim.x; p.groups = blockDim.y; p.splits = blockDim.z; p.rows = 4 * p.groups;
    p.u = threadIdx.x; p.group = threadIdx.y; p.split = threadIdx.z;
    p.tid = p.u + p.units * (p.group + p.groups * p.split); p.threads = p.units * p.groups * p.splits;
    p.j0 = blockIdx.x * p.units; p.b0 = blockIdx.y * p.rows;
    p.cell_row = p.tid / p.units; p.cell_unit = p.tid - p.cell_row * p.units;
    p.j = p.j0 + p.cell_unit; p.b = p.b0 + p.cell_row;
    p.active = p.tid < p.rows * p.units && p.j < hidden && p.b < batch;
    p.count = (long long)batch * hidden; p.n = (long long)p.b * hidden + p.j; p.four = 4LL * hidden;
    return p;
}

__device__ __forceinline__ int round8(const int n) { return (n + 7) & ~7; }

#if LSTMX_MMA
// One warp-wide tensor-core product d += a b of a 16 × 8 A (row-major) and an 8 × 8 B in TF32 with float32
// accumulation (mma.sync m16n8k8). Lane l holds, with g = l / 4 and t = l % 4: a = A[g][t], A[g+8][t], A[g][t+4],
// A[g+8][t+4]; b = B[t][g], B[t+4][g]; d = D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]. Operands are rounded
// to TF32 (10-bit mantissa, nearest) as they enter shared memory. The CPU emulator defines both for itself.
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float tf32_round(const float x)
{
    unsigned bits;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(x));
    return __uint_as_float(bits);
}
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const float (&a)[4], const float (&b)[2])
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
                   "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
}
#endif
__device__ __forceinline__ float to_operand(const float x) { return tf32_round(x); }

// The warp's tile of the product: its 16 rows from m0, its 8 columns (`octet` of the block's columns), and its
// share of the reduction (every shares-th group of 8). tiles · shares is the block's warp count.
struct WarpTile {
    int lane, m0, octet, share, shares;
};
__device__ __forceinline__ WarpTile warp_tile(const Tile& p, const int octets)
{
    const int warp = p.tid >> 5, tiles = (p.rows >> 4) * octets, tile = warp % tiles;
    return WarpTile{p.tid & 31, (tile / octets) * 16, tile % octets, warp / tiles, (p.threads >> 5) / tiles};
}

// A lane's A fragment from rows m0 .. m0 + 15 of a staged matrix (row stride `stride`), columns kk .. kk + 7.
__device__ __forceinline__ void a_fragment(const float* staged, const WarpTile& w, const int stride, const int kk,
                                           float (&a)[4])
{
    const float* top = staged + (w.m0 + (w.lane >> 2)) * stride + kk + (w.lane & 3);
    a[0] = top[0]; a[1] = top[8 * stride]; a[2] = top[4]; a[3] = top[8 * stride + 4];
}

// Weights held as ready-made B fragments: for each group of 8 along the reduction and each octet of 8 columns,
// 32 lanes × 2 values, so a lane loads its pair at once. `weight(k, column)` is the value to place (0 past the
// matrix); the element e of the layout holds B[k][column] for the k and column below.
template <typename Weight>
__device__ __forceinline__ void b_fragments_to_shared(float* w_s, const Tile& p, const int reduction, const int octets,
                                                      const Weight& weight)
{
    for (long long e = p.tid; e < (long long)reduction * octets * 8; e += p.threads) {
        const int lane = (int)((e >> 1) & 31);
        const long long group = e >> 6;
        const long long k = (group / octets) * 8 + (lane & 3) + 4 * (e & 1);
        const int column = (int)(group % octets) * 8 + (lane >> 2);
        w_s[e] = tf32_round(weight(k, column));
    }
}
__device__ __forceinline__ void b_fragment(const float* w_s, const WarpTile& w, const int octets, const int kk,
                                           float (&b)[2])
{
    const float2 pair = *reinterpret_cast<const float2*>(w_s + ((((long long)kk >> 3) * octets + w.octet) * 32 + w.lane) * 2);
    b[0] = pair.x; b[1] = pair.y;
}

// A warp's tile of the product and its sums (each direction derives its own type, so each has its own store).
struct WarpSums {
    WarpTile w;
    int octets;  // groups of 8 columns of B in the block: its gate columns forward, its units backward
    float d[4];
};
__device__ __forceinline__ WarpSums warp_sums(const Tile& p, const int octets)
{
    return WarpSums{warp_tile(p, octets), octets, {0.0f, 0.0f, 0.0f, 0.0f}};
}

// Both directions: the warp's MMAs over its share of a staged chunk (columns start .. start + width - 1 of the
// reduction), one per group of 8.
template <typename Product>
__device__ __forceinline__ void accumulate(Product& sums, const float* staged, const float* w_s, const Tile&,
                                           const int start, const int width, const int stride)
{
    for (int kk = 8 * sums.w.share; kk < width; kk += 8 * sums.w.shares) {
        float a[4], b[2];
        a_fragment(staged, sums.w, stride, kk, a);
        b_fragment(w_s, sums.w, sums.octets, start + kk, b);
        mma_tf32_m16n8k8(sums.d, a, b);
    }
}

// Forward: warp tiles of 16 rows × 8 gate columns (2 units × 4 gates), over every shares-th group of 8 k.
constexpr int FORWARD_SHARE = 4;  // splits per share of the forward reduction: shares = splits / 4
__device__ __forceinline__ int forward_shares(const Tile& p) { return p.splits / FORWARD_SHARE; }
__device__ __forceinline__ void forward_weights_to_shared(float* w_s, const float* w_hidden, const Tile& p,
                                                          const int hidden, const int k8)
{
    b_fragments_to_shared(w_s, p, k8, p.units / 2, [&](const long long k, const int column) {
        const int unit = column >> 2, gate = column & 3;  // a block column is unit · 4 + gate
        return k < hidden && p.j0 + unit < hidden ? w_hidden[k * p.four + gate * hidden + p.j0 + unit] : 0.0f;
    });
}
struct ForwardProduct : WarpSums {};
__device__ __forceinline__ ForwardProduct forward_product(const Tile& p) { return {warp_sums(p, p.units / 2)}; }
// part: (shares, rows, units, 4 gates). d[0], d[1] are gates 2(t % 2), 2(t % 2) + 1 of unit 2·octet + t / 2.
__device__ __forceinline__ void store(const ForwardProduct& z, float* part, const Tile& p)
{
    const int t = z.w.lane & 3, unit = 2 * z.w.octet + (t >> 1), gate = 2 * (t & 1);
    for (int half = 0; half < 2; ++half) {
        const int row = z.w.m0 + (z.w.lane >> 2) + 8 * half;
        *reinterpret_cast<float2*>(part + (((long long)z.w.share * p.rows + row) * p.units + unit) * 4 + gate) =
            float2{z.d[2 * half], z.d[2 * half + 1]};
    }
}

// Backward: warp tiles of 16 rows × 8 units, over every shares-th group of 8 of the 4H columns.
__device__ __forceinline__ int backward_shares(const Tile& p) { return p.splits; }
__device__ __forceinline__ void backward_weights_to_shared(float* w_s, const float* w_hidden, const Tile& p,
                                                           const int hidden, const int c8)
{
    b_fragments_to_shared(w_s, p, c8, p.units / 8, [&](const long long column, const int unit) {  // B = W_hᵀ
        return column < p.four && p.j0 + unit < hidden ? w_hidden[(long long)(p.j0 + unit) * p.four + column] : 0.0f;
    });
}
struct BackwardProduct : WarpSums {};
__device__ __forceinline__ BackwardProduct backward_product(const Tile& p) { return {warp_sums(p, p.units / 8)}; }
// part: (shares, rows, units). d[0], d[1] are units 8·octet + 2t, 8·octet + 2t + 1.
__device__ __forceinline__ void store(const BackwardProduct& dh, float* part, const Tile& p)
{
    const int unit = 8 * dh.w.octet + 2 * (dh.w.lane & 3);
    for (int half = 0; half < 2; ++half) {
        const int row = dh.w.m0 + (dh.w.lane >> 2) + 8 * half;
        float* out = part + ((long long)dh.w.share * p.rows + row) * p.units + unit;
        out[0] = dh.d[2 * half]; out[1] = dh.d[2 * half + 1];
    }
}
#else
__device__ __forceinline__ $real to_operand(const $real x) { return x; }

// Forward: thread (u, g, s) accumulates a 4 rows × 4 gates tile of z for unit u and the rows g, g + rows/4,
// g + rows/2, g + 3rows/4 (rows a warp reads at once lie next to each other in shared memory, a padded row
// apart: no bank conflicts) over the s-th share of k (groups of 4, every splits-th group): two vector loads per
// 16 FMAs. W_h is held as (k8, units, 4 gates).
__device__ __forceinline__ int forward_shares(const Tile& p) { return p.splits; }
__device__ __forceinline__ void forward_weights_to_shared($real* w_s, const $real* w_hidden, const Tile& p,
                                                          const int hidden, const int k8)
{
    for (long long e = p.tid; e < (long long)k8 * p.units * 4; e += p.threads) {
        const int gate = (int)(e & 3), unit = (int)((e >> 2) % p.units);
        const long long k = (e >> 2) / p.units;
        w_s[e] = k < hidden && p.j0 + unit < hidden ? w_hidden[k * p.four + gate * hidden + p.j0 + unit] : ($real)0;
    }
}
struct ForwardProduct {
    $real acc[4][4];  // [row][gate]
};
__device__ __forceinline__ ForwardProduct forward_product(const Tile&) { return ForwardProduct{}; }
__device__ __forceinline__ void accumulate(ForwardProduct& z, const $real* h_s, const $real* w_s, const Tile& p,
                                           const int start, const int width, const int stride)
{
    for (int kk = 4 * p.split; kk < width; kk += 4 * p.splits) {
        $real h[4][4];  // [row][k]
        #pragma unroll
        for (int r = 0; r < 4; ++r) load4(h_s + (p.group + r * p.groups) * stride + kk, h[r]);
        #pragma unroll
        for (int q = 0; q < 4; ++q) {
            $real w[4];
            load4(w_s + ((long long)(start + kk + q) * p.units + p.u) * 4, w);
            #pragma unroll
            for (int r = 0; r < 4; ++r) {
                #pragma unroll
                for (int gate = 0; gate < 4; ++gate) z.acc[r][gate] += h[r][q] * w[gate];
            }
        }
    }
}
// part: (splits, rows, units, 4 gates)
__device__ __forceinline__ void store(const ForwardProduct& z, $real* part, const Tile& p)
{
    #pragma unroll
    for (int r = 0; r < 4; ++r)
        store4(part + (((long long)p.split * p.rows + p.group + r * p.groups) * p.units + p.u) * 4, z.acc[r]);
}

// Backward: thread (u, g, s) accumulates dL/dh_{t-1} for unit u and the same 4 rows over the s-th share of the
// columns (groups of 4): five vector loads per 16 FMAs. W_h is held as (units, c8 + 4): its units' rows.
__device__ __forceinline__ int backward_shares(const Tile& p) { return p.splits; }
__device__ __forceinline__ void backward_weights_to_shared($real* w_s, const $real* w_hidden, const Tile& p,
                                                           const int hidden, const int c8)
{
    for (long long e = p.tid; e < (long long)p.units * c8; e += p.threads) {  // along rows of W_h: coalesced
        const int unit = (int)(e / c8);
        const int column = (int)(e - (long long)unit * c8);
        w_s[unit * (c8 + 4) + column] = column < p.four && p.j0 + unit < hidden
            ? w_hidden[(long long)(p.j0 + unit) * p.four + column] : ($real)0;
    }
}
struct BackwardProduct {
    $real acc[4];  // [row]
};
__device__ __forceinline__ BackwardProduct backward_product(const Tile&) { return BackwardProduct{}; }
__device__ __forceinline__ void accumulate(BackwardProduct& dh, const $real* dz_s, const $real* w_s, const Tile& p,
                                           const int start, const int width, const int stride)
{
    const int c8 = round8((int)p.four);
    for (int cc = 4 * p.split; cc < width; cc += 4 * p.splits) {
        $real w[4];
        load4(w_s + p.u * (c8 + 4) + start + cc, w);
        #pragma unroll
        for (int r = 0; r < 4; ++r) {
            $real d[4];
            load4(dz_s + (p.group + r * p.groups) * stride + cc, d);
            dh.acc[r] += (d[0] * w[0] + d[1] * w[1]) + (d[2] * w[2] + d[3] * w[3]);
        }
    }
}
// part: (splits, rows, units)
__device__ __forceinline__ void store(const BackwardProduct& dh, $real* part, const Tile& p)
{
    #pragma unroll
    for (int r = 0; r < 4; ++r) part[((long long)p.split * p.rows + p.group + r * p.groups) * p.units + p.u] = dh.acc[r];
}
#endif

// Stages rows b0 .. b0 + rows - 1, columns start .. start + width - 1 of a (batch, columns) matrix in shared
// memory (row stride `stride`), zeros past the batch or the columns; read through L2 (other blocks wrote it).
__device__ __forceinline__ void stage_rows($real* staged, const $real* source, const Tile& p, const int batch,
                                          const int columns, const int start, const int width, const int stride)
{
    for (int e = p.tid; e < p.rows * width; e += p.threads) {
        const int r = e / width, column = start + (e - r * width);
        staged[r * stride + (e - r * width)] = p.b0 + r < batch && column < columns
            ? to_operand(__ldcg(source + (long long)(p.b0 + r) * columns + column)) : ($real)0;
    }
}

// One step's product (a ForwardProduct or a BackwardProduct): the block's rows of the (batch, columns) matrix at
// `source` pass through shared memory `chunk` columns at a time over the padded `reduction`, each chunk
// accumulated (above); then the partial sums go to `part`, ready for the cells after the return.
template <typename Product>
__device__ __forceinline__ void chunked_product(Product& product, $real* staged, const $real* source, const $real* w_s,
                                                $real* part, const Tile& p, const int batch, const int columns,
                                                const int reduction, const int chunk)
{
    const int stride = chunk + 4;
    for (int start = 0; start < reduction; start += chunk) {
        const int width = min(chunk, reduction - start);
        stage_rows(staged, source, p, batch, columns, start, width, stride);
        __syncthreads();  // the chunk is staged before any thread reads it
        accumulate(product, staged, w_s, p, start, width, stride);
        __syncthreads();  // the chunk is read before the next one overwrites it
    }
    store(product, part, p);
    __syncthreads();
}

// What a cell's forward step t reads that no other block writes: the input projection x_t W_x of its four gates
// and the step mask (1 without one), loaded one step ahead (zeros for a thread that owns no cell).
struct StepInput {
    $real x[4], m;
};
__device__ __forceinline__ StepInput step_input(const $real* gates, const $real* step_mask, const Tile& p, const int t,
                                                const int batch, const int hidden)
{
    StepInput in{{0, 0, 0, 0}, 1};
    if (p.active) {
        const $real* z = gates + ((long long)t * batch + p.b) * p.four + p.j;
        in.x[0] = z[0]; in.x[1] = z[hidden]; in.x[2] = z[2 * hidden]; in.x[3] = z[3 * hidden];
        if (step_mask != nullptr) in.m = step_mask[(long long)t * batch + p.b];
    }
    return in;
}

// What a cell's backward step t reads from its forward and from dy (no block writes them), loaded one step ahead.
struct StepStored {
    Gates a;
    $real tanh_c, c_prev, dy, m;
};
__device__ __forceinline__ StepStored step_stored(const $real* dy, const $real* gates, const $real* cells,
                                                  const $real* tanh_c, const $real* step_mask, const Tile& p,
                                                  const int t, const int batch, const int hidden)
{
    StepStored in{{0, 0, 0, 0}, 0, 0, 0, 1};
    if (p.active) {
        const $real* a = gates + ((long long)t * batch + p.b) * p.four + p.j;
        const long long now = t * p.count + p.n;
        in.a = Gates{a[0], a[hidden], a[2 * hidden], a[3 * hidden]};
        in.tanh_c = tanh_c[now]; in.c_prev = cells[now]; in.dy = dy[now];
        if (step_mask != nullptr) in.m = step_mask[(long long)t * batch + p.b];
    }
    return in;
}

// Forward, tiled: the block's gate columns of W_h (every k, its units' four gates) stay in shared memory for the
// whole launch; each step the block stages its rows of h_{t-1} in chunks of `chunk` columns (a multiple of 8)
// and accumulates its tile of z = h_{t-1} W_h (above). gates holds x_t W_x on entry and the activated gates on
// return, as in the other paths.
extern "C" __global__ void __launch_bounds__($max_threads, 1) lstm_forward_tiled_$suffix(
    $real* __restrict__ gates,            // (T, B, 4H)
    const $real* __restrict__ w_hidden,   // (H, 4H)
    const $real* __restrict__ bias,       // (4H,)
    $real* __restrict__ cells,            // (T + 1, B, H) carried
    $real* hidden_states,                 // (T + 1, B, H) carried; read by other blocks after the barrier
    $real* __restrict__ tanh_c,           // (T, B, H)
    $real* __restrict__ y,                // (T, B, H)
    const $real* __restrict__ step_mask,  // (T, B) or nullptr
    const int steps, const int batch, const int hidden, const int chunk)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    cg::grid_group grid = cg::this_grid();
    const Tile p = tile_of(batch, hidden);
    const int k8 = round8(hidden), stride = chunk + 4;
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // k8 · units · 4 values
    $real* h_s = w_s + (long long)k8 * p.units * 4;        // (rows, stride)
    $real* part = h_s + (long long)p.rows * stride;        // partial sums (splits, rows, units, 4 gates) at most
    forward_weights_to_shared(w_s, w_hidden, p, hidden, k8);
    $real c = 0, h = 0, b_i = 0, b_f = 0, b_g = 0, b_o = 0;  // the cell's carried state, in registers
    if (p.active) {
        c = cells[p.n]; h = hidden_states[p.n];
        b_i = bias[p.j]; b_f = bias[hidden + p.j]; b_g = bias[2 * hidden + p.j]; b_o = bias[3 * hidden + p.j];
    }
    StepInput in = step_input(gates, step_mask, p, 0, batch, hidden);  // T >= 1: checked at the layer's door
    for (int t = 0; t < steps; ++t) {
        $real* z = gates + ((long long)t * batch + p.b) * p.four;
        const long long now = t * p.count + p.n, next = now + p.count;
        ForwardProduct product = forward_product(p);
        chunked_product(product, h_s, hidden_states + t * p.count, w_s, part, p, batch, hidden, k8, chunk);
        if (p.active) {
            $real zi = in.x[0] + b_i, zf = in.x[1] + b_f, zg = in.x[2] + b_g, zo = in.x[3] + b_o;
            for (int s = 0; s < forward_shares(p); ++s) {
                $real sum[4];
                load4(part + (((long long)s * p.rows + p.cell_row) * p.units + p.cell_unit) * 4, sum);
                zi += sum[0]; zf += sum[1]; zg += sum[2]; zo += sum[3];
            }
            const Gates a = activate(zi, zf, zg, zo);
            z[p.j] = a.i; z[hidden + p.j] = a.f; z[2 * hidden + p.j] = a.g; z[3 * hidden + p.j] = a.o;
            const CellOut out = cell_forward(a, c, h, step_mask != nullptr, in.m);
            tanh_c[now] = out.tanh_c; y[now] = out.y; hidden_states[next] = h = out.h; c = out.c;
            cells[next] = c;
        }
        // the next step's input projection and mask depend on no other block: loaded before the barrier
        if (t + 1 < steps) in = step_input(gates, step_mask, p, t + 1, batch, hidden);
        grid.sync();  // h_{t+1} of every cell is written (and part read) before the next step
    }
}

// Backward, tiled, steps in reverse: a cell's owner turns dL/dh_t and dL/dc_t into dz_t (written for the weight
// gradient and the other blocks) and dL/dc_{t-1}; after the barrier the block stages its rows of dz_t in chunks
// of `chunk` columns (a multiple of 8) and accumulates dL/dh_{t-1} = dz_t W_hᵀ for its units (above); the
// block's rows of W_h (its units, every column) stay in shared memory. dh, dc hold dL/dh_T, dL/dc_T on entry
// and dL/dh_0, dL/dc_0 on return.
extern "C" __global__ void __launch_bounds__($max_threads, 1) lstm_backward_tiled_$suffix(
    const $real* __restrict__ dy,          // (T, B, H)
    const $real* __restrict__ w_hidden,    // (H, 4H)
    const $real* __restrict__ gates,       // (T, B, 4H) activated
    const $real* __restrict__ cells,       // (T + 1, B, H) carried
    const $real* __restrict__ tanh_c,      // (T, B, H)
    const $real* __restrict__ step_mask,   // (T, B) or nullptr
    $real* dz,                             // (T, B, 4H); read by other blocks after the barrier
    $real* __restrict__ dh,                // (B, H)
    $real* __restrict__ dc,                // (B, H)
    const int steps, const int batch, const int hidden, const int chunk)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    cg::grid_group grid = cg::this_grid();
    const Tile p = tile_of(batch, hidden);
    const int columns = 4 * hidden, c8 = round8(columns), stride = chunk + 4;
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // units · (c8 + 4) values at most
    $real* dz_s = w_s + (long long)p.units * (c8 + 4);     // (rows, stride)
    $real* part = dz_s + (long long)p.rows * stride;       // partial sums (splits, rows, units) at most
    backward_weights_to_shared(w_s, w_hidden, p, hidden, c8);
    const $real one = 1;
    $real dh_in = 0, dc_in = 0;  // dL/dh_t, dL/dc_t arriving from step t + 1
    if (p.active) { dh_in = dh[p.n]; dc_in = dc[p.n]; }
    StepStored in = step_stored(dy, gates, cells, tanh_c, step_mask, p, steps - 1, batch, hidden);  // T >= 1
    for (int t = steps - 1; t >= 0; --t) {
        const $real m = in.m;
        if (p.active) {
            const long long row_start = ((long long)t * batch + p.b) * p.four;
            const CellGrad d = cell_backward(in.a, in.tanh_c, in.c_prev, in.dy, dh_in, dc_in, m);
            dz[row_start + p.j] = d.dz_i; dz[row_start + hidden + p.j] = d.dz_f;
            dz[row_start + 2 * hidden + p.j] = d.dz_g; dz[row_start + 3 * hidden + p.j] = d.dz_o;
            dc_in = d.dc_prev;
        }
        // step t - 1's stored values depend on no other block: loaded before the barrier and the product
        if (t > 0) in = step_stored(dy, gates, cells, tanh_c, step_mask, p, t - 1, batch, hidden);
        grid.sync();  // dz_t of every cell is written before any block stages its rows
        BackwardProduct product = backward_product(p);
        chunked_product(product, dz_s, dz + (long long)t * batch * p.four, w_s, part, p, batch, columns, c8, chunk);
        if (p.active) {
            $real sum = 0;
            for (int s = 0; s < backward_shares(p); ++s) sum += part[((long long)s * p.rows + p.cell_row) * p.units + p.cell_unit];
            dh_in = sum + (one - m) * dh_in;
        }
        // the next step's grid barrier keeps the next product from writing part before it is read here
    }
    if (p.active) { dh[p.n] = dh_in; dc[p.n] = dc_in; }
}
""")

_OPTIM = Template(r"""
// One optimizer step for one parameter tensor in one launch (a grid-stride loop over its n entries), out of
// place: new_param, and the new state slots, are separate arrays, so the step reads the same values as the
// generic path and leaves every array it was given untouched. Scalars come from the host, computed as there.

// Adam (decoupled = 0: L2 added to the gradient) and AdamW (decoupled = 1: p ← p·(1 − lr·wd) first):
// m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², p ← p − step_size·m / (√v / √(1 − β₂ᵗ) + ε),
// step_size = lr / (1 − β₁ᵗ).
extern "C" __global__ void adam_update_$suffix(
    const $real* __restrict__ param, const $real* __restrict__ grad,
    const $real* __restrict__ exp_avg, const $real* __restrict__ exp_avg_sq,
    $real* __restrict__ new_param, $real* __restrict__ new_exp_avg, $real* __restrict__ new_exp_avg_sq,
    const $real lr, const $real beta1, const $real beta2, const $real eps, const $real weight_decay,
    const int decoupled, const $real step_size, const $real sqrt_bias_correction2, const long long n)
{
    const $real one = 1;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        $real p = param[i], g = grad[i];
        if (weight_decay != 0) {
            if (decoupled) p = p * (one - lr * weight_decay);
            else g = g + weight_decay * p;
        }
        const $real m = beta1 * exp_avg[i] + (one - beta1) * g;
        const $real v = beta2 * exp_avg_sq[i] + (one - beta2) * g * g;
        new_exp_avg[i] = m;
        new_exp_avg_sq[i] = v;
        new_param[i] = p - step_size * m / ($sqrt(v) / sqrt_bias_correction2 + eps);
    }
}

// SGD with optional momentum (heavy-ball, or Nesterov) and L2 weight decay, as torch.optim.SGD: the buffer
// starts as the first gradient (first = 1 on the first step). momentum_buffer/new_momentum may be null when
// momentum is 0.
extern "C" __global__ void sgd_update_$suffix(
    const $real* __restrict__ param, const $real* __restrict__ grad, const $real* __restrict__ momentum_buffer,
    $real* __restrict__ new_param, $real* __restrict__ new_momentum,
    const $real lr, const $real momentum, const $real weight_decay, const int nesterov, const int first,
    const long long n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const $real p = param[i];
        $real g = grad[i];
        if (weight_decay != 0) g = g + weight_decay * p;
        if (momentum != 0) {
            const $real buffer = first ? g : momentum * momentum_buffer[i] + g;
            new_momentum[i] = buffer;
            g = nesterov ? g + momentum * buffer : buffer;
        }
        new_param[i] = p - lr * g;
    }
}

// Clipping by the global norm without a host sync, up to 8 gradient tensors per launch (null pointers past the
// last): e0 .. e7 are the running totals of their sizes, so tensor i holds entries e_{i-1} .. e_i - 1 of their
// concatenation (e_{-1} = 0).
constexpr int CLIP_TENSORS = 8;
constexpr int CLIP_THREADS = 256;  // blockDim.x of global_norm: its dynamic shared memory is CLIP_THREADS + 1 doubles

// Sum over threads of one value each, in a fixed order (so the result does not depend on thread timing).
__device__ double block_sum(double* sums, const double value)
{
    sums[threadIdx.x] = value;
    for (int half = CLIP_THREADS / 2; half > 0; half >>= 1) {
        __syncthreads();
        if ((int)threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    }
    __syncthreads();
    return sums[0];
}

// Block b sums the squares of entries b·chunk .. (b + 1)·chunk - 1 of the concatenation in double and writes
// them to partials[first_block + b]. The block that finishes last of all the launches of one clipping (a counter
// at 0 on entry) adds the partials in order and writes ‖g‖ and the scale min(1, max_norm / (‖g‖ + 1e-6)) to
// norm_and_scale; a NaN or Inf norm gives a NaN or 0 scale, as the generic path does.
extern "C" __global__ void global_norm_$suffix(
    const $real* t0, const $real* t1, const $real* t2, const $real* t3,
    const $real* t4, const $real* t5, const $real* t6, const $real* t7,
    const long long e0, const long long e1, const long long e2, const long long e3,
    const long long e4, const long long e5, const long long e6, const long long e7,
    const long long chunk, const int first_block, const int total_blocks,
    double* partials, unsigned* __restrict__ finished, $real* __restrict__ norm_and_scale, const double max_norm)
{
    extern __shared__ double sums[];  // CLIP_THREADS for block_sum, then whether this block finished last
    double& last = sums[CLIP_THREADS];
    const $real* tensors[CLIP_TENSORS] = {t0, t1, t2, t3, t4, t5, t6, t7};
    const long long ends[CLIP_TENSORS] = {e0, e1, e2, e3, e4, e5, e6, e7};
    const long long start = blockIdx.x * chunk, stop = start + chunk;
    double sum = 0;
    #pragma unroll
    for (int i = 0; i < CLIP_TENSORS; ++i) {
        const long long begin = i == 0 ? 0 : ends[i - 1];
        const long long low = start > begin ? start : begin, high = stop < ends[i] ? stop : ends[i];
        for (long long k = low + threadIdx.x; k < high; k += blockDim.x) {
            const double v = tensors[i][k - begin];
            sum += v * v;
        }
    }
    sum = block_sum(sums, sum);
    if (threadIdx.x == 0) {
        partials[first_block + blockIdx.x] = sum;
        __threadfence();  // the partial reaches every block before the counter counts it
        last = atomicAdd(finished, 1u) == (unsigned)total_blocks - 1 ? 1.0 : 0.0;
    }
    __syncthreads();
    if (last == 0.0) return;
    sum = 0;
    for (int b = threadIdx.x; b < total_blocks; b += blockDim.x) sum += __ldcg(partials + b);
    sum = block_sum(sums, sum);
    if (threadIdx.x == 0) {
        const double norm = sqrt(sum), ratio = max_norm / (norm + 1e-6);
        norm_and_scale[0] = ($real)norm;
        norm_and_scale[1] = ($real)(ratio >= 1 ? 1.0 : ratio);  // NaN >= 1 is false: a NaN ratio stays NaN
    }
}

// out_i = t_i · scale for each tensor, scale = norm_and_scale[1] (written by global_norm), a grid-stride loop.
extern "C" __global__ void scale_tensors_$suffix(
    const $real* t0, const $real* t1, const $real* t2, const $real* t3,
    const $real* t4, const $real* t5, const $real* t6, const $real* t7,
    $real* o0, $real* o1, $real* o2, $real* o3, $real* o4, $real* o5, $real* o6, $real* o7,
    const long long e0, const long long e1, const long long e2, const long long e3,
    const long long e4, const long long e5, const long long e6, const long long e7,
    const $real* __restrict__ norm_and_scale)
{
    const $real* tensors[CLIP_TENSORS] = {t0, t1, t2, t3, t4, t5, t6, t7};
    $real* outs[CLIP_TENSORS] = {o0, o1, o2, o3, o4, o5, o6, o7};
    const long long ends[CLIP_TENSORS] = {e0, e1, e2, e3, e4, e5, e6, e7};
    const $real scale = norm_and_scale[1];
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    #pragma unroll
    for (int i = 0; i < CLIP_TENSORS; ++i) {
        const long long begin = i == 0 ? 0 : ends[i - 1];
        for (long long k = first; k < ends[i] - begin; k += stride) outs[i][k] = tensors[i][k] * scale;
    }
}
""")

_LOSS = Template(r"""
// Block-wide reduction of one value per thread through shared memory (blockDim.x a power of two); every thread
// gets the result. scratch holds blockDim.x values; the leading barrier lets a previous use finish reading it.
template <bool maximum>
__device__ $real block_reduce($real value, $real* scratch)
{
    __syncthreads();
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            const $real other = scratch[threadIdx.x + half];
            scratch[threadIdx.x] = maximum ? (other > scratch[threadIdx.x] ? other : scratch[threadIdx.x])
                                           : scratch[threadIdx.x] + other;
        }
        __syncthreads();
    }
    return scratch[0];
}

// Softmax cross-entropy of each row of logits (rows, classes) with its target, a block per row (grid-stride):
// row_loss[r] = logsumexp(x_r) − x_r[target] (0 where the target is ignore_index), and
// dL/dlogits[r] = (softmax(x_r) − one_hot(target)) · real / count, count = *count_of_real (at least 1).
// The log-sum-exp subtracts the row's maximum first (no overflow, no log(0)).
extern "C" __global__ void softmax_cross_entropy_$suffix(
    const $real* __restrict__ logits,         // (rows, classes)
    const long long* __restrict__ targets,    // (rows,)
    const $real* __restrict__ count_of_real,  // 0-d
    $real* __restrict__ row_loss,             // (rows,)
    $real* __restrict__ dlogits,              // (rows, classes)
    const int rows, const int classes, const long long ignore_index)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    $real* scratch = reinterpret_cast<$real*>(shared_bytes);  // (blockDim.x,)
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const $real* x = logits + (long long)r * classes;
        $real largest = x[0];  // classes >= 1 (the wrapper checks)
        for (int c = threadIdx.x; c < classes; c += blockDim.x) largest = x[c] > largest ? x[c] : largest;
        largest = block_reduce<true>(largest, scratch);
        $real sum = 0;
        for (int c = threadIdx.x; c < classes; c += blockDim.x) sum += $exp(x[c] - largest);
        const $real log_sum_exp = $log(block_reduce<false>(sum, scratch)) + largest;
        const long long target = targets[r];
        const bool real = target != ignore_index;
        if (real && (target < 0 || target >= classes)) {  // a target outside the vocabulary: NaN, never a stray read
            const $real nan = $sqrt(($real)-1);
            if (threadIdx.x == 0) row_loss[r] = nan;
            for (int c = threadIdx.x; c < classes; c += blockDim.x) dlogits[(long long)r * classes + c] = nan;
            continue;
        }
        if (threadIdx.x == 0) row_loss[r] = real ? log_sum_exp - x[target] : ($real)0;
        const $real scale = real ? ($real)1 / *count_of_real : ($real)0;
        $real* d = dlogits + (long long)r * classes;
        for (int c = threadIdx.x; c < classes; c += blockDim.x)
            d[c] = ($exp(x[c] - log_sum_exp) - (c == target ? ($real)1 : ($real)0)) * scale;
    }
}
""")


def persistent_shared_bytes(kernel: str, hidden: int, rows: int, itemsize: int) -> int:
    """Dynamic shared memory of a persistent kernel: the block's W_h slice and its rows of h (forward) or dz
    (backward)."""
    staged = hidden if kernel == "lstm_forward_persistent" else 4 * hidden
    return (128 * hidden + rows * staged) * itemsize


STEPWISE_KERNELS = ("lstm_forward_step", "lstm_backward_step")
PERSISTENT_KERNELS = ("lstm_forward_persistent", "lstm_backward_persistent")
TILED_KERNELS = ("lstm_forward_tiled", "lstm_backward_tiled")
OPTIM_KERNELS = ("adam_update", "sgd_update", "global_norm", "scale_tensors")
LOSS_KERNELS = ("softmax_cross_entropy",)
SOURCES = {"stepwise": (_STEPWISE, STEPWISE_KERNELS), "persistent": (_PERSISTENT, PERSISTENT_KERNELS),
           "tiled": (_TILED, TILED_KERNELS), "optim": (_OPTIM, OPTIM_KERNELS),
           "loss": (_LOSS, LOSS_KERNELS)}


def variants(kind: str) -> tuple[str, ...]:
    """The variants of the ``kind`` kernels: every kind has "float32" and "float64"; the tiled kernels also have
    "tf32" (float32 data, recurrent products on tensor cores in TensorFloat-32)."""
    return (*DTYPES, "tf32") if kind == "tiled" else tuple(DTYPES)


def source(kind: str, variant: str) -> str:
    """The CUDA C++ source of the ``kind`` ("stepwise", "persistent", "tiled", "optim" or "loss") kernels in
    ``variant`` (:func:`variants`)."""
    if variant not in variants(kind):
        raise ValueError(f"the {kind} kernels come in {', '.join(variants(kind))}, not {variant!r}")
    real, tanh, sqrt, exp, log = DTYPES["float32" if variant == "tf32" else variant]
    return SOURCES[kind][0].substitute(real=real, tanh=tanh, sqrt=sqrt, exp=exp, log=log, suffix=variant,
                                       max_threads=tiling.MAX_THREADS, mma=int(variant == "tf32"))


def kernel_name(kernel: str, variant: str) -> str:
    return f"{kernel}_{variant}"
