"""ONNX: lstmx's forward against onnxruntime running an ONNX LSTM node built here with onnx.helper (not by lstmx's
exporter), then every exportable model through lstmx's exporter, onnx.checker and onnxruntime, and back."""

from __future__ import annotations

import numpy as np
import pytest

import lstmx
from lstmx.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lstmx.interop.onnx import OnnxError, export, load  # noqa: E402

TOLERANCE = 1e-5  # float32


def run(path_or_bytes, feeds):
    session = ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, (bytes, str)) else str(path_or_bytes),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def handmade_node(direction, w, r, b, with_lengths, with_state, p=None, **attributes):
    """One ONNX LSTM node, its weights as initializers, written from the operator's specification (``p``: the
    peepholes (dirs, 3H); ``attributes``: input_forget, clip)."""
    dirs, four_h, features = w.shape
    hidden = four_h // 4
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", features])]
    node_inputs = ["X", "W", "R", "B", "seq" if with_lengths else "", "h0" if with_state else "",
                   "c0" if with_state else "", "" if p is None else "P"]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT32, ["B"]))
    if with_state:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [dirs, "B", hidden]) for n in ("h0", "c0")]
    while node_inputs[-1] == "":
        node_inputs.pop()
    node = helper.make_node("LSTM", node_inputs, ["Y", "Y_h", "Y_c"], hidden_size=hidden, direction=direction,
                            **attributes)
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in (
        ("Y", ["T", dirs, "B", hidden]), ("Y_h", [dirs, "B", hidden]), ("Y_c", [dirs, "B", hidden]))]
    graph = helper.make_graph([node], "handmade", inputs, outputs,
                              [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
                               (("W", w), ("R", r), ("B", b), ("P", p)) if a is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


VARIANTS = {"plain": {}, "peepholes": {"peepholes": True}, "input_forget": {"input_forget": True},
            "clip": {"cell_clip": 0.7}, "all": {"peepholes": True, "input_forget": True, "cell_clip": 1.1}}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "sequence_lens"])
def test_the_lstm_matches_onnxruntimes_lstm_operator(direction, with_lengths, variant):
    """ONNX's gate order (i, o, f, c), its two biases, peepholes (P, order i, o, f), input_forget, clip, both
    directions, sequence_lens and the initial state, as onnxruntime computes them: lstmx's forward is the same
    within 1e-5 in float32."""
    rng = np.random.default_rng(0)
    dirs, hidden, features, steps, batch = (2 if direction == "bidirectional" else 1), 5, 3, 6, 4
    w = 1.5 * rng.standard_normal((dirs, 4 * hidden, features))  # large enough that clipping bites
    r = 0.8 * rng.standard_normal((dirs, 4 * hidden, hidden))
    b = 0.3 * rng.standard_normal((dirs, 8 * hidden))
    options = VARIANTS[variant]
    p = rng.standard_normal((dirs, 3 * hidden)) if options.get("peepholes") else None
    attributes = {"input_forget": 1} if options.get("input_forget") else {}
    if options.get("cell_clip"):
        attributes["clip"] = options["cell_clip"]
    x = rng.standard_normal((steps, batch, features)).astype(np.float32)
    h0, c0 = (rng.standard_normal((dirs, batch, hidden)).astype(np.float32) for _ in range(2))
    lengths = np.array([6, 2, 4, 1], dtype=np.int32) if with_lengths else None
    feeds = {"X": x, "h0": h0, "c0": c0, **({"seq": lengths} if with_lengths else {})}
    y_ref, h_ref, c_ref = run(handmade_node(direction, w, r, b, with_lengths, True, p, **attributes), feeds)

    onnx_to_lstmx = [0, 2, 3, 1]  # lstmx block k (i, f, g, o) is ONNX block onnx_to_lstmx[k] (i, o, f, c)
    def blocks(a):
        return np.concatenate([a[j * hidden:(j + 1) * hidden] for j in onnx_to_lstmx])

    model = lstmx.LSTM(features, hidden, bidirectional=dirs == 2, **options)
    params = {}
    for d, suffix in enumerate(("", "_reverse")[:dirs]):
        params[f"weight_l0{suffix}"] = np.concatenate([blocks(w[d]).T, blocks(r[d]).T])
        params[f"bias_l0{suffix}"] = blocks(b[d, :4 * hidden] + b[d, 4 * hidden:])
        if p is not None:  # ONNX's (i, o, f) → lstmx's (i, f, o)
            params[f"peephole_l0{suffix}"] = np.concatenate([p[d, :hidden], p[d, 2 * hidden:], p[d, hidden:2 * hidden]])
    model.load_state_dict(params)
    y, (h, c), _ = model.forward(x, (h0, c0), None if lengths is None else lengths.astype(np.int64))
    expected_y = np.transpose(y_ref, (0, 2, 1, 3)).reshape(steps, batch, dirs * hidden)  # (T, dirs, B, H) → ours
    np.testing.assert_allclose(y, expected_y, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(h, h_ref, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(c, c_ref, atol=TOLERANCE, rtol=0)


MODELS = {
    "plain": lambda: lstmx.LSTM(3, 5, 2, seed=1),
    "bidirectional": lambda: lstmx.LSTM(3, 5, 2, bidirectional=True, seed=2),
    "batch-first": lambda: lstmx.LSTM(3, 4, 1, bidirectional=True, batch_first=True, seed=3),
    "variants": lambda: _with_random_options(lstmx.LSTM(3, 4, 2, bidirectional=True, peepholes=True,
                                                        input_forget=True, cell_clip=1.2, seed=4)),
    # through Scan bodies: what the LSTM operator cannot express
    "projected": lambda: lstmx.LSTM(3, 5, 2, bidirectional=True, proj_size=2, seed=5),
    "layer-normalised": lambda: _with_random_options(lstmx.LSTM(3, 4, 2, bidirectional=True, layer_norm=True, seed=6)),
    "everything": lambda: _with_random_options(lstmx.LSTM(3, 5, 2, bidirectional=True, proj_size=3, layer_norm=True,
                                                          peepholes=True, input_forget=True, cell_clip=1.5,
                                                          zoneout=(0.2, 0.4), batch_first=True, seed=7)),
}


def _with_random_options(model):
    """Peepholes and layer-norm gains and biases away from their initial values, so the graph must use them."""
    state = model.state_dict()
    rng = np.random.default_rng(9)
    model.load_state_dict({k: rng.standard_normal(v.shape) if "peephole" in k or "norm" in k else v
                           for k, v in state.items()})
    return model


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("with_state,with_lengths", [(False, False), (True, True)], ids=["x-only", "state-lengths"])
def test_exported_models_pass_the_checker_and_run_as_lstmx_at_other_shapes(tmp_path, kind, with_state, with_lengths):
    model = MODELS[kind]().eval()
    path = export(model, tmp_path / "m.onnx", with_state=with_state, with_lengths=with_lengths)
    onnx.checker.check_model(onnx.load(str(path)))
    rng = np.random.default_rng(4)
    for steps, batch in ((7, 3), (2, 5)):  # T and B other than any fixed at export: both are dynamic
        shape = (batch, steps, 3) if model.batch_first else (steps, batch, 3)
        x = rng.standard_normal(shape).astype(np.float32)
        layers = model.num_layers * model.stack.directions
        h0 = rng.standard_normal((layers, batch, model.stack.cell.output_size)).astype(np.float32)
        c0 = rng.standard_normal((layers, batch, model.hidden_size)).astype(np.float32)
        lengths = rng.integers(1, steps + 1, batch).astype(np.int32)
        feeds = {"x": x, **({"h0": h0, "c0": c0} if with_state else {}),
                 **({"lengths": lengths} if with_lengths else {})}
        y_ref, h_ref, c_ref = run(path, feeds)
        y, (h, c), _ = model.forward(x, (h0, c0) if with_state else None,
                                     lengths.astype(np.int64) if with_lengths else None)
        for ours, theirs in ((y, y_ref), (h, h_ref), (c, c_ref)):
            np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
    again = load(path)
    assert type(again) is type(model)
    config, expected = again.config(), model.config()
    assert config.pop("cell_clip") == pytest.approx(expected.pop("cell_clip"))  # ONNX's clip is a float32
    assert config == expected
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value)  # load(export(model)): the same weights


def test_a_language_model_exports_and_comes_back(tmp_path):
    model = lstmx.LanguageModel(11, 4, 6, 2, seed=5).eval()
    path = export(model, tmp_path / "lm.onnx")
    tokens = np.random.default_rng(5).integers(0, 11, (9, 3))
    logits_ref, h_ref, c_ref = run(path, {"tokens": tokens.astype(np.int64)})
    logits, (h, c), _ = model.forward(tokens)
    np.testing.assert_allclose(logits, logits_ref, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(h, h_ref, atol=TOLERANCE, rtol=0)
    again = load(path)
    assert isinstance(again, lstmx.LanguageModel)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value)


def test_what_onnx_cannot_say_is_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    w, r, b = rng.standard_normal((1, 8, 3)), rng.standard_normal((1, 8, 2)), rng.standard_normal((1, 16))
    model = onnx.load_from_string(handmade_node("forward", w, r, b, False, False))
    model.graph.node[0].attribute.append(helper.make_attribute("layout", 1))
    onnx.save(model, str(tmp_path / "layout.onnx"))
    with pytest.raises(OnnxError, match="has layout=1; lstmx reads layout 0"):
        load(tmp_path / "layout.onnx")
    model = onnx.load_from_string(handmade_node("forward", w, r, b, False, False))
    model.graph.node[0].attribute.append(helper.make_attribute("activations", ["Relu", "Tanh", "Tanh"]))
    onnx.save(model, str(tmp_path / "relu.onnx"))
    with pytest.raises(OnnxError, match="lstmx runs Sigmoid, Tanh, Tanh only"):
        load(tmp_path / "relu.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(OnnxError, match="is not a readable ONNX model"):
        load(tmp_path / "junk.onnx")


def test_a_handmade_graph_imports_as_the_model_it_describes(tmp_path):
    rng = np.random.default_rng(1)
    w, r, b = rng.standard_normal((2, 12, 4)), rng.standard_normal((2, 12, 3)), rng.standard_normal((2, 24))
    data = handmade_node("bidirectional", w, r, b, False, False)
    (tmp_path / "h.onnx").write_bytes(data)
    model = load(tmp_path / "h.onnx")
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    y_ref, h_ref, _ = run(data, {"X": x})
    y, (h, _), _ = model.forward(x)
    np.testing.assert_allclose(y, np.transpose(y_ref, (0, 2, 1, 3)).reshape(5, 2, 6), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(h, h_ref, atol=TOLERANCE, rtol=0)


def test_lstmx_export_writes_a_checkpoints_model(tmp_path, capsys):
    from lstmx.training.checkpoint import save_model
    from lstmx.training.data import CharVocab

    vocab = CharVocab.from_text("abcdef")
    model = lstmx.LanguageModel(len(vocab), 3, 4, seed=0)
    save_model(tmp_path / "m.npz", model, vocab)
    assert main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file() and "wrote" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.npz"), str(tmp_path / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_tied_awd_language_model_exports_in_evaluation_mode(tmp_path):
    model = lstmx.LanguageModel(11, 4, 6, 2, proj_size=4, dropout=0.4, weight_drop=0.5, locked_dropout=True,
                                embedding_dropout=0.1, tie_weights=True, layer_norm=True, zoneout=0.1, seed=6).eval()
    path = export(model, tmp_path / "p.onnx")  # projected and layer-normalised: Scan bodies
    tokens = np.random.default_rng(6).integers(0, 11, (5, 2))
    logits, h, c = run(path, {"tokens": tokens})
    np.testing.assert_allclose(model.forward(tokens)[0], logits, atol=TOLERANCE, rtol=0)
    assert h.shape == (2, 2, 4) and c.shape == (2, 2, 6)
    again = load(path)
    assert again.config() == model.config() and "head.weight" not in again.params
    tied = lstmx.LanguageModel(11, 6, 6, 2, dropout=0.4, weight_drop=0.5, tie_weights=True, seed=6).eval()
    path = export(tied, tmp_path / "tied.onnx")
    tokens = np.random.default_rng(6).integers(0, 11, (5, 2))
    np.testing.assert_allclose(tied.forward(tokens)[0], run(path, {"tokens": tokens})[0], atol=TOLERANCE, rtol=0)
