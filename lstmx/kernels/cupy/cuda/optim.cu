// The OPTIM kernels (lstmx.kernels.cupy.optim): optimizer updates and global-norm clipping over several tensors.
// A Python string.Template, filled in per variant by lstmx.kernels.cupy.cuda_sources.source: its dollar-prefixed
// names (real: float or double; suffix: the variant's name, which ends every kernel's name; ...) are listed there.

// Every kernel here takes up to 8 tensors per launch (null pointers past the last) as entries of one
// concatenation, the concatenation of all the tensors of the step: `first` is where the launch's tensors start
// in it and e0 .. e7 the running totals of their sizes, so tensor i holds entries e_{i-1} .. e_i - 1 (e_{-1} =
// first). Block b of a launch covers entries first + b·chunk .. first + (b + 1)·chunk - 1. Outputs are written
// to one flat buffer per role, indexed by the entry (the caller hands out views of it as the new tensors).
constexpr int TENSORS = 8;
constexpr int REDUCE_THREADS = 256;  // blockDim.x of global_norm: its dynamic shared memory is REDUCE_THREADS + 1 doubles

// Calls visit(i, k, e) for each entry e of the block's chunk, k its index within tensor i, the block's threads
// taking turns. The tensor loop is unrolled, so visit indexes its arrays of pointers with constants.
template <typename Visit>
__device__ __forceinline__ void for_each_entry(const long long first, const long long (&ends)[TENSORS],
                                               const long long chunk, const Visit& visit)
{
    const long long start = first + blockIdx.x * chunk, stop = start + chunk;
    #pragma unroll
    for (int i = 0; i < TENSORS; ++i) {
        const long long begin = i == 0 ? first : ends[i - 1];
        const long long low = start > begin ? start : begin, high = stop < ends[i] ? stop : ends[i];
        for (long long e = low + threadIdx.x; e < high; e += blockDim.x) visit(i, e - begin, e);
    }
}

// One optimizer step for up to 8 parameter tensors in one launch (Adam/AdamW, SGD, RMSprop), out of place: the new parameters and state
// slots go to separate flat buffers, so the step reads the same values as the generic path and leaves every
// array it was given untouched. Scalars come from the host, computed as there.

// Adam (decoupled = 0: L2 added to the gradient) and AdamW (decoupled = 1: p ← p·(1 − lr·wd) first):
// m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², p ← p − step_size·m / (√v / √(1 − β₂ᵗ) + ε),
// step_size = lr / (1 − β₁ᵗ).
extern "C" __global__ void adam_update_$suffix(
    const $real* p0, const $real* p1, const $real* p2, const $real* p3,
    const $real* p4, const $real* p5, const $real* p6, const $real* p7,
    const $real* g0, const $real* g1, const $real* g2, const $real* g3,
    const $real* g4, const $real* g5, const $real* g6, const $real* g7,
    const $real* m0, const $real* m1, const $real* m2, const $real* m3,
    const $real* m4, const $real* m5, const $real* m6, const $real* m7,
    const $real* v0, const $real* v1, const $real* v2, const $real* v3,
    const $real* v4, const $real* v5, const $real* v6, const $real* v7,
    const long long first, const long long e0, const long long e1, const long long e2, const long long e3,
    const long long e4, const long long e5, const long long e6, const long long e7, const long long chunk,
    $real* __restrict__ new_param, $real* __restrict__ new_exp_avg, $real* __restrict__ new_exp_avg_sq,
    const $real lr, const $real beta1, const $real beta2, const $real eps, const $real weight_decay,
    const int decoupled, const $real step_size, const $real sqrt_bias_correction2)
{
    const $real* params[TENSORS] = {p0, p1, p2, p3, p4, p5, p6, p7};
    const $real* grads[TENSORS] = {g0, g1, g2, g3, g4, g5, g6, g7};
    const $real* exp_avgs[TENSORS] = {m0, m1, m2, m3, m4, m5, m6, m7};
    const $real* exp_avg_sqs[TENSORS] = {v0, v1, v2, v3, v4, v5, v6, v7};
    const long long ends[TENSORS] = {e0, e1, e2, e3, e4, e5, e6, e7};
    const $real one = 1;
    for_each_entry(first, ends, chunk, [&](const int i, const long long k, const long long e) {
        $real p = params[i][k], g = grads[i][k];
        if (weight_decay != 0) {
            if (decoupled) p = p * (one - lr * weight_decay);
            else g = g + weight_decay * p;
        }
        const $real m = beta1 * exp_avgs[i][k] + (one - beta1) * g;
        const $real v = beta2 * exp_avg_sqs[i][k] + (one - beta2) * g * g;
        new_exp_avg[e] = m;
        new_exp_avg_sq[e] = v;
        new_param[e] = p - step_size * m / ($sqrt(v) / sqrt_bias_correction2 + eps);
    });
}

// SGD with optional momentum (heavy-ball, or Nesterov) and L2 weight decay, as torch.optim.SGD: the buffer
// starts as the first gradient (first_step = 1 on the first step). The buffers b0 .. b7 and new_momentum may be
// null when momentum is 0.
extern "C" __global__ void sgd_update_$suffix(
    const $real* p0, const $real* p1, const $real* p2, const $real* p3,
    const $real* p4, const $real* p5, const $real* p6, const $real* p7,
    const $real* g0, const $real* g1, const $real* g2, const $real* g3,
    const $real* g4, const $real* g5, const $real* g6, const $real* g7,
    const $real* b0, const $real* b1, const $real* b2, const $real* b3,
    const $real* b4, const $real* b5, const $real* b6, const $real* b7,
    const long long first, const long long e0, const long long e1, const long long e2, const long long e3,
    const long long e4, const long long e5, const long long e6, const long long e7, const long long chunk,
    $real* __restrict__ new_param, $real* __restrict__ new_momentum,
    const $real lr, const $real momentum, const $real weight_decay, const int nesterov, const int first_step)
{
    const $real* params[TENSORS] = {p0, p1, p2, p3, p4, p5, p6, p7};
    const $real* grads[TENSORS] = {g0, g1, g2, g3, g4, g5, g6, g7};
    const $real* buffers[TENSORS] = {b0, b1, b2, b3, b4, b5, b6, b7};
    const long long ends[TENSORS] = {e0, e1, e2, e3, e4, e5, e6, e7};
    for_each_entry(first, ends, chunk, [&](const int i, const long long k, const long long e) {
        const $real p = params[i][k];
        $real g = grads[i][k];
        if (weight_decay != 0) g = g + weight_decay * p;
        if (momentum != 0) {
            const $real buffer = first_step ? g : momentum * buffers[i][k] + g;
            new_momentum[e] = buffer;
            g = nesterov ? g + momentum * buffer : buffer;
        }
        new_param[e] = p - lr * g;
    });
}

// RMSprop with optional momentum and L2 weight decay, as torch.optim.RMSprop (not centred): s ← αs + (1 − α)g²,
// step = g / (√s + ε), with momentum buf ← μ·buf + step and step = buf; p ← p − lr·step. The buffers b0 .. b7 and
// new_momentum may be null when momentum is 0.
extern "C" __global__ void rmsprop_update_$suffix(
    const $real* p0, const $real* p1, const $real* p2, const $real* p3,
    const $real* p4, const $real* p5, const $real* p6, const $real* p7,
    const $real* g0, const $real* g1, const $real* g2, const $real* g3,
    const $real* g4, const $real* g5, const $real* g6, const $real* g7,
    const $real* s0, const $real* s1, const $real* s2, const $real* s3,
    const $real* s4, const $real* s5, const $real* s6, const $real* s7,
    const $real* b0, const $real* b1, const $real* b2, const $real* b3,
    const $real* b4, const $real* b5, const $real* b6, const $real* b7,
    const long long first, const long long e0, const long long e1, const long long e2, const long long e3,
    const long long e4, const long long e5, const long long e6, const long long e7, const long long chunk,
    $real* __restrict__ new_param, $real* __restrict__ new_square_avg, $real* __restrict__ new_momentum,
    const $real lr, const $real alpha, const $real eps, const $real momentum, const $real weight_decay)
{
    const $real* params[TENSORS] = {p0, p1, p2, p3, p4, p5, p6, p7};
    const $real* grads[TENSORS] = {g0, g1, g2, g3, g4, g5, g6, g7};
    const $real* square_avgs[TENSORS] = {s0, s1, s2, s3, s4, s5, s6, s7};
    const $real* buffers[TENSORS] = {b0, b1, b2, b3, b4, b5, b6, b7};
    const long long ends[TENSORS] = {e0, e1, e2, e3, e4, e5, e6, e7};
    const $real one = 1;
    for_each_entry(first, ends, chunk, [&](const int i, const long long k, const long long e) {
        const $real p = params[i][k];
        $real g = grads[i][k];
        if (weight_decay != 0) g = g + weight_decay * p;
        const $real square_avg = alpha * square_avgs[i][k] + (one - alpha) * g * g;
        new_square_avg[e] = square_avg;
        $real step = g / ($sqrt(square_avg) + eps);
        if (momentum != 0) {
            step = momentum * buffers[i][k] + step;
            new_momentum[e] = step;
        }
        new_param[e] = p - lr * step;
    });
}

// Clipping by the global norm without a host sync.

// Sum over threads of one value each, in a fixed order (so the result does not depend on thread timing).
__device__ double block_sum(double* sums, const double value)
{
    sums[threadIdx.x] = value;
    for (int half = REDUCE_THREADS / 2; half > 0; half >>= 1) {
        __syncthreads();
        if ((int)threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    }
    __syncthreads();
    return sums[0];
}

// Each block sums the squares of its chunk in double and writes them to partials[first_block + b]. The block
// that finishes last of all the launches of one clipping (a counter at 0 on entry) adds the partials in order
// and writes ‖g‖ and the scale min(1, max_norm / (‖g‖ + 1e-6)) to norm_and_scale; a NaN or Inf norm gives a NaN
// or 0 scale, as the generic path does.
extern "C" __global__ void global_norm_$suffix(
    const $real* t0, const $real* t1, const $real* t2, const $real* t3,
    const $real* t4, const $real* t5, const $real* t6, const $real* t7,
    const long long first, const long long e0, const long long e1, const long long e2, const long long e3,
    const long long e4, const long long e5, const long long e6, const long long e7, const long long chunk,
    const int first_block, const int total_blocks,
    double* partials, unsigned* __restrict__ finished, $real* __restrict__ norm_and_scale, const double max_norm)
{
    extern __shared__ double sums[];  // REDUCE_THREADS for block_sum, then whether this block finished last
    double& last = sums[REDUCE_THREADS];
    const $real* tensors[TENSORS] = {t0, t1, t2, t3, t4, t5, t6, t7};
    const long long ends[TENSORS] = {e0, e1, e2, e3, e4, e5, e6, e7};
    double sum = 0;
    for_each_entry(first, ends, chunk, [&](const int i, const long long k, const long long) {
        const double v = tensors[i][k];
        sum += v * v;
    });
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

// out[e] = t_i[k] · scale for each entry, scale = norm_and_scale[1] (written by global_norm).
extern "C" __global__ void scale_tensors_$suffix(
    const $real* t0, const $real* t1, const $real* t2, const $real* t3,
    const $real* t4, const $real* t5, const $real* t6, const $real* t7,
    const long long first, const long long e0, const long long e1, const long long e2, const long long e3,
    const long long e4, const long long e5, const long long e6, const long long e7, const long long chunk,
    $real* __restrict__ out, const $real* __restrict__ norm_and_scale)
{
    const $real* tensors[TENSORS] = {t0, t1, t2, t3, t4, t5, t6, t7};
    const long long ends[TENSORS] = {e0, e1, e2, e3, e4, e5, e6, e7};
    const $real scale = norm_and_scale[1];
    for_each_entry(first, ends, chunk, [&](const int i, const long long k, const long long e) {
        out[e] = tensors[i][k] * scale;
    });
}
