"""Softmax cross-entropy from logits, computed with log-sum-exp (no ``log(0)``), normalised per real token."""

from __future__ import annotations

from typing import Any, NamedTuple

from ...backend import Backend

IGNORE_INDEX = -100


class CrossEntropyCache(NamedTuple):
    log_probs: Any  # (N, V)
    targets: Any  # (N,) with ignored entries replaced by 0
    real: Any  # (N,) 1.0 where the target counts, 0.0 where it is ignored
    count: Any  # 0-d: number of real targets (at least 1)


def log_softmax(backend: Backend, logits: Any) -> Any:
    xp = backend.xp
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def cross_entropy_forward(
    backend: Backend, logits: Any, targets: Any, ignore_index: int = IGNORE_INDEX
) -> tuple[Any, CrossEntropyCache]:
    """Mean negative log-likelihood of ``targets`` (N,) under ``logits`` (N, V) over the non-ignored targets.

    Returns a 0-d array (no host sync) and the cache.
    """
    xp = backend.xp
    log_probs = log_softmax(backend, logits)
    is_real = targets != ignore_index
    safe_targets = xp.where(is_real, targets, xp.zeros_like(targets))
    real = xp.astype(is_real, logits.dtype)
    picked = xp.take_along_axis(log_probs, safe_targets[:, None], axis=1)[:, 0]
    count = xp.maximum(xp.sum(real), xp.asarray(1.0, dtype=logits.dtype, device=backend.device))
    loss = -xp.sum(picked * real) / count
    return loss, CrossEntropyCache(log_probs, safe_targets, real, count)


def cross_entropy_backward(backend: Backend, dloss: Any, cache: CrossEntropyCache) -> Any:
    """Mirror of :func:`cross_entropy_forward`: dL/dlogits = (softmax − one_hot) · real / count · dloss."""
    xp = backend.xp
    log_probs, targets, real, count = cache
    classes = xp.arange(log_probs.shape[-1], device=backend.device)
    one_hot = xp.astype(targets[:, None] == classes[None, :], log_probs.dtype)
    return (xp.exp(log_probs) - one_hot) * (real * (dloss / count))[:, None]


def cross_entropy_and_gradient(backend: Backend, logits: Any, targets: Any,
                               ignore_index: int = IGNORE_INDEX) -> tuple[Any, Any]:
    """The loss of :func:`cross_entropy_forward` and dL/dlogits (dL/dloss = 1) in one call: the generic
    implementation of what :mod:`lstmx.dispatch.registry` (``LOSS_IMPLS``) may run fused."""
    loss, cache = cross_entropy_forward(backend, logits, targets, ignore_index)
    return loss, cross_entropy_backward(backend, backend.xp.ones_like(loss), cache)
