"""Regression tests for the classic bugs of hand-written LSTMs.

Each test targets one bug; the mutation tests at the end plant the bug in the cell's backward (through the
generic layer's ``cell_backward``) and show the gradient check catches it.
"""

from __future__ import annotations

import numpy as np
import pytest

import lstmx.nn.layers.cell as cell_module
from lstmx import LSTM
from lstmx.nn.layers.cell import cell_backward, cell_forward

from .helpers import GRAD_TOLERANCE, host
from .test_gradients import lstm_layer_rows


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_step(x, h, c, weight, bias):
    """One step written out plainly in NumPy (gate order i, f, g, o) as an independent reference."""
    hidden = h.shape[-1]
    z = np.concatenate([x, h], axis=-1) @ weight + bias
    i, f, g, o = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c_new), c_new


def make_model(backend, layers=1, seed=0):
    return LSTM(3, 4, layers, backend=backend, dtype="float64", seed=seed)


def test_forward_matches_plain_equations_step_by_step(backend):
    """Catches tanh applied twice on the cell path, wrong gate order, and h/c off-by-one in the forward."""
    rng = np.random.default_rng(0)
    model = make_model(backend)
    x = rng.standard_normal((4, 2, 3))
    h0, c0 = rng.standard_normal((1, 2, 4)), 2.0 * rng.standard_normal((1, 2, 4))
    y, (h_last, c_last), _ = model.forward(backend.asarray(x), (backend.asarray(h0), backend.asarray(c0)))
    weight, bias = host(model.params["weight_l0"]), host(model.params["bias_l0"])
    h, c = h0[0], c0[0]
    for t in range(4):
        h, c = reference_step(x[t], h, c, weight, bias)
        np.testing.assert_allclose(host(y)[t], h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(h_last)[0], h, atol=1e-12)
    np.testing.assert_allclose(host(c_last)[0], c, atol=1e-12)


def test_open_gates_give_tanh_of_cell_once(backend):
    """With i = f = o ≈ 1 the cell adds g and h = tanh(c), not tanh(tanh(c))."""
    model = make_model(backend)
    hidden = 4
    weight = np.zeros((3 + hidden, 4 * hidden))
    bias = np.full(4 * hidden, 40.0)  # saturates the sigmoid gates at 1
    bias[2 * hidden:3 * hidden] = 0.5  # g = tanh(0.5)
    model.params = {"weight_l0": backend.asarray(weight), "bias_l0": backend.asarray(bias)}
    c0 = np.full((1, 1, hidden), 1.5)
    state = (backend.asarray(np.zeros((1, 1, hidden))), backend.asarray(c0))
    y, (_, c), _ = model.forward(backend.asarray(np.zeros((1, 1, 3))), state)
    np.testing.assert_allclose(host(c), 1.5 + np.tanh(0.5), atol=1e-12)
    np.testing.assert_allclose(host(y)[0], np.tanh(1.5 + np.tanh(0.5)), atol=1e-12)


def test_first_step_reads_initial_state_not_last_cell(backend):
    """C[t-1] must not wrap around to C[T-1] at t = 0: step 0 of a long run equals a run of length 1."""
    rng = np.random.default_rng(1)
    model = make_model(backend)
    x = rng.standard_normal((6, 2, 3))
    long_run, _, _ = model.forward(backend.asarray(x))
    one_step, _, _ = model.forward(backend.asarray(x[:1]))
    np.testing.assert_array_equal(host(long_run)[0], host(one_step)[0])


def test_outputs_do_not_depend_on_future_inputs(backend):
    rng = np.random.default_rng(2)
    model = make_model(backend, layers=2)
    x = rng.standard_normal((5, 2, 3))
    changed = x.copy()
    changed[4] += 10.0
    first, _, _ = model.forward(backend.asarray(x))
    second, _, _ = model.forward(backend.asarray(changed))
    np.testing.assert_array_equal(host(first)[:4], host(second)[:4])


def test_recurrent_weight_gradient_uses_previous_hidden_state(backend):
    """h/C off-by-one in BPTT: with h0 = 0 and T = 1, dL/dW_h is exactly zero (h_{t-1} = h0 = 0)."""
    model = make_model(backend)
    x = backend.asarray(np.random.default_rng(3).standard_normal((1, 2, 3)))
    y, _, cache = model.forward(x)
    _, _, grads = model.backward(backend.xp.ones_like(y), cache)
    recurrent_rows = host(grads["weight_l0"])[3:]
    assert np.all(recurrent_rows == 0.0)
    assert np.any(host(grads["weight_l0"])[:3] != 0.0)


def test_gradient_flows_from_last_output_to_first_input_and_initial_state(backend):
    """dh and dc must be carried to the previous step: a loss on y_T alone reaches x_0, h0 and c0."""
    rng = np.random.default_rng(4)
    model = make_model(backend)
    x = backend.asarray(rng.standard_normal((6, 2, 3)))
    state = (backend.asarray(rng.standard_normal((1, 2, 4))), backend.asarray(rng.standard_normal((1, 2, 4))))
    y, _, cache = model.forward(x, state)
    dy = np.zeros((6, 2, 4))
    dy[-1] = 1.0
    dx, (dh0, dc0), _ = model.backward(backend.asarray(dy), cache)
    assert np.all(np.abs(host(dx)[0]) > 0)
    assert np.all(np.abs(host(dh0)) > 0) and np.all(np.abs(host(dc0)) > 0)


def test_forget_gate_gradient_is_present(backend):
    """With a non-zero c0 the forget gate's bias gets a gradient matching finite differences."""
    rows = {row.name: row for row in lstm_layer_rows(backend, steps=2)}
    assert rows["bias"].max_relative_error < GRAD_TOLERANCE
    assert rows["c0"].max_relative_error < GRAD_TOLERANCE


def test_cell_backward_uses_derivatives_of_stored_outputs(backend):
    """σ'(z) = σ(1−σ) and tanh'(z) = 1 − tanh² taken from stored gate outputs: compare with a plain derivation."""
    rng = np.random.default_rng(5)
    hidden = 3
    z, c_prev = rng.standard_normal((2, 4 * hidden)), rng.standard_normal((2, hidden))
    dh, dc_next = rng.standard_normal((2, hidden)), rng.standard_normal((2, hidden))
    xp = backend.xp
    from lstmx.nn.layers.cell import gate_affine

    gate = gate_affine(backend, hidden, xp.float64)
    gates, _, tanh_c, _ = cell_forward(xp, backend.asarray(z), backend.asarray(c_prev), gate)
    dz, dc_prev = cell_backward(xp, backend.asarray(dh), backend.asarray(dc_next), gates, backend.asarray(c_prev),
                                tanh_c, gate)
    i, f, g, o = sigmoid(z[:, :3]), sigmoid(z[:, 3:6]), np.tanh(z[:, 6:9]), sigmoid(z[:, 9:])
    c = f * c_prev + i * g
    dc = dc_next + dh * o * (1 - np.tanh(c) ** 2)
    expected = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g ** 2),
                               dh * np.tanh(c) * o * (1 - o)], axis=1)
    np.testing.assert_allclose(host(dz), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(dc_prev), dc * f, rtol=1e-12, atol=1e-14)


# --- Mutation tests: plant each classic bug and check that the gradient check fails loudly. ---

def nonlinearity_instead_of_derivative(xp, dh, dc_next, gates, c_prev, tanh_c, gate):
    hidden = c_prev.shape[-1]
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dc = dc_next + dh * o * xp.tanh(tanh_c)  # bug: tanh where 1 − tanh² belongs
    d_gates = xp.concat([dc * g, dc * c_prev, dc * i, dh * tanh_c], axis=-1)
    shifted = gates - gate.shift
    return d_gates * (gate.scale_squared - shifted * shifted), dc * f


def missing_forget_gate_derivative(xp, dh, dc_next, gates, c_prev, tanh_c, gate):
    dz, dc_prev = cell_backward(xp, dh, dc_next, gates, c_prev, tanh_c, gate)
    hidden = c_prev.shape[-1]
    return xp.concat([dz[:, :hidden], xp.zeros_like(c_prev), dz[:, 2 * hidden:]], axis=-1), dc_prev


def cell_gradient_not_carried(xp, dh, dc_next, gates, c_prev, tanh_c, gate):
    dz, dc_prev = cell_backward(xp, dh, dc_next, gates, c_prev, tanh_c, gate)
    return dz, xp.zeros_like(dc_prev)


def gate_outputs_treated_as_inputs(xp, dh, dc_next, gates, c_prev, tanh_c, gate):
    """The bug of applying σ' to the stored σ output: σ(σ)(1 − σ(σ)) instead of σ(1 − σ)."""
    resquashed = xp.tanh(gates * gate.scale) * gate.scale + gate.shift
    return cell_backward(xp, dh, dc_next, resquashed, c_prev, tanh_c, gate)


@pytest.mark.parametrize("buggy_backward", [nonlinearity_instead_of_derivative, missing_forget_gate_derivative,
                                            cell_gradient_not_carried, gate_outputs_treated_as_inputs])
def test_gradient_check_catches_planted_bug(backend, monkeypatch, buggy_backward):
    monkeypatch.setattr(cell_module, "cell_backward", buggy_backward)
    worst = max(row.max_relative_error for row in lstm_layer_rows(backend))
    assert worst > 1e-3, f"{buggy_backward.__name__} went unnoticed (worst relative error {worst:.2e})"
