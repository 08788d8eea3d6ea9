"""NumPy's own BLAS GEMM as a function pointer that Numba-compiled loops call, so a layer's whole time loop runs
without returning to Python between steps.

NumPy's wheels bundle OpenBLAS built for 64-bit integers, whose C entry points are ``scipy_cblas_sgemm64_`` and
``scipy_cblas_dgemm64_``. They are found among the BLAS libraries the process has loaded (threadpoolctl lists
them), so the compiled loop runs the very library ``np.matmul`` does: the same products, bit for bit. Where
NumPy links another BLAS (MKL, Accelerate), or threadpoolctl is absent, :func:`gemm` is None and the loops stay
in Python around ``np.matmul``; the names of other BLAS builds are not guessed, because a wrong integer width
would not fail, it would read garbage.

A loop passes the pointer as an argument (Numba types it as an external function pointer), so the compiled
loop caches on disk without baking in an address that differs from one process to the next.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

ROW_MAJOR, NO_TRANSPOSE, TRANSPOSE = 101, 111, 112  # CBLAS_ORDER and CBLAS_TRANSPOSE values
_ENTRY = {"float32": ("scipy_cblas_sgemm64_", ctypes.c_float), "float64": ("scipy_cblas_dgemm64_", ctypes.c_double)}


@functools.cache
def gemm(dtype: str) -> Any:
    """The row-major C GEMM of NumPy's BLAS for ``dtype`` ("float32" or "float64"), ``(order, trans_a, trans_b,
    m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`` with int64 sizes and raw pointers; None where it is not
    found (see the module's docstring)."""
    name, real = _ENTRY[np.dtype(dtype).name]
    for library in _openblas_paths():
        loaded = ctypes.CDLL(library)
        if hasattr(loaded, name):
            function = getattr(loaded, name)
            size, pointer = ctypes.c_int64, ctypes.c_void_p
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, size, size, size, real, pointer, size,
                                 pointer, size, real, pointer, size]
            function.restype = None
            return function
    return None


def _openblas_paths() -> list[str]:
    np.ones(1) @ np.ones(1)  # NumPy loads its BLAS at import; this only makes sure
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [entry["filepath"] for entry in threadpool_info() if entry.get("internal_api") == "openblas"]
