"""A stack of LSTM layers with dropout between them, as pure functions (forward beside backward)."""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any, Callable, NamedTuple, Sequence

from .backend import Backend, is_numpy
from .layers import LSTMLayerCache, dropout_backward, dropout_forward, lstm_layer_backward, lstm_layer_forward
from .layers import lstm_numpy


class LSTMCache(NamedTuple):
    layers: tuple[LSTMLayerCache | lstm_numpy.FusedLSTMLayerCache, ...]
    dropout_masks: tuple[Any, ...]  # mask applied to layer k's output before layer k+1 (None: no dropout)


LayerParams = tuple[Any, Any]  # (weight (D+H, 4H), bias (4H,))


@functools.cache
def _numba_module() -> ModuleType | None:
    try:
        from .layers import lstm_numba
    except ImportError:  # Numba is an optional extra
        return None
    return lstm_numba


def cpu_fast_path(dtype: Any) -> ModuleType:
    """The NumPy layer implementation for ``dtype``: the compiled Numba kernels for float32 when Numba is
    installed and ``LSTMX_DISABLE_NUMBA`` is unset or 0, otherwise the buffer-reusing NumPy fast path."""
    compiled = _numba_module() if os.environ.get("LSTMX_DISABLE_NUMBA", "0") in ("", "0") else None
    if compiled is not None and dtype in compiled.DTYPES:
        return compiled
    return lstm_numpy


def layer_forward_for(backend: Backend, mask: Any, dtype: Any) -> Callable[..., Any]:
    """The one place a layer implementation is chosen: a NumPy fast path (:func:`cpu_fast_path`) for unmasked
    batches, the generic Array API path for everything else."""
    if is_numpy(backend) and mask is None:
        return cpu_fast_path(dtype).lstm_layer_forward
    return lstm_layer_forward


def layer_backward_for(cache: Any) -> Callable[..., Any]:
    """The backward that mirrors the forward which produced ``cache``."""
    if isinstance(cache, lstm_numpy.FusedLSTMLayerCache):
        return cpu_fast_path(cache.gates.dtype).lstm_layer_backward
    return lstm_layer_backward


def lstm_forward(
    backend: Backend,
    layers: Sequence[LayerParams],
    x: Any,
    h0: Any,
    c0: Any,
    mask: Any = None,
    dropout_masks: Sequence[Any] | None = None,
) -> tuple[Any, tuple[Any, Any], LSTMCache]:
    """``x`` (T, B, D), ``h0``/``c0`` (L, B, H) → ``y`` (T, B, H), final ``(h, c)`` (L, B, H) each, cache."""
    xp = backend.xp
    masks = tuple(dropout_masks) if dropout_masks is not None else (None,) * (len(layers) - 1)
    inputs, finals_h, finals_c, caches = x, [], [], []
    forward = layer_forward_for(backend, mask, x.dtype)
    for k, (weight, bias) in enumerate(layers):
        y, (h, c), cache = forward(backend, inputs, weight, bias, h0[k, ...], c0[k, ...], mask)
        inputs = dropout_forward(y, masks[k]) if k < len(layers) - 1 else y
        finals_h.append(h)
        finals_c.append(c)
        caches.append(cache)
    return inputs, (xp.stack(finals_h), xp.stack(finals_c)), LSTMCache(tuple(caches), masks)


def lstm_backward(
    backend: Backend, layers: Sequence[LayerParams], dy: Any, dh_last: Any, dc_last: Any, cache: LSTMCache
) -> tuple[Any, tuple[Any, Any], list[LayerParams]]:
    """Mirror of :func:`lstm_forward`: returns ``(dx, (dh0, dc0), [(dweight, dbias) per layer])``."""
    xp = backend.xp
    grads: list[LayerParams] = []
    dh0s, dc0s = [], []
    for k in reversed(range(len(layers))):
        if k < len(layers) - 1:
            dy = dropout_backward(dy, cache.dropout_masks[k])
        dy, (dh0, dc0), dweight, dbias = layer_backward_for(cache.layers[k])(
            backend, dy, dh_last[k, ...], dc_last[k, ...], layers[k][0], cache.layers[k]
        )
        grads.append((dweight, dbias))
        dh0s.append(dh0)
        dc0s.append(dc0)
    return dy, (xp.stack(dh0s[::-1]), xp.stack(dc0s[::-1])), grads[::-1]
