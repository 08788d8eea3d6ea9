// The LOSS kernel (lstmx.kernels.cupy.loss): softmax cross-entropy and its gradient.
// A Python string.Template, filled in per variant by lstmx.kernels.cupy.cuda_sources.source: its dollar-prefixed
// names (real: float or double; suffix: the variant's name, which ends every kernel's name; ...) are listed there.

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
