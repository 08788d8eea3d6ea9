// The OPTIM kernels (lstmx.kernels.cupy_optim): optimizer updates and global-norm clipping.
// A Python string.Template, filled in per variant by lstmx.kernels.cuda_sources.source: its dollar-prefixed
// names (real: float or double; suffix: the variant's name, which ends every kernel's name; ...) are listed there.

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
