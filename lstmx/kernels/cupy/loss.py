"""CuPy fast path of the language model's softmax cross-entropy and its gradient: one kernel for both.

Same signature as the generic ``cross_entropy_and_gradient`` (:mod:`lstmx.nn.layers.loss`) and tested against
it. The generic path forms log-softmax, picks the targets' entries and builds the one-hot gradient in about
fifteen array operations; here one kernel (``cuda/loss.cu``, :mod:`lstmx.kernels.cupy.cuda_sources`, a block per row)
writes each row's loss term and dL/dlogits, and two reductions count the real targets and sum the terms.
Nothing is read back to the host.
"""

from __future__ import annotations

import functools
from typing import Any

import cupy
import numpy as np

from ...backend import Backend
from . import cuda_sources

THREADS = 128  # per block (a power of two: the block reduction halves it)
MAX_BLOCKS = 4096  # a grid-stride loop covers more rows


@functools.cache
def _kernel(dtype: str) -> cupy.RawKernel:
    return cupy.RawKernel(cuda_sources.source("loss", dtype), cuda_sources.kernel_name("softmax_cross_entropy", dtype))


def cross_entropy_and_gradient(backend: Backend, logits: Any, targets: Any, ignore_index: int = -100) -> tuple[Any, Any]:
    """Mean cross-entropy over the targets that are not ``ignore_index`` (a 0-d array) and dL/dlogits."""
    rows, classes = logits.shape
    if classes < 1 or targets.shape != (rows,):
        raise ValueError(f"logits (N, V) with V >= 1 and targets (N,) expected, got {logits.shape} and {targets.shape}")
    dtype = np.dtype(logits.dtype)
    logits = cupy.ascontiguousarray(logits)
    targets = cupy.ascontiguousarray(targets, dtype=cupy.int64)
    count = cupy.maximum(cupy.sum(targets != ignore_index, dtype=dtype), dtype.type(1))
    row_loss = cupy.empty(rows, dtype=dtype)
    dlogits = cupy.empty_like(logits)
    if rows > 0:
        _kernel(dtype.name)((min(rows, MAX_BLOCKS),), (THREADS,),
                            (logits, targets, count, row_loss, dlogits, np.int32(rows), np.int32(classes),
                             np.int64(ignore_index)), shared_mem=THREADS * dtype.itemsize)
    return cupy.sum(row_loss) / count, dlogits
