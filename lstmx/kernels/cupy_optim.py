"""CuPy fast path of the optimizer updates: one fused kernel launch per parameter tensor and step, and
clipping by the global norm in two launches.

The generic update (``Optimizer.update`` in :mod:`lstmx.optim`) issues about a dozen elementwise operations per
tensor, each a launch from Python; here each tensor's step is one kernel
(``cuda/optim.cu``, :mod:`lstmx.kernels.cuda_sources`). The functions have the generic method's signature
``(optimizer, xp, param, grad, state, lr) -> new param`` and, like it, leave every array they are given
untouched: the new parameter and state slots are new arrays (the models' cache checks rely on parameters being
replaced, not changed in place). The registry (:data:`lstmx.registry.UPDATE_IMPLS`) says which optimizers
have one here. :func:`clip_by_global_norm` has the generic clipping's signature (:mod:`lstmx.optim`): one
launch sums the squares of up to 8 tensors and writes the norm and the scale on the device, a second scales
them, where the generic path takes about four operations per tensor.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import cupy
import numpy as np

from . import cuda_sources
from .cupy_layer import NULL

THREADS = 256
MAX_BLOCKS = 1024  # a grid-stride loop covers larger tensors


@functools.cache
def _kernel(kernel: str, dtype: str) -> cupy.RawKernel:
    return cupy.RawKernel(cuda_sources.source("optim", dtype), cuda_sources.kernel_name(kernel, dtype))


def _launch(kernel: str, n: int, dtype: np.dtype, args: tuple) -> None:
    if n > 0:
        blocks = min(MAX_BLOCKS, (n + THREADS - 1) // THREADS)
        _kernel(kernel, dtype.name)((blocks,), (THREADS,), (*args, np.int64(n)))


def _operands(param: Any, grad: Any) -> tuple[Any, Any, np.dtype]:
    """Contiguous parameter and gradient of one dtype and shape (the kernels index them flat)."""
    if grad.shape != param.shape or grad.dtype != param.dtype:
        raise ValueError(f"gradient {grad.shape} {grad.dtype} does not match its parameter {param.shape} {param.dtype}")
    return cupy.ascontiguousarray(param), cupy.ascontiguousarray(grad), np.dtype(param.dtype)


def adam_update(optimizer: Any, xp: Any, param: Any, grad: Any, state: dict[str, Any], lr: float) -> Any:
    """``Adam.update`` / ``AdamW.update`` in one launch."""
    param, grad, dtype = _operands(param, grad)
    beta1, beta2 = optimizer.betas
    real = dtype.type
    new_param, new_exp_avg, new_exp_avg_sq = (cupy.empty_like(param) for _ in range(3))
    step_size = lr / (1 - beta1**optimizer.step_count)
    _launch("adam_update", param.size, dtype,
            (param, grad, cupy.ascontiguousarray(state["exp_avg"]), cupy.ascontiguousarray(state["exp_avg_sq"]),
             new_param, new_exp_avg, new_exp_avg_sq, real(lr), real(beta1), real(beta2), real(optimizer.eps),
             real(optimizer.weight_decay), np.int32(optimizer.decoupled), real(step_size),
             real(math.sqrt(1 - beta2**optimizer.step_count))))
    state["exp_avg"], state["exp_avg_sq"] = new_exp_avg, new_exp_avg_sq
    return new_param


def sgd_update(optimizer: Any, xp: Any, param: Any, grad: Any, state: dict[str, Any], lr: float) -> Any:
    """``SGD.update`` in one launch."""
    param, grad, dtype = _operands(param, grad)
    real = dtype.type
    new_param = cupy.empty_like(param)
    buffer, new_buffer = NULL, NULL
    if optimizer.momentum:
        buffer, new_buffer = cupy.ascontiguousarray(state["momentum"]), cupy.empty_like(param)
    _launch("sgd_update", param.size, dtype,
            (param, grad, buffer, new_param, new_buffer, real(lr), real(optimizer.momentum),
             real(optimizer.weight_decay), np.int32(optimizer.nesterov), np.int32(optimizer.step_count == 1)))
    if optimizer.momentum:
        state["momentum"] = new_buffer
    return new_param


UPDATES = {"SGD": sgd_update, "Adam": adam_update, "AdamW": adam_update}  # optimizer class → its fused update


CLIP_TENSORS = 8  # tensors per launch of the clipping kernels (their pointer arguments)
CLIP_CHUNK = THREADS * 16  # entries one block of global_norm sums


def _tensor_arguments(arrays: list[Any]) -> tuple[list[Any], list[np.int64]]:
    """The clipping kernels' pointer arguments (null past the last array) and the running totals of sizes."""
    padded = [*arrays, *[None] * (CLIP_TENSORS - len(arrays))]
    ends = np.cumsum([0 if a is None else a.size for a in padded])
    return [NULL if a is None else a for a in padded], [np.int64(e) for e in ends]


def clip_by_global_norm(backend: Any, grads: dict[str, Any], max_norm: float) -> tuple[dict[str, Any], Any]:
    """What the generic ``clip_by_global_norm`` (:mod:`lstmx.optim`) computes, in two launches per 8 tensors: every
    gradient scaled by ``min(1, max_norm / ‖g‖)`` into new arrays, and the norm before as a 0-d device array,
    without a host sync."""
    if not grads:
        from ..optim import clip_by_global_norm as generic

        return generic(backend, grads, max_norm)
    arrays = [cupy.ascontiguousarray(g) for g in grads.values()]
    if len({a.dtype for a in arrays}) != 1:
        raise ValueError(f"the fused clipping takes gradients of one dtype; got {sorted({str(a.dtype) for a in arrays})}")
    dtype = np.dtype(arrays[0].dtype)
    groups = [arrays[i:i + CLIP_TENSORS] for i in range(0, len(arrays), CLIP_TENSORS)]
    blocks = [max(1, -(-sum(a.size for a in group) // CLIP_CHUNK)) for group in groups]
    total_blocks = sum(blocks)
    partials = cupy.empty(total_blocks, dtype=np.float64)
    finished = cupy.zeros(1, dtype=np.uint32)  # counts the blocks done; the last one writes the norm
    norm_and_scale = cupy.empty(2, dtype=dtype)
    first_block = 0
    for group, count in zip(groups, blocks):
        pointers, ends = _tensor_arguments(group)
        _kernel("global_norm", dtype.name)((count,), (THREADS,), (
            *pointers, *ends, np.int64(CLIP_CHUNK), np.int32(first_block), np.int32(total_blocks), partials, finished,
            norm_and_scale, np.float64(max_norm)), shared_mem=(THREADS + 1) * 8)
        first_block += count
    clipped = []
    for group in groups:
        outputs = [cupy.empty_like(a) for a in group]
        pointers, ends = _tensor_arguments(group)
        largest = max(a.size for a in group)
        if largest > 0:
            _kernel("scale_tensors", dtype.name)((min(MAX_BLOCKS, -(-largest // THREADS)),), (THREADS,), (
                *pointers, *_tensor_arguments(outputs)[0], *ends, norm_and_scale))
        clipped += outputs
    return dict(zip(grads, clipped)), norm_and_scale[0]
