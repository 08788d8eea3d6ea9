"""The layers the ONNX ``LSTM`` operator cannot express (``proj_size``, ``layer_norm``, zoneout's evaluation-mode
expectation) as ONNX ``Scan`` nodes: one per layer and direction, whose body is one time step of
:class:`lstmx.nn.cells.LSTMCell` with its options, written with the standard operators (``MatMul``,
``LayerNormalization``, ``Sigmoid``, ``Tanh``, ``Clip``, ...).

The graph's initializers are the model's own parameters under their own names (``weight_l0``, ``norm_x_l0``, ...),
split into their parts by nodes of the graph, so :func:`lstmx.interop.onnx.load` reads them back as they are.
The reverse direction reads its input through ``ReverseSequence`` (each sequence reversed within its length, as
lstmx's), and padded steps keep the state and output zeros, as in :mod:`lstmx.nn.layers.lstm_layer`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..nn.layers.norm import NORM_EPSILON


class ScanLayers:
    """Emits the ``Scan`` nodes of one model's layers into ``nodes`` (``constant`` adds an initializer)."""

    def __init__(self, helper: Any, elem: int, dtype: np.dtype, nodes: list, constant: Callable[[str, np.ndarray], str],
                 model: Any, prefix: str, with_lengths: bool) -> None:
        self.helper, self.elem, self.dtype, self.nodes, self.constant = helper, elem, dtype, nodes, constant
        self.model, self.prefix, self.with_lengths = model, prefix, with_lengths
        self.options, self.hidden = model.cell_options, model.hidden_size
        self.output = model.stack.cell.output_size
        self._shared: dict[str, str] = {}
        self._constants: set[str] = set()

    def _const(self, name: str, value: np.ndarray) -> str:
        """An initializer, added once however many layers use it."""
        if name not in self._constants:
            self._constants.add(name)
            self.constant(name, value)
        return name

    def _node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], **attributes))
        return output

    def _scalar(self, name: str, value: float) -> str:
        return self._const(name, np.array(value, dtype=self.dtype))

    def _shared_value(self, name: str, make: Callable[[], str]) -> str:
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]

    def _shape_part(self, start: int) -> str:
        """Dimension ``start`` of the first layer's input (0: T, 1: B) as a (1,) int64 tensor."""
        return self._shared_value(f"input_dim_{start}", lambda: self._node(
            "Slice", [self._shared_value("input_shape", lambda: self._node("Shape", ["layer_input_0"], "input_shape")),
                      self._const(f"dim_{start}_start", np.array([start], np.int64)),
                      self._const(f"dim_{start}_stop", np.array([start + 1], np.int64))], f"input_dim_{start}"))

    def _sequence_lengths(self) -> str:
        """(B,) int64: the lengths given, or T for every sequence."""
        if self.with_lengths:
            return self._shared_value("lengths_int64", lambda: self._node("Cast", ["lengths"], "lengths_int64",
                                                                          to=7))
        return self._shared_value("full_lengths", lambda: self._node("Expand", [self._shape_part(0),
                                                                                self._shape_part(1)], "full_lengths"))

    def _step_mask(self) -> str:
        """(T, B, 1) of the model's dtype: 1 on real steps, 0 on padding."""
        def make() -> str:
            steps = self._node("Squeeze", [self._shape_part(0), self._const("axis_0", np.array([0], np.int64))],
                               "steps_scalar")
            times = self._node("Range", [self._const("range_start", np.array(0, np.int64)), steps,
                                         self._const("range_delta", np.array(1, np.int64))], "times")
            column = self._node("Unsqueeze", [times, self._const("axis_1", np.array([1], np.int64))], "times_column")
            real = self._node("Less", [column, self._sequence_lengths()], "real_steps")
            mask = self._node("Cast", [real], "step_mask_tb", to=self.elem)
            return self._node("Unsqueeze", [mask, self._const("axis_2", np.array([2], np.int64))], "step_mask")
        return self._shared_value("step_mask", make)

    def _zeros(self, width: int) -> str:
        """(B, width) zeros: the initial state when the graph takes none."""
        def make() -> str:
            shape = self._node("Concat", [self._shape_part(1), self._const(f"width_{width}", np.array([width],
                                                                                                       np.int64))],
                               f"zeros_shape_{width}", axis=0)
            return self._node("ConstantOfShape", [shape], f"zeros_{width}",
                              value=self.helper.make_tensor("zero", self.elem, [1], [0]))
        return self._shared_value(f"zeros_{width}", make)

    def layer(self, k: int, layer_input: str, features: int, state: tuple[str, str] | None,
              outputs: tuple[str, str, str]) -> None:
        """Layer ``k`` (both directions) on ``layer_input`` (T, B, features) from ``state`` = names of its (dirs, B,
        ·) initial h and c (None: zeros), into ``outputs`` = the names of y (T, B, dirs·R), h (dirs, B, R) and c
        (dirs, B, H)."""
        directions = self.model.stack.directions
        ys, hs, cs = [], [], []
        for d in range(directions):
            suffix = "_reverse" if d else ""
            tag = f"l{k}{suffix}"
            seen = layer_input if d == 0 else self._node(
                "ReverseSequence", [layer_input, self._sequence_lengths()], f"reversed_input_{tag}", batch_axis=1,
                time_axis=0)
            if state is None:
                h0, c0 = self._zeros(self.output), self._zeros(self.hidden)
            else:
                index = self._const(f"direction_{tag}", np.array(d, np.int64))
                h0 = self._node("Gather", [state[0], index], f"initial_h_{tag}", axis=0)
                c0 = self._node("Gather", [state[1], index], f"initial_c_{tag}", axis=0)
            y, h, c = self._direction(tag, seen, features, h0, c0)
            if d:
                y = self._node("ReverseSequence", [y, self._sequence_lengths()], f"y_{tag}", batch_axis=1,
                               time_axis=0)
            ys.append(y)
            hs.append(self._node("Unsqueeze", [h, self._const("axis_0", np.array([0], np.int64))], f"h_{tag}_1"))
            cs.append(self._node("Unsqueeze", [c, self._const("axis_0", np.array([0], np.int64))], f"c_{tag}_1"))
        for parts, output, axis in ((ys, outputs[0], -1), (hs, outputs[1], 0), (cs, outputs[2], 0)):
            if directions == 1:
                self._node("Identity", parts, output)
            else:
                self._node("Concat", parts, output, axis=axis)

    def _gain_and_bias(self, name: str) -> tuple[str, str]:
        rows = [self._node("Gather", [name, self._const(f"row_{r}", np.array(r, np.int64))], f"{name}.{part}",
                           axis=0) for r, part in enumerate(("gain", "bias"))]
        return rows[0], rows[1]

    def _direction(self, tag: str, seen: str, features: int, h0: str, c0: str) -> tuple[str, str, str]:
        """One layer and direction as a Scan: ``(y (T, B, R), h_T, c_T)``."""
        helper, options, name = self.helper, self.options, f"{self.prefix}{{}}_{tag}"
        weight = name.format("weight")
        self.nodes.append(helper.make_node(
            "Split", [weight, self._const(f"weight_split_{tag}", np.array([features, self.output], np.int64))],
            [f"{weight}.x", f"{weight}.h"], axis=0))
        x_product = self._node("MatMul", [seen, f"{weight}.x"], f"x_product_{tag}")
        if options.layer_norm:
            gain, bias = self._gain_and_bias(name.format("norm_x"))
            x_product = self._node("LayerNormalization", [x_product, gain, bias], f"x_normed_{tag}", axis=-1,
                                   epsilon=NORM_EPSILON)
        x_gates = self._node("Add", [x_product, name.format("bias")], f"x_gates_{tag}")
        scan_inputs = [x_gates] + ([self._step_mask()] if self.with_lengths else [])
        body = self._body(tag, name, weight)
        self.nodes.append(helper.make_node("Scan", [h0, c0, *scan_inputs], [f"h_T_{tag}", f"c_T_{tag}", f"y_{tag}_run"],
                                           body=body, num_scan_inputs=len(scan_inputs)))
        return f"y_{tag}_run", f"h_T_{tag}", f"c_T_{tag}"

    def _body(self, tag: str, name: str, weight: str) -> Any:
        """One time step: (h_{t-1}, c_{t-1}, x-part of the gates, [step mask]) → (h_t, c_t, y_t)."""
        helper, options, hidden, elem = self.helper, self.options, self.hidden, self.elem
        body: list = []

        def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
            body.append(helper.make_node(op, inputs, [f"{output}_{tag}"], **attributes))
            return f"{output}_{tag}"

        h_prev, c_prev, x_gates, real = (f"{part}_{tag}" for part in ("h_prev", "c_prev", "x_gates_t", "real_t"))
        h_product = node("MatMul", [h_prev, f"{weight}.h"], "h_product")
        if options.layer_norm:
            gain, bias = self._gain_and_bias(name.format("norm_h"))
            h_product = node("LayerNormalization", [h_product, gain, bias], "h_normed", axis=-1, epsilon=NORM_EPSILON)
        z = node("Add", [x_gates, h_product], "z")
        blocks = [f"z{gate}_{tag}" for gate in "ifgo"]
        body.append(helper.make_node("Split", [z, self._const(f"gate_split_{tag}", np.full(4, hidden, np.int64))],
                                     blocks, axis=-1))
        zi, zf, zg, zo = blocks
        peepholes = []
        if options.peepholes:
            peephole = name.format("peephole")
            self.nodes.append(helper.make_node(
                "Split", [peephole, self._const(f"peephole_split_{tag}", np.full(3, hidden, np.int64))],
                [f"{peephole}.{gate}" for gate in "ifo"], axis=0))
            peepholes = [f"{peephole}.{gate}" for gate in "ifo"]
            zi = node("Add", [zi, node("Mul", [c_prev, peepholes[0]], "peep_i")], "zi_peeped")
            zf = node("Add", [zf, node("Mul", [c_prev, peepholes[1]], "peep_f")], "zf_peeped")

        def clipped(value: str, label: str) -> str:
            if options.cell_clip is None:
                return value
            low, high = (self._scalar(f"clip_{side}", sign * options.cell_clip) for side, sign in (("low", -1),
                                                                                                   ("high", 1)))
            return node("Clip", [value, low, high], f"{label}_clipped")

        i = node("Sigmoid", [clipped(zi, "zi")], "i")
        f = node("Sub", [self._scalar("one", 1.0), i], "f") if options.input_forget else node("Sigmoid", [clipped(zf, "zf")], "f")
        g = node("Tanh", [clipped(zg, "zg")], "g")
        c_new = node("Add", [node("Mul", [f, c_prev], "kept"), node("Mul", [i, g], "written")], "c_new")
        if options.peepholes:
            zo = node("Add", [zo, node("Mul", [c_new, peepholes[2]], "peep_o")], "zo_peeped")
        o = node("Sigmoid", [clipped(zo, "zo")], "o")
        squashed = c_new
        if options.layer_norm:
            gain, bias = self._gain_and_bias(name.format("norm_c"))
            squashed = node("LayerNormalization", [c_new, gain, bias], "c_normed", axis=-1, epsilon=NORM_EPSILON)
        h_new = node("Mul", [o, node("Tanh", [squashed], "tanh_c")], "h_cell")
        if self.model.proj_size:
            h_new = node("MatMul", [h_new, name.format("projection")], "h_projected")
        zoneout_c, zoneout_h = options.zoneout
        if zoneout_c or zoneout_h:  # evaluation: each unit keeps z of its previous value
            c_new = node("Add", [node("Mul", [self._scalar("zoneout_c", zoneout_c), c_prev], "c_zone_kept"),
                                 node("Mul", [self._scalar("zoneout_c_complement", 1 - zoneout_c), c_new],
                                      "c_zone_new")], "c_zoned")
            h_new = node("Add", [node("Mul", [self._scalar("zoneout_h", zoneout_h), h_prev], "h_zone_kept"),
                                 node("Mul", [self._scalar("zoneout_h_complement", 1 - zoneout_h), h_new],
                                      "h_zone_new")], "h_zoned")
        if self.with_lengths:  # padded steps keep the state and output zeros
            padded = node("Sub", [self._scalar("one", 1.0), real], "padded")
            y = node("Mul", [real, h_new], "y_t")
            h_out = node("Add", [y, node("Mul", [padded, h_prev], "h_carried")], "h_out")
            c_out = node("Add", [node("Mul", [real, c_new], "c_real"), node("Mul", [padded, c_prev], "c_carried")],
                         "c_out")
        else:
            y, h_out, c_out = node("Identity", [h_new], "y_t"), node("Identity", [h_new], "h_out"), \
                node("Identity", [c_new], "c_out")
        value = lambda label: helper.make_tensor_value_info(label, elem, None)  # noqa: E731
        inputs = [value(h_prev), value(c_prev), value(x_gates)] + ([value(real)] if self.with_lengths else [])
        return helper.make_graph(body, f"step_{tag}", inputs, [value(h_out), value(c_out), value(y)])
