"""CuPy fast path for one LSTM layer: per time step one cuBLAS GEMM and one fused CUDA kernel.

Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward`` (:mod:`lstmx.layers.lstm_layer`)
and tested against them, float32 and float64, with and without step masks. The generic path launches ~15 small
operations per time step, each costing tens of microseconds from Python; here a step is two calls:

- forward: the GEMM adds h_{t-1} W_h into the step's slice of the precomputed input projection (cuBLAS with
  β = 1), then one kernel (:mod:`lstmx.kernels.cuda_sources`) adds the bias, activates the gates and writes the
  cell, tanh(c), the output and the carried state;
- backward: one kernel writes dz_t and dL/dc_{t-1}, then the GEMM writes dL/dh_{t-1} = dz_t W_hᵀ (+ the part
  padded rows pass through).

The GEMMs call cuBLAS directly with precomputed pointers (the cheapest call from Python) on the current
stream; the kernels take the step index, so no array is sliced per step, and nothing is read back to the host.
The input projection, dW, db and dx are one GEMM (or sum) each over all steps. Arrays come from CuPy's memory
pool, which reuses device memory across calls.

Every CuPy layer path shares this module's shell (:func:`layer_forward` / :func:`layer_backward`: the door, the
buffers, the projections and weight gradients) and differs only in the recurrence it runs between them: the
loops here (also captured by ``cupy_graph``), or one cooperative launch (``cupy_persistent``, ``cupy_tiled``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from ..backend import Backend
from ..layers.lstm_layer import check_backward_inputs, forward_dims
from . import cuda_sources

THREADS = 256  # per block of the pointwise kernels
NULL = np.uint64(0)  # a null pointer argument: CuPy passes None as 0xffffffff, not 0 (cupy issue 9046)
Dims = tuple[int, int, int, int]  # a layer's (T, B, D, H)


class CupyLayerCache(NamedTuple):
    """What the CuPy backward needs from its forward."""

    x: Any  # (T, B, D) the layer's input (C-contiguous)
    hidden_states: Any  # (T + 1, B, H) carried h: h_0, h_1, ..., h_T
    cells: Any  # (T + 1, B, H) carried c: c_0, ..., c_T
    gates: Any  # (T, B, 4H) activated gates i, f, g, o
    tanh_c: Any  # (T, B, H) tanh of each step's new cell value
    step_mask: Any  # (T, B) 1 on real steps, 0 on padding; None when every step is real
    lease: Any = None  # the graph path's hold on the buffers these arrays are (cupy_graph.Lease), else None

    def dims(self) -> Dims:
        steps, batch, features = self.x.shape
        return steps, batch, features, self.cells.shape[2]


@functools.cache
def _kernel(kernel: str, dtype: str) -> cupy.RawKernel:
    """A compiled kernel (NVRTC through CuPy on first use, then CuPy's on-disk cache)."""
    return cupy.RawKernel(cuda_sources.source("stepwise", dtype), cuda_sources.kernel_name(kernel, dtype))


def device_attribute(name: str, device: int | None = None) -> int:
    """An attribute (``cudaDeviceGetAttribute`` names, e.g. "MultiProcessorCount") of ``device`` (default: the
    current one)."""
    return _device_attributes(cupy.cuda.Device().id if device is None else device)[name]


@functools.cache
def _device_attributes(device: int) -> dict[str, int]:
    return cupy.cuda.Device(device).attributes  # queries every attribute: once per device


class Gemm:
    """Row-major ``C = op(A) @ op(B) + beta·C`` on raw device pointers through cuBLAS (column-major inside:
    a row-major matrix is its own transpose in column-major, so cuBLAS computes Cᵀ = op(B)ᵀ op(A)ᵀ)."""

    def __init__(self, dtype: np.dtype, function: Callable[..., None] | None = None, handle: int | None = None) -> None:
        """On the current stream, through CuPy's ``cublas.sgemm``/``dgemm`` on CuPy's handle unless given a
        function with their signature and a handle (the CUDA-graph path's, :mod:`lstmx.kernels.cupy_graph`)."""
        self.function = function or (cublas.sgemm if dtype == np.float32 else cublas.dgemm)
        self.handle = cupy.cuda.device.get_cublas_handle() if handle is None else handle
        cublas.setStream(self.handle, cupy.cuda.get_current_stream().ptr)
        cublas.setPointerMode(self.handle, cublas.CUBLAS_POINTER_MODE_HOST)
        self.scalars = np.array([1.0, 0.0], dtype=dtype)  # α = 1, β = 0 or 1: host pointers
        self.one, self.zero = self.scalars.ctypes.data, self.scalars.ctypes.data + dtype.itemsize

    def __call__(self, a: int, b: int, c: int, rows: int, cols: int, inner: int, transpose_b: bool,
                 accumulate: bool) -> None:
        """C (rows, cols) [+]= A (rows, inner) @ op(B), with op(B) = B (inner, cols) or Bᵀ for B (cols, inner)."""
        self.function(self.handle, cublas.CUBLAS_OP_T if transpose_b else cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N,
                      cols, rows, inner, self.one, b, inner if transpose_b else cols, a, inner,
                      self.one if accumulate else self.zero, c, cols)


def _contiguous(array: Any) -> Any:
    return cupy.ascontiguousarray(array)


def _launch(kernel: str, dtype: str, count: int, args: tuple) -> None:
    _kernel(kernel, dtype)(((count + THREADS - 1) // THREADS,), (THREADS,), args)


class ForwardBuffers(NamedTuple):
    """A forward's contiguous inputs and its outputs, allocated before the recurrence fills them."""

    x: Any
    weight: Any
    bias: Any
    step_mask: Any  # (T, B) or None
    gates: Any  # (T, B, 4H): x W_x (no bias) on return from forward_buffers
    hidden_states: Any  # (T + 1, B, H): h_0 in slot 0
    cells: Any  # (T + 1, B, H): c_0 in slot 0
    tanh_c: Any
    y: Any
    lease: Any = None  # goes into the cache (the graph path's)


def forward_buffers(x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any, dims: Dims,
                    into: Any = None, lease: Any = None) -> ForwardBuffers:
    """Contiguous inputs, the input projection for every step (one GEMM) and the state buffers. ``into``: arrays
    of this call's shapes under ForwardBuffers' names (the graph path's, which its captured kernels read and
    write) to copy the inputs into and fill instead of allocating; ``lease`` then goes into the cache."""
    steps, batch, features, hidden = dims
    dtype = x.dtype
    x = _contiguous(x)
    if into is None:
        weight, bias = _contiguous(weight), _contiguous(bias)
        mask = None if step_mask is None else _contiguous(cupy.reshape(step_mask, (steps, batch)).astype(dtype))
        gates = cupy.empty((steps, batch, 4 * hidden), dtype=dtype)
        hidden_states, cells = (cupy.empty((steps + 1, batch, hidden), dtype=dtype) for _ in range(2))
        tanh_c, y = (cupy.empty((steps, batch, hidden), dtype=dtype) for _ in range(2))
    else:
        into.weight[...], into.bias[...] = weight, bias
        if step_mask is not None:
            into.step_mask[...] = cupy.reshape(step_mask, (steps, batch))
        weight, bias, mask = into.weight, into.bias, into.step_mask
        gates, hidden_states, cells, tanh_c, y = into.gates, into.hidden_states, into.cells, into.tanh_c, into.y
    cupy.matmul(cupy.reshape(x, (steps * batch, features)), weight[:features],
                out=cupy.reshape(gates, (steps * batch, 4 * hidden)))
    hidden_states[0], cells[0] = h0, c0
    return ForwardBuffers(x, weight, bias, mask, gates, hidden_states, cells, tanh_c, y, lease)


def forward_outputs(buffers: ForwardBuffers) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
    """``(y, (h_T, c_T), cache)`` once the recurrence has filled the buffers (the state is a copy)."""
    b = buffers
    final = (b.hidden_states[-1].copy(), b.cells[-1].copy())
    return b.y, final, CupyLayerCache(b.x, b.hidden_states, b.cells, b.gates, b.tanh_c, b.step_mask, b.lease)


class BackwardBuffers(NamedTuple):
    """A backward's contiguous inputs and its outputs, allocated before the recurrence fills them."""

    dy: Any
    weight: Any
    dh: Any  # (B, H): a private copy of dL/dh_T, updated in place step by step; dL/dh_0 on return
    dc: Any  # (B, H): likewise dL/dc
    dz: Any  # (T, B, 4H): every step's gate gradient


def backward_buffers(dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: CupyLayerCache,
                     into: Any = None) -> BackwardBuffers:
    """Contiguous inputs, private copies of dL/dh_T and dL/dc_T and the buffer for every step's dz; with
    ``into`` (as for :func:`forward_buffers`), copied into its arrays of BackwardBuffers' names instead."""
    check_backward_inputs(cache.dims(), cache.gates.dtype, dy, dh_last, dc_last, weight)  # the kernels index without bounds checks
    steps, batch, _, hidden = cache.dims()
    dtype = cache.gates.dtype
    if into is not None:
        into.dy[...], into.weight[...], into.dh[...], into.dc[...] = dy, weight, dh_last, dc_last
        return BackwardBuffers(into.dy, into.weight, into.dh, into.dc, into.dz)
    dh = cupy.array(dh_last, dtype=dtype, order="C")
    dc = cupy.array(dc_last, dtype=dtype, order="C")
    dz = cupy.empty((steps, batch, 4 * hidden), dtype=dtype)
    return BackwardBuffers(_contiguous(dy), _contiguous(weight), dh, dc, dz)


def parameter_gradients(cache: CupyLayerCache, dz: Any, weight: Any) -> tuple[Any, Any, Any]:
    """After the backward recurrence: ``(dx, dweight, dbias)`` from every step's dz, each one GEMM or sum."""
    steps, batch, features, hidden = cache.dims()
    dz_flat = cupy.reshape(dz, (steps * batch, 4 * hidden))
    dweight = cupy.empty_like(weight)
    cupy.matmul(cupy.reshape(cache.x, (steps * batch, features)).T, dz_flat, out=dweight[:features])
    cupy.matmul(cupy.reshape(cache.hidden_states[:steps], (steps * batch, hidden)).T, dz_flat, out=dweight[features:])
    dbias = cupy.sum(dz_flat, axis=0)
    dx = cupy.reshape(dz_flat @ weight[:features].T, (steps, batch, features))
    return dx, dweight, dbias


def layer_forward(recurrence: Callable[[ForwardBuffers, Dims], ForwardBuffers | None], x: Any, weight: Any,
                  bias: Any, h0: Any, c0: Any, step_mask: Any, buffers: Callable[..., ForwardBuffers] = forward_buffers
                  ) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
    """The forward every CuPy path shares: the door (:func:`forward_dims`), the buffers with the input
    projection (``buffers``, called as :func:`forward_buffers`), then ``recurrence(buffers, dims)`` fills every
    step (not called for an empty batch; it returns other buffers when the results are not all in those it was
    given), then the outputs. The paths differ only in ``recurrence`` (and the graph path in ``buffers``)."""
    dims = forward_dims(x, weight, bias, h0, c0)
    b = buffers(x, weight, bias, h0, c0, step_mask, dims)
    if dims[1] > 0:
        b = recurrence(b, dims) or b
    return forward_outputs(b)


def layer_backward(recurrence: Callable[[BackwardBuffers, CupyLayerCache], BackwardBuffers | None], dy: Any,
                   dh_last: Any, dc_last: Any, weight: Any, cache: CupyLayerCache,
                   buffers: Callable[..., BackwardBuffers] = backward_buffers) -> tuple[Any, tuple[Any, Any], Any, Any]:
    """The mirror of :func:`layer_forward`: the checked buffers, ``recurrence(buffers, cache)`` writes every
    step's dz and dL/dh_0, dL/dc_0 (not called for an empty batch; it may return other buffers likewise), then
    the weight-gradient GEMMs."""
    b = buffers(dy, dh_last, dc_last, weight, cache)
    if cache.dims()[1] > 0:
        b = recurrence(b, cache) or b
    dx, dweight, dbias = parameter_gradients(cache, b.dz, b.weight)
    return dx, (b.dh, b.dc), dweight, dbias


# One launch for a whole direction (the persistent paths): ``launch(kernel, dtype name, batch, hidden, args)``.
Launch = Callable[[str, str, int, int, tuple], None]


def one_launch_forward(launch: Launch, kernel: str, x: Any, weight: Any, bias: Any, h0: Any, c0: Any,
                       step_mask: Any) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
    """A forward whose recurrence is one kernel launch taking (gates, W_h, bias, cells, hidden states, tanh(c),
    y, step mask or null, steps, batch, hidden)."""
    def recurrence(b: ForwardBuffers, dims: Dims) -> None:
        steps, batch, features, hidden = dims
        launch(kernel, np.dtype(b.gates.dtype).name, batch, hidden,
               (b.gates, b.weight[features:], b.bias, b.cells, b.hidden_states, b.tanh_c, b.y,
                NULL if b.step_mask is None else b.step_mask, np.int32(steps), np.int32(batch), np.int32(hidden)))

    return layer_forward(recurrence, x, weight, bias, h0, c0, step_mask)


def one_launch_backward(launch: Launch, kernel: str, dy: Any, dh_last: Any, dc_last: Any, weight: Any,
                        cache: CupyLayerCache) -> tuple[Any, tuple[Any, Any], Any, Any]:
    """The mirror of :func:`one_launch_forward`: one launch taking (dy, W_h, gates, cells, tanh(c), step mask or
    null, dz, dh, dc, steps, batch, hidden)."""
    def recurrence(b: BackwardBuffers, cache: CupyLayerCache) -> None:
        steps, batch, features, hidden = cache.dims()
        launch(kernel, np.dtype(b.dz.dtype).name, batch, hidden,
               (b.dy, b.weight[features:], cache.gates, cache.cells, cache.tanh_c,
                NULL if cache.step_mask is None else cache.step_mask, b.dz, b.dh, b.dc,
                np.int32(steps), np.int32(batch), np.int32(hidden)))

    return layer_backward(recurrence, dy, dh_last, dc_last, weight, cache)


def forward_recurrence(b: ForwardBuffers, dims: Dims, gemm: Gemm) -> None:
    """Every forward step on ``b`` (batch > 0): the GEMM adds h_{t-1} W_h into the step's gates, then the fused
    kernel. ``b`` may be any object with ForwardBuffers' arrays (the CUDA-graph path captures this loop on its
    own buffers)."""
    steps, batch, features, hidden = dims
    dtype = np.dtype(b.gates.dtype)
    w_hidden = b.weight.data.ptr + features * 4 * hidden * dtype.itemsize
    row, gate_row = batch * hidden * dtype.itemsize, batch * 4 * hidden * dtype.itemsize
    mask = NULL if b.step_mask is None else b.step_mask
    shape_args = (np.int32(batch), np.int32(hidden))
    for t in range(steps):
        gemm(b.hidden_states.data.ptr + t * row, w_hidden, b.gates.data.ptr + t * gate_row, batch, 4 * hidden,
             hidden, transpose_b=False, accumulate=True)
        _launch("lstm_forward_step", dtype.name, batch * hidden,
                (b.gates, b.bias, b.cells, b.hidden_states, b.tanh_c, b.y, mask, np.int32(t), *shape_args))


def backward_recurrence(b: BackwardBuffers, stored: CupyLayerCache, dims: Dims, gemm: Gemm) -> None:
    """Every backward step, in reverse (batch > 0): the fused kernel writes dz_t and dL/dc_{t-1}, then the GEMM
    writes dL/dh_{t-1} = dz_t W_hᵀ (+ the part padded rows pass through). ``stored`` gives the forward's gates,
    cells, tanh(c) and step mask (any object with those arrays, as for :func:`forward_recurrence`)."""
    steps, batch, features, hidden = dims
    dtype = np.dtype(b.dz.dtype)
    w_hidden = b.weight.data.ptr + features * 4 * hidden * dtype.itemsize
    gate_row = batch * 4 * hidden * dtype.itemsize
    mask = NULL if stored.step_mask is None else stored.step_mask
    shape_args = (np.int32(batch), np.int32(hidden))
    for t in reversed(range(steps)):
        _launch("lstm_backward_step", dtype.name, batch * hidden,
                (b.dy, b.dh, b.dc, stored.gates, stored.cells, stored.tanh_c, mask, b.dz, np.int32(t), *shape_args))
        gemm(b.dz.data.ptr + t * gate_row, w_hidden, b.dh.data.ptr, batch, hidden, 4 * hidden,
             transpose_b=True, accumulate=stored.step_mask is not None)


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
    return layer_forward(lambda b, dims: forward_recurrence(b, dims, Gemm(np.dtype(b.gates.dtype))),
                         x, weight, bias, h0, c0, step_mask)


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: CupyLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    return layer_backward(lambda b, stored: backward_recurrence(b, stored, stored.dims(), Gemm(np.dtype(b.dz.dtype))),
                          dy, dh_last, dc_last, weight, cache)


# the layers with cell options: their own module and kernels, exposed here, where the registry's "cupy-stepwise"
# entry points
from .cupy_variants import lstm_variant_layer_backward, lstm_variant_layer_forward  # noqa: E402
