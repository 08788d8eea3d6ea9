"""ONNX export and import: an :class:`~lstmx.LSTM` or a :class:`~lstmx.LanguageModel` as a graph that any ONNX
runtime runs with its own LSTM kernels, and lstmx models back from graphs of ONNX ``LSTM`` nodes.

Export (:func:`export`, ``lstmx export CHECKPOINT OUT.onnx``) writes one ONNX ``LSTM`` node per layer (both
directions in one node, ``direction="bidirectional"``), in evaluation mode (no dropout):

- an ``LSTM`` takes ``x`` (T, B, D) ((B, T, D) when ``batch_first``) and, when asked, ``h0``, ``c0``
  (L·dirs, B, H) and ``lengths`` (B,) int32 (the operator's ``sequence_lens``: packed-sequence semantics, as
  lstmx's); it gives ``y``, ``h``, ``c`` shaped as lstmx's forward gives them;
- a ``LanguageModel`` takes ``tokens`` (T, B) int64 and gives ``logits`` (T, B, V), ``h``, ``c``.

T and B are dynamic axes. Layout of one node's weights (ONNX's gate order is i, o, f, c; lstmx's i, f, g, o):
``W`` (dirs, 4H, D) = lstmx's input rows transposed, ``R`` (dirs, 4H, H) its recurrent rows transposed, ``B``
(dirs, 8H) = [bias, zeros]. What the operator cannot express — the projected cell (``proj_size``), ``layer_norm``
and zoneout's evaluation-mode expectation — is written as one ``Scan`` node per layer and direction instead
(:mod:`lstmx.interop.onnx_scan`), from the standard operators; any ONNX runtime runs it.

Peepholes (``P``, in ONNX's order i, o, f), ``input_forget`` and ``clip`` are the cell options of the same names
(:class:`lstmx.nn.cells.LSTMCell`). Import (:func:`load`) rebuilds the model from the nodes' weights and attributes,
refusing in one line what lstmx cannot represent (other activations, ``layout=1``, a reverse-only node, layers that
do not chain or differ in their options); a graph of Scan layers that lstmx exported loads back through the
configuration it records (``lstmx.config``) and its initializers, which carry the parameters' own names. ``onnx`` is needed (the optional ``[onnx]`` extra); lstmx itself never imports it elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..nn.models import LSTM, LanguageModel
from ._host import host
from .onnx_scan import ScanLayers

OPSET = 17
ONNX_GATES = (0, 3, 1, 2)  # ONNX block j (i, o, f, c) is lstmx block ONNX_GATES[j] (i, f, g, o)
DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")


class OnnxError(ValueError):
    """A model lstmx cannot export, or a graph it cannot import; the message names what and why."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise OnnxError("ONNX export and import need the onnx package: pip install 'lstmx[onnx]'") from error
    return onnx


def _reorder(blocks: np.ndarray, hidden: int, to_onnx: bool) -> np.ndarray:
    """Gate blocks along the first axis from lstmx's order to ONNX's (or back)."""
    parts = [blocks[k * hidden:(k + 1) * hidden] for k in range(4)]
    if to_onnx:
        return np.concatenate([parts[g] for g in ONNX_GATES])
    inverse = [ONNX_GATES.index(k) for k in range(4)]
    return np.concatenate([parts[j] for j in inverse])


PEEPHOLE_ORDER = (0, 2, 1)  # ONNX's P is (i, o, f); lstmx's peephole (i, f, o)


def _peephole_order(vector: np.ndarray, hidden: int) -> np.ndarray:
    """Swap the f and o blocks of a (3H,) peephole vector: lstmx ↔ ONNX (its own inverse)."""
    parts = [vector[k * hidden:(k + 1) * hidden] for k in range(3)]
    return np.concatenate([parts[k] for k in PEEPHOLE_ORDER])


def _node_weights(params: dict[str, np.ndarray], prefix: str, layer: int, directions: int, features: int,
                  hidden: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    w, r, b, p = [], [], [], []
    for suffix in ("", "_reverse")[:directions]:
        weight, bias = params[f"{prefix}weight_l{layer}{suffix}"], params[f"{prefix}bias_l{layer}{suffix}"]
        w.append(_reorder(weight[:features].T, hidden, True))
        r.append(_reorder(weight[features:].T, hidden, True))
        b.append(np.concatenate([_reorder(bias, hidden, True), np.zeros_like(bias)]))
        peephole = params.get(f"{prefix}peephole_l{layer}{suffix}")
        if peephole is not None:
            p.append(_peephole_order(peephole, hidden))
    return np.stack(w), np.stack(r), np.stack(b), (np.stack(p) if p else None)


def export(model: LSTM | LanguageModel, path: str | os.PathLike, *, with_state: bool = False,
           with_lengths: bool = False, opset: int = OPSET) -> Path:
    """Write ``model`` (evaluation mode) as an ONNX graph to ``path`` (checked, written atomically); with
    ``with_state`` the graph also takes ``h0`` and ``c0``, with ``with_lengths`` ``lengths``. Returns the path."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    from ..training.checkpoint import atomic_write

    if not isinstance(model, (LSTM, LanguageModel)):
        raise OnnxError(f"model must be an lstmx LSTM or LanguageModel, got {type(model).__name__}")
    params = {name: host(value) for name, value in model.params.items()}
    dtype = np.dtype(model.dtype_name)
    elem = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float64"): TensorProto.DOUBLE}[dtype]
    language = isinstance(model, LanguageModel)
    prefix = "lstm." if language else ""
    hidden, layers = model.hidden_size, model.num_layers
    directions = 1 if language else model.stack.directions
    batch_first = getattr(model, "batch_first", False)
    nodes, initializers, inputs = [], [], []
    h_shape = [layers * directions, "B", model.stack.cell.output_size]
    c_shape = [layers * directions, "B", hidden]
    options = model.cell_options
    scanned = bool(model.proj_size or options.layer_norm or any(options.zoneout))

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value) if value.ndim else value, name))
        return name

    if language:
        inputs.append(helper.make_tensor_value_info("tokens", TensorProto.INT64, ["T", "B"]))
        nodes.append(helper.make_node("Gather", [constant("embedding.weight", params["embedding.weight"]), "tokens"],
                                      ["layer_input_0"]))
    else:
        shape = ["B", "T", model.input_size] if batch_first else ["T", "B", model.input_size]
        inputs.append(helper.make_tensor_value_info("x", elem, shape))
        if batch_first:
            nodes.append(helper.make_node("Transpose", ["x"], ["layer_input_0"], perm=[1, 0, 2]))
        else:
            nodes.append(helper.make_node("Identity", ["x"], ["layer_input_0"]))
    if with_state:
        inputs += [helper.make_tensor_value_info("h0", elem, h_shape),
                   helper.make_tensor_value_info("c0", elem, c_shape)]
        split = constant("state_split", np.full(layers, directions, dtype=np.int64))
        nodes += [helper.make_node("Split", ["h0", split], [f"h0_l{k}" for k in range(layers)], axis=0),
                  helper.make_node("Split", ["c0", split], [f"c0_l{k}" for k in range(layers)], axis=0)]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]))
    if scanned:  # the model's own parameters, under their own names, which the Scan bodies read
        scan = ScanLayers(helper, elem, dtype, nodes, constant, model, prefix, with_lengths)
        for k in range(layers):
            for d in range(directions):
                for name in model.stack.parameter_names(k, d):
                    constant(name, params[name])
    for k in range(layers):
        features = model.stack.layer_input_size(k)
        if scanned:
            scan.layer(k, f"layer_input_{k}", features, (f"h0_l{k}", f"c0_l{k}") if with_state else None,
                       (f"layer_input_{k + 1}", f"h_l{k}", f"c_l{k}"))
            continue
        if k == 0:
            merged_shape = constant("merge_directions", np.array([0, 0, -1], dtype=np.int64))
        w, r, b, peephole = _node_weights(params, prefix, k, directions, features, hidden)
        node_inputs = [f"layer_input_{k}", constant(f"W_l{k}", w), constant(f"R_l{k}", r), constant(f"B_l{k}", b),
                       "lengths" if with_lengths else "", f"h0_l{k}" if with_state else "",
                       f"c0_l{k}" if with_state else "", "" if peephole is None else constant(f"P_l{k}", peephole)]
        while node_inputs[-1] == "":
            node_inputs.pop()
        variants = {"input_forget": 1} if options.input_forget else {}
        if options.cell_clip is not None:
            variants["clip"] = float(options.cell_clip)
        nodes.append(helper.make_node(
            "LSTM", node_inputs, [f"Y_l{k}", f"h_l{k}", f"c_l{k}"], name=f"lstm_l{k}", hidden_size=hidden,
            direction="bidirectional" if directions == 2 else "forward", **variants))
        # Y (T, dirs, B, H) → (T, B, dirs, H) → (T, B, dirs·H), the next layer's input
        nodes += [helper.make_node("Transpose", [f"Y_l{k}"], [f"Y_l{k}_tb"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"Y_l{k}_tb", merged_shape], [f"layer_input_{k + 1}"])]
    for part in ("h", "c"):
        nodes.append(helper.make_node("Concat", [f"{part}_l{k}" for k in range(layers)], [part], axis=0))
    if language:
        head_weight = host(model._head_weight())  # with tied weights, the embedding's transpose
        nodes += [helper.make_node("MatMul", [f"layer_input_{layers}", constant("head.weight", head_weight)],
                                   ["head_product"]),
                  helper.make_node("Add", ["head_product", constant("head.bias", params["head.bias"])], ["logits"])]
        outputs = [helper.make_tensor_value_info("logits", elem, ["T", "B", model.vocab_size])]
    else:
        width = model.output_size
        y_shape = ["B", "T", width] if batch_first else ["T", "B", width]
        if batch_first:
            nodes.append(helper.make_node("Transpose", [f"layer_input_{layers}"], ["y"], perm=[1, 0, 2]))
        else:
            nodes.append(helper.make_node("Identity", [f"layer_input_{layers}"], ["y"]))
        outputs = [helper.make_tensor_value_info("y", elem, y_shape)]
    outputs += [helper.make_tensor_value_info("h", elem, h_shape),
                helper.make_tensor_value_info("c", elem, c_shape)]
    graph = helper.make_graph(nodes, f"lstmx_{type(model).__name__}", inputs, outputs, initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                   producer_name="lstmx")
    helper.set_model_props(onnx_model, {"lstmx.class": type(model).__name__,
                                        "lstmx.batch_first": str(bool(batch_first)),
                                        "lstmx.config": json.dumps(model.config())})
    onnx.checker.check_model(onnx_model)
    return atomic_write(path, lambda handle: handle.write(onnx_model.SerializeToString()))


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def load(path: str | os.PathLike, *, backend: Any = "numpy", dtype: Any = None) -> LSTM | LanguageModel:
    """An lstmx model from an ONNX graph of ``LSTM`` nodes, each layer's output feeding the next (as
    :func:`export` writes, or as other exporters write a stacked LSTM); a ``Gather`` from an embedding before the
    first and a ``MatMul`` + ``Add`` head after the last make a :class:`~lstmx.LanguageModel`."""
    onnx = _onnx()
    from onnx import numpy_helper

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"ONNX file {source} does not exist")
    try:
        graph_model = onnx.load(str(source))
    except Exception as error:  # noqa: BLE001 (a damaged or foreign file: one line)
        raise OnnxError(f"{source} is not a readable ONNX model ({type(error).__name__}: {error})") from None
    graph = graph_model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    lstm_nodes = [n for n in graph.node if n.op_type == "LSTM"]
    properties = {p.key: p.value for p in graph_model.metadata_props}
    if not lstm_nodes and "lstmx.config" in properties and any(n.op_type == "Scan" for n in graph.node):
        return _load_scanned(properties, weights, backend, dtype, source)
    if not lstm_nodes:
        raise OnnxError(f"{source} holds no ONNX LSTM node (nor the Scan layers of a graph lstmx exported)")
    params: dict[str, np.ndarray] = {}
    hidden = directions = None
    features = []
    for k, node in enumerate(lstm_nodes):
        attributes = _attributes(node)
        label = f"{source}: LSTM node {node.name or k}"
        activations = tuple(a.decode() if isinstance(a, bytes) else a for a in attributes.get("activations", ()))
        if any(activations[i:i + 3] != DEFAULT_ACTIVATIONS for i in range(0, len(activations), 3)) \
                or "activation_alpha" in attributes or "activation_beta" in attributes:
            raise OnnxError(f"{label} has activations {list(activations)}; lstmx runs Sigmoid, Tanh, Tanh only")
        if attributes.get("layout", 0) != 0:
            raise OnnxError(f"{label} has layout={attributes['layout']}; lstmx reads layout 0 (time-major) graphs")
        node_options = (len(node.input) > 7 and bool(node.input[7]), bool(attributes.get("input_forget", 0)),
                        attributes.get("clip"))
        if k == 0:
            cell_options = node_options
        elif node_options != cell_options:
            raise OnnxError(f"{label} has other peepholes, input_forget or clip than the first layer; lstmx's layers "
                            "share one cell")
        if node_options[0] and node.input[7] not in weights:
            raise OnnxError(f"{label}: its peepholes {node.input[7]!r} are not a constant of the graph")
        direction = attributes.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction == "reverse":
            raise OnnxError(f"{label} runs in reverse only; lstmx's layers run forward or both ways")
        missing = [name for name in node.input[1:3] if name not in weights]
        if missing:
            raise OnnxError(f"{label}: its weights {missing} are not constants of the graph")
        w, r = weights[node.input[1]], weights[node.input[2]]
        b = weights.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        node_hidden = int(attributes.get("hidden_size", r.shape[-1]))
        node_directions = 2 if direction == "bidirectional" else 1
        if hidden is None:
            hidden, directions = node_hidden, node_directions
        elif (node_hidden, node_directions) != (hidden, directions):
            raise OnnxError(f"{label} has hidden_size {node_hidden}, {direction}; lstmx stacks layers of one size "
                            "and direction")
        if w.shape[:2] != (directions, 4 * hidden) or r.shape != (directions, 4 * hidden, hidden):
            raise OnnxError(f"{label}: W {w.shape} and R {r.shape} do not fit hidden_size {hidden}")
        if k > 0 and w.shape[2] != directions * hidden:
            raise OnnxError(f"{label} reads {w.shape[2]} features; the layer before it gives {directions * hidden}")
        features.append(w.shape[2])
        for d, suffix in enumerate(("", "_reverse")[:directions]):
            params[f"weight_l{k}{suffix}"] = np.concatenate([_reorder(w[d], hidden, False).T,
                                                             _reorder(r[d], hidden, False).T])
            bias = np.zeros(4 * hidden, dtype=w.dtype) if b is None else b[d, :4 * hidden] + b[d, 4 * hidden:]
            params[f"bias_l{k}{suffix}"] = _reorder(bias, hidden, False)
            if node_options[0]:
                params[f"peephole_l{k}{suffix}"] = _peephole_order(weights[node.input[7]][d], hidden)
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in weights]
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    adds = [n for n in graph.node if n.op_type == "Add" and n.input[1] in weights]
    chosen = dtype or w.dtype.name
    variants = dict(peepholes=cell_options[0], input_forget=cell_options[1], cell_clip=cell_options[2])
    if gathers and matmuls and adds:
        table, head_weight, head_bias = (weights[gathers[0].input[0]], weights[matmuls[-1].input[1]],
                                         weights[adds[-1].input[1]])
        if directions != 1:
            raise OnnxError(f"{source}: a bidirectional LSTM cannot be a LanguageModel's (a causal model)")
        model: LSTM | LanguageModel = LanguageModel(table.shape[0], table.shape[1], hidden, len(lstm_nodes),
                                                    backend=backend, dtype=chosen, **variants)
        params = {"embedding.weight": table, **{f"lstm.{k}": v for k, v in params.items()},
                  "head.weight": head_weight, "head.bias": head_bias}
    else:
        model = LSTM(features[0], hidden, len(lstm_nodes), bidirectional=directions == 2,
                     batch_first=properties.get("lstmx.batch_first") == "True", backend=backend, dtype=chosen,
                     **variants)
    model.load_state_dict(params)
    return model


def _load_scanned(properties: dict[str, str], weights: dict[str, np.ndarray], backend: Any, dtype: Any,
                  source: Path) -> LSTM | LanguageModel:
    """A model :func:`export` wrote with Scan layers: its recorded configuration, and its parameters from the
    initializers of the same names."""
    kinds = {"LSTM": LSTM, "LanguageModel": LanguageModel}
    kind = kinds.get(properties.get("lstmx.class", ""))
    if kind is None:
        raise OnnxError(f"{source}: lstmx.class {properties.get('lstmx.class')!r} is not one of {sorted(kinds)}")
    try:
        config = json.loads(properties["lstmx.config"])
    except ValueError as error:
        raise OnnxError(f"{source}: its lstmx.config is not JSON ({error})") from None
    probe = kind(**config)  # the parameter names and dtype the configuration has
    missing = [name for name in probe.params if name not in weights]
    if missing:
        raise OnnxError(f"{source}: the initializers {missing} of its lstmx model are missing")
    chosen = dtype or weights[next(iter(probe.params))].dtype.name
    model = kind(**config, backend=backend, dtype=chosen)
    model.load_state_dict({name: weights[name] for name in model.params})
    return model
