"""The LSTM variants (peepholes, input_forget, cell_clip, layer_norm, zoneout, recurrent_dropout) as cell options:
exact gradients alone and combined with both directions, a projection, lengths and several layers, on every
backend (in training with the masks held fixed, and in evaluation); what each option changes; and the fast paths
that do not take them refuse them by name."""

from __future__ import annotations

import numpy as np
import pytest

import lstmx
from lstmx.dispatch import registry
from lstmx.gradcheck import compare, finite_difference
from lstmx.nn.layers.cell import CellOptions

from .helpers import host, weighted_sum
from .test_gradients import assert_rows_pass

CASES = {
    "peepholes": dict(peepholes=True),
    "input_forget": dict(input_forget=True),
    "cell_clip": dict(cell_clip=0.6),
    "all-bidirectional-projected": dict(peepholes=True, input_forget=True, cell_clip=0.9, bidirectional=True,
                                        proj_size=1),
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout=(0.3, 0.6)),
    "zoneout-eval": dict(zoneout=(0.3, 0.6), eval=True),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "norm-zoneout-bidirectional-projected": dict(layer_norm=True, peepholes=True, cell_clip=1.5, zoneout=0.3,
                                                 recurrent_dropout=0.2, bidirectional=True, proj_size=1),
    "norm-zoneout-bidirectional-projected-eval": dict(layer_norm=True, peepholes=True, cell_clip=1.5, zoneout=0.3,
                                                      bidirectional=True, proj_size=1, eval=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_variant_gradients_match_finite_differences(backend, case):
    options = dict(CASES[case])
    evaluation = options.pop("eval", False)
    rng = np.random.default_rng(11)
    steps, batch, features, hidden = 4, 2, 2, 2
    layers = 1 if "bidirectional" in options else 2  # two layers of both directions: tests/test_gradients.py
    model = lstmx.LSTM(features, hidden, layers, backend=backend, dtype="float64", seed=3, **options)
    if evaluation:
        model.eval()
    # weights large enough that clipping bites somewhere, peepholes non-zero
    host_params = {k: (rng.standard_normal(v.shape) * (2.0 if "weight" in k else 1.0)) for k, v in model.state_dict().items()}
    dirs, width = model.stack.directions, model.stack.cell.output_size
    inputs = {**host_params, "x": rng.standard_normal((steps, batch, features)),
              "h0": rng.standard_normal((layers * dirs, batch, width)),
              "c0": rng.standard_normal((layers * dirs, batch, hidden))}
    weights = [rng.standard_normal((steps, batch, dirs * width)), rng.standard_normal((layers * dirs, batch, width)),
               rng.standard_normal((layers * dirs, batch, hidden))]

    def run(values):
        model.params = {name: backend.asarray(values[name]) for name in model.params}
        model.dropout_rng = np.random.default_rng(9)  # zoneout and recurrent dropout: the same masks every time
        y, (h, c), cache = model.forward(backend.asarray(values["x"]),
                                         (backend.asarray(values["h0"]), backend.asarray(values["c0"])), [4, 3])
        return (y, h, c), cache

    _, cache = run(inputs)
    variant = cache.layers[0][0].variant
    if "cell_clip" in options:  # the check covers clipped and unclipped entries
        clipped = host(variant.unclipped)
        assert 0 < clipped.mean() < 1
    if "zoneout" in options:  # masks in training, the expectation in evaluation
        assert (variant.noise is None) == evaluation
    dy, dh, dc = (backend.asarray(w) for w in weights)
    dx, (dh0, dc0), grads = model.backward(dy, cache, (dh, dc))
    assert set(grads) == set(model.params)
    numeric = finite_difference(lambda values: weighted_sum(backend, run(values)[0], weights), inputs, eps=1e-6)
    assert_rows_pass(compare({**grads, "x": dx, "h0": dh0, "c0": dc0}, numeric))


def one_step(**options):
    model = lstmx.LSTM(1, 1, dtype="float64", **options)
    params = {"weight_l0": np.array([[0.5, 1.0, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0]]), "bias_l0": np.zeros(4)}
    if options.get("peepholes"):
        params["peephole_l0"] = np.array([0.3, -0.7, 1.1])
    model.load_state_dict(params)
    y, (h, c), _ = model.forward(np.ones((1, 1, 1)), (np.zeros((1, 1, 1)), np.full((1, 1, 1), 0.5)))
    return float(h[0, 0, 0]), float(c[0, 0, 0])


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_each_option_changes_what_it_should():
    """One unit, one step, by hand: peepholes add p_i·c_{t-1}, p_f·c_{t-1} and p_o·c_t (not c_{t-1}); the coupled
    gate is f = 1 − i (not 1 − f or f); the clip bounds every gate's pre-activation."""
    c_prev = 0.5
    i, f, g, o = sigmoid(0.5), sigmoid(1.0), np.tanh(2.0), sigmoid(-1.0)
    plain_c = f * c_prev + i * g
    assert one_step() == pytest.approx((o * np.tanh(plain_c), plain_c), rel=1e-12)
    pi, pf, po = sigmoid(0.5 + 0.3 * c_prev), sigmoid(1.0 - 0.7 * c_prev), None
    peep_c = pf * c_prev + pi * g
    po = sigmoid(-1.0 + 1.1 * peep_c)
    assert one_step(peepholes=True) == pytest.approx((po * np.tanh(peep_c), peep_c), rel=1e-12)
    coupled_c = (1 - i) * c_prev + i * g
    assert one_step(input_forget=True) == pytest.approx((o * np.tanh(coupled_c), coupled_c), rel=1e-12)
    ci, cf, cg, co = sigmoid(0.5), sigmoid(0.8), np.tanh(0.8), sigmoid(-0.8)
    clip_c = cf * c_prev + ci * cg
    assert one_step(cell_clip=0.8) == pytest.approx((co * np.tanh(clip_c), clip_c), rel=1e-12)


@pytest.mark.parametrize("impl", [i for i in registry.LAYER_IMPLS if i.name != "generic" and "peepholes" not in i.cell_options],
                         ids=lambda i: i.name)
def test_paths_that_take_no_option_refuse_it_by_name(impl):
    model = lstmx.LSTM(2, 3, peepholes=True, cell_clip=2.0)
    with pytest.raises(registry.LayerImplError, match=f"'{impl.name}' cannot run this call"):
        model.forward(np.ones((2, 1, 2), np.float32), impl=impl.name)
    chosen = model.forward(np.ones((2, 1, 2), np.float32))[2].impl  # "auto" picks a path that takes them
    assert "peepholes" in registry.layer_impl(chosen).cell_options
    if impl.backends == ("numpy",):
        call = registry.Call(model.backend, model.dtype, False, None, "lstm", ("peepholes",))
        assert impl.refuses(call) == "takes no peepholes"


def test_variants_reach_the_command_line_and_checkpoints(tmp_path):
    from lstmx.training.checkpoint import load_model
    from lstmx.cli import main

    from .test_checkpoint import TEXT

    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["train", str(text), "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--hidden-size", "6",
                 "--embedding-size", "4", "--peepholes", "--input-forget", "--cell-clip", "3", "--layer-norm",
                 "--zoneout", "0.1", "--recurrent-dropout", "0.2", "--out", str(tmp_path / "r"), "--no-progress",
                 "--sample-length", "0"]) == 0
    model, _ = load_model(tmp_path / "r" / "last.npz")
    assert model.cell_options == CellOptions(True, True, 3.0, True, (0.1, 0.1), 0.2)
    assert {"lstm.peephole_l0", "lstm.norm_x_l0", "lstm.norm_h_l0", "lstm.norm_c_l0"} <= set(model.params)
    with pytest.raises(ValueError, match="cell_clip must be a finite number > 0"):
        lstmx.LSTM(2, 3, cell_clip=-1.0)


def _norm(a, gain_and_bias):
    centred = a - a.mean(-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-5) * gain_and_bias[0] + gain_and_bias[1]


def _reference_steps(params, x, h, c, norms=None, zoneout=None, h_mask=None):
    """The cell's equations written plainly, over every step of ``x`` (T, B, D); returns the outputs."""
    weight, bias = params["weight_l0"], params["bias_l0"]
    features, outputs = x.shape[-1], []
    for t in range(x.shape[0]):
        x_part, h_part = x[t] @ weight[:features], (h if h_mask is None else h * h_mask) @ weight[features:]
        if norms is not None:
            x_part, h_part = _norm(x_part, params["norm_x_l0"]), _norm(h_part, params["norm_h_l0"])
        i, f, g, o = np.split(x_part + h_part + bias, 4, axis=-1)
        c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h_new = sigmoid(o) * np.tanh(c_new if norms is None else _norm(c_new, params["norm_c_l0"]))
        if zoneout is not None:
            keep_c, keep_h = zoneout(t)
            c_new, h_new = keep_c * c + (1 - keep_c) * c_new, keep_h * h + (1 - keep_h) * h_new
        h, c = h_new, c_new
        outputs.append(h)
    return np.stack(outputs)


def _random_model(**options):
    model = lstmx.LSTM(2, 3, dtype="float64", seed=1, **options)
    rng = np.random.default_rng(8)
    model.load_state_dict({name: rng.standard_normal(value.shape) for name, value in model.state_dict().items()})
    x, h0, c0 = rng.standard_normal((3, 2, 2)), rng.standard_normal((1, 2, 3)), rng.standard_normal((1, 2, 3))
    return model, x, h0, c0


def test_layer_norm_normalises_each_product_apart_and_the_cell_only_inside_its_tanh():
    """Three steps against the formula written plainly: a layer norm of the sum x W_x + h W_h, a normalised c carried
    to the next step, or LN after the tanh would each give other outputs."""
    model, x, h0, c0 = _random_model(layer_norm=True)
    y, _, _ = model.forward(x, (h0, c0))
    params = model.state_dict()
    np.testing.assert_allclose(y, _reference_steps(params, x, h0[0], c0[0], norms=True), rtol=1e-12, atol=1e-12)
    assert not np.allclose(y, _reference_steps(params, x, h0[0], c0[0]), atol=1e-3)


def test_zoneout_keeps_previous_values_by_its_masks_in_training_and_by_its_expectation_in_evaluation():
    model, x, h0, c0 = _random_model(zoneout=(0.3, 0.6))
    y, _, cache = model.forward(x, (h0, c0))
    noise = cache.layers[0][0].variant.noise
    params = model.state_dict()
    masks = lambda t: (noise.zoneout_c[t], noise.zoneout_h[t])  # noqa: E731
    np.testing.assert_allclose(y, _reference_steps(params, x, h0[0], c0[0], zoneout=masks), rtol=1e-12, atol=1e-12)
    assert 0 < noise.zoneout_c.mean() < noise.zoneout_h.mean() < 1  # z_c for c, z_h for h
    model.eval()
    y_eval, _, _ = model.forward(x, (h0, c0))
    expected = _reference_steps(params, x, h0[0], c0[0], zoneout=lambda t: (0.3, 0.6))
    np.testing.assert_allclose(y_eval, expected, rtol=1e-12, atol=1e-12)
    swapped = _reference_steps(params, x, h0[0], c0[0], zoneout=lambda t: (0.6, 0.3))
    assert not np.allclose(y_eval, swapped, atol=1e-3)
    np.testing.assert_allclose(model.infer(x, (h0, c0))[0], y_eval, rtol=1e-12, atol=1e-12)


def test_recurrent_dropout_masks_h_before_the_recurrent_product_with_one_mask_per_sequence_in_training_only():
    model, x, h0, c0 = _random_model(recurrent_dropout=0.5)
    y, _, cache = model.forward(x, (h0, c0))
    mask = cache.layers[0][0].variant.noise.recurrent
    assert mask.shape == (2, 3) and set(np.unique(mask)) == {0.0, 2.0}
    params = model.state_dict()
    np.testing.assert_allclose(y, _reference_steps(params, x, h0[0], c0[0], h_mask=mask), rtol=1e-12, atol=1e-12)
    model.eval()
    y_eval, _, cache = model.forward(x, (h0, c0))
    np.testing.assert_allclose(y_eval, _reference_steps(params, x, h0[0], c0[0]), rtol=1e-12, atol=1e-12)
    assert cache.impl != "generic"  # nothing of the option acts in evaluation: a fast path runs it


def test_the_architecture_table_of_paths_and_variants_is_the_registrys():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0].strip("`") in registry.NAMES:
            rows[cells[0].strip("`")] = cells[1:]
    assert set(rows) == set(registry.NAMES)
    for impl in registry.LAYER_IMPLS:
        kinds, options, masks = rows[impl.name]
        auto_cells = impl.cells if impl.auto_cells is None else impl.auto_cells
        assert kinds == ", ".join(cell if cell in auto_cells else f"{cell} (by name only)" for cell in impl.cells)
        by_name_only = impl.cell_options and (impl.auto_cell_options == () or not impl.auto)
        notes = [f"{', '.join(impl.options_cells)} cell only"] if impl.options_cells and impl.cell_options else []
        notes += ["by name only"] if by_name_only else []
        assert options == (", ".join(impl.cell_options) or "–") + (f" ({', '.join(notes)})" if notes else "")
        assert masks == ("yes" if impl.step_masks else "no")
