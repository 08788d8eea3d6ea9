"""Embedding lookup: rows of a (V, E) table picked by integer token ids."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ...backend import Backend

# Rows of the one-hot matrix built at once by the generic backward; bounds its memory to CHUNK × V.
ONE_HOT_CHUNK = 4096


class EmbeddingCache(NamedTuple):
    tokens: Any  # integer ids, any shape
    vocab_size: int


def embedding_forward(backend: Backend, tokens: Any, weight: Any) -> tuple[Any, EmbeddingCache]:
    """``tokens`` (...) integer ids, ``weight`` (V, E) → vectors (..., E)."""
    xp = backend.xp
    flat = xp.reshape(tokens, (-1,))
    vectors = xp.take(weight, flat, axis=0)
    return xp.reshape(vectors, (*tokens.shape, weight.shape[1])), EmbeddingCache(tokens, weight.shape[0])


ScatterAdd = Callable[[Backend, Any, Any, int], Any]  # (backend, rows (N,), values (N, E), num_rows) → (num_rows, E)


def embedding_backward(backend: Backend, dvectors: Any, cache: EmbeddingCache, scatter_add: ScatterAdd | None = None) -> Any:
    """Mirror of :func:`embedding_forward`: scatter-add ``dvectors`` into a (V, E) table gradient.

    ``scatter_add`` is the implementation :mod:`lstmx.dispatch.registry` chose (default: the generic one below).
    """
    xp = backend.xp
    flat_tokens = xp.reshape(cache.tokens, (-1,))
    flat_grad = xp.reshape(dvectors, (-1, dvectors.shape[-1]))
    return (scatter_add or scatter_add_rows_generic)(backend, flat_tokens, flat_grad, cache.vocab_size)


def scatter_add_rows_generic(backend: Backend, rows: Any, values: Any, num_rows: int) -> Any:
    """``out[rows[n]] += values[n]`` with only standard functions: one-hot (chunk × V) matmuls."""
    xp = backend.xp
    ids = xp.arange(num_rows, device=backend.device)
    out = xp.zeros((num_rows, values.shape[-1]), dtype=values.dtype, device=backend.device)
    total = rows.shape[0]
    for start in range(0, total, ONE_HOT_CHUNK):
        stop = min(start + ONE_HOT_CHUNK, total)
        one_hot = xp.astype(rows[start:stop, None] == ids[None, :], values.dtype)
        out = out + one_hot.T @ values[start:stop, ...]
    return out
