"""The shell every CuPy layer path shares: the door, the buffers, the input projection and the weight gradients.

:func:`layer_forward` / :func:`layer_backward` check the arrays (``forward_dims`` / ``check_backward_inputs``),
allocate the buffers from CuPy's memory pool, run the input projection x W_x as one GEMM over all steps, hand
the buffers to a path's recurrence, and after it compute dx, dW and db as one GEMM (or sum) each. The paths
differ only in that recurrence: the per-step loops of :mod:`lstmx.kernels.cupy.stepwise` (also captured by
:mod:`lstmx.kernels.cupy.graph`), or one cooperative launch (:mod:`lstmx.kernels.cupy.persistent`,
:mod:`lstmx.kernels.cupy.tiled`, through :func:`one_launch_forward` / :func:`one_launch_backward`). :class:`Gemm`
calls cuBLAS directly with precomputed pointers (the cheapest call from Python) on the current stream.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from ...nn.layers.lstm_layer import LayerInputError, check_backward_inputs, forward_dims

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
    lease: Any = None  # the graph path's hold on the buffers these arrays are (graph.Lease), else None

    def dims(self) -> Dims:
        steps, batch, features = self.x.shape
        return steps, batch, features, self.cells.shape[2]


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
        function with their signature and a handle (the CUDA-graph path's, :mod:`lstmx.kernels.cupy.graph`)."""
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


def as_they_are(values: Any) -> Any:
    return values


def parameter_gradients(cache: CupyLayerCache, dz: Any, weight: Any,
                        operand: Callable[[Any], Any] = as_they_are) -> tuple[Any, Any, Any]:
    """After the backward recurrence: ``(dx, dweight, dbias)`` from every step's dz, each one GEMM or sum, the
    GEMMs' operands in the format ``operand`` gives them (the backend's: :meth:`lstmx.backend.Backend.operand`)."""
    steps, batch, features, hidden = cache.dims()
    dz_flat = cupy.reshape(dz, (steps * batch, 4 * hidden))
    dz_operand = operand(dz_flat)
    dweight = cupy.empty_like(weight)
    cupy.matmul(operand(cupy.reshape(cache.x, (steps * batch, features))).T, dz_operand, out=dweight[:features])
    cupy.matmul(operand(cupy.reshape(cache.hidden_states[:steps], (steps * batch, hidden))).T, dz_operand,
                out=dweight[features:])
    dbias = cupy.sum(dz_flat, axis=0)
    dx = cupy.reshape(dz_operand @ operand(weight[:features]).T, (steps, batch, features))
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
                   buffers: Callable[..., BackwardBuffers] = backward_buffers,
                   operand: Callable[[Any], Any] = as_they_are) -> tuple[Any, tuple[Any, Any], Any, Any]:
    """The mirror of :func:`layer_forward`: the checked buffers, ``recurrence(buffers, cache)`` writes every
    step's dz and dL/dh_0, dL/dc_0 (not called for an empty batch; it may return other buffers likewise), then
    the weight-gradient GEMMs (their operands as ``operand`` gives them)."""
    b = buffers(dy, dh_last, dc_last, weight, cache)
    if cache.dims()[1] > 0:
        b = recurrence(b, cache) or b
    dx, dweight, dbias = parameter_gradients(cache, b.dz, b.weight, operand)
    return dx, (b.dh, b.dc), dweight, dbias


# One launch for a whole direction (the persistent paths): ``launch(kernel, dtype name, batch, hidden, args)``,
# and with ``directions=2`` both directions of a bidirectional layer on stacked arrays (grid z: the direction).
Launch = Callable[..., None]


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
                        cache: CupyLayerCache, operand: Callable[[Any], Any] = as_they_are
                        ) -> tuple[Any, tuple[Any, Any], Any, Any]:
    """The mirror of :func:`one_launch_forward`: one launch taking (dy, W_h, gates, cells, tanh(c), step mask or
    null, dz, dh, dc, steps, batch, hidden)."""
    def recurrence(b: BackwardBuffers, cache: CupyLayerCache) -> None:
        steps, batch, features, hidden = cache.dims()
        launch(kernel, np.dtype(b.dz.dtype).name, batch, hidden,
               (b.dy, b.weight[features:], cache.gates, cache.cells, cache.tanh_c,
                NULL if cache.step_mask is None else cache.step_mask, b.dz, b.dh, b.dc,
                np.int32(steps), np.int32(batch), np.int32(hidden)))

    return layer_backward(recurrence, dy, dh_last, dc_last, weight, cache, operand=operand)


Pair = tuple[Any, Any]  # (forward direction, reverse direction)


def one_launch_pair_forward(launch: Launch, kernel: str, xs: Pair, weights: Pair, biases: Pair, h0s: Pair, c0s: Pair,
                            step_mask: Any) -> tuple[Pair, tuple[Pair, Pair], Pair]:
    """Both directions of a bidirectional layer in one launch of ``kernel`` (grid z = 2, each direction on its
    half of stacked (2, ...) arrays; xs[1] is the input the reverse direction sees, already reversed in time):
    ``((y, y_reverse), (final, final_reverse), (cache, cache_reverse))``, each cache a :class:`CupyLayerCache`
    whose arrays are halves of the stacked ones (:func:`one_launch_pair_backward` launches on them again)."""
    dims = forward_dims(xs[0], weights[0], biases[0], h0s[0], c0s[0])
    if forward_dims(xs[1], weights[1], biases[1], h0s[1], c0s[1]) != dims:
        raise LayerInputError(f"the directions of a layer differ in shape: {dims} and "
                              f"{forward_dims(xs[1], weights[1], biases[1], h0s[1], c0s[1])}")
    steps, batch, features, hidden = dims
    dtype = xs[0].dtype
    stacked = lambda *shape: cupy.empty((2, *shape), dtype=dtype)  # noqa: E731
    x, w_hidden, bias = stacked(steps, batch, features), stacked(hidden, 4 * hidden), stacked(4 * hidden)
    gates, tanh_c, y = stacked(steps, batch, 4 * hidden), stacked(steps, batch, hidden), stacked(steps, batch, hidden)
    hidden_states, cells = stacked(steps + 1, batch, hidden), stacked(steps + 1, batch, hidden)
    mask = None if step_mask is None else _contiguous(cupy.reshape(step_mask, (steps, batch)).astype(dtype))
    for d in range(2):
        x[d], w_hidden[d], bias[d] = xs[d], weights[d][features:], biases[d]
        cupy.matmul(cupy.reshape(x[d], (steps * batch, features)), weights[d][:features],
                    out=cupy.reshape(gates[d], (steps * batch, 4 * hidden)))
        hidden_states[d, 0], cells[d, 0] = h0s[d], c0s[d]
    if batch > 0:
        launch(kernel, np.dtype(dtype).name, batch, hidden,
               (gates, w_hidden, bias, cells, hidden_states, tanh_c, y, NULL if mask is None else mask,
                np.int32(steps), np.int32(batch), np.int32(hidden)), directions=2)
    finals = tuple((hidden_states[d, steps].copy(), cells[d, steps].copy()) for d in range(2))
    caches = tuple(CupyLayerCache(x[d], hidden_states[d], cells[d], gates[d], tanh_c[d], mask) for d in range(2))
    return (y[0], y[1]), finals, caches


def _halves_of_one_array(first: Any, second: Any) -> bool:
    return first.data.ptr + first.nbytes == second.data.ptr and first.shape == second.shape


def one_launch_pair_backward(launch: Launch, kernel: str, dys: Pair, dh_lasts: Pair, dc_lasts: Pair, weights: Pair,
                             caches: Pair, operand: Callable[[Any], Any] = as_they_are
                             ) -> tuple[Pair, tuple[Pair, Pair], Pair, Pair]:
    """The mirror of :func:`one_launch_pair_forward`, one launch for both directions on the caches it made:
    ``((dx, dx_reverse), ((dh0, dc0), (dh0_reverse, dc0_reverse)), (dweight, ...), (dbias, ...))``."""
    for d in range(2):
        check_backward_inputs(caches[d].dims(), caches[d].gates.dtype, dys[d], dh_lasts[d], dc_lasts[d], weights[d])
    first, second = caches
    if not (all(_halves_of_one_array(getattr(first, name), getattr(second, name))
                for name in ("x", "hidden_states", "cells", "gates", "tanh_c")) and first.step_mask is second.step_mask):
        raise LayerInputError("a backward of both directions in one launch takes the caches of one such forward "
                              "(the halves of its stacked arrays)")
    steps, batch, features, hidden = first.dims()
    dtype = first.gates.dtype
    dy, dh, dc = (cupy.empty((2, *shape), dtype=dtype) for shape in ((steps, batch, hidden), (batch, hidden),
                                                                       (batch, hidden)))
    w_hidden, dz = cupy.empty((2, hidden, 4 * hidden), dtype=dtype), cupy.empty((2, steps, batch, 4 * hidden), dtype=dtype)
    for d in range(2):
        dy[d], dh[d], dc[d], w_hidden[d] = dys[d], dh_lasts[d], dc_lasts[d], weights[d][features:]
    if batch > 0:
        launch(kernel, np.dtype(dtype).name, batch, hidden,
               (dy, w_hidden, first.gates, first.cells, first.tanh_c, NULL if first.step_mask is None else first.step_mask,
                dz, dh, dc, np.int32(steps), np.int32(batch), np.int32(hidden)), directions=2)
    gradients = [parameter_gradients(caches[d], dz[d], _contiguous(weights[d]), operand) for d in range(2)]
    return ((gradients[0][0], gradients[1][0]), ((dh[0], dc[0]), (dh[1], dc[1])),
            (gradients[0][1], gradients[1][1]), (gradients[0][2], gradients[1][2]))


class OneLaunchLayers(NamedTuple):
    """A one-launch path's layer functions (the kernel contract's plain and paired ones) around its launch."""

    lstm_layer_forward: Callable[..., Any]
    lstm_layer_backward: Callable[..., Any]
    lstm_layer_pair_forward: Callable[..., Any]
    lstm_layer_pair_backward: Callable[..., Any]


def one_launch_layers(launch: Launch, forward_kernel: str, backward_kernel: str) -> OneLaunchLayers:
    """The plain and paired layer functions of a path whose recurrence is one launch of ``forward_kernel`` /
    ``backward_kernel`` through ``launch``, with the contract's signatures. The GEMMs around the launch take
    their operands in the backend's format (:meth:`lstmx.backend.Backend.operand`: under precision="bf16"
    rounded to bfloat16, which only the kernels that round their own operands alike are given): the forward's
    input and weights as they come in, so the cache keeps the input as the GEMMs took it; the backward's in
    :func:`parameter_gradients` (and W_h in the kernels)."""
    def lstm_layer_forward(backend: Any, x: Any, weight: Any, bias: Any, h0: Any, c0: Any,
                           step_mask: Any = None) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
        return one_launch_forward(launch, forward_kernel, backend.operand(x), backend.operand(weight), bias, h0, c0,
                                  step_mask)

    def lstm_layer_backward(backend: Any, dy: Any, dh_last: Any, dc_last: Any, weight: Any,
                            cache: CupyLayerCache) -> tuple[Any, tuple[Any, Any], Any, Any]:
        return one_launch_backward(launch, backward_kernel, dy, dh_last, dc_last, weight, cache, backend.operand)

    def lstm_layer_pair_forward(backend: Any, xs: Pair, weights: Pair, biases: Pair, h0s: Pair, c0s: Pair,
                                step_mask: Any = None) -> tuple[Pair, tuple[Pair, Pair], Pair]:
        operands = lambda pair: tuple(backend.operand(part) for part in pair)  # noqa: E731
        return one_launch_pair_forward(launch, forward_kernel, operands(xs), operands(weights), biases, h0s, c0s,
                                       step_mask)

    def lstm_layer_pair_backward(backend: Any, dys: Pair, dh_lasts: Pair, dc_lasts: Pair, weights: Pair,
                                 caches: Pair) -> tuple[Pair, tuple[Pair, Pair], Pair, Pair]:
        return one_launch_pair_backward(launch, backward_kernel, dys, dh_lasts, dc_lasts, weights, caches,
                                        backend.operand)

    return OneLaunchLayers(lstm_layer_forward, lstm_layer_backward, lstm_layer_pair_forward, lstm_layer_pair_backward)

