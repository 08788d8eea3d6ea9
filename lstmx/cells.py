"""Cells: what one recurrent layer computes per time step, declared once and run by any stack and implementation.

A cell declares its parameters (names, shapes, initialisation), its state (a tuple whose length and widths it
declares) and how a layer of it runs forward and backward through an implementation module of
:mod:`lstmx.registry`. The stack (:mod:`lstmx.stack`) runs any cell over T steps, in one or two directions, over
L layers; the registry keys implementations by the cell's ``kind``. A new variant is a new cell (or an option of
one), not a branch in the stack or the models.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from . import init
from .backend import Backend
from .layers.cell import CellOptions

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
                      state: tuple[Any, ...], step_mask: Any) -> tuple[Any, tuple[Any, ...], Any]:
        """``(y (T, B, H_out), final state, cache)`` of one layer over ``x`` (T, B, D), run by ``kernel``."""

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

    These are the equations every implementation computes (:mod:`lstmx.layers.cell` writes the pointwise part
    in the Array API; each fast path fuses the same math into its own loops and is tested against it).
    Parameters per layer: ``weight`` (D + H, 4H), rows ``[:D]`` acting on x_t and ``[D:]`` on h_{t-1}; ``bias``
    (4H,). State: (h, c), each of width H.

    **Options** (``options``, the ONNX LSTM operator's variants; the generic path runs them):

    - ``peepholes``: ``z_i += p_i ⊙ c_{t-1}``, ``z_f += p_f ⊙ c_{t-1}``, ``z_o += p_o ⊙ c_t`` (Gers & Schmidhuber
      2000), with a parameter ``peephole`` (3H,) = [p_i, p_f, p_o], zero at initialisation;
    - ``input_forget``: ``f_t = 1 − i_t`` (the coupled input-forget gate; z_f and its weights are unused);
    - ``cell_clip`` = C: each gate's pre-activation (peepholes included) is clipped to [−C, C] before its
      activation, as ONNX's ``clip``; the gradient is zero where it was clipped.
    """

    hidden_size: int
    options: CellOptions = PLAIN
    kind: str = "lstm"

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def parameter_suffixes(self) -> tuple[str, ...]:
        return ("weight", "bias", "peephole") if self.options.peepholes else ("weight", "bias")

    def parameter_shapes(self, input_size: int) -> tuple[tuple[int, ...], ...]:
        shapes = ((input_size + self.hidden_size, 4 * self.hidden_size), (4 * self.hidden_size,))
        return shapes + (((3 * self.hidden_size,),) if self.options.peepholes else ())

    def initialize(self, rng: np.random.Generator, input_size: int) -> tuple[np.ndarray, ...]:
        weight, bias = init.lstm_layer(rng, input_size, self.hidden_size)
        return (weight, bias, np.zeros(3 * self.hidden_size)) if self.options.peepholes else (weight, bias)

    def state_sizes(self) -> tuple[int, ...]:
        return self.hidden_size, self.hidden_size

    def layer_forward(self, kernel: ModuleType, backend: Backend, x: Any, params: tuple[Any, ...],
                      state: tuple[Any, ...], step_mask: Any) -> tuple[Any, tuple[Any, ...], Any]:
        if self.options != PLAIN:
            return _variant_forward(kernel, backend, x, params[0], params[1], None, params[2:], self.options,
                                    state, step_mask)
        weight, bias = params
        return kernel.lstm_layer_forward(backend, x, weight, bias, state[0], state[1], step_mask)

    def layer_backward(self, kernel: ModuleType, backend: Backend, dy: Any, dstate: tuple[Any, ...],
                       params: tuple[Any, ...], cache: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        if self.options != PLAIN:
            return _variant_backward(kernel, backend, dy, dstate, params[0], None, params[2:], self.options, cache)
        dx, dstate0, dweight, dbias = kernel.lstm_layer_backward(backend, dy, dstate[0], dstate[1], params[0], cache)
        return dx, dstate0, (dweight, dbias)


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
        return ("weight", "bias", "projection") + (("peephole",) if self.options.peepholes else ())

    def parameter_shapes(self, input_size: int) -> tuple[tuple[int, ...], ...]:
        hidden, proj = self.hidden_size, self.proj_size
        shapes = ((input_size + proj, 4 * hidden), (4 * hidden,), (hidden, proj))
        return shapes + (((3 * hidden,),) if self.options.peepholes else ())

    def initialize(self, rng: np.random.Generator, input_size: int) -> tuple[np.ndarray, ...]:
        weight, bias = init.lstm_layer(rng, input_size, self.hidden_size, recurrent_size=self.proj_size)
        params = (weight, bias, init.projection(rng, self.hidden_size, self.proj_size))
        return params + ((np.zeros(3 * self.hidden_size),) if self.options.peepholes else ())

    def state_sizes(self) -> tuple[int, ...]:
        return self.proj_size, self.hidden_size

    def layer_forward(self, kernel: ModuleType, backend: Backend, x: Any, params: tuple[Any, ...],
                      state: tuple[Any, ...], step_mask: Any) -> tuple[Any, tuple[Any, ...], Any]:
        if self.options != PLAIN:
            return _variant_forward(kernel, backend, x, params[0], params[1], params[2], params[3:], self.options,
                                    state, step_mask)
        weight, bias, projection = params
        return kernel.lstmp_layer_forward(backend, x, weight, bias, projection, state[0], state[1], step_mask)

    def layer_backward(self, kernel: ModuleType, backend: Backend, dy: Any, dstate: tuple[Any, ...],
                       params: tuple[Any, ...], cache: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        if self.options != PLAIN:
            return _variant_backward(kernel, backend, dy, dstate, params[0], params[2], params[3:], self.options,
                                     cache)
        weight, _, projection = params
        dx, dstate0, dweight, dbias, dprojection = kernel.lstmp_layer_backward(
            backend, dy, dstate[0], dstate[1], weight, projection, cache)
        return dx, dstate0, (dweight, dbias, dprojection)


def _variant_forward(kernel: ModuleType, backend: Backend, x: Any, weight: Any, bias: Any, projection: Any,
                     peephole: tuple[Any, ...], options: CellOptions, state: tuple[Any, ...],
                     step_mask: Any) -> tuple[Any, tuple[Any, ...], Any]:
    return kernel.lstm_variant_layer_forward(backend, x, weight, bias, projection, peephole[0] if peephole else None,
                                             options, state[0], state[1], step_mask)


def _variant_backward(kernel: ModuleType, backend: Backend, dy: Any, dstate: tuple[Any, ...], weight: Any,
                      projection: Any, peephole: tuple[Any, ...], options: CellOptions,
                      cache: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
    dx, dstate0, dweight, dbias, dprojection, dpeephole = kernel.lstm_variant_layer_backward(
        backend, dy, dstate[0], dstate[1], weight, projection, peephole[0] if peephole else None, options, cache)
    grads = (dweight, dbias) + ((dprojection,) if projection is not None else ())
    return dx, dstate0, grads + ((dpeephole,) if options.peepholes else ())


def lstm_cell(hidden_size: int, proj_size: int = 0, options: CellOptions = PLAIN) -> Cell:
    """The cell of ``nn.LSTM(hidden_size=..., proj_size=...)``: :class:`LSTMPCell` when ``proj_size`` > 0, with
    the variants ``options``."""
    return LSTMPCell(hidden_size, proj_size, options) if proj_size else LSTMCell(hidden_size, options)
