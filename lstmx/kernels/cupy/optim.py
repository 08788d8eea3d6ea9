"""CuPy fast path of the optimizer updates and the global-norm clipping: up to 8 tensors per kernel launch.

The generic step (:func:`lstmx.training.optim.update_each`) issues about a dozen elementwise operations per tensor, each a
launch from Python; here a step of SGD, Adam, AdamW or RMSprop is one launch for every 8 parameter tensors
(``cuda/optim.cu``, :mod:`lstmx.kernels.cupy.cuda_sources`), and the new parameters and state slots are views of one
new flat buffer per role. The step functions have the generic one's signature
``(optimizer, xp, params, grads, states, lr) -> new params`` and, like it, leave every array they are given
untouched: the new parameters and state slots are new arrays (the models' cache checks rely on parameters being
replaced, not changed in place). The registry (:data:`lstmx.dispatch.registry.UPDATE_IMPLS`) says which optimizers have
one here. :func:`clip_by_global_norm` has the generic clipping's signature (:mod:`lstmx.training.optim`): one launch per
8 tensors sums their squares, the last block to finish writes the norm and the scale on the device, and a second
launch per 8 tensors scales them, where the generic path takes about four operations per tensor.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import cupy
import numpy as np

from . import cuda_sources
from .shell import NULL

THREADS = 256  # per block of every kernel here (global_norm's block sum assumes it)
TENSORS = 8  # tensors per launch (the kernels' pointer arguments)
CHUNK = THREADS * 16  # entries of the concatenation one block covers


@functools.cache
def _kernel(kernel: str, dtype: str) -> cupy.RawKernel:
    return cupy.RawKernel(cuda_sources.source("optim", dtype), cuda_sources.kernel_name(kernel, dtype))


class Launch(NamedTuple):
    """One launch's share of a step's tensors: which of them (a slice of the list), the kernels' arguments
    ``first, e0 .. e7, chunk`` (where they start in the concatenation of all, the running ends, the chunk per
    block), and its blocks."""

    taken: slice
    extent: tuple[np.int64, ...]
    blocks: int


def _launches(sizes: list[int]) -> list[Launch]:
    """The launches that cover tensors of these sizes, up to TENSORS each."""
    ends = np.cumsum([0, *sizes])
    launches = []
    for start in range(0, len(sizes), TENSORS):
        stop = min(start + TENSORS, len(sizes))
        group = [int(e) for e in ends[start + 1:stop + 1]]
        group += [group[-1]] * (TENSORS - len(group))  # empty tensors past the last
        blocks = -(-(group[-1] - int(ends[start])) // CHUNK)
        launches.append(Launch(slice(start, stop), tuple(np.int64(e) for e in (ends[start], *group, CHUNK)), blocks))
    return launches


def _pointers(arrays: list[Any], taken: slice) -> list[Any]:
    """The launch's pointer arguments of one role: its arrays, then null pointers up to TENSORS."""
    chosen = arrays[taken]
    return [*chosen, *[NULL] * (TENSORS - len(chosen))]


def _views(flat: Any, like: list[Any]) -> list[Any]:
    """Consecutive views of a flat buffer shaped like ``like``."""
    ends = np.cumsum([0, *(a.size for a in like)])
    return [flat[int(b):int(e)].reshape(a.shape) for a, b, e in zip(like, ends[:-1], ends[1:])]


def _one_dtype(arrays: list[Any], what: str) -> np.dtype:
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) > 1:
        raise ValueError(f"the fused kernels take {what} of one dtype; got {sorted(str(d) for d in dtypes)}")
    return dtypes.pop() if dtypes else np.dtype(np.float64)  # no tensors: nothing is launched


class _Step(NamedTuple):
    """A step's operands: names, contiguous parameters and gradients, their dtype and total size."""

    names: list[str]
    params: list[Any]
    grads: list[Any]
    dtype: np.dtype
    total: int


def _operands(params: dict[str, Any], grads: Any) -> _Step:
    """Contiguous parameters and gradients of one dtype, each gradient shaped like its parameter (the kernels
    index them flat)."""
    names = list(params)
    for name in names:
        param, grad = params[name], grads[name]
        if grad.shape != param.shape or grad.dtype != param.dtype:
            raise ValueError(f"gradient of {name!r} {grad.shape} {grad.dtype} does not match its parameter "
                             f"{param.shape} {param.dtype}")
    contiguous = [cupy.ascontiguousarray(params[n]) for n in names]
    return _Step(names, contiguous, [cupy.ascontiguousarray(grads[n]) for n in names],
                 _one_dtype(contiguous, "parameters"), sum(p.size for p in contiguous))


def _slot(states: dict[str, dict[str, Any]], step: _Step, slot: str, kept: bool = True) -> tuple[list[Any], Any]:
    """A state slot's arrays, one per tensor, and a new flat buffer for its next values; null pointers when the
    optimizer keeps no such slot (``kept`` false)."""
    if not kept:
        return [NULL] * len(step.names), NULL
    return [cupy.ascontiguousarray(states[name][slot]) for name in step.names], _flat(step)


def _flat(step: _Step) -> Any:
    return cupy.empty(step.total, dtype=step.dtype)


def _launch_step(kernel: str, step: _Step, slots: list[list[Any]], outputs: list[Any], scalars: tuple) -> None:
    """``kernel`` once per 8 tensors: its pointers (parameters, gradients, then each slot's), the extent, the flat
    outputs and the scalars."""
    for launch in _launches([p.size for p in step.params]):
        if launch.blocks:
            pointers = [p for role in (step.params, step.grads, *slots) for p in _pointers(role, launch.taken)]
            _kernel(kernel, step.dtype.name)((launch.blocks,), (THREADS,),
                                             (*pointers, *launch.extent, *outputs, *scalars))


def _store(states: dict[str, dict[str, Any]], step: _Step, slot: str, flat: Any, kept: bool = True) -> None:
    """The slot's new values, as views of its flat buffer."""
    if kept:
        for name, view in zip(step.names, _views(flat, step.params)):
            states[name][slot] = view


def adam_step(optimizer: Any, xp: Any, params: dict[str, Any], grads: Any, states: dict[str, dict[str, Any]],
              lr: float) -> dict[str, Any]:
    """``Adam`` / ``AdamW``'s step: one launch per 8 tensors."""
    step = _operands(params, grads)
    beta1, beta2 = optimizer.betas
    real = step.dtype.type
    exp_avg, new_exp_avg = _slot(states, step, "exp_avg")
    exp_avg_sq, new_exp_avg_sq = _slot(states, step, "exp_avg_sq")
    new_param = _flat(step)
    _launch_step("adam_update", step, [exp_avg, exp_avg_sq], [new_param, new_exp_avg, new_exp_avg_sq], (
        real(lr), real(beta1), real(beta2), real(optimizer.eps), real(optimizer.weight_decay),
        np.int32(optimizer.decoupled), real(lr / (1 - beta1**optimizer.step_count)),
        real(math.sqrt(1 - beta2**optimizer.step_count))))
    _store(states, step, "exp_avg", new_exp_avg)
    _store(states, step, "exp_avg_sq", new_exp_avg_sq)
    return dict(zip(step.names, _views(new_param, step.params)))


def sgd_step(optimizer: Any, xp: Any, params: dict[str, Any], grads: Any, states: dict[str, dict[str, Any]],
             lr: float) -> dict[str, Any]:
    """``SGD``'s step: one launch per 8 tensors."""
    step = _operands(params, grads)
    real = step.dtype.type
    momentum, new_momentum = _slot(states, step, "momentum", kept=bool(optimizer.momentum))
    new_param = _flat(step)
    _launch_step("sgd_update", step, [momentum], [new_param, new_momentum], (
        real(lr), real(optimizer.momentum), real(optimizer.weight_decay), np.int32(optimizer.nesterov),
        np.int32(optimizer.step_count == 1)))
    _store(states, step, "momentum", new_momentum, kept=bool(optimizer.momentum))
    return dict(zip(step.names, _views(new_param, step.params)))


def rmsprop_step(optimizer: Any, xp: Any, params: dict[str, Any], grads: Any, states: dict[str, dict[str, Any]],
                 lr: float) -> dict[str, Any]:
    """``RMSprop``'s step: one launch per 8 tensors."""
    step = _operands(params, grads)
    real = step.dtype.type
    square_avg, new_square_avg = _slot(states, step, "square_avg")
    momentum, new_momentum = _slot(states, step, "momentum", kept=bool(optimizer.momentum))
    new_param = _flat(step)
    _launch_step("rmsprop_update", step, [square_avg, momentum], [new_param, new_square_avg, new_momentum], (
        real(lr), real(optimizer.alpha), real(optimizer.eps), real(optimizer.momentum), real(optimizer.weight_decay)))
    _store(states, step, "square_avg", new_square_avg)
    _store(states, step, "momentum", new_momentum, kept=bool(optimizer.momentum))
    return dict(zip(step.names, _views(new_param, step.params)))


UPDATES = {"SGD": sgd_step, "Adam": adam_step, "AdamW": adam_step, "RMSprop": rmsprop_step}  # class → fused step


def clip_by_global_norm(backend: Any, grads: dict[str, Any], max_norm: float) -> tuple[dict[str, Any], Any]:
    """What the generic ``clip_by_global_norm`` (:mod:`lstmx.training.optim`) computes, in two launches per 8 tensors: every
    gradient scaled by ``min(1, max_norm / ‖g‖)`` into views of one new flat buffer, and the norm before as a 0-d
    device array, without a host sync."""
    if not grads:
        from ...training.optim import clip_by_global_norm as generic

        return generic(backend, grads, max_norm)
    arrays = [cupy.ascontiguousarray(g) for g in grads.values()]
    dtype = _one_dtype(arrays, "gradients")
    launches = _launches([a.size for a in arrays])
    blocks = [max(1, launch.blocks) for launch in launches]  # a block even for empty tensors: it writes the norm
    total_blocks = sum(blocks)
    partials = cupy.empty(total_blocks, dtype=np.float64)
    finished = cupy.zeros(1, dtype=np.uint32)  # counts the blocks done; the last one writes the norm
    norm_and_scale = cupy.empty(2, dtype=dtype)
    first_block = 0
    for launch, count in zip(launches, blocks):
        _kernel("global_norm", dtype.name)((count,), (THREADS,), (
            *_pointers(arrays, launch.taken), *launch.extent, np.int32(first_block), np.int32(total_blocks),
            partials, finished, norm_and_scale, np.float64(max_norm)), shared_mem=(THREADS + 1) * 8)
        first_block += count
    clipped = cupy.empty(sum(a.size for a in arrays), dtype=dtype)
    for launch in launches:
        if launch.blocks:
            _kernel("scale_tensors", dtype.name)((launch.blocks,), (THREADS,), (
                *_pointers(arrays, launch.taken), *launch.extent, clipped, norm_and_scale))
    return dict(zip(grads, _views(clipped, arrays))), norm_and_scale[0]
