"""CuPy path for one LSTM layer whose stepwise recurrence is replayed as a CUDA graph: one call per direction.

The stepwise path (:mod:`lstmx.kernels.cupy_layer`) makes two calls from Python per time step, a cuBLAS GEMM and
a fused kernel, and at small sizes the calls, not the GPU, set the pace. Here the same loop is captured once per
problem shape (steps, batch, features, hidden, dtype, step mask or not, precision, stream) into a CUDA graph on
buffers the graph owns, and every call afterwards copies its inputs into them, launches the graph (one call for
all 2T operations) and copies the results out into arrays of its own, so the caches and outputs of different
calls never share memory. Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward`` and
the same cache as the other CuPy paths (:class:`~lstmx.kernels.cupy_layer.CupyLayerCache`); every size runs.

CuPy's cuBLAS wrappers refuse every call while a stream is being captured, but cuBLAS itself can be captured:
the GEMMs go through its C function (``cublasSgemm_v2`` / ``cublasDgemm_v2`` through ctypes, from the library CuPy
loaded) on a handle of this module's own, with a workspace of its own set before the capture. Before capturing,
the loop runs once on the graph's buffers, so every kernel and cuBLAS routine is loaded outside the capture.
The graphs of the last :data:`MAX_GRAPHS` shapes are kept (each with buffers the size of one call's
activations); a lock per graph keeps two threads from interleaving their copies around one launch.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import threading
from typing import Any, Callable, NamedTuple

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from ..backend import Backend
from ..precision import active_precision
from . import cupy_layer
from .cupy_layer import CupyLayerCache, layer_backward, layer_forward
from .cupy_precision import TF32_TENSOR_OP_MATH

MAX_GRAPHS = 4  # shapes whose graphs and buffers are kept (the least recently used is dropped)
WORKSPACE_BYTES = 32 * 1024 * 1024  # the capture handle's cuBLAS workspace (NVIDIA's recommendation for Hopper)
DEFAULT_MATH = 0  # cublasMath_t CUBLAS_DEFAULT_MATH


class GraphBuffers(NamedTuple):
    """The arrays both graphs of one shape read and write: the forward's (as in ``ForwardBuffers``) and the
    backward's (as in ``BackwardBuffers``; the backward reads the forward's gates, cells, tanh(c) and mask)."""

    weight: Any  # (D + H, 4H)
    bias: Any  # (4H,)
    step_mask: Any  # (T, B) or None
    gates: Any  # (T, B, 4H)
    hidden_states: Any  # (T + 1, B, H)
    cells: Any  # (T + 1, B, H)
    tanh_c: Any  # (T, B, H)
    y: Any  # (T, B, H)
    dy: Any  # (T, B, H)
    dz: Any  # (T, B, 4H)
    dh: Any  # (B, H)
    dc: Any  # (B, H)


class LayerGraphs(NamedTuple):
    buffers: GraphBuffers
    forward: Any  # cupy.cuda.Graph: forward_recurrence on the buffers
    backward: Any  # cupy.cuda.Graph: backward_recurrence on the buffers
    lock: Any  # held from the first copy in to the last copy out of one call


class _CublasC:
    """The two cuBLAS C functions called directly (CuPy's wrappers refuse calls during a capture)."""

    def __init__(self) -> None:
        from cuda import pathfinder  # how CuPy itself finds and loads cuBLAS

        loaded = pathfinder.load_nvidia_dynamic_lib("cublas")
        self.library = ctypes.CDLL(loaded.abs_path or "libcublas.so.12")  # no path: found by the loader's search
        pointer, integer = ctypes.c_void_p, ctypes.c_int
        for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
            function = getattr(self.library, name)
            function.restype = integer
            function.argtypes = [pointer, integer, integer, integer, integer, integer, pointer, pointer, integer,
                                 pointer, integer, pointer, pointer, integer]
        self.library.cublasSetWorkspace_v2.restype = integer
        self.library.cublasSetWorkspace_v2.argtypes = [pointer, pointer, ctypes.c_size_t]

    def gemm(self, dtype: np.dtype) -> Callable[..., None]:
        """A function with the signature of CuPy's ``cublas.sgemm`` / ``dgemm`` (pointers as integers)."""
        function = self.library.cublasSgemm_v2 if dtype == np.float32 else self.library.cublasDgemm_v2

        def gemm(*args: int) -> None:
            status = function(*args)
            if status != 0:
                raise RuntimeError(f"cuBLAS {function.__name__} returned status {status}")

        return gemm

    def set_workspace(self, handle: int, workspace: Any) -> None:
        status = self.library.cublasSetWorkspace_v2(handle, workspace.data.ptr, workspace.nbytes)
        if status != 0:
            raise RuntimeError(f"cublasSetWorkspace_v2 returned status {status}")


@functools.cache
def _cublas_c() -> _CublasC:
    return _CublasC()


@functools.cache
def _capture_handle(device: int) -> tuple[int, Any]:
    """This module's cuBLAS handle on ``device`` and its workspace (kept for the life of the process)."""
    return cublas.create(), cupy.empty(WORKSPACE_BYTES, dtype=np.uint8)


def _allocate(dims: cupy_layer.Dims, dtype: np.dtype, masked: bool) -> GraphBuffers:
    steps, batch, features, hidden = dims
    zeros = lambda *shape: cupy.zeros(shape, dtype=dtype)  # noqa: E731 (defined values for the warm-up run)
    return GraphBuffers(zeros(features + hidden, 4 * hidden), zeros(4 * hidden),
                        zeros(steps, batch) if masked else None, zeros(steps, batch, 4 * hidden),
                        zeros(steps + 1, batch, hidden), zeros(steps + 1, batch, hidden), zeros(steps, batch, hidden),
                        zeros(steps, batch, hidden), zeros(steps, batch, hidden), zeros(steps, batch, 4 * hidden),
                        zeros(batch, hidden), zeros(batch, hidden))


def _capture(stream: Any, dtype: np.dtype, precision: str, record: Callable[[cupy_layer.Gemm], None]) -> Any:
    """A graph of what ``record(gemm)`` launches on ``stream``, after one run outside the capture."""
    handle, workspace = _capture_handle(cupy.cuda.Device().id)
    with stream:
        gemm = cupy_layer.Gemm(dtype, function=_cublas_c().gemm(dtype), handle=handle)  # binds the handle to stream
        _cublas_c().set_workspace(handle, workspace)  # after the stream: binding a stream resets the workspace
        cublas.setMathMode(handle, TF32_TENSOR_OP_MATH if precision == "tf32" else DEFAULT_MATH)
        record(gemm)  # loads every kernel and cuBLAS routine before the capture
        stream.begin_capture()
        try:
            record(gemm)
        except BaseException:
            stream.end_capture()  # leaves capture mode; the graph is dropped
            raise
        return stream.end_capture()


_GRAPHS: collections.OrderedDict[tuple, LayerGraphs] = collections.OrderedDict()
_GRAPHS_LOCK = threading.Lock()


def _layer_graphs(dims: cupy_layer.Dims, dtype: np.dtype, masked: bool) -> LayerGraphs:
    """The graphs and buffers of this shape on the current device, stream and precision (captured on first use)."""
    precision = active_precision() if dtype == np.float32 else "float32"
    current = cupy.cuda.get_current_stream()
    key = (dims, dtype.name, masked, precision, cupy.cuda.Device().id, current.ptr)
    with _GRAPHS_LOCK:
        if key in _GRAPHS:
            _GRAPHS.move_to_end(key)
            return _GRAPHS[key]
        buffers = _allocate(dims, dtype, masked)
        stream = cupy.cuda.Stream(non_blocking=True)
        stream.wait_event(current.record())  # the buffers are zeroed before the warm-up runs
        forward = _capture(stream, dtype, precision, lambda gemm: cupy_layer.forward_recurrence(buffers, dims, gemm))
        backward = _capture(stream, dtype, precision,
                            lambda gemm: cupy_layer.backward_recurrence(buffers, buffers, dims, gemm))
        current.wait_event(stream.record())  # no copy into the buffers overtakes the warm-up runs
        _GRAPHS[key] = graphs = LayerGraphs(buffers, forward, backward, threading.Lock())
        while len(_GRAPHS) > MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
        return graphs


def _copy(destination: Any, source: Any) -> None:
    """``destination[...] = source`` for two C-contiguous arrays of one shape and dtype, as one device-to-device
    memcpy on the current stream (cheaper to issue from Python than a copy kernel)."""
    if (destination.shape != source.shape or destination.dtype != source.dtype
            or not (destination.flags.c_contiguous and source.flags.c_contiguous)):
        raise ValueError(f"cannot copy {source.shape} {source.dtype} into the graph's {destination.shape} "
                         f"{destination.dtype} buffer")
    destination.data.copy_from_device_async(source.data, destination.nbytes)


def _replay_forward(b: cupy_layer.ForwardBuffers, dims: cupy_layer.Dims) -> None:
    """The forward recurrence on ``b``: copied into the graph's buffers, the graph, copied back."""
    graphs = _layer_graphs(dims, np.dtype(b.gates.dtype), b.step_mask is not None)
    g = graphs.buffers
    with graphs.lock:
        for name in ("weight", "bias", "step_mask", "gates"):
            if getattr(b, name) is not None:
                _copy(getattr(g, name), getattr(b, name))
        _copy(g.hidden_states[0], b.hidden_states[0])
        _copy(g.cells[0], b.cells[0])
        graphs.forward.launch()
        for name in ("gates", "tanh_c", "y"):
            _copy(getattr(b, name), getattr(g, name))
        _copy(b.hidden_states[1:], g.hidden_states[1:])
        _copy(b.cells[1:], g.cells[1:])


def _replay_backward(b: cupy_layer.BackwardBuffers, cache: CupyLayerCache) -> None:
    """The backward recurrence on ``b`` and the forward's ``cache``, through the graph's buffers likewise."""
    graphs = _layer_graphs(cache.dims(), np.dtype(b.dz.dtype), cache.step_mask is not None)
    g = graphs.buffers
    with graphs.lock:
        for name in ("dy", "weight", "dh", "dc"):
            _copy(getattr(g, name), getattr(b, name))
        for name in ("gates", "cells", "tanh_c", "step_mask"):
            if getattr(cache, name) is not None:
                _copy(getattr(g, name), getattr(cache, name))
        graphs.backward.launch()
        for name in ("dz", "dh", "dc"):
            _copy(getattr(b, name), getattr(g, name))


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
    return layer_forward(_replay_forward, x, weight, bias, h0, c0, step_mask)


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: CupyLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    return layer_backward(_replay_backward, dy, dh_last, dc_last, weight, cache)
