// The GENERATE kernel (lstmx.kernels.cupy.generate): the token loop of text generation, a block per sample.
// A Python string.Template, filled in per variant by lstmx.kernels.cupy.cuda_sources.source: its dollar-prefixed
// names (real: float or double; suffix: the variant's name, which ends every kernel's name; ...) are listed there.
// It follows cell.cuh (activate, cell_forward).

// Block-wide reduction of one value per thread through shared memory (blockDim.x a power of two): every thread
// gets pick(pick(...), ...) of all. The leading barrier lets a previous use of the scratch finish reading it.
template <typename T, typename Pick>
__device__ T block_reduce(const T value, T* scratch, const Pick& pick)
{
    __syncthreads();
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) scratch[threadIdx.x] = pick(scratch[threadIdx.x], scratch[threadIdx.x + half]);
        __syncthreads();
    }
    return scratch[0];
}
__device__ double block_sum(const double value, double* scratch)
{
    return block_reduce(value, scratch, [](const double a, const double b) { return a + b; });
}
__device__ double block_max(const double value, double* scratch)
{
    return block_reduce(value, scratch, [](const double a, const double b) { return b > a ? b : a; });
}
__device__ int block_min(const int value, int* indices)
{
    return block_reduce(value, indices, [](const int a, const int b) { return b < a ? b : a; });
}
// The smallest index of the largest value (np.argmax's choice among ties): each thread brings its own first
// largest (value, index); index -1 brings nothing.
__device__ int block_first_largest(double value, int index, double* scratch, int* indices)
{
    __syncthreads();
    scratch[threadIdx.x] = value;
    indices[threadIdx.x] = index;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            const double other = scratch[threadIdx.x + half];
            const int other_index = indices[threadIdx.x + half];
            const int mine = indices[threadIdx.x];
            if (other_index >= 0 && (mine < 0 || other > scratch[threadIdx.x]
                                     || (other == scratch[threadIdx.x] && other_index < mine))) {
                scratch[threadIdx.x] = other;
                indices[threadIdx.x] = other_index;
            }
        }
        __syncthreads();
    }
    return indices[0];
}
// One sample's next token from its row of logits, as lstmx.nn.sample draws it: greedy, the first largest logit;
// else Generator.choice(V, p=p) written out, p the softmax of logits / temperature over the entries that fewer
// than top_k entries exceed (the top_k largest, ties at the cut kept; every entry with top_k 0), the token the
// first entry whose cumulative sum of p, over that sum's last value, passes `uniform`. In float64, as the host.
// scaled and weights: (V,) of the sample's own.
__device__ int draw(const $real* logits, const int vocab, const double uniform, const double temperature,
                    const int top_k, const bool greedy, double* scaled, double* weights, double* scratch, int* indices)
{
    if (greedy) {
        double best = 0;
        int best_index = -1;
        for (int v = threadIdx.x; v < vocab; v += blockDim.x)
            if (best_index < 0 || (double)logits[v] > best) { best = (double)logits[v]; best_index = v; }
        return block_first_largest(best, best_index, scratch, indices);
    }
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) scaled[v] = (double)logits[v] / temperature;
    __syncthreads();
    const bool cut = top_k > 0 && top_k < vocab;
    double largest = -1.7976931348623157e308;  // below every finite logit
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        int above = 0;  // entries larger than this one
        if (cut)
            for (int u = 0; u < vocab; ++u) above += scaled[u] > scaled[v];
        weights[v] = above < top_k || !cut ? 1.0 : 0.0;  // kept, for now
        if (weights[v] != 0.0 && scaled[v] > largest) largest = scaled[v];
    }
    largest = block_max(largest, scratch);
    double part = 0;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        weights[v] = weights[v] != 0.0 ? exp(scaled[v] - largest) : 0.0;
        part += weights[v];
    }
    const double total = block_sum(part, scratch);
    // The cumulative sum: each thread a run of consecutive entries, the runs' sums prefixed in order by thread 0.
    const int run = (vocab + blockDim.x - 1) / blockDim.x, first = threadIdx.x * run;
    const int stop = first + run < vocab ? first + run : vocab;
    double run_sum = 0;
    for (int v = first; v < stop; ++v) run_sum += weights[v] / total;
    __syncthreads();
    scratch[threadIdx.x] = run_sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double before = 0;
        for (int t = 0; t < (int)blockDim.x; ++t) {
            const double sum = scratch[t];
            scratch[t] = before;
            before += sum;
        }
        scaled[0] = before;  // the cumulative sum's last value (scaled is read no more)
    }
    __syncthreads();
    const double last = scaled[0];
    double cumulative = scratch[threadIdx.x];
    int found = vocab;
    for (int v = first; v < stop; ++v) {
        cumulative += weights[v] / total;
        if (uniform < cumulative / last) { found = v; break; }
    }
    found = block_min(found, indices);
    return found < vocab ? found : vocab - 1;
}

// `steps` tokens of each of `batch` samples (a block each) of a language model of the plain LSTM cell: draw a
// token from the logits, embed it, run it through every layer, then the head for the next logits. On entry the
// logits and state are those after the last token read; on return those after the last token drawn, so the next
// launch goes on from there. workspace: (batch, 2V) float64, the draw's; layer_space: (batch, max(E, H) + 4H), a
// layer's input and gate pre-activations. Shared memory: blockDim.x doubles and as many ints.
extern "C" __global__ void lstm_generate_$suffix(
    const $real* __restrict__ table,        // (V, E)
    const $real* __restrict__ weights,      // layer k's (D_k + H, 4H) after layer k-1's; D_0 = E, then H
    const $real* __restrict__ biases,       // (L, 4H)
    const $real* __restrict__ head_weight,  // (H, V)
    const $real* __restrict__ head_bias,    // (V,)
    $real* __restrict__ logits,             // (batch, V)
    $real* __restrict__ h,                  // (L, batch, H)
    $real* __restrict__ c,                  // (L, batch, H)
    const double* __restrict__ uniforms,    // (batch, steps): each sample's draws, in order
    double* __restrict__ workspace,         // (batch, 2V)
    $real* __restrict__ layer_space,        // (batch, max(E, H) + 4H)
    long long* __restrict__ tokens,         // (steps, batch)
    const int steps, const int batch, const int vocab, const int embedding, const int hidden, const int layers,
    const double temperature, const int top_k, const int greedy)
{
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    double* scratch = reinterpret_cast<double*>(shared_bytes);    // (blockDim.x,)
    int* indices = reinterpret_cast<int*>(scratch + blockDim.x);  // (blockDim.x,)
    const int b = blockIdx.x, four = 4 * hidden, widest = embedding > hidden ? embedding : hidden;
    $real* row = logits + (long long)b * vocab;
    double* scaled = workspace + (long long)b * 2 * vocab;
    $real* x = layer_space + (long long)b * (widest + four);
    $real* z = x + widest;
    for (int s = 0; s < steps; ++s) {
        const int token = draw(row, vocab, uniforms[(long long)b * steps + s], temperature, top_k, greedy != 0,
                               scaled, scaled + vocab, scratch, indices);
        if (threadIdx.x == 0) tokens[(long long)s * batch + b] = token;
        for (int k = threadIdx.x; k < embedding; k += blockDim.x) x[k] = table[(long long)token * embedding + k];
        __syncthreads();
        const $real* w = weights;
        int features = embedding;
        for (int layer = 0; layer < layers; ++layer) {
            $real* h_layer = h + ((long long)layer * batch + b) * hidden;
            $real* c_layer = c + ((long long)layer * batch + b) * hidden;
            const $real* bias = biases + (long long)layer * four;
            for (int j = threadIdx.x; j < four; j += blockDim.x) {  // a column of W per thread: coalesced rows
                $real sum = bias[j];
                for (int k = 0; k < features; ++k) sum += x[k] * w[(long long)k * four + j];
                for (int k = 0; k < hidden; ++k) sum += h_layer[k] * w[(long long)(features + k) * four + j];
                z[j] = sum;
            }
            __syncthreads();
            for (int u = threadIdx.x; u < hidden; u += blockDim.x) {  // x and h_layer are read no more this layer
                const Gates a = activate(z[u], z[hidden + u], z[2 * hidden + u], z[3 * hidden + u]);
                const CellOut out = cell_forward(a, c_layer[u], h_layer[u], false, ($real)1);
                c_layer[u] = out.c;
                h_layer[u] = out.h;
                x[u] = out.h;  // the next layer's input, and the head's after the last
            }
            __syncthreads();
            w += (long long)(features + hidden) * four;
            features = hidden;
        }
        for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
            $real sum = head_bias[v];
            for (int k = 0; k < hidden; ++k) sum += x[k] * head_weight[(long long)k * vocab + v];
            row[v] = sum;
        }
        __syncthreads();
    }
}
