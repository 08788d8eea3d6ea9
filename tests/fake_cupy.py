"""A stand-in for CuPy on NumPy whose ``RawKernel`` runs on the CUDA emulator, so lstmx's own CuPy wrappers
(``lstmx.kernels.cupy_persistent``, ``cupy_tiled``, ``cupy_optim``, ``cupy_loss``) run unchanged in the CPU suite:
their buffers, argument lists, grid and shared-memory sizes meet the kernels there, not first on a GPU.

:func:`fake_cupy_modules` imports fresh copies of those modules bound to the stand-in (``monkeypatch`` puts the
real ones back after the test). The stand-in is a small GPU: ``SMS`` multiprocessors with ``SHARED_BYTES`` of
shared memory per block, so the launches stay small enough to emulate; arrays it allocates sit between guard
margins and start as NaN. Only the calls those wrappers make exist (the stepwise path's raw cuBLAS calls do
not: ``tests/emulated_paths.py`` mirrors that wrapper instead).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import numpy as np

from .cuda_emulator import compile_kernels, guarded

SMS = 8
SHARED_BYTES = 96 * 1024
THREADS_PER_SM = 2048
WRAPPERS = ("cupy_layer", "cupy_persistent", "cupy_tiled", "cupy_optim", "cupy_loss")


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
        if self.cooperative and int(np.prod(grid)) > SMS * occupancy(threads, shared_mem):
            raise RuntimeError(f"{self.name}: a cooperative grid of {grid} blocks is not co-resident")
        compile_kernels(self.code, [self.name]).launch(self.name, grid, block, args, shared_mem, seed=self.seed)


def occupancy(threads: int, shared_mem: int) -> int:
    """Blocks of this size one multiprocessor holds at once (threads and shared memory only)."""
    return min(THREADS_PER_SM // max(threads, 1), SHARED_BYTES // max(shared_mem, 1))


def _empty(shape: Any, dtype: Any = np.float64) -> np.ndarray:
    return guarded(np.full(shape, np.nan, dtype=dtype))


def _contiguous(array: Any, dtype: Any = None) -> np.ndarray:
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if array.flags.c_contiguous and (dtype is None or array.dtype == np.dtype(dtype)):
        return array
    return guarded(np.ascontiguousarray(array, dtype=dtype))


class _Device:
    attributes = {"MultiProcessorCount": SMS, "MaxSharedMemoryPerBlockOptin": SHARED_BYTES}

    def __init__(self, device: int | None = None) -> None:
        self.id = 0


def _modules() -> dict[str, types.ModuleType]:
    cupy = types.ModuleType("cupy")
    cupy.__dict__.update(
        RawKernel=RawKernel, empty=_empty, empty_like=lambda a, dtype=None: _empty(a.shape, dtype or a.dtype),
        ascontiguousarray=_contiguous, array=lambda a, dtype=None, order="C": guarded(np.array(a, dtype=dtype)),
        matmul=np.matmul, reshape=np.reshape, int64=np.int64, ndarray=np.ndarray,
        # CuPy's reductions give 0-d arrays (device memory), NumPy's give scalars
        sum=lambda *args, **options: np.asarray(np.sum(*args, **options)),
        maximum=lambda *args, **options: np.asarray(np.maximum(*args, **options)),
        cuda=types.SimpleNamespace(Device=_Device))
    driver = types.ModuleType("cupy_backends.cuda.api.driver")
    driver.occupancyMaxActiveBlocksPerMultiprocessor = lambda pointer, threads, shared: occupancy(threads, shared)
    cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")  # only the stepwise path calls it
    modules = {"cupy": cupy, "cupy_backends.cuda.api.driver": driver, "cupy_backends.cuda.libs.cublas": cublas}
    for parent in ("cupy_backends", "cupy_backends.cuda", "cupy_backends.cuda.api", "cupy_backends.cuda.libs"):
        modules[parent] = types.ModuleType(parent)
    modules["cupy_backends.cuda.api"].driver = driver
    modules["cupy_backends.cuda.libs"].cublas = cublas
    return modules


def fake_cupy_modules(monkeypatch: Any) -> dict[str, types.ModuleType]:
    """Fresh ``lstmx.kernels`` wrapper modules (by short name) bound to the stand-in, for one test; afterwards
    ``monkeypatch`` puts back whatever ``sys.modules`` and the package held before (the real modules, or none)."""
    import lstmx.kernels

    for name, module in _modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in WRAPPERS:
        key = f"lstmx.kernels.{name}"
        monkeypatch.setitem(sys.modules, key, None)  # recorded, so the undo restores the original or removes it
        del sys.modules[key]
        monkeypatch.setattr(lstmx.kernels, name, None, raising=False)
    return {name: importlib.import_module(f"lstmx.kernels.{name}") for name in WRAPPERS}
