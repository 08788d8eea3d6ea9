"""Finite-difference gradient checks in float64 for every layer and the whole model, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from lstmx import LSTM
from lstmx.gradcheck import check_language_model, compare, finite_difference
from lstmx.nn.layers import (
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    lstm_layer_backward,
    lstm_layer_forward,
)
from lstmx.validate import lengths_to_mask

from .helpers import GRAD_TOLERANCE, host, weighted_sum


def assert_rows_pass(rows, tolerance=GRAD_TOLERANCE):
    failures = [row for row in rows if not row.max_relative_error < tolerance]
    assert not failures, f"gradient check failed: {failures}"


def lstm_layer_rows(backend, steps=4, batch=3, features=2, hidden=3, lengths=None, seed=0, layer=None):
    """Gradient check of one LSTM layer w.r.t. x, weight, bias, h0 and c0 under a random linear loss.

    ``layer`` is a module with ``lstm_layer_forward``/``lstm_layer_backward`` (default: the generic path)."""
    forward = layer.lstm_layer_forward if layer else lstm_layer_forward
    backward = layer.lstm_layer_backward if layer else lstm_layer_backward
    rng = np.random.default_rng(seed)
    inputs = {
        "x": rng.standard_normal((steps, batch, features)),
        "weight": 0.7 * rng.standard_normal((features + hidden, 4 * hidden)),
        "bias": 0.3 * rng.standard_normal(4 * hidden),
        "h0": 0.5 * rng.standard_normal((batch, hidden)),
        "c0": 0.5 * rng.standard_normal((batch, hidden)),
    }
    loss_weights = [rng.standard_normal((steps, batch, hidden)), rng.standard_normal((batch, hidden)),
                    rng.standard_normal((batch, hidden))]

    def run(values):
        arrays = {name: backend.asarray(value) for name, value in values.items()}
        mask = None if lengths is None else lengths_to_mask(backend, lengths, steps, batch, backend.xp.float64)
        y, (h, c), cache = forward(backend, arrays["x"], arrays["weight"], arrays["bias"], arrays["h0"],
                                   arrays["c0"], mask)
        return (y, h, c), arrays, cache

    _, arrays, cache = run(inputs)
    dy, dh, dc = (backend.asarray(w) for w in loss_weights)
    dx, (dh0, dc0), dweight, dbias = backward(backend, dy, dh, dc, arrays["weight"], cache)
    analytic = {"x": dx, "weight": dweight, "bias": dbias, "h0": dh0, "c0": dc0}
    numeric = finite_difference(lambda values: weighted_sum(backend, run(values)[0], loss_weights), inputs)
    return compare(analytic, numeric)


def test_lstm_layer(backend):
    assert_rows_pass(lstm_layer_rows(backend))


def test_lstm_layer_with_lengths(backend):
    assert_rows_pass(lstm_layer_rows(backend, steps=5, batch=4, lengths=[5, 2, 1, 0]))


STACKS = [pytest.param(lengths, bidirectional, proj, batch_first, id=f"{name}-{label}")
          for lengths, name in (([4, 2, 3], "lengths"), (None, "full-length"))
          for bidirectional, proj, batch_first, label in ((False, 0, False, "plain"), (True, 0, False, "bidirectional"),
                                                          (False, 1, False, "projected"),
                                                          (True, 1, True, "bidirectional-projected-batch-first"))
          if lengths is not None or label in ("plain", "bidirectional-projected-batch-first")]


@pytest.mark.parametrize("lengths,bidirectional,proj,batch_first", STACKS)
def test_lstm_stack_with_dropout_lengths_and_state(backend, lengths, bidirectional, proj, batch_first):
    """Every layer implementation the registry has for the stack here (the NumPy fast paths on full-length
    batches of the plain cell, the generic path everywhere), checked against finite differences."""
    from lstmx.dispatch import registry

    rng = np.random.default_rng(1)
    steps, batch, features, hidden, layers = 4, 3, 2, 3, 3
    if bidirectional or proj:  # smaller, so every backend checks every entry in seconds; two layers show the
        hidden, layers = 2, 2  # second reading dirs·R features
    model = LSTM(features, hidden, layers, dropout=0.4, bidirectional=bidirectional, proj_size=proj,
                 batch_first=batch_first, backend=backend, dtype="float64", seed=3)
    dirs, width = (2 if bidirectional else 1), proj or hidden
    x_shape = (batch, steps, features) if batch_first else (steps, batch, features)
    inputs = {**model.state_dict(), "x": rng.standard_normal(x_shape),
              "h0": rng.standard_normal((dirs * layers, batch, width)),
              "c0": rng.standard_normal((dirs * layers, batch, hidden))}
    loss_weights = [rng.standard_normal(x_shape[:2] + (dirs * width,)), rng.standard_normal((dirs * layers, batch, width)),
                    rng.standard_normal((dirs * layers, batch, hidden))]
    impls = registry.available_layer_impls(backend, model.dtype, lengths is not None, (batch, hidden),
                                           model.stack.cell.kind)
    for impl in impls:
        def run(values):
            model.params = {name: backend.asarray(values[name]) for name in model.params}
            model.dropout_rng = np.random.default_rng(7)  # the same dropout masks every evaluation
            state = (backend.asarray(values["h0"]), backend.asarray(values["c0"]))
            y, (h, c), cache = model.forward(backend.asarray(values["x"]), state, lengths, impl=impl.name)
            return (y, h, c), cache

        _, cache = run(inputs)
        assert cache.impl == impl.name and all(mask is not None for mask in cache.dropout_masks)
        dy, dh, dc = (backend.asarray(w) for w in loss_weights)
        dx, (dh0, dc0), grads = model.backward(dy, cache, (dh, dc))
        assert set(grads) == set(model.params)
        numeric = finite_difference(lambda values: weighted_sum(backend, run(values)[0], loss_weights), inputs)
        assert_rows_pass(compare({**grads, "x": dx, "h0": dh0, "c0": dc0}, numeric))


def test_linear(backend):
    rng = np.random.default_rng(2)
    inputs = {"x": rng.standard_normal((2, 3, 4)), "weight": rng.standard_normal((4, 5)), "bias": rng.standard_normal(5)}
    loss_weight = rng.standard_normal((2, 3, 5))

    def run(values):
        return linear_forward(backend, *(backend.asarray(values[k]) for k in ("x", "weight", "bias")))

    _, cache = run(inputs)
    dx, dweight, dbias = linear_backward(backend, backend.asarray(loss_weight), backend.asarray(inputs["weight"]), cache)
    numeric = finite_difference(lambda v: weighted_sum(backend, [run(v)[0]], [loss_weight]), inputs)
    assert_rows_pass(compare({"x": dx, "weight": dweight, "bias": dbias}, numeric))


def test_embedding(backend):
    rng = np.random.default_rng(3)
    tokens = backend.asarray(np.array([[0, 2, 2], [4, 0, 1]]))
    inputs = {"weight": rng.standard_normal((6, 3))}
    loss_weight = rng.standard_normal((2, 3, 3))

    def run(values):
        return embedding_forward(backend, tokens, backend.asarray(values["weight"]))

    _, cache = run(inputs)
    dweight = embedding_backward(backend, backend.asarray(loss_weight), cache)
    numeric = finite_difference(lambda v: weighted_sum(backend, [run(v)[0]], [loss_weight]), inputs)
    assert_rows_pass(compare({"weight": dweight}, numeric))
    assert np.all(host(dweight)[[3, 5]] == 0.0)  # ids never seen get no gradient


def test_cross_entropy_with_ignored_targets(backend):
    rng = np.random.default_rng(4)
    targets = backend.asarray(np.array([1, -100, 0, 3, -100]))
    inputs = {"logits": 3.0 * rng.standard_normal((5, 4))}

    def run(values):
        return cross_entropy_forward(backend, backend.asarray(values["logits"]), targets)

    loss, cache = run(inputs)
    dlogits = cross_entropy_backward(backend, backend.xp.ones_like(loss), cache)
    numeric = finite_difference(lambda v: float(host(run(v)[0])), inputs)
    assert_rows_pass(compare({"logits": dlogits}, numeric))
    assert np.all(host(dlogits)[[1, 4]] == 0.0)


def test_dropout(backend):
    rng = np.random.default_rng(5)
    mask = backend.asarray((rng.random((3, 4)) > 0.5) * 2.0)
    inputs = {"x": rng.standard_normal((3, 4))}
    loss_weight = rng.standard_normal((3, 4))
    dx = dropout_backward(backend.asarray(loss_weight), mask)
    numeric = finite_difference(
        lambda v: weighted_sum(backend, [dropout_forward(backend.asarray(v["x"]), mask)], [loss_weight]), inputs)
    assert_rows_pass(compare({"x": dx}, numeric))


def test_whole_language_model(backend):
    """Embedding → 2-layer LSTM with dropout → Linear → loss, with lengths and (h0, c0): every gradient."""
    rows = check_language_model(backend)
    assert {row.name for row in rows} >= {"embedding.weight", "lstm.weight_l1", "head.bias", "h0", "c0"}
    assert_rows_pass(rows)


@pytest.mark.parametrize("lengths", [None, [3, 1]])
def test_float32_gradients_close_to_float64(backend, lengths):
    """The float32 path computes the same gradients as float64, to float32 precision."""
    results = []
    for dtype in ("float32", "float64"):
        model = LSTM(3, 4, 2, backend=backend, dtype=dtype, seed=9)
        x = backend.asarray(np.random.default_rng(0).standard_normal((3, 2, 3)), dtype=model.dtype)
        y, _, cache = model.forward(x, lengths=lengths)
        _, _, grads = model.backward(backend.xp.ones_like(y), cache)
        results.append({name: host(value) for name, value in grads.items()})
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-4, atol=1e-5)
