"""Checks of user input at the public boundary, each raising an error that names the problem."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .backend import Backend, check_same_backend, dtype_name, to_numpy


def check_float_array(backend: Backend, name: str, x: Any, shape: tuple[Any, ...], dtype: Any) -> None:
    """``x`` lives on ``backend``, has ``dtype`` and ``shape`` (None entries match any size)."""
    check_same_backend(backend, name, x)
    if not backend.xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must be a floating-point array, got dtype {dtype_name(x.dtype)}")
    if x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {dtype_name(x.dtype)} but the model's parameters are {dtype_name(dtype)}; cast one to match"
        )
    check_shape(name, x, shape)


def check_shape(name: str, x: Any, shape: tuple[Any, ...]) -> None:
    if x.ndim != len(shape):
        raise ValueError(f"{name} must have {len(shape)} dimensions {_describe(shape)}, got shape {tuple(x.shape)}")
    for axis, (got, want) in enumerate(zip(x.shape, shape)):
        if want is not None and got != want:
            raise ValueError(f"{name} must have shape {_describe(shape)}: axis {axis} is {got}, expected {want}")


def _describe(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_finite(backend: Backend, name: str, x: Any) -> None:
    """Raise when ``x`` holds NaN or Inf (one host sync; used only when the caller asks)."""
    if not bool(backend.xp.all(backend.xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or Inf")


def check_token_array(
    backend: Backend, name: str, tokens: Any, ndim: int, vocab_size: int, ignore_index: int | None = None
) -> None:
    """Integer ids in [0, vocab_size) with ``ndim`` dimensions, on ``backend``; entries equal to
    ``ignore_index`` (when given) are allowed too."""
    check_same_backend(backend, name, tokens)
    xp = backend.xp
    if not xp.isdtype(tokens.dtype, "integral"):
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {dtype_name(tokens.dtype)}")
    if tokens.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tokens.shape)}")
    outside = (tokens < 0) | (tokens >= vocab_size)
    if ignore_index is not None:
        outside = outside & (tokens != ignore_index)
    if tokens.size and bool(xp.any(outside)):
        allowed = "" if ignore_index is None else f" that are not ignore_index={ignore_index}"
        raise ValueError(f"{name} holds ids outside [0, {vocab_size}){allowed}")


def check_lengths(backend: Backend, lengths: Any, steps: int, batch: int) -> np.ndarray | None:
    """Per-sequence lengths (B,) integers in [0, T], as host integers; None when every sequence has T steps."""
    if array_api_compat.is_array_api_obj(lengths) and not isinstance(lengths, np.ndarray):
        check_same_backend(backend, "lengths", lengths)
    host = to_numpy(lengths) if array_api_compat.is_array_api_obj(lengths) else np.asarray(lengths)
    if host.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got {host.dtype}")
    if host.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), one per sequence, got {host.shape}")
    if batch and (host.min() < 0 or host.max() > steps):
        raise ValueError(f"lengths must lie in [0, {steps}] (the number of steps), got min {host.min()} max {host.max()}")
    return None if bool(np.all(host == steps)) else host.astype(np.int64)


def mask_of_lengths(backend: Backend, lengths: np.ndarray | None, steps: int, dtype: Any) -> Any:
    """Checked host lengths (:func:`check_lengths`) → step mask (T, B, 1) of ``dtype``; None for None."""
    if lengths is None:
        return None
    mask = np.arange(steps)[:, None, None] < lengths[None, :, None]
    return backend.asarray(mask.astype(np.float64), dtype=dtype)


def lengths_to_mask(backend: Backend, lengths: Any, steps: int, batch: int, dtype: Any) -> Any:
    """Per-sequence lengths (B,) → step mask (T, B, 1) of ``dtype``, or None when every step is real."""
    return mask_of_lengths(backend, check_lengths(backend, lengths, steps, batch), steps, dtype)


class CacheMismatchError(ValueError):
    """A cache handed to ``backward`` that its model's current forward did not make."""
