"""Affine layer ``y = x W + b`` over the last axis; any leading axes (T, B, ...) are batch axes."""

from __future__ import annotations

from typing import Any, NamedTuple

from ...backend import Backend


class LinearCache(NamedTuple):
    x: Any  # the layer's input, for dW = xᵀ dy


def linear_forward(backend: Backend, x: Any, weight: Any, bias: Any) -> tuple[Any, LinearCache]:
    """``x`` (..., D), ``weight`` (D, V), ``bias`` (V,) → ``y`` (..., V)."""
    xp = backend.xp
    lead = x.shape[:-1]
    flat = xp.reshape(x, (-1, x.shape[-1]))
    y = backend.matmul(flat, weight) + bias
    return xp.reshape(y, (*lead, weight.shape[1])), LinearCache(x)


def linear_backward(backend: Backend, dy: Any, weight: Any, cache: LinearCache) -> tuple[Any, Any, Any]:
    """Mirror of :func:`linear_forward`: returns ``(dx, dweight, dbias)``."""
    xp = backend.xp
    x = cache.x
    flat_x = xp.reshape(x, (-1, x.shape[-1]))
    flat_dy = xp.reshape(dy, (-1, dy.shape[-1]))
    dy_operand = backend.operand(flat_dy)  # in the products' operand format once, for both products
    dweight = backend.operand(flat_x).T @ dy_operand
    dbias = xp.sum(flat_dy, axis=0)
    dx = xp.reshape(dy_operand @ backend.operand(weight).T, x.shape)
    return dx, dweight, dbias
