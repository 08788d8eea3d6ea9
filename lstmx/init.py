"""Parameter initialisation, drawn on the host with a seeded ``numpy.random.Generator`` in float64.

Drawing on the host makes a seed give the same weights on every backend; the model then casts and moves them.
"""

from __future__ import annotations

import numpy as np

FORGET_BIAS = 1.0


def orthogonal(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size) orthogonal matrix from the QR decomposition of a Gaussian one (signs fixed by R's diagonal)."""
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def lstm_layer(rng: np.random.Generator, input_size: int, hidden_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fused (D + H, 4H) weight and (4H,) bias of one layer, gate blocks i, f, g, o.

    Input rows: Gaussian scaled by 1/sqrt(D). Recurrent rows: one orthogonal H × H block per gate.
    Bias: zero except the forget gate, 1.0, so the cell remembers by default early in training.
    """
    w_input = rng.standard_normal((input_size, 4 * hidden_size)) / np.sqrt(max(input_size, 1))
    w_hidden = np.concatenate([orthogonal(rng, hidden_size) for _ in range(4)], axis=1)
    bias = np.zeros(4 * hidden_size)
    bias[hidden_size : 2 * hidden_size] = FORGET_BIAS
    return np.concatenate([w_input, w_hidden], axis=0), bias


def linear(rng: np.random.Generator, in_features: int, out_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(in, out) weight and (out,) bias, uniform in ±1/sqrt(in) like PyTorch's ``nn.Linear``."""
    bound = 1.0 / np.sqrt(max(in_features, 1))
    return rng.uniform(-bound, bound, (in_features, out_features)), rng.uniform(-bound, bound, out_features)


def embedding(rng: np.random.Generator, vocab_size: int, embedding_size: int) -> np.ndarray:
    """(V, E) table, standard normal like PyTorch's ``nn.Embedding``."""
    return rng.standard_normal((vocab_size, embedding_size))
