"""A stack of LSTM layers with dropout between them, as pure functions (forward beside backward).

The layer implementation is chosen once per forward by :mod:`lstmx.registry` and its name recorded in the cache;
the backward runs the implementation the cache names.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from . import registry
from .backend import Backend
from .layers import dropout_backward, dropout_forward

LayerParams = tuple[Any, Any]  # (weight (D+H, 4H), bias (4H,))


class LSTMCache(NamedTuple):
    impl: str  # registry name of the layer implementation that made the layer caches
    layer_params: tuple[LayerParams, ...]  # the exact weight and bias arrays the forward used
    layers: tuple[Any, ...]  # one cache per layer, of the implementation's own type
    dropout_masks: tuple[Any, ...]  # mask applied to layer k's output before layer k+1 (None: no dropout)
    steps: int
    batch: int


def lstm_forward(
    backend: Backend,
    layers: Sequence[LayerParams],
    x: Any,
    h0: Any,
    c0: Any,
    step_mask: Any = None,
    dropout_masks: Sequence[Any] | None = None,
    impl: str | None = None,
) -> tuple[Any, tuple[Any, Any], LSTMCache]:
    """``x`` (T, B, D), ``h0``/``c0`` (L, B, H) → ``y`` (T, B, H), final ``(h, c)`` (L, B, H) each, cache.

    ``impl`` names a layer implementation (:mod:`lstmx.registry`); None lets the registry choose.
    """
    xp = backend.xp
    masks = tuple(dropout_masks) if dropout_masks is not None else (None,) * (len(layers) - 1)
    chosen = registry.choose_layer_impl(backend, x.dtype, step_mask is not None, impl, (x.shape[1], h0.shape[-1]))
    forward = chosen.load().lstm_layer_forward
    inputs, finals_h, finals_c, caches = x, [], [], []
    for k, (weight, bias) in enumerate(layers):
        y, (h, c), cache = forward(backend, inputs, weight, bias, h0[k, ...], c0[k, ...], step_mask)
        inputs = dropout_forward(y, masks[k]) if k < len(layers) - 1 else y
        finals_h.append(h)
        finals_c.append(c)
        caches.append(cache)
    cache = LSTMCache(chosen.name, tuple(layers), tuple(caches), masks, x.shape[0], x.shape[1])
    return inputs, (xp.stack(finals_h), xp.stack(finals_c)), cache


def lstm_backward(
    backend: Backend, layers: Sequence[LayerParams], dy: Any, dh_last: Any, dc_last: Any, cache: LSTMCache
) -> tuple[Any, tuple[Any, Any], list[LayerParams]]:
    """Mirror of :func:`lstm_forward`: returns ``(dx, (dh0, dc0), [(dweight, dbias) per layer])``."""
    xp = backend.xp
    backward = registry.layer_impl(cache.impl).load().lstm_layer_backward
    grads: list[LayerParams] = []
    dh0s, dc0s = [], []
    for k in reversed(range(len(layers))):
        if k < len(layers) - 1:
            dy = dropout_backward(dy, cache.dropout_masks[k])
        dy, (dh0, dc0), dweight, dbias = backward(backend, dy, dh_last[k, ...], dc_last[k, ...], layers[k][0],
                                                  cache.layers[k])
        grads.append((dweight, dbias))
        dh0s.append(dh0)
        dc0s.append(dc0)
    return dy, (xp.stack(dh0s[::-1]), xp.stack(dc0s[::-1])), grads[::-1]
