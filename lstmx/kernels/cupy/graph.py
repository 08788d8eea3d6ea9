"""CuPy path for one LSTM layer whose stepwise recurrence is replayed as a CUDA graph: one call per direction.

The stepwise path (:mod:`lstmx.kernels.cupy.stepwise`) makes two calls from Python per time step, a cuBLAS GEMM and
a fused kernel, and at small sizes the calls, not the GPU, set the pace. Here the same loop is captured once into
a CUDA graph per *buffer set*: arrays of one problem shape (steps, batch, features, hidden, dtype, step mask or
not, cuBLAS math mode, device, stream) that the captured kernels read and write. A call takes a free set, writes
its inputs and the input projection there, and launches the graph (one call for all 2T operations).

No activation is copied: the forward's cache refers to the set's arrays and holds a :class:`Lease` on the set,
and while that cache lives no other call writes to them (the set is free again once the cache is gone). Only
what the caller keeps is copied out: y, and dL/dh_0, dL/dc_0 from the backward. A call that finds every set of
its shape held captures another: the arrays are those its cache would hold on any path, and this path never
hands a call to another one. Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward``;
every size runs.

The graphs' GEMMs run in the math mode CuPy's cuBLAS handle has at the call (TF32 under a model's
``precision="tf32"``, which sets it: :mod:`lstmx.dispatch.precision`), so they compute what the stepwise path's
would; a set is captured per mode.

CuPy's cuBLAS wrappers refuse every call while a stream is being captured, but cuBLAS itself can be captured:
the GEMMs go through its C function (``cublasSgemm_v2`` / ``cublasDgemm_v2`` through ctypes, from the library CuPy
loaded) on a handle of this module's own, with a workspace of its own set before the capture. Before capturing,
the loop runs once on the set's arrays, so every kernel and cuBLAS routine is loaded outside the capture. At most
:data:`MAX_SETS` free sets are kept (the least recently used is dropped); :func:`release_graphs` drops them all.
Two threads running the backward of one cache at once on one stream would share its set's dy and dz buffers.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import os
import threading
import weakref
from typing import Any, Callable, NamedTuple

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from ...backend import Backend
from ...nn.layers.lstm_layer import LayerInputError
from . import shell, stepwise
from .shell import CupyLayerCache, layer_backward, layer_forward

MAX_SETS = 8  # buffer sets kept, of every shape (past this the least recently used free ones are dropped)
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


class BufferSet:
    """One shape's buffers and the two graphs captured on them, lent to one forward's cache at a time (with the
    cuBLAS workspace the graphs' GEMMs use, kept alive as long as they are)."""

    def __init__(self, buffers: GraphBuffers, forward: Any, backward: Any, workspace: Any) -> None:
        self.buffers, self.forward, self.backward, self.workspace = buffers, forward, backward, workspace
        self._holder: weakref.ref | None = None  # the lease of the cache whose arrays these buffers are

    def free(self) -> bool:
        return self._holder is None or self._holder() is None

    def lend(self) -> "Lease":
        lease = Lease(self)
        self._holder = weakref.ref(lease)
        return lease


class Lease:
    """Kept in the cache of the forward that filled a buffer set: while the cache lives, the set is its own."""

    __slots__ = ("buffer_set", "__weakref__")

    def __init__(self, buffer_set: BufferSet) -> None:
        self.buffer_set = buffer_set


class _CublasC:
    """The two cuBLAS C functions called directly (CuPy's wrappers refuse calls during a capture)."""

    def __init__(self) -> None:
        self.library = ctypes.CDLL(_cublas_path())
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


def mapped_library(stem: str, maps: str = "/proc/self/maps") -> str | None:
    """The path of the shared library ``<stem>.so`` or ``<stem>.so.<version>`` this process has loaded, or None
    (also where the process's memory map cannot be read)."""
    try:
        with open(maps) as lines:
            for line in lines:
                fields = line.split(maxsplit=5)  # address, permissions, offset, device, inode, path (may hold spaces)
                path = fields[5].strip() if len(fields) == 6 else ""
                name = os.path.basename(path)
                if name == f"{stem}.so" or name.startswith(f"{stem}.so."):
                    return path
    except OSError:
        pass
    return None


def _cublas_path() -> str:
    """The libcublas CuPy uses: importing CuPy's ``cublas`` module (above) loaded it, whichever CUDA major version
    and whichever copy (wheel or toolkit) that is. Else the one ``cuda.pathfinder`` finds, as CuPy would."""
    path = mapped_library("libcublas")
    if path is None:
        from cuda import pathfinder

        path = pathfinder.load_nvidia_dynamic_lib("cublas").abs_path or mapped_library("libcublas")
    if path is None:
        raise RuntimeError("the CUDA-graph path found no libcublas loaded in this process; impl='cupy-stepwise' "
                           "runs the same loop through CuPy's cuBLAS")
    return path


@functools.cache
def _cublas_c() -> _CublasC:
    return _CublasC()


@functools.cache
def _capture_handle(device: int) -> int:
    """This module's cuBLAS handle on ``device`` (kept for the life of the process)."""
    return cublas.create()


_WORKSPACES: dict[tuple[int, int], Any] = {}  # (device, stream the graphs launch on) → cuBLAS workspace


def _workspace(device: int, stream: int) -> Any:
    """The workspace of the graphs launched on ``stream``: replays on one stream run one at a time, so they can
    share it; graphs on two streams may run at once, so each stream has its own."""
    if (device, stream) not in _WORKSPACES:
        _WORKSPACES[device, stream] = cupy.empty(WORKSPACE_BYTES, dtype=np.uint8)
    return _WORKSPACES[device, stream]


def _allocate(dims: shell.Dims, dtype: np.dtype, masked: bool) -> GraphBuffers:
    steps, batch, features, hidden = dims
    zeros = lambda *shape: cupy.zeros(shape, dtype=dtype)  # noqa: E731 (defined values for the warm-up run)
    return GraphBuffers(zeros(features + hidden, 4 * hidden), zeros(4 * hidden),
                        zeros(steps, batch) if masked else None, zeros(steps, batch, 4 * hidden),
                        zeros(steps + 1, batch, hidden), zeros(steps + 1, batch, hidden), zeros(steps, batch, hidden),
                        zeros(steps, batch, hidden), zeros(steps, batch, hidden), zeros(steps, batch, 4 * hidden),
                        zeros(batch, hidden), zeros(batch, hidden))


def _capture(stream: Any, workspace: Any, dtype: np.dtype, math_mode: int,
             record: Callable[[shell.Gemm], None]) -> Any:
    """A graph of what ``record(gemm)`` launches on ``stream`` (its GEMMs using ``workspace``), after one run
    outside the capture."""
    handle = _capture_handle(cupy.cuda.Device().id)
    with stream:
        gemm = shell.Gemm(dtype, function=_cublas_c().gemm(dtype), handle=handle)  # binds the handle to stream
        _cublas_c().set_workspace(handle, workspace)  # after the stream: binding a stream resets the workspace
        cublas.setMathMode(handle, math_mode)
        record(gemm)  # loads every kernel and cuBLAS routine before the capture
        stream.begin_capture()
        try:
            record(gemm)
        except BaseException:
            stream.end_capture()  # leaves capture mode; the graph is dropped
            raise
        return stream.end_capture()


_SETS: collections.OrderedDict[tuple, BufferSet] = collections.OrderedDict()  # (key, serial) → set
Recorder = Callable[[Any, shell.Gemm], None]  # launches a loop on a set's buffers with a GEMM
_SETS_LOCK = threading.Lock()
_SERIAL = itertools.count()


def _capture_set(allocate: Callable[[], Any], forward: Recorder, backward: Recorder, dtype: np.dtype,
                 math_mode: int) -> BufferSet:
    """New buffers (``allocate()``) and the graphs of ``forward(buffers, gemm)`` and ``backward(buffers, gemm)``
    captured on them."""
    buffers = allocate()
    current = cupy.cuda.get_current_stream()
    workspace = _workspace(cupy.cuda.Device().id, current.ptr)
    stream = cupy.cuda.Stream(non_blocking=True)
    stream.wait_event(current.record())  # the buffers are zeroed before the warm-up runs
    forward_graph = _capture(stream, workspace, dtype, math_mode, lambda gemm: forward(buffers, gemm))
    backward_graph = _capture(stream, workspace, dtype, math_mode, lambda gemm: backward(buffers, gemm))
    current.wait_event(stream.record())  # nothing written into the buffers overtakes the warm-up runs
    return BufferSet(buffers, forward_graph, backward_graph, workspace)


def math_mode(dtype: np.dtype) -> int:
    """The cuBLAS math mode the graphs of a ``dtype`` call capture with: that of CuPy's handle now (the default
    for float64, which no mode changes)."""
    if dtype != np.float32:
        return DEFAULT_MATH
    return cublas.getMathMode(cupy.cuda.device.get_cublas_handle())


def lend(key: tuple, dtype: np.dtype, allocate: Callable[[], Any], forward: Recorder, backward: Recorder) -> Lease:
    """A lease on a free buffer set of ``key`` (dims, layout, kind: what fixes the buffers and the captured
    launches) on the current math mode, device and stream; when none is free, a new one: ``allocate()``'s
    buffers (zeroed: the warm-up runs read them) with the graphs of ``forward`` and ``backward`` on them."""
    mode = math_mode(dtype)
    full_key = (*key, mode, cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr)
    with _SETS_LOCK:
        for name, buffer_set in _SETS.items():
            if name[0] == full_key and buffer_set.free():
                _SETS.move_to_end(name)
                return buffer_set.lend()
        try:
            buffer_set = _SETS[(full_key, next(_SERIAL))] = _capture_set(allocate, forward, backward, dtype, mode)
        except Exception as error:
            raise RuntimeError(f"the CUDA-graph path could not capture its loop here ({type(error).__name__}: "
                               f"{error}); impl='cupy-stepwise' runs the same loop without a graph") from error
        lease = buffer_set.lend()
        free = [name for name, kept in _SETS.items() if kept.free()]  # least recently used first
        for name in free[:max(0, len(_SETS) - MAX_SETS)]:  # a held set lives on in its cache, and is kept
            del _SETS[name]
        return lease


def _lend(dims: shell.Dims, dtype: np.dtype, masked: bool) -> Lease:
    """A lease on a buffer set of the plain layer's loops for this shape."""
    return lend((dims, dtype.name, masked), dtype, lambda: _allocate(dims, dtype, masked),
                lambda buffers, gemm: stepwise.forward_recurrence(buffers, dims, gemm),
                lambda buffers, gemm: stepwise.backward_recurrence(buffers, buffers, dims, gemm))


def release_graphs() -> None:
    """Drop every free buffer set, its graphs and the cuBLAS workspaces (a set a live cache holds is freed with
    that cache, and keeps its workspace till then); the next call of each shape captures again."""
    with _SETS_LOCK:
        _SETS.clear()
        _WORKSPACES.clear()


def _forward_buffers(x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any,
                     dims: shell.Dims) -> shell.ForwardBuffers:
    """The forward's buffers: a free set's, under a lease (an empty batch: arrays of its own, and no graph)."""
    lease = None if dims[1] == 0 else _lend(dims, np.dtype(x.dtype), step_mask is not None)
    into = None if lease is None else lease.buffer_set.buffers
    return shell.forward_buffers(x, weight, bias, h0, c0, step_mask, dims, into=into, lease=lease)


def _replay_forward(b: shell.ForwardBuffers, dims: shell.Dims) -> shell.ForwardBuffers:
    b.lease.buffer_set.forward.launch()
    return b._replace(y=b.y.copy())  # the caller keeps y; the rest stays in the set, held by the cache


def held_set(cache: Any, batch: int) -> BufferSet | None:
    """The buffer set ``cache`` holds (None for an empty batch, which has none); a cache of a batch that holds
    none came from another path's forward and is refused in one line."""
    if cache.lease is None and batch > 0:
        raise LayerInputError("the CUDA-graph path's backward takes the cache of its own forward (this one holds "
                              "no buffer set of it); run the backward of the implementation the forward ran")
    return None if cache.lease is None else cache.lease.buffer_set


def _backward_buffers(dy: Any, dh_last: Any, dc_last: Any, weight: Any,
                      cache: CupyLayerCache) -> shell.BackwardBuffers:
    held = held_set(cache, cache.dims()[1])
    return shell.backward_buffers(dy, dh_last, dc_last, weight, cache, into=None if held is None else held.buffers)


def _replay_backward(b: shell.BackwardBuffers, cache: CupyLayerCache) -> shell.BackwardBuffers:
    cache.lease.buffer_set.backward.launch()  # held_set checked the lease at the door
    return b._replace(dh=b.dh.copy(), dc=b.dc.copy())  # the caller keeps these; dz is used before any next call


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
    return layer_forward(_replay_forward, x, weight, bias, h0, c0, step_mask, buffers=_forward_buffers)


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: CupyLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    return layer_backward(_replay_backward, dy, dh_last, dc_last, weight, cache, buffers=_backward_buffers)


# the layers with cell options and the projected cell: the stepwise path's variant loops captured likewise, in a
# module of their own, exposed here, where the registry's "cupy-graph" entry points
from .graph_variants import (lstm_variant_layer_backward, lstm_variant_layer_forward, lstmp_layer_backward,  # noqa: E402
                             lstmp_layer_forward)
