// The STEPWISE kernels (lstmx.kernels.cupy.stepwise): one time step per launch.
// A Python string.Template, filled in per variant by lstmx.kernels.cupy.cuda_sources.source: its dollar-prefixed
// names (real: float or double; suffix: the variant's name, which ends every kernel's name; ...) are listed there.

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
