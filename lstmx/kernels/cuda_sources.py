"""CUDA C++ sources of the CuPy layer path, one variant per dtype.

Plain strings (no CuPy import), so the offline test compiles every variant with NVRTC on a machine without a
GPU (``tests/test_cuda_compile.py``). :mod:`lstmx.kernels.cupy_layer` compiles the same strings through CuPy.

Every kernel works on C-contiguous buffers laid out time-major, and takes the time step ``t`` as an argument,
so the Python loop passes base pointers and never slices an array per step. One thread per (row b, unit j);
the four gate values of a unit are read from the same row of the (B, 4H) gate block.
"""

from __future__ import annotations

from string import Template

# float32 and float64: the C type, its tanh, and the suffix of the kernels' names.
DTYPES = {"float32": ("float", "tanhf"), "float64": ("double", "tanh")}

_SOURCE = Template(r"""
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
    const $real half = 0.5, one = 1;
    // σ(z) = ½·tanh(½z) + ½, as in the generic path
    const $real i = half * $tanh(half * (z[j] + bias[j])) + half;
    const $real f = half * $tanh(half * (z[hidden + j] + bias[hidden + j])) + half;
    const $real g = $tanh(z[2 * hidden + j] + bias[2 * hidden + j]);
    const $real o = half * $tanh(half * (z[3 * hidden + j] + bias[3 * hidden + j])) + half;
    z[j] = i; z[hidden + j] = f; z[2 * hidden + j] = g; z[3 * hidden + j] = o;
    const long long now = (long long)t * count + n, next = now + count;
    const $real c_prev = cells[now];
    const $real c = f * c_prev + i * g;
    const $real tc = $tanh(c);
    const $real h = o * tc;
    tanh_c[now] = tc;
    if (step_mask == nullptr) {
        y[now] = h; hidden_states[next] = h; cells[next] = c;
    } else {
        const $real m = step_mask[(long long)t * batch + b];
        y[now] = m * h;
        hidden_states[next] = m * h + (one - m) * hidden_states[now];
        cells[next] = m * c + (one - m) * c_prev;
    }
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
    const $real dh_t = m * (dy[now] + dh_next);
    const $real i = gates[row + j], f = gates[row + hidden + j];
    const $real g = gates[row + 2 * hidden + j], o = gates[row + 3 * hidden + j];
    const $real tc = tanh_c[now];
    const $real dc_t = m * dc_next + dh_t * o * (one - tc * tc);
    dz[row + j] = dc_t * g * i * (one - i);
    dz[row + hidden + j] = dc_t * cells[now] * f * (one - f);
    dz[row + 2 * hidden + j] = dc_t * i * (one - g * g);
    dz[row + 3 * hidden + j] = dh_t * tc * o * (one - o);
    dc[n] = dc_t * f + (one - m) * dc_next;
    if (step_mask != nullptr) dh[n] = (one - m) * dh_next;
}
""")

KERNEL_NAMES = ("lstm_forward_step", "lstm_backward_step")


def source(dtype: str) -> str:
    """The CUDA C++ source of every kernel for ``dtype`` ("float32" or "float64")."""
    real, tanh = DTYPES[dtype]
    return _SOURCE.substitute(real=real, tanh=tanh, suffix=dtype)


def kernel_name(kernel: str, dtype: str) -> str:
    return f"{kernel}_{dtype}"
