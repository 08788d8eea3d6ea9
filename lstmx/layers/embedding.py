"""Embedding lookup: rows of a (V, E) table picked by integer token ids."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import Backend, is_cupy, is_numpy

# Rows of the one-hot matrix built at once by the generic backward; bounds its memory to CHUNK × V.
ONE_HOT_CHUNK = 4096
# Up to this many table rows the one-hot GEMM beats a native scatter-add.
ONE_HOT_MAX_ROWS = 256


class EmbeddingCache(NamedTuple):
    tokens: Any  # integer ids, any shape
    vocab_size: int


def embedding_forward(backend: Backend, tokens: Any, weight: Any) -> tuple[Any, EmbeddingCache]:
    """``tokens`` (...) integer ids, ``weight`` (V, E) → vectors (..., E)."""
    xp = backend.xp
    flat = xp.reshape(tokens, (-1,))
    vectors = xp.take(weight, flat, axis=0)
    return xp.reshape(vectors, (*tokens.shape, weight.shape[1])), EmbeddingCache(tokens, weight.shape[0])


def embedding_backward(backend: Backend, dvectors: Any, cache: EmbeddingCache) -> Any:
    """Mirror of :func:`embedding_forward`: scatter-add ``dvectors`` into a (V, E) table gradient."""
    xp = backend.xp
    flat_tokens = xp.reshape(cache.tokens, (-1,))
    flat_grad = xp.reshape(dvectors, (-1, dvectors.shape[-1]))
    return scatter_add_rows(backend, cache.vocab_size)(backend, flat_tokens, flat_grad, cache.vocab_size)


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


def scatter_add_rows(backend: Backend, num_rows: int):
    """The scatter-add for ``backend``: NumPy's ``add.at`` / CuPy's ``scatter_add`` for large tables; for small
    ones (character vocabularies) the one-hot GEMM, which is faster there (0.5 ms against 2.0 ms for
    3200 × 64 rows into 72 on NumPy)."""
    if (is_numpy(backend) or is_cupy(backend)) and num_rows > ONE_HOT_MAX_ROWS:
        from .scatter_native import scatter_add_rows_native

        return scatter_add_rows_native
    return scatter_add_rows_generic
