"""The base of every model: parameters on one backend, a training flag, the host RNG for dropout masks.

A model holds its parameters in ``model.params`` (name → array on ``model.backend``), checks its input once at
its public methods and hands checked arrays to the pure functions of :mod:`lstmx.nn.layers` and :mod:`lstmx.nn.stack`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..backend import Backend, dtype_name, get_backend, is_cupy, to_numpy
from ..dispatch.precision import check_precision, matmul_precision, operand_format
from ..validate import CacheMismatchError, check_float_array
from .layers import dropout_mask

State = tuple[Any, Any]  # (h, c): h (L·dirs, B, R), c (L·dirs, B, H)


class Module:
    """Parameters on one backend, a training flag and the host RNG that draws dropout masks."""

    params: dict[str, Any]

    def __init__(self, backend: Any, dtype: Any, seed: int, dropout: float, precision: str = "float32") -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.backend: Backend = get_backend(backend)
        self.dtype = self.backend.dtype(dtype)
        if self.dtype not in (self.backend.xp.float32, self.backend.xp.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.seed = seed
        self.dropout = float(dropout)
        self.training = True
        self.dropout_rng = np.random.default_rng([seed, 1])
        self.params = {}
        self.precision = precision

    @property
    def precision(self) -> str:
        """"float32", "tf32" (CuPy, float32 only), "bf16" or "fp16" (float32): the precision of the matrix
        products (:mod:`lstmx.dispatch.precision`)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value, self.backend, self.dtype)
        self.backend = self.backend._replace(operands=operand_format(self._precision))

    def _matmuls(self) -> Any:
        """The context a public method runs its math in: the model's precision."""
        return matmul_precision(self.backend, self._precision)

    def _set_host_params(self, host: Mapping[str, np.ndarray]) -> None:
        self.params = {name: self.backend.asarray(value, dtype=self.dtype) for name, value in host.items()}

    def train(self, mode: bool = True) -> "Module":
        self.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host NumPy copies of every parameter, by name: changing them leaves the model as it is."""
        return {name: np.array(to_numpy(value), copy=True) for name, value in self.params.items()}

    def load_state_dict(self, arrays: Mapping[str, Any]) -> None:
        """Replace every parameter with a copy of ``arrays`` (any backend; the caller's arrays are never shared);
        names and shapes must match exactly (a clear error otherwise)."""
        missing = sorted(set(self.params) - set(arrays))
        unexpected = sorted(set(arrays) - set(self.params))
        if missing or unexpected:
            raise KeyError(f"parameter names do not match: missing {missing}, unexpected {unexpected}")
        host = {name: np.array(to_numpy(value), copy=True) for name, value in arrays.items()}
        for name, value in host.items():
            if value.shape != tuple(self.params[name].shape):
                raise ValueError(f"parameter {name!r} has shape {value.shape}, expected {tuple(self.params[name].shape)}")
            if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
                raise ValueError(f"parameter {name!r} must be finite floating-point values")
        self._set_host_params(host)

    def to(self, backend: Any) -> "Module":
        """Move the parameters to another backend (through host memory) and return ``self``. A "tf32" model moved
        off CuPy computes in (and its ``precision`` reads) "float32"."""
        host, dtype_name = self.state_dict(), self.dtype_name
        self.backend = get_backend(backend)
        self.dtype = self.backend.dtype(dtype_name)
        self.precision = "float32" if self._precision == "tf32" and not is_cupy(self.backend) else self._precision
        self._set_host_params(host)
        return self

    locked_dropout = False  # one dropout mask per sequence, the same at every step (set by the models)

    def _dropout_masks(self, shape: tuple[int, ...], count: int) -> tuple[Any, ...]:
        """Masks for (T, B, F) activations; with ``locked_dropout`` each is (1, B, F), the same at every step."""
        if not self.training or self.dropout == 0.0:
            return (None,) * count
        drawn = (1, *shape[1:]) if self.locked_dropout else shape
        return tuple(dropout_mask(self.backend, self.dropout_rng, drawn, self.dropout, self.dtype) for _ in range(count))

    def _check_cache_owner(self, cached_params: tuple[Any, ...]) -> None:
        """Refuse a cache whose forward ran on other parameter arrays: another model's, or this model's before
        an optimizer step, ``load_state_dict`` or ``to`` replaced them."""
        current = tuple(self.params.values())
        if len(cached_params) != len(current) or any(a is not b for a, b in zip(cached_params, current)):
            raise CacheMismatchError(
                "cache was not made by this model's forward with its current parameters (another model's cache, or "
                "the parameters changed since: an optimizer step, load_state_dict or to()); run forward again"
            )

    def _initial_state(self, state: State | None, shapes: tuple[tuple[int, ...], ...], name: str = "state") -> State:
        """``state`` checked against ``shapes`` (h's, then c's), or zeros of those shapes when None."""
        if state is None:
            return tuple(self.backend.xp.zeros(shape, dtype=self.dtype, device=self.backend.device) for shape in shapes)
        if not isinstance(state, (tuple, list)) or len(state) != len(shapes):
            described = " and ".join(str(shape) for shape in shapes)
            raise TypeError(f"{name} must be a pair (h, c) of arrays shaped {described}")
        for part, value, shape in zip(("h", "c"), state, shapes):
            check_float_array(self.backend, f"{name} {part}", value, shape, self.dtype)
        return tuple(state)
