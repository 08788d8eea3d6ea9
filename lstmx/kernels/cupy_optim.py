"""CuPy fast path of the optimizer updates: one fused kernel launch per parameter tensor and step.

The generic update (``Optimizer.update`` in :mod:`lstmx.optim`) issues about a dozen elementwise operations per
tensor, each a launch from Python; here each tensor's step is one kernel
(``OPTIM`` in :mod:`lstmx.kernels.cuda_sources`). The functions have the generic method's signature
``(optimizer, xp, param, grad, state, lr) -> new param`` and, like it, leave every array they are given
untouched: the new parameter and state slots are new arrays (the models' cache checks rely on parameters being
replaced, not changed in place). The registry (:data:`lstmx.registry.UPDATE_IMPLS`) says which optimizers
have one here.
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
