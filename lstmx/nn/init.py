"""Parameter initialisation, drawn on the host with a seeded ``numpy.random.Generator`` in float64.

Drawing on the host makes a seed give the same weights on every backend; the model then casts and moves them.
"""

from __future__ import annotations

import numpy as np

FORGET_BIAS = 1.0


def orthogonal(rng: np.random.Generator, size: int, columns: int | None = None) -> np.ndarray:
    """A (size, columns) matrix with orthonormal columns (columns ≤ size; square by default) from the QR
    decomposition of a Gaussian one, signs fixed by R's diagonal."""
    q, r = np.linalg.qr(rng.standard_normal((size, size if columns is None else columns)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def lstm_layer(rng: np.random.Generator, input_size: int, hidden_size: int,
               recurrent_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fused (D + R, 4H) weight and (4H,) bias of one layer, gate blocks i, f, g, o; R = ``recurrent_size``, the
    width of h (H, or P with a projection).

    Input rows: Gaussian scaled by 1/sqrt(D). Recurrent rows: one orthogonal H × H block per gate (with R < H,
    R × H blocks with orthonormal rows). Bias: zero except the forget gate, 1.0, so the cell remembers by
    default early in training.
    """
    w_input = rng.standard_normal((input_size, 4 * hidden_size)) / np.sqrt(max(input_size, 1))
    if recurrent_size is None or recurrent_size == hidden_size:
        blocks = [orthogonal(rng, hidden_size) for _ in range(4)]
    else:
        blocks = [orthogonal(rng, hidden_size, recurrent_size).T for _ in range(4)]
    w_hidden = np.concatenate(blocks, axis=1)
    bias = np.zeros(4 * hidden_size)
    bias[hidden_size : 2 * hidden_size] = FORGET_BIAS
    return np.concatenate([w_input, w_hidden], axis=0), bias


def projection(rng: np.random.Generator, hidden_size: int, proj_size: int) -> np.ndarray:
    """(H, P) projection of an LSTMP layer with orthonormal columns: it keeps the scale of o ⊙ tanh(c)."""
    return orthogonal(rng, hidden_size, proj_size)


def linear(rng: np.random.Generator, in_features: int, out_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(in, out) weight and (out,) bias, uniform in ±1/sqrt(in) like PyTorch's ``nn.Linear``."""
    bound = 1.0 / np.sqrt(max(in_features, 1))
    return rng.uniform(-bound, bound, (in_features, out_features)), rng.uniform(-bound, bound, out_features)


def embedding(rng: np.random.Generator, vocab_size: int, embedding_size: int) -> np.ndarray:
    """(V, E) table, standard normal like PyTorch's ``nn.Embedding``."""
    return rng.standard_normal((vocab_size, embedding_size))
