// The TILED kernels (lstmx.kernels.cupy.tiled): cooperative, tiled; a TF32 variant with tensor-core MMAs.
// A Python string.Template, filled in per variant by lstmx.kernels.cupy.cuda_sources.source: its dollar-prefixed
// names (real: float or double; suffix: the variant's name, which ends every kernel's name; ...) are listed there.

#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// 1: the recurrent products run on tensor cores in TF32 (the "tf32", "bf16" and "fp16" variants, float32 data), 0:
// FMAs in $real. LSTMX_OPERANDS: what the MMAs' operands are rounded to, 0 TF32, 1 bfloat16, 2 half precision
// (both exact in TF32).
#define LSTMX_MMA $mma
#define LSTMX_OPERANDS $operands

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
// float32 to the nearest bfloat16, ties to even (Inf and NaN pass), on the bits: what precision="bf16" rounds.
__device__ __forceinline__ float bf16_round(const float x)
{
    unsigned bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    return __uint_as_float(bits);
}
// float32 to the nearest IEEE half-precision value, ties to even (NaN passes): infinity from 65520 on, the
// subnormals' steps of 2**-24 below 2**-14, 10 mantissa bits between; what precision="fp16" rounds.
__device__ __forceinline__ float fp16_round(const float x)
{
    const unsigned bits = __float_as_uint(x), sign = bits & 0x80000000u, magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return x;                                  // NaN
    if (magnitude >= 0x477ff000u) return __uint_as_float(sign | 0x7f800000u);  // 65520 and up
    if (magnitude < 0x38800000u) return rintf(x * 16777216.0f) * 5.9604644775390625e-08f;  // below 2**-14
    return __uint_as_float((bits + 0xfffu + ((bits >> 13) & 1u)) & 0xffffe000u);
}
// What each operand of the MMAs becomes as it enters shared memory.
__device__ __forceinline__ float to_operand(const float x)
{
    return LSTMX_OPERANDS == 1 ? bf16_round(x) : LSTMX_OPERANDS == 2 ? fp16_round(x) : tf32_round(x);
}

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
        w_s[e] = to_operand(weight(k, column));
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
// inner: the rows of W_h, H (the projected cell's: P)
__device__ __forceinline__ void forward_weights_to_shared(float* w_s, const float* w_hidden, const Tile& p,
                                                          const int hidden, const int k8, const int inner = 0)
{
    const int rows_of_w = inner > 0 ? inner : hidden;
    b_fragments_to_shared(w_s, p, k8, p.units / 2, [&](const long long k, const int column) {
        const int unit = column >> 2, gate = column & 3;  // a block column is unit · 4 + gate
        return k < rows_of_w && p.j0 + unit < hidden ? w_hidden[k * p.four + gate * hidden + p.j0 + unit] : 0.0f;
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
// reduction: unused here (the B fragments are indexed by group of 8 along it, whatever its length)
__device__ __forceinline__ BackwardProduct backward_product(const Tile& p, const int = 0)
{
    return {warp_sums(p, p.units / 8)};
}
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
// inner: the rows of W_h, H (the projected cell's: P)
__device__ __forceinline__ void forward_weights_to_shared($real* w_s, const $real* w_hidden, const Tile& p,
                                                          const int hidden, const int k8, const int inner = 0)
{
    const int rows_of_w = inner > 0 ? inner : hidden;
    for (long long e = p.tid; e < (long long)k8 * p.units * 4; e += p.threads) {
        const int gate = (int)(e & 3), unit = (int)((e >> 2) % p.units);
        const long long k = (e >> 2) / p.units;
        w_s[e] = k < rows_of_w && p.j0 + unit < hidden ? w_hidden[k * p.four + gate * hidden + p.j0 + unit]
                                                       : ($real)0;
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
    int weight_row;  // the stride of the units' rows of weights in shared memory: the padded reduction + 4
};
// reduction: the product's (4H here; the projected cell's products with W_hr reduce over H or P)
__device__ __forceinline__ BackwardProduct backward_product(const Tile& p, const int reduction = 0)
{
    return BackwardProduct{{0, 0, 0, 0}, round8(reduction > 0 ? reduction : (int)p.four) + 4};
}
__device__ __forceinline__ void accumulate(BackwardProduct& dh, const $real* dz_s, const $real* w_s, const Tile& p,
                                           const int start, const int width, const int stride)
{
    for (int cc = 4 * p.split; cc < width; cc += 4 * p.splits) {
        $real w[4];
        load4(w_s + p.u * dh.weight_row + start + cc, w);
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
    {  // a grid of two z-planes runs both directions of a layer, each on its half of every stacked array
        const long long d = blockIdx.z;
        gates += d * steps * batch * 4LL * hidden; w_hidden += d * 4LL * hidden * hidden; bias += d * 4LL * hidden;
        cells += d * (steps + 1LL) * batch * hidden; hidden_states += d * (steps + 1LL) * batch * hidden;
        tanh_c += d * (long long)steps * batch * hidden; y += d * (long long)steps * batch * hidden;
    }
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
    {  // a grid of two z-planes runs both directions of a layer, each on its half of every stacked array
        const long long d = blockIdx.z;
        dy += d * (long long)steps * batch * hidden; w_hidden += d * 4LL * hidden * hidden;
        gates += d * steps * batch * 4LL * hidden; cells += d * (steps + 1LL) * batch * hidden;
        tanh_c += d * (long long)steps * batch * hidden; dz += d * steps * batch * 4LL * hidden;
        dh += d * (long long)batch * hidden; dc += d * (long long)batch * hidden;
    }
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

// With cell options (peepholes, input_forget, cell_clip, zoneout), what a cell's step t reads that no other block
// writes beyond StepInput's or StepStored's: zoneout's keep values (the expectation without masks) and the
// clip's inside values of its four gates (the backward's; 1 without a clip), loaded one step ahead.
struct VariantExtra {
    $real kc, kh, inside[4];
};
__device__ __forceinline__ VariantExtra variant_extra(const $real* keep_c, const $real* keep_h, const $real zoneout_c,
                                                      const $real zoneout_h, const $real* unclipped, const Tile& p,
                                                      const int t, const int batch, const int hidden)
{
    VariantExtra in{zoneout_c, zoneout_h, {1, 1, 1, 1}};
    if (p.active) {
        const long long now = t * p.count + p.n;
        if (keep_c != nullptr) in.kc = keep_c[now];
        if (keep_h != nullptr) in.kh = keep_h[now];
        if (unclipped != nullptr) {
            const $real* s = unclipped + ((long long)t * batch + p.b) * p.four + p.j;
            in.inside[0] = s[0]; in.inside[1] = s[hidden]; in.inside[2] = s[2 * hidden]; in.inside[3] = s[3 * hidden];
        }
    }
    return in;
}

__device__ __forceinline__ UnitOptions unit_options(const $real* peephole, const $real clip, const int input_forget,
                                                    const Tile& p, const int hidden)
{
    UnitOptions u{0, 0, 0, clip, input_forget, peephole != nullptr};
    if (p.active && peephole != nullptr) {
        u.p_i = peephole[p.j]; u.p_f = peephole[hidden + p.j]; u.p_o = peephole[2 * hidden + p.j];
    }
    return u;
}

// lstm_forward_tiled with cell options: the same product, the cell of variant_cell_forward. Also writes each
// step's c'_t (c_new) and, with a clip, the inside values of the four gates (unclipped).
extern "C" __global__ void __launch_bounds__($max_threads, 1) lstm_variant_forward_tiled_$suffix(
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
    const int steps, const int batch, const int hidden, const int chunk)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    cg::grid_group grid = cg::this_grid();
    const Tile p = tile_of(batch, hidden);
    const int k8 = round8(hidden), stride = chunk + 4;
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // as lstm_forward_tiled's
    $real* h_s = w_s + (long long)k8 * p.units * 4;
    $real* part = h_s + (long long)p.rows * stride;
    forward_weights_to_shared(w_s, w_hidden, p, hidden, k8);
    const UnitOptions u = unit_options(peephole, clip, input_forget, p, hidden);
    $real c = 0, h = 0, b_i = 0, b_f = 0, b_g = 0, b_o = 0;
    if (p.active) {
        c = cells[p.n]; h = hidden_states[p.n];
        b_i = bias[p.j]; b_f = bias[hidden + p.j]; b_g = bias[2 * hidden + p.j]; b_o = bias[3 * hidden + p.j];
    }
    StepInput in = step_input(gates, step_mask, p, 0, batch, hidden);  // T >= 1: checked at the layer's door
    VariantExtra extra = variant_extra(keep_c, keep_h, zoneout_c, zoneout_h, nullptr, p, 0, batch, hidden);
    for (int t = 0; t < steps; ++t) {
        const long long row_start = ((long long)t * batch + p.b) * p.four;
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
            const VariantOut out = variant_cell_forward(zi, zf, zg, zo, c, h, u, extra.kc, extra.kh, in.m);
            $real* z = gates + row_start + p.j;
            z[0] = out.a.i; z[hidden] = out.a.f; z[2 * hidden] = out.a.g; z[3 * hidden] = out.a.o;
            if (unclipped != nullptr) {
                $real* s = unclipped + row_start + p.j;
                s[0] = out.inside[0]; s[hidden] = out.inside[1]; s[2 * hidden] = out.inside[2];
                s[3 * hidden] = out.inside[3];
            }
            c_new[now] = out.c_new; tanh_c[now] = out.tanh_c; y[now] = out.y;
            hidden_states[next] = h = out.h; cells[next] = c = out.c;
        }
        if (t + 1 < steps) {  // the next step's inputs depend on no other block: loaded before the barrier
            in = step_input(gates, step_mask, p, t + 1, batch, hidden);
            extra = variant_extra(keep_c, keep_h, zoneout_c, zoneout_h, nullptr, p, t + 1, batch, hidden);
        }
        grid.sync();  // h_{t+1} of every cell is written (and part read) before the next step
    }
}

// lstm_backward_tiled with cell options, the cell of variant_cell_backward: dL/dh_t arriving from step t + 1 is
// the product dz_{t+1} W_hᵀ plus the share zoneout and padding carry past W_h.
extern "C" __global__ void __launch_bounds__($max_threads, 1) lstm_variant_backward_tiled_$suffix(
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
    const int steps, const int batch, const int hidden, const int chunk)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    cg::grid_group grid = cg::this_grid();
    const Tile p = tile_of(batch, hidden);
    const int columns = 4 * hidden, c8 = round8(columns), stride = chunk + 4;
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // as lstm_backward_tiled's
    $real* dz_s = w_s + (long long)p.units * (c8 + 4);
    $real* part = dz_s + (long long)p.rows * stride;
    backward_weights_to_shared(w_s, w_hidden, p, hidden, c8);
    const UnitOptions u = unit_options(peephole, 0, input_forget, p, hidden);
    $real dh_next = 0, dc_in = 0, carried = 0;  // dL/dh_t (both shares), dL/dc_t arriving from step t + 1
    if (p.active) { dh_next = dh[p.n]; dc_in = dc[p.n]; }
    StepStored in = step_stored(dy, gates, cells, tanh_c, step_mask, p, steps - 1, batch, hidden);  // T >= 1
    VariantExtra extra = variant_extra(keep_c, keep_h, zoneout_c, zoneout_h, unclipped, p, steps - 1, batch, hidden);
    for (int t = steps - 1; t >= 0; --t) {
        if (p.active) {
            const long long row_start = ((long long)t * batch + p.b) * p.four;
            const VariantGrad d = variant_cell_backward(in.a, in.tanh_c, in.c_prev, in.dy, dh_next, dc_in, u,
                                                        extra.inside, extra.kc, extra.kh, in.m);
            dz[row_start + p.j] = d.dz_i; dz[row_start + hidden + p.j] = d.dz_f;
            dz[row_start + 2 * hidden + p.j] = d.dz_g; dz[row_start + 3 * hidden + p.j] = d.dz_o;
            dc_in = d.dc_prev; carried = d.dh_carried;
        }
        if (t > 0) {  // step t - 1's stored values depend on no other block: loaded before the barrier
            in = step_stored(dy, gates, cells, tanh_c, step_mask, p, t - 1, batch, hidden);
            extra = variant_extra(keep_c, keep_h, zoneout_c, zoneout_h, unclipped, p, t - 1, batch, hidden);
        }
        grid.sync();  // dz_t of every cell is written before any block stages its rows
        BackwardProduct product = backward_product(p);
        chunked_product(product, dz_s, dz + (long long)t * batch * p.four, w_s, part, p, batch, columns, c8, chunk);
        if (p.active) {
            $real sum = 0;
            for (int s = 0; s < backward_shares(p); ++s) sum += part[((long long)s * p.rows + p.cell_row) * p.units + p.cell_unit];
            dh_next = sum + carried;
        }
        // the next step's grid barrier keeps the next product from writing part before it is read here
    }
    if (p.active) { dh[p.n] = dh_next; dc[p.n] = dc_in; }
}

// The projected cell (LSTMP, proj_size P < H) on the tiled kernels, in float32 and float64 FMAs or, in the TF32
// variant, tensor-core MMAs: the state h is r_t = (o_t ⊙ tanh c_t) W_hr, of width P, and W_h is (P, 4H). Two grid
// barriers per step. The block owns units j0 .. j0 + units - 1 of its rows for the cell, and the same columns q
// of r_t for the projection (blocks with j0 < P): its thread of cell (row, unit) is also the thread of (row,
// column q = j). Each step's two products run as the plain kernels' do, through shared memory: z = r_{t-1} W_h
// (the forward product over k < P), then r_t = (o_t ⊙ tanh c_t) W_hr (over the H units, the block's columns of
// W_hr held as the backward holds W_h's rows).

#if LSTMX_MMA
// The block's columns of W_hr (H, P) as B fragments of r_t = (o ⊙ tanh c) W_hr: B[k][unit] = W_hr[k][j0 + unit].
__device__ __forceinline__ void projection_columns_to_shared(float* w_s, const float* projection, const Tile& p,
                                                             const int hidden, const int proj)
{
    b_fragments_to_shared(w_s, p, round8(hidden), p.units / 8, [&](const long long k, const int unit) {
        return k < hidden && p.j0 + unit < proj ? projection[k * proj + p.j0 + unit] : 0.0f;
    });
}

// The block's rows of W_hr as B fragments of dL/d(o ⊙ tanh c) = dL/dr_t W_hrᵀ: B[q][unit] = W_hr[j0 + unit][q].
__device__ __forceinline__ void projection_rows_to_shared(float* w_s, const float* projection, const Tile& p,
                                                          const int hidden, const int proj)
{
    b_fragments_to_shared(w_s, p, round8(proj), p.units / 8, [&](const long long q, const int unit) {
        return q < proj && p.j0 + unit < hidden ? projection[(long long)(p.j0 + unit) * proj + q] : 0.0f;
    });
}
#else
// The block's columns of W_hr (H, P) as rows: w_s[unit · (h8 + 4) + k] = W_hr[k][j0 + unit] (0 past P or H).
__device__ __forceinline__ void projection_columns_to_shared($real* w_s, const $real* projection, const Tile& p,
                                                             const int hidden, const int proj)
{
    const int h8 = round8(hidden);
    for (long long e = p.tid; e < (long long)p.units * h8; e += p.threads) {
        const int unit = (int)(e / h8);
        const int k = (int)(e - (long long)unit * h8);
        w_s[unit * (h8 + 4) + k] = k < hidden && p.j0 + unit < proj
            ? projection[(long long)k * proj + p.j0 + unit] : ($real)0;
    }
}

// The block's rows of W_hr for dL/d(o ⊙ tanh c) = dL/dr_t W_hrᵀ: w_s[unit · (p8 + 4) + q] = W_hr[j0 + unit][q].
__device__ __forceinline__ void projection_rows_to_shared($real* w_s, const $real* projection, const Tile& p,
                                                          const int hidden, const int proj)
{
    const int p8 = round8(proj);
    for (long long e = p.tid; e < (long long)p.units * p8; e += p.threads) {  // along rows of W_hr: coalesced
        const int unit = (int)(e / p8);
        const int q = (int)(e - (long long)unit * p8);
        w_s[unit * (p8 + 4) + q] = q < proj && p.j0 + unit < hidden
            ? projection[(long long)(p.j0 + unit) * proj + q] : ($real)0;
    }
}
#endif

// The sum of a BackwardProduct's partial sums for the thread's cell (row, unit).
__device__ __forceinline__ $real unit_sum(const $real* part, const Tile& p)
{
    $real sum = 0;
    for (int s = 0; s < backward_shares(p); ++s) sum += part[((long long)s * p.rows + p.cell_row) * p.units + p.cell_unit];
    return sum;
}

// gates holds x_t W_x on entry and the activated gates on return; hidden_states[0] (B, P) and cells[0] hold h_0,
// c_0; unprojected (B, H) is the scratch the projection reads across blocks. The same arguments as
// lstmp_forward_persistent, and the chunk.
extern "C" __global__ void __launch_bounds__($max_threads, 1) lstmp_forward_tiled_$suffix(
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
    const int steps, const int batch, const int hidden, const int proj, const int chunk)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    cg::grid_group grid = cg::this_grid();
    const Tile p = tile_of(batch, hidden);
    const int k8 = round8(proj), h8 = round8(hidden), stride = chunk + 4;
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // k8 · units · 4: the block's gate columns of W_h
    $real* wr_s = w_s + (long long)k8 * p.units * 4;       // units · (h8 + 4): its columns of W_hr
    $real* staged = wr_s + (long long)p.units * (h8 + 4);  // (rows, stride): r_{t-1}, then o ⊙ tanh c
    $real* part = staged + (long long)p.rows * stride;     // partial sums (splits, rows, units, 4 gates) at most
    forward_weights_to_shared(w_s, w_hidden, p, hidden, k8, proj);
    projection_columns_to_shared(wr_s, projection, p, hidden, proj);
    const bool projects = p.active && p.j < proj;  // the thread of column q = j of r_t
    const long long r_count = (long long)batch * proj, q_at = (long long)p.b * proj + p.j;
    const $real one = 1;
    $real c = 0, r = 0, b_i = 0, b_f = 0, b_g = 0, b_o = 0;
    if (p.active) {
        c = cells[p.n];
        b_i = bias[p.j]; b_f = bias[hidden + p.j]; b_g = bias[2 * hidden + p.j]; b_o = bias[3 * hidden + p.j];
    }
    if (projects) r = hidden_states[q_at];
    StepInput in = step_input(gates, step_mask, p, 0, batch, hidden);  // T >= 1: checked at the layer's door
    for (int t = 0; t < steps; ++t) {
        const $real m = in.m;
        ForwardProduct product = forward_product(p);
        chunked_product(product, staged, hidden_states + t * r_count, w_s, part, p, batch, proj, k8, chunk);
        if (p.active) {
            $real zi = in.x[0] + b_i, zf = in.x[1] + b_f, zg = in.x[2] + b_g, zo = in.x[3] + b_o;
            for (int s = 0; s < forward_shares(p); ++s) {
                $real sum[4];
                load4(part + (((long long)s * p.rows + p.cell_row) * p.units + p.cell_unit) * 4, sum);
                zi += sum[0]; zf += sum[1]; zg += sum[2]; zo += sum[3];
            }
            const Gates a = activate(zi, zf, zg, zo);
            $real* z = gates + ((long long)t * batch + p.b) * p.four;
            z[p.j] = a.i; z[hidden + p.j] = a.f; z[2 * hidden + p.j] = a.g; z[3 * hidden + p.j] = a.o;
            const CellOut out = cell_forward(a, c, ($real)0, false, one);
            tanh_c[t * p.count + p.n] = out.tanh_c; unprojected[p.n] = out.h;
            c = m * out.c + (one - m) * c;
            cells[(t + 1) * p.count + p.n] = c;
        }
        // the next step's input projection and mask depend on no other block: loaded before the barrier
        if (t + 1 < steps) in = step_input(gates, step_mask, p, t + 1, batch, hidden);
        grid.sync();  // every unit's o ⊙ tanh c is written (and part read) before the projection
        BackwardProduct projected = backward_product(p, hidden);
        chunked_product(projected, staged, unprojected, wr_s, part, p, batch, hidden, h8, chunk);
        if (projects) {
            const $real r_new = unit_sum(part, p);
            y[t * r_count + q_at] = m * r_new;
            r = m * r_new + (one - m) * r;
            hidden_states[(t + 1) * r_count + q_at] = r;
        }
        grid.sync();  // r_t is written, and o ⊙ tanh c read, before the next step stages r_t and rewrites it
    }
}

// Mirror of lstmp_forward_tiled, steps in reverse, two grid barriers per step: the thread of column q turns
// dL/dy_t and dL/dr_t from step t + 1 into dL/dr_t (kept in dr for W_hr's gradient); after a barrier the block
// forms dL/d(o ⊙ tanh c) = dL/dr_t W_hrᵀ for its units and runs the cell's backward into dz_t; after another,
// dL/dr_{t-1} = dz_t W_hᵀ for its columns q (+ what a padded step passes through). The block's rows of W_h (its
// columns q, every gate column) and of W_hr (its units) live in shared memory. dh (B, P) and dc (B, H) hold
// dL/dh_T, dL/dc_T on entry and dL/dh_0, dL/dc_0 on return. The same arguments as lstmp_backward_persistent,
// and the chunk.
extern "C" __global__ void __launch_bounds__($max_threads, 1) lstmp_backward_tiled_$suffix(
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
    const int steps, const int batch, const int hidden, const int proj, const int chunk)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    cg::grid_group grid = cg::this_grid();
    const Tile p = tile_of(batch, hidden);
    const int columns = 4 * hidden, c8 = round8(columns), p8 = round8(proj), stride = chunk + 4;
    $real* w_s = reinterpret_cast<$real*>(shared_bytes);  // units · (c8 + 4): rows q = j0 + unit of W_h
    $real* wr_s = w_s + (long long)p.units * (c8 + 4);     // units · (p8 + 4): rows j0 + unit of W_hr
    $real* staged = wr_s + (long long)p.units * (p8 + 4);  // (rows, stride): dL/dr_t, then dz_t
    $real* part = staged + (long long)p.rows * stride;     // partial sums (splits, rows, units)
    backward_weights_to_shared(w_s, w_hidden, p, proj, c8);  // W_h's rows q < P: as the plain kernel's, P rows
    projection_rows_to_shared(wr_s, projection, p, hidden, proj);
    const bool projects = p.active && p.j < proj;
    const long long r_count = (long long)batch * proj, q_at = (long long)p.b * proj + p.j;
    const $real one = 1;
    $real dr_in = projects ? dh[q_at] : ($real)0, dc_in = p.active ? dc[p.n] : ($real)0;  // from step t + 1
    for (int t = steps - 1; t >= 0; --t) {
        const $real m = step_mask == nullptr || !p.active ? one : step_mask[(long long)t * batch + p.b];
        $real passed = 0;  // the share of dL/dr_t a padded step hands to r_{t-1} directly
        if (projects) {
            const long long now = t * r_count + q_at;
            dr[now] = m * (dy[now] + dr_in);
            passed = (one - m) * dr_in;
        }
        grid.sync();  // dL/dr_t of every column is written before any block stages its rows
        BackwardProduct unprojected = backward_product(p, proj);
        chunked_product(unprojected, staged, dr + t * r_count, wr_s, part, p, batch, proj, p8, chunk);
        if (p.active) {
            const long long now = t * p.count + p.n, row_start = ((long long)t * batch + p.b) * p.four;
            const Gates a{gates[row_start + p.j], gates[row_start + hidden + p.j], gates[row_start + 2 * hidden + p.j],
                          gates[row_start + 3 * hidden + p.j]};
            const CellGrad d = cell_backward(a, tanh_c[now], cells[now], ($real)0, unit_sum(part, p), dc_in, m);
            dz[row_start + p.j] = d.dz_i; dz[row_start + hidden + p.j] = d.dz_f;
            dz[row_start + 2 * hidden + p.j] = d.dz_g; dz[row_start + 3 * hidden + p.j] = d.dz_o;
            dc_in = d.dc_prev;
        }
        grid.sync();  // dz_t of every unit is written (and part read) before the blocks stage dz_t
        BackwardProduct recurrent = backward_product(p);
        chunked_product(recurrent, staged, dz + (long long)t * batch * p.four, w_s, part, p, batch, columns, c8, chunk);
        if (projects) dr_in = unit_sum(part, p) + passed;
        // the next step's first barrier keeps the next product from writing part before it is read here
    }
    if (projects) dh[q_at] = dr_in;
    if (p.active) dc[p.n] = dc_in;
}
