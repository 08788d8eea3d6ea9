"""A stand-in for CuPy on NumPy whose ``RawKernel`` runs on the CUDA emulator, so lstmx's own CuPy wrappers
(``lstmx.kernels.cupy``: ``precision``, ``shell``, ``stepwise``, ``variants``, ``persistent``, ``tiled``,
``one_launch_variants``, ``tiled_tf32``, ``graph``, ``graph_variants``, ``optim``, ``loss``, ``generate``) run unchanged in the CPU suite:
their buffers, argument lists, grid and shared-memory sizes meet the kernels there, not first on a GPU.

:func:`fake_cupy_modules` imports fresh copies of those modules bound to the stand-in (``monkeypatch`` puts the
real ones back after the test). The stand-in is a small GPU: ``SMS`` multiprocessors with ``SHARED_BYTES`` of
shared memory per block, so the launches stay small enough to emulate; arrays it allocates sit between guard
margins and start as NaN. Only the calls those wrappers make exist, the stepwise path's raw-pointer cuBLAS GEMMs included
(computed with NumPy on views of the memory the pointers address).

CUDA graphs (``lstmx.kernels.cupy.graph``): a stream's capture records each kernel launch and each GEMM through the cuBLAS C
function (a stand-in for ``lstmx.kernels.cupy.graph``'s ctypes calls) instead of running it, and a graph's launch runs them in
order on whatever the arrays then hold. As on a GPU, CuPy's own cuBLAS wrappers refuse calls during a capture;
so do allocations and ``cupy.matmul`` here (the path must make none inside one).
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from typing import Any

import numpy as np

from .cuda_emulator import GuardedArray, compile_kernels, guarded

SMS = 8
SHARED_BYTES = 96 * 1024
THREADS_PER_SM = 2048
WRAPPERS = ("precision", "shell", "stepwise", "variants", "one_launch_variants", "one_launch_projected", "persistent",
            "tiled", "tiled_tf32", "tiled_rounded", "tiled_bf16", "tiled_fp16",
            "graph", "graph_variants", "optim", "loss", "generate")  # in lstmx.kernels.cupy


class RawKernel:
    """``cupy.RawKernel``: compiled for the emulator on first launch; refuses what a GPU would refuse."""

    seed = 0  # the emulator's thread order

    def __init__(self, code: str, name: str, options: tuple = (), enable_cooperative_groups: bool = False) -> None:
        self.code, self.name, self.cooperative = code, name, enable_cooperative_groups
        self.max_dynamic_shared_size_bytes = 48 * 1024
        self.kernel = types.SimpleNamespace(ptr=id(self))

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise RuntimeError(f"{self.name}: {shared_mem} bytes of shared memory, more than the kernel allows")
        threads = int(np.prod(block))
        if threads > 1024:
            raise RuntimeError(f"{self.name}: {threads} threads per block")
        if min(grid) < 1 or min(block) < 1 or grid[0] >= 2**31 or max((*grid[1:], 1)) >= 2**16:
            raise RuntimeError(f"{self.name}: invalid configuration argument (grid {grid}, block {block})")
        bound = launch_bound(self.code, self.name)
        if bound is not None and threads > bound:
            raise RuntimeError(f"{self.name}: too many resources requested for launch ({threads} threads per "
                               f"block; compiled for at most {bound})")
        if self.cooperative and int(np.prod(grid)) > SMS * occupancy(threads, shared_mem):
            raise RuntimeError(f"{self.name}: a cooperative grid of {grid} blocks is not co-resident")
        kernels = compile_kernels(self.code, [self.name])
        run = lambda: kernels.launch(self.name, grid, block, args, shared_mem, seed=self.seed,  # noqa: E731
                                     cooperative=self.cooperative)
        if Stream.capturing is not None:
            Stream.capturing.append(run)
        else:
            run()


class Stream:
    """``cupy.cuda.Stream``: a context that makes it current, and a capture that records into a :class:`Graph`."""

    current: list["Stream"] = []  # the ``with`` stack
    capturing: list | None = None  # the operations of the capture under way

    def __init__(self, non_blocking: bool = False) -> None:
        self.ptr = id(self)

    def __enter__(self) -> "Stream":
        Stream.current.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        Stream.current.pop()

    def begin_capture(self) -> None:
        if Stream.capturing is not None:
            raise RuntimeError("a capture is already under way")
        Stream.capturing = []

    def end_capture(self) -> "Graph":
        operations, Stream.capturing = Stream.capturing, None
        return Graph(operations)

    def record(self) -> object:
        return object()

    def wait_event(self, event: object) -> None:
        pass


NULL_STREAM = Stream()


def _current_stream() -> Stream:
    return Stream.current[-1] if Stream.current else NULL_STREAM


class Graph:
    """A captured sequence of launches; :meth:`launch` runs it (counted in ``launches``)."""

    def __init__(self, operations: list) -> None:
        self.operations, self.launches = operations, 0

    def launch(self, stream: Any = None) -> None:
        _refuse_during_capture("a graph launch")
        self.launches += 1
        for operation in self.operations:
            operation()


def _refuse_during_capture(what: str) -> None:
    if Stream.capturing is not None:
        raise NotImplementedError(f"{what} during stream capture")


def _outside_capture(function: Any, what: str) -> Any:
    def call(*args: Any, **options: Any) -> Any:
        _refuse_during_capture(what)
        return function(*args, **options)

    return call


class CublasC:
    """``lstmx.kernels.cupy.graph``'s direct cuBLAS C calls: GEMMs recorded during a capture, run otherwise."""

    def gemm(self, dtype: Any) -> Any:
        return _gemm(dtype, record=True)

    def set_workspace(self, handle: int, workspace: Any) -> None:
        _refuse_during_capture("setting a cuBLAS workspace")


def launch_bound(code: str, name: str) -> int | None:
    """The most threads per block the kernel ``name`` was compiled for (its ``__launch_bounds__``), if any."""
    found = re.search(r"__launch_bounds__\((\d+)[^)]*\)\s+" + re.escape(name) + r"\s*\(", code)
    return None if found is None else int(found.group(1))


def occupancy(threads: int, shared_mem: int) -> int:
    """Blocks of this size one multiprocessor holds at once (threads and shared memory only)."""
    return min(THREADS_PER_SM // max(threads, 1), SHARED_BYTES // max(shared_mem, 1))


class DeviceArray(GuardedArray):
    """An array the stand-in allocated or was given: ``.data.ptr`` is its address, as on a CuPy array."""

    @property
    def data(self) -> Any:
        return types.SimpleNamespace(ptr=self.ctypes.data)


def _device(array: np.ndarray) -> DeviceArray:
    device = array.view(DeviceArray)
    device.margins = getattr(array, "margins", None)
    return device


def _empty(shape: Any, dtype: Any = np.float64) -> DeviceArray:
    return _device(guarded(np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0, dtype=dtype)))


def _contiguous(array: Any, dtype: Any = None) -> DeviceArray:
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if array.flags.c_contiguous and (dtype is None or array.dtype == np.dtype(dtype)):
        return _device(array)
    return _device(guarded(np.ascontiguousarray(array, dtype=dtype)))


def _column_major(pointer: int, rows: int, cols: int, lead: int, dtype: np.dtype) -> np.ndarray:
    """A writable (rows, cols) view of the column-major matrix at ``pointer`` with leading dimension ``lead``."""
    size = lead * (cols - 1) + rows
    flat = np.ctypeslib.as_array((np.ctypeslib.as_ctypes_type(dtype) * size).from_address(pointer))
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(dtype.itemsize, lead * dtype.itemsize))


def _gemm(dtype: Any, record: bool = False) -> Any:
    """cuBLAS ``?gemm`` (``record``: recorded into the capture under way, if any, as a GPU would)."""
    dtype = np.dtype(dtype)

    def gemm(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):  # noqa: ANN001 (cuBLAS's)
        """C (m × n) = α op(A) op(B) + β C, column-major, scalars behind host pointers (read at the call, so a
        captured GEMM keeps the values they had then); with β = 0, C is not read."""
        scalar = np.ctypeslib.as_ctypes_type(dtype)
        alpha, beta = scalar.from_address(alpha).value, scalar.from_address(beta).value

        def compute() -> None:
            op_a = _column_major(a, m, k, lda, dtype) if transa == 0 else _column_major(a, k, m, lda, dtype).T
            op_b = _column_major(b, k, n, ldb, dtype) if transb == 0 else _column_major(b, n, k, ldb, dtype).T
            out = _column_major(c, m, n, ldc, dtype)
            product = alpha * (op_a @ op_b)
            out[...] = product + beta * out if beta != 0 else product

        if record and Stream.capturing is not None:
            Stream.capturing.append(compute)
        else:
            compute()

    return gemm


class _Device:
    attributes = {"MultiProcessorCount": SMS, "MaxSharedMemoryPerBlockOptin": SHARED_BYTES}

    def __init__(self, device: int | None = None) -> None:
        self.id = 0


def _modules() -> dict[str, types.ModuleType]:
    cupy = types.ModuleType("cupy")
    cupy.__dict__.update(
        RawKernel=RawKernel, empty=_outside_capture(_empty, "an allocation"),
        empty_like=_outside_capture(lambda a, dtype=None: _empty(a.shape, dtype or a.dtype), "an allocation"),
        zeros=_outside_capture(lambda shape, dtype=np.float64: _device(guarded(np.zeros(shape, dtype=dtype))),
                               "an allocation"),
        ascontiguousarray=_contiguous, array=lambda a, dtype=None, order="C": _contiguous(np.array(a, dtype=dtype)),
        matmul=_outside_capture(np.matmul, "a matmul"),
        asarray=lambda a, dtype=None: _contiguous(a, dtype), asnumpy=lambda a: np.array(a),
        concatenate=lambda arrays: _contiguous(np.concatenate(arrays)),
        stack=lambda arrays: _contiguous(np.stack(arrays)), ravel=np.ravel,
        reshape=np.reshape, int64=np.int64, ndarray=np.ndarray,
        # CuPy's reductions give 0-d arrays (device memory), NumPy's give scalars
        sum=lambda *args, **options: np.asarray(np.sum(*args, **options)),
        maximum=lambda *args, **options: np.asarray(np.maximum(*args, **options)),
        cuda=types.SimpleNamespace(Device=_Device, Stream=Stream, get_current_stream=_current_stream,
                                   device=types.SimpleNamespace(get_cublas_handle=lambda: 0)))
    driver = types.ModuleType("cupy_backends.cuda.api.driver")
    driver.occupancyMaxActiveBlocksPerMultiprocessor = lambda pointer, threads, shared: occupancy(threads, shared)
    cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")  # what the stepwise path calls
    refused = lambda function: _outside_capture(function, "calling cuBLAS API")  # noqa: E731 (as CuPy does)
    math_modes: dict[int, int] = {}  # handle → cublasMath_t (0, the default, until set)
    cublas.__dict__.update(CUBLAS_OP_N=0, CUBLAS_OP_T=1, CUBLAS_POINTER_MODE_HOST=0,
                           setStream=refused(lambda *args: None), setPointerMode=refused(lambda *args: None),
                           setMathMode=refused(math_modes.__setitem__),
                           getMathMode=refused(lambda handle: math_modes.get(handle, 0)), create=refused(lambda: 1),
                           sgemm=refused(_gemm(np.float32)), dgemm=refused(_gemm(np.float64)))
    modules = {"cupy": cupy, "cupy_backends.cuda.api.driver": driver, "cupy_backends.cuda.libs.cublas": cublas}
    for parent in ("cupy_backends", "cupy_backends.cuda", "cupy_backends.cuda.api", "cupy_backends.cuda.libs"):
        modules[parent] = types.ModuleType(parent)
    modules["cupy_backends.cuda.api"].driver = driver
    modules["cupy_backends.cuda.libs"].cublas = cublas
    return modules


def fake_cupy_modules(monkeypatch: Any) -> dict[str, types.ModuleType]:
    """Fresh ``lstmx.kernels`` wrapper modules (by short name) bound to the stand-in, for one test; afterwards
    ``monkeypatch`` puts back whatever ``sys.modules`` and the package held before (the real modules, or none)."""
    import lstmx.kernels.cupy

    for name, module in _modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in WRAPPERS:
        key = f"lstmx.kernels.cupy.{name}"
        monkeypatch.setitem(sys.modules, key, None)  # recorded, so the undo restores the original or removes it
        del sys.modules[key]
        monkeypatch.setattr(lstmx.kernels.cupy, name, None, raising=False)
    modules = {name: importlib.import_module(f"lstmx.kernels.cupy.{name}") for name in WRAPPERS}
    modules["graph"]._cublas_c = CublasC  # its ctypes calls into libcublas, recorded or run here
    return modules
