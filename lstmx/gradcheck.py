"""Finite-difference gradient checks (float64), used by the test suite and by ``lstmx check``.

Perturbations are made on host copies and moved to the backend for each evaluation, so the same check runs on
every backend. Derivatives use the fourth-order central stencil
``(f(x−2ε) − 8f(x−ε) + 8f(x+ε) − f(x+2ε)) / 12ε`` (truncation O(ε⁴), so ε can be large enough to keep
round-off small). The relative error of a tensor is its worst element's error over the tensor's largest
gradient entry: ``max|analytic − numeric| / max|numeric|``, so entries whose true gradient is almost zero
are judged on the tensor's own scale rather than on their round-off.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from .backend import Backend, get_backend, to_numpy

EPSILON = 1e-3
TINY = 1e-300  # avoids 0/0 for a tensor whose gradient is exactly zero


class GradCheckRow(NamedTuple):
    name: str
    max_relative_error: float
    max_absolute_error: float
    entries: int


def max_relative_error(analytic: np.ndarray, numeric: np.ndarray) -> tuple[float, float]:
    """(max element-wise relative error, max absolute error) between two gradients of equal shape."""
    if analytic.shape != numeric.shape:
        raise ValueError(f"gradient shapes differ: analytic {analytic.shape}, numeric {numeric.shape}")
    if numeric.size == 0:
        return 0.0, 0.0
    worst = float(np.max(np.abs(analytic - numeric)))
    return worst / max(float(np.max(np.abs(numeric))), TINY), worst


def finite_difference(
    loss: Callable[[Mapping[str, np.ndarray]], float], inputs: Mapping[str, np.ndarray], eps: float = EPSILON
) -> dict[str, np.ndarray]:
    """Fourth-order central differences of ``loss`` with respect to every entry of every host array in ``inputs``."""
    current = {name: np.array(value, dtype=np.float64, copy=True) for name, value in inputs.items()}
    gradients = {}
    for name, value in current.items():
        grad = np.zeros_like(value)
        flat_value, flat_grad = value.reshape(-1), grad.reshape(-1)
        for index in range(flat_value.size):
            original = flat_value[index]
            values = []
            for step in (-2, -1, 1, 2):
                flat_value[index] = original + step * eps
                values.append(loss(current))
            flat_value[index] = original
            flat_grad[index] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * eps)
        gradients[name] = grad
    return gradients


def compare(analytic: Mapping[str, Any], numeric: Mapping[str, np.ndarray]) -> list[GradCheckRow]:
    rows = []
    for name, expected in numeric.items():
        relative, absolute = max_relative_error(to_numpy(analytic[name]).astype(np.float64), expected)
        rows.append(GradCheckRow(name, relative, absolute, expected.size))
    return rows


def check_language_model(backend: Any = "numpy", seed: int = 0) -> list[GradCheckRow]:
    """Gradient check of Embedding → 2-layer LSTM (dropout) → Linear → loss with lengths and (h0, c0)."""
    from .nn.models import LanguageModel

    resolved: Backend = get_backend(backend)
    rng = np.random.default_rng(seed)
    vocab, steps, batch = 7, 5, 3
    model = LanguageModel(vocab, embedding_size=3, hidden_size=4, num_layers=2, dropout=0.3,
                          backend=resolved, dtype="float64", seed=seed)
    inputs = resolved.asarray(rng.integers(0, vocab, (steps, batch)))
    targets = resolved.asarray(rng.integers(0, vocab, (steps, batch)))
    lengths = [steps, 3, 1]
    host_state = {"h0": 0.5 * rng.standard_normal((2, batch, 4)), "c0": 0.5 * rng.standard_normal((2, batch, 4))}

    def run(host: Mapping[str, np.ndarray], grads: bool) -> Any:
        model.params = {name: resolved.asarray(host[name]) for name in model.params}
        model.dropout_rng = np.random.default_rng(seed + 1)  # the same dropout masks at every evaluation
        state = (resolved.asarray(host["h0"]), resolved.asarray(host["c0"]))
        return model.loss(inputs, targets, state, lengths, grads=grads)

    host = {**model.state_dict(), **host_state}
    output = run(host, grads=True)
    analytic = {**output.grads, "h0": output.initial_state_grad[0], "c0": output.initial_state_grad[1]}
    numeric = finite_difference(lambda h: float(to_numpy(run(h, grads=False).loss)), host)
    return compare(analytic, numeric)


def check_lstm(backend: Any = "numpy", *, bidirectional: bool = True, proj_size: int = 2, impl: str | None = None,
               seed: int = 0, **options: Any) -> list[GradCheckRow]:
    """Gradient check of a 2-layer :class:`~lstmx.nn.models.LSTM` (dropout, lengths, (h0, c0)) with two directions
    and/or a projection, under a random linear loss of y, h_T and c_T; ``impl`` names the layer implementation."""
    from .nn.models import LSTM

    resolved: Backend = get_backend(backend)
    rng = np.random.default_rng(seed)
    steps, batch, features, hidden, layers = 4, 3, 2, 3, 2
    model = LSTM(features, hidden, layers, 0.3, bidirectional=bidirectional, proj_size=proj_size, backend=resolved,
                 dtype="float64", seed=seed, **options)
    directions, width = (2 if bidirectional else 1), proj_size or hidden
    lengths = None if impl not in (None, "generic") else [steps, 2, 1]
    # peepholes and layer-norm gains and biases away from their initial values (zero, identity)
    host = {**{k: (rng.standard_normal(v.shape) if "peephole" in k or "norm" in k else v)
               for k, v in model.state_dict().items()},
            "x": rng.standard_normal((steps, batch, features)),
            "h0": 0.5 * rng.standard_normal((directions * layers, batch, width)),
            "c0": 0.5 * rng.standard_normal((directions * layers, batch, hidden))}
    weights = [rng.standard_normal((steps, batch, directions * width)), rng.standard_normal(host["h0"].shape),
               rng.standard_normal(host["c0"].shape)]

    def run(values: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
        model.params = {name: resolved.asarray(values[name]) for name in model.params}
        model.dropout_rng = np.random.default_rng(seed + 1)  # the same dropout masks at every evaluation
        state = (resolved.asarray(values["h0"]), resolved.asarray(values["c0"]))
        y, (h, c), cache = model.forward(resolved.asarray(values["x"]), state, lengths, impl=impl)
        return (y, h, c), cache

    def loss(values: Mapping[str, np.ndarray]) -> float:
        return float(sum(np.sum(to_numpy(o) * w) for o, w in zip(run(values)[0], weights)))

    _, cache = run(host)
    dy, dh, dc = (resolved.asarray(w) for w in weights)
    dx, (dh0, dc0), grads = model.backward(dy, cache, (dh, dc))
    # a clipped pre-activation has a kink at ±C, and a layer norm over a few units curves sharply: a narrower
    # stencil keeps the difference quotient from straddling the one or averaging over the other
    eps = 1e-6 if options.get("cell_clip") is not None else 1e-5 if options.get("layer_norm") else EPSILON
    return compare({**grads, "x": dx, "h0": dh0, "c0": dc0}, finite_difference(loss, host, eps))
