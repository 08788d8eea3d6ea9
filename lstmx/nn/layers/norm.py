"""Layer normalisation over the last axis (Ba et al. 2016), forward beside backward, generic Array API.

``LN(a) = gain ⊙ (a − mean(a)) / sqrt(var(a) + ε) + bias``, the mean and the (biased) variance taken over the last
axis of each row, as ``torch.nn.LayerNorm(n, eps=1e-5)``. ``gain_and_bias`` is one (2, n) parameter: row 0 the
gain (initialised to 1), row 1 the bias (initialised to 0).
"""

from __future__ import annotations

from typing import Any, NamedTuple

NORM_EPSILON = 1e-5  # ε, PyTorch's LayerNorm default


class NormCache(NamedTuple):
    """What the backward of one layer normalisation needs."""

    normalized: Any  # (…, n) (a − mean) / sqrt(var + ε)
    inverse_std: Any  # (…, 1) 1 / sqrt(var + ε)


def layer_norm_forward(xp: Any, a: Any, gain_and_bias: Any) -> tuple[Any, NormCache]:
    """``(LN(a), cache)`` for ``a`` (…, n) and ``gain_and_bias`` (2, n)."""
    centred = a - xp.mean(a, axis=-1, keepdims=True)
    inverse_std = 1 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + NORM_EPSILON)
    normalized = centred * inverse_std
    return normalized * gain_and_bias[0, ...] + gain_and_bias[1, ...], NormCache(normalized, inverse_std)


def layer_norm_backward(xp: Any, dy: Any, gain_and_bias: Any, cache: NormCache) -> tuple[Any, Any]:
    """Mirror of :func:`layer_norm_forward`: ``(da, d gain_and_bias (2, n))`` from dL/dLN(a) ``dy``."""
    normalized = cache.normalized
    dnormalized = dy * gain_and_bias[0, ...]
    da = cache.inverse_std * (dnormalized - xp.mean(dnormalized, axis=-1, keepdims=True)
                              - normalized * xp.mean(dnormalized * normalized, axis=-1, keepdims=True))
    width = dy.shape[-1]
    rows_dy, rows_normalized = xp.reshape(dy, (-1, width)), xp.reshape(normalized, (-1, width))
    return da, xp.stack([xp.sum(rows_dy * rows_normalized, axis=0), xp.sum(rows_dy, axis=0)])
