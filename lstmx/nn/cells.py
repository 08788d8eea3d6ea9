"""Cells: what one recurrent layer computes per time step, declared once and run by any stack and implementation.

A cell declares its parameters (names, shapes, initialisation), its state (a tuple whose length and widths it
declares) and how a layer of it runs forward and backward through an implementation module of
:mod:`lstmx.dispatch.registry`. The stack (:mod:`lstmx.nn.stack`) runs any cell over T steps, in one or two directions, over
L layers; the registry keys implementations by the cell's ``kind``. A new variant is a new cell (or an option of
one), not a branch in the stack or the models.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..backend import Backend
from . import init
from .layers.cell import CellOptions
from .layers.lstm_layer import ExtraParams

PLAIN = CellOptions()


@runtime_checkable
class Cell(Protocol):
    """The contract every cell keeps (the stack and the registry rely on nothing else)."""

    kind: str  # the registry's key: implementations name the kinds of cell they run
    hidden_size: int  # H: the width of the cell state c
    options: CellOptions  # the variants in use (implementations name the options they take)

    @property
    def output_size(self) -> int:
        """H_out: the width of h and of the layer's output y."""

    @property
    def parameter_suffixes(self) -> tuple[str, ...]:
        """Per layer and direction, the parameter names' stems, in the order the layer functions take them."""

    def parameter_shapes(self, input_size: int) -> tuple[tuple[int, ...], ...]:
        """The shapes of one layer's parameters for an input of ``input_size`` features."""

    def initialize(self, rng: np.random.Generator, input_size: int) -> tuple[np.ndarray, ...]:
        """One layer's parameters in float64 on the host (a seed gives the same weights on every backend)."""

    def state_sizes(self) -> tuple[int, ...]:
        """The width of each state entry: (h, c) for the LSTM family."""

    def layer_forward(self, kernel: ModuleType, backend: Backend, x: Any, params: tuple[Any, ...],
                      state: tuple[Any, ...], step_mask: Any, noise: Any = None) -> tuple[Any, tuple[Any, ...], Any]:
        """``(y (T, B, H_out), final state, cache)`` of one layer over ``x`` (T, B, D), run by ``kernel``;
        ``noise`` (:class:`lstmx.nn.layers.lstm_layer.LayerNoise`) holds a training forward's zoneout and
        recurrent-dropout masks (None: evaluation)."""

    def layer_backward(self, kernel: ModuleType, backend: Backend, dy: Any, dstate: tuple[Any, ...],
                       params: tuple[Any, ...], cache: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        """Mirror of :meth:`layer_forward`: ``(dx, d initial state, d params in parameter order)``."""


class LSTMCell(NamedTuple):
    """The LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000), PyTorch's formulation.

    With ``z_t = x_t W_x + h_{t-1} W_h + b`` split into four blocks of width H in the order **i, f, g, o**::

        i_t = σ(z_i)        input gate
        f_t = σ(z_f)        forget gate
        g_t = tanh(z_g)     candidate cell
        o_t = σ(z_o)        output gate
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)

    These are the equations every implementation computes (:mod:`lstmx.nn.layers.cell` writes the pointwise part
    in the Array API; each fast path fuses the same math into its own loops and is tested against it).
    Parameters per layer: ``weight`` (D + H, 4H), rows ``[:D]`` acting on x_t and ``[D:]`` on h_{t-1}; ``bias``
    (4H,). State: (h, c), each of width H.

    **Options** (``options``, the ONNX LSTM operator's variants; the generic path runs them):

    - ``peepholes``: ``z_i += p_i ⊙ c_{t-1}``, ``z_f += p_f ⊙ c_{t-1}``, ``z_o += p_o ⊙ c_t`` (Gers & Schmidhuber
      2000), with a parameter ``peephole`` (3H,) = [p_i, p_f, p_o], zero at initialisation;
    - ``input_forget``: ``f_t = 1 − i_t`` (the coupled input-forget gate; z_f and its weights are unused);
    - ``cell_clip`` = C: each gate's pre-activation (peepholes included) is clipped to [−C, C] before its
      activation, as ONNX's ``clip``; the gradient is zero where it was clipped;
    - ``layer_norm`` (Ba et al. 2016): ``z_t = LN_x(x_t W_x) + LN_h(h_{t-1} W_h) + b`` and
      ``h_t = o_t ⊙ tanh(LN_c(c_t))`` (c_t itself is carried unnormalised), each LN over its row
      (:mod:`lstmx.nn.layers.norm`) with its own gain and bias: parameters ``norm_x``, ``norm_h`` (2, 4H) and
      ``norm_c`` (2, H), row 0 the gain (initially 1), row 1 the bias (initially 0);
    - ``zoneout`` = (z_c, z_h) (Krueger et al. 2017): in training, with masks m drawn per step and unit,
      ``c_t = m^c ⊙ c_{t-1} + (1 − m^c) ⊙ c'_t`` and ``h_t = m^h ⊙ h_{t-1} + (1 − m^h) ⊙ h'_t`` (c'_t, h'_t the
      values above; P(m = 1) = z); in evaluation m is replaced by its expectation z; the output is h_t;
    - ``recurrent_dropout`` = p (Gal & Ghahramani 2016, Keras's): in training h_{t-1} is multiplied by one mask
      per sequence, of 0 and 1/(1 − p), before W_h, the same mask at every step; nothing in evaluation.

    The options compose: the peepholes and the clip act on the pre-activations after the layer norms, zoneout on
    the state after the projection (h'_t is the projected h).
    """

    hidden_size: int
    options: CellOptions = PLAIN
    kind: str = "lstm"

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def parameter_suffixes(self) -> tuple[str, ...]:
        return ("weight", "bias") + _option_suffixes(self.options)

    def parameter_shapes(self, input_size: int) -> tuple[tuple[int, ...], ...]:
        shapes = ((input_size + self.hidden_size, 4 * self.hidden_size), (4 * self.hidden_size,))
        return shapes + _option_shapes(self.options, self.hidden_size)

    def initialize(self, rng: np.random.Generator, input_size: int) -> tuple[np.ndarray, ...]:
        return init.lstm_layer(rng, input_size, self.hidden_size) + _option_initial(self.options, self.hidden_size)

    def state_sizes(self) -> tuple[int, ...]:
        return self.hidden_size, self.hidden_size

    def layer_forward(self, kernel: ModuleType, backend: Backend, x: Any, params: tuple[Any, ...],
                      state: tuple[Any, ...], step_mask: Any, noise: Any = None) -> tuple[Any, tuple[Any, ...], Any]:
        if self.options != PLAIN:
            return _variant_forward(self, kernel, backend, x, params, state, step_mask, noise)
        weight, bias = params
        return kernel.lstm_layer_forward(backend, x, weight, bias, state[0], state[1], step_mask)

    def layer_backward(self, kernel: ModuleType, backend: Backend, dy: Any, dstate: tuple[Any, ...],
                       params: tuple[Any, ...], cache: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        if self.options != PLAIN:
            return _variant_backward(self, kernel, backend, dy, dstate, params, cache)
        dx, dstate0, dweight, dbias = kernel.lstm_layer_backward(backend, dy, dstate[0], dstate[1], params[0], cache)
        return dx, dstate0, (dweight, dbias)

    def layer_pair_forward(self, kernel: ModuleType, backend: Backend, xs: tuple[Any, Any],
                           params: tuple[tuple[Any, ...], tuple[Any, ...]], states: tuple[tuple[Any, ...], ...],
                           step_mask: Any) -> tuple[tuple[Any, Any], tuple[Any, Any], tuple[Any, Any]]:
        """Both directions of a bidirectional layer of the plain cell at once (a kernel with pair functions,
        :class:`lstmx.dispatch.contract.PairedLayerKernel`): ``((y, y'), (state, state'), (cache, cache'))``,
        each the pair of what :meth:`layer_forward` gives for one direction."""
        (weight, bias), (weight_reverse, bias_reverse) = params
        return kernel.lstm_layer_pair_forward(backend, xs, (weight, weight_reverse), (bias, bias_reverse),
                                              (states[0][0], states[1][0]), (states[0][1], states[1][1]), step_mask)

    def layer_pair_backward(self, kernel: ModuleType, backend: Backend, dys: tuple[Any, Any],
                            dstates: tuple[tuple[Any, ...], ...], params: tuple[tuple[Any, ...], tuple[Any, ...]],
                            caches: tuple[Any, Any]) -> tuple[tuple[Any, Any], tuple[Any, Any], tuple[Any, Any]]:
        """Mirror of :meth:`layer_pair_forward`: ``((dx, dx'), (dstate0, dstate0'), (dparams, dparams'))``."""
        dxs, dstates0, dweights, dbiases = kernel.lstm_layer_pair_backward(
            backend, dys, (dstates[0][0], dstates[1][0]), (dstates[0][1], dstates[1][1]),
            (params[0][0], params[1][0]), caches)
        return dxs, dstates0, ((dweights[0], dbiases[0]), (dweights[1], dbiases[1]))


class LSTMPCell(NamedTuple):
    """The LSTM with a recurrent projection (Sak et al. 2014; PyTorch's ``proj_size``).

    The gates and the cell are :class:`LSTMCell`'s, with h_{t-1} of width P in ``z_t``; the hidden state is
    projected down::

        h_t = (o_t ⊙ tanh(c_t)) W_hr        W_hr: (H, P), P < H

    Parameters per layer: ``weight`` (D + P, 4H), ``bias`` (4H,), ``projection`` (H, P) (PyTorch's
    ``weight_hr`` transposed). State: (h of width P, c of width H).
    """

    hidden_size: int
    proj_size: int
    options: CellOptions = PLAIN  # as :class:`LSTMCell`'s
    kind: str = "lstmp"

    @property
    def output_size(self) -> int:
        return self.proj_size

    @property
    def parameter_suffixes(self) -> tuple[str, ...]:
        return ("weight", "bias", "projection") + _option_suffixes(self.options)

    def parameter_shapes(self, input_size: int) -> tuple[tuple[int, ...], ...]:
        hidden, proj = self.hidden_size, self.proj_size
        shapes = ((input_size + proj, 4 * hidden), (4 * hidden,), (hidden, proj))
        return shapes + _option_shapes(self.options, hidden)

    def initialize(self, rng: np.random.Generator, input_size: int) -> tuple[np.ndarray, ...]:
        weight, bias = init.lstm_layer(rng, input_size, self.hidden_size, recurrent_size=self.proj_size)
        params = (weight, bias, init.projection(rng, self.hidden_size, self.proj_size))
        return params + _option_initial(self.options, self.hidden_size)

    def state_sizes(self) -> tuple[int, ...]:
        return self.proj_size, self.hidden_size

    def layer_forward(self, kernel: ModuleType, backend: Backend, x: Any, params: tuple[Any, ...],
                      state: tuple[Any, ...], step_mask: Any, noise: Any = None) -> tuple[Any, tuple[Any, ...], Any]:
        if self.options != PLAIN:
            return _variant_forward(self, kernel, backend, x, params, state, step_mask, noise)
        weight, bias, projection = params
        return kernel.lstmp_layer_forward(backend, x, weight, bias, projection, state[0], state[1], step_mask)

    def layer_backward(self, kernel: ModuleType, backend: Backend, dy: Any, dstate: tuple[Any, ...],
                       params: tuple[Any, ...], cache: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        if self.options != PLAIN:
            return _variant_backward(self, kernel, backend, dy, dstate, params, cache)
        weight, _, projection = params
        dx, dstate0, dweight, dbias, dprojection = kernel.lstmp_layer_backward(
            backend, dy, dstate[0], dstate[1], weight, projection, cache)
        return dx, dstate0, (dweight, dbias, dprojection)


def _option_suffixes(options: CellOptions) -> tuple[str, ...]:
    """The parameters the options add, after the cell's own (their names are :class:`ExtraParams`' fields)."""
    return (("peephole",) if options.peepholes else ()) + (("norm_x", "norm_h", "norm_c") if options.layer_norm
                                                           else ())


def _option_shapes(options: CellOptions, hidden: int) -> tuple[tuple[int, ...], ...]:
    shapes = {"peephole": (3 * hidden,), "norm_x": (2, 4 * hidden), "norm_h": (2, 4 * hidden), "norm_c": (2, hidden)}
    return tuple(shapes[name] for name in _option_suffixes(options))


def _option_initial(options: CellOptions, hidden: int) -> tuple[np.ndarray, ...]:
    """Peepholes start at zero, each layer norm as the identity (gain 1, bias 0)."""
    return tuple(np.zeros(shape) if name == "peephole" else np.stack([np.ones(shape[1]), np.zeros(shape[1])])
                 for name, shape in zip(_option_suffixes(options), _option_shapes(options, hidden)))


def _variant_forward(cell: Cell, kernel: ModuleType, backend: Backend, x: Any, params: tuple[Any, ...],
                     state: tuple[Any, ...], step_mask: Any, noise: Any) -> tuple[Any, tuple[Any, ...], Any]:
    extra = ExtraParams(**dict(zip(cell.parameter_suffixes[2:], params[2:])))
    return kernel.lstm_variant_layer_forward(backend, x, params[0], params[1], extra, cell.options, state[0],
                                             state[1], step_mask, noise)


def _variant_backward(cell: Cell, kernel: ModuleType, backend: Backend, dy: Any, dstate: tuple[Any, ...],
                      params: tuple[Any, ...], cache: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
    suffixes = cell.parameter_suffixes[2:]
    extra = ExtraParams(**dict(zip(suffixes, params[2:])))
    dx, dstate0, dweight, dbias, dextra = kernel.lstm_variant_layer_backward(
        backend, dy, dstate[0], dstate[1], params[0], extra, cell.options, cache)
    return dx, dstate0, (dweight, dbias) + tuple(getattr(dextra, name) for name in suffixes)


def lstm_cell(hidden_size: int, proj_size: int = 0, options: CellOptions = PLAIN) -> Cell:
    """The cell of ``nn.LSTM(hidden_size=..., proj_size=...)``: :class:`LSTMPCell` when ``proj_size`` > 0, with
    the variants ``options``."""
    return LSTMPCell(hidden_size, proj_size, options) if proj_size else LSTMCell(hidden_size, options)
