"""Inverted dropout with masks drawn on the host from a seeded NumPy generator."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...backend import Backend


def dropout_mask(backend: Backend, rng: np.random.Generator, shape: tuple[int, ...], p: float, dtype: Any) -> Any:
    """A mask of 0 and 1/(1−p), drawn on the host and moved to ``backend``; keeps E[x·mask] = x."""
    keep = rng.random(shape) >= p
    return backend.asarray(keep.astype(np.float64) / (1.0 - p), dtype=dtype)


def keep_mask(backend: Backend, rng: np.random.Generator, shape: tuple[int, ...], p: float, dtype: Any) -> Any:
    """A mask of 1 with probability ``p`` and 0 otherwise (zoneout's: which units keep their previous value).
    Drawn in float32: a mask per step and unit is many draws, and a probability needs no more digits."""
    return backend.asarray((rng.random(shape, dtype=np.float32) < p).astype(np.float32), dtype=dtype)


def dropout_forward(x: Any, mask: Any) -> Any:
    return x if mask is None else x * mask


def dropout_backward(dy: Any, mask: Any) -> Any:
    return dy if mask is None else dy * mask
