"""TensorFloat-32 for cuBLAS on CuPy: the math mode of the current device's cuBLAS handle (the one CuPy's
``matmul`` and lstmx's stepwise GEMMs use), set for a block and restored after it."""

from __future__ import annotations

import contextlib
from typing import Iterator

import cupy
from cupy_backends.cuda.libs import cublas

TF32_TENSOR_OP_MATH = 3  # cublasMath_t CUBLAS_TF32_TENSOR_OP_MATH
MODE_BITS = 0xF  # the low bits name the mode; higher bits are flags (e.g. disallow reduced-precision reductions)


@contextlib.contextmanager
def tf32_gemms() -> Iterator[None]:
    handle = cupy.cuda.device.get_cublas_handle()
    previous = cublas.getMathMode(handle)
    cublas.setMathMode(handle, (previous & ~MODE_BITS) | TF32_TENSOR_OP_MATH)
    try:
        yield
    finally:
        cublas.setMathMode(handle, previous)
