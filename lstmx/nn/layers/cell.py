"""The pointwise part of one LSTM time step (everything but the recurrent matmul), generic Array API.

The equations are :class:`lstmx.nn.cells.LSTMCell`'s docstring; here is how the generic path computes them.

All four activations come from one ``tanh``: σ(z) = ½·tanh(½z) + ½ and tanh(z) = 1·tanh(1·z) + 0, so with
a per-column ``scale`` s (½ on the i, f, o columns, 1 on g) the gates are ``tanh(s·z)·s + (1 − s)``.
The derivative taken from the *stored gate outputs* u is then ``s² − (u − (1 − s))²``, which is
σ(1 − σ) on the sigmoid columns and 1 − g² on the g columns: no pre-activation is kept.

Backend kernels (:mod:`lstmx.kernels`) fuse this same math into their own loops; they are chosen per layer by
:mod:`lstmx.dispatch.registry` and tested against these functions.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ...backend import Backend
from .norm import NormCache, layer_norm_backward, layer_norm_forward


class GateAffine(NamedTuple):
    """Per-column constants of the one-``tanh`` gate activation (see the module docstring), built once per call."""

    scale: Any  # (4H,) s: ½ on the sigmoid gates i, f, o, 1 on the candidate g
    shift: Any  # (4H,) 1 − s
    scale_squared: Any  # (4H,) s²


def gate_affine(backend: Backend, hidden_size: int, dtype: Any) -> GateAffine:
    xp = backend.xp
    half = xp.full((hidden_size,), 0.5, dtype=dtype, device=backend.device)
    one = xp.ones((hidden_size,), dtype=dtype, device=backend.device)
    scale = xp.concat([half, half, one, half])
    return GateAffine(scale, 1 - scale, scale * scale)


def cell_forward(xp: Any, z: Any, c_prev: Any, gate: GateAffine) -> tuple[Any, Any, Any, Any]:
    """One step's gates from pre-activations ``z`` (B, 4H) and ``c_prev`` (B, H).

    Returns ``(gates, c, tanh_c, h)``: the activated gates (B, 4H) in order i, f, g, o, the new cell, its
    tanh and the new hidden state.
    """
    hidden = c_prev.shape[-1]
    gates = xp.tanh(z * gate.scale) * gate.scale + gate.shift
    i, f, g, o = (gates[:, k * hidden : (k + 1) * hidden] for k in range(4))
    c = f * c_prev + i * g
    tanh_c = xp.tanh(c)
    return gates, c, tanh_c, o * tanh_c


def cell_backward(
    xp: Any, dh: Any, dc_next: Any, gates: Any, c_prev: Any, tanh_c: Any, gate: GateAffine
) -> tuple[Any, Any]:
    """Mirror of :func:`cell_forward`: from dL/dh_t and the cell gradient arriving from step t+1, return
    ``(dz, dc_prev)``: the gradient of the pre-activations (B, 4H) and the part of dL/dc_{t-1} through c_t.
    """
    hidden = c_prev.shape[-1]
    i, f, g, o = (gates[:, k * hidden : (k + 1) * hidden] for k in range(4))
    dc = dc_next + dh * o * (1 - tanh_c * tanh_c)  # tanh' of the cell, taken from the stored tanh(c_t)
    d_gates = xp.concat([dc * g, dc * c_prev, dc * i, dh * tanh_c], axis=-1)
    shifted = gates - gate.shift
    dz = d_gates * (gate.scale_squared - shifted * shifted)  # σ(1-σ) on i, f, o; 1-g² on g (module docstring)
    return dz, dc * f


class CellOptions(NamedTuple):
    """The LSTM variants, as options of the cell (:class:`lstmx.nn.cells.LSTMCell` writes their equations)."""

    peepholes: bool = False  # i and f see c_{t-1}, o sees c_t, through per-unit weights p_i, p_f, p_o
    input_forget: bool = False  # the forget gate coupled to the input gate: f = 1 − i
    cell_clip: float | None = None  # every gate's pre-activation clipped to [−C, C] (gradient zero outside)
    layer_norm: bool = False  # LN on x W_x, on h W_h and on c before its tanh, each with its own gain and bias
    zoneout: tuple[float, float] = (0.0, 0.0)  # (z_c, z_h): the probability each unit keeps its previous value
    recurrent_dropout: float = 0.0  # variational dropout on h_{t-1}: one mask per sequence (training only)

    def names(self) -> tuple[str, ...]:
        """The options in use, as the registry names them."""
        return tuple(name for name, on in (("peepholes", self.peepholes), ("input_forget", self.input_forget),
                                           ("cell_clip", self.cell_clip is not None),
                                           ("layer_norm", self.layer_norm), ("zoneout", any(self.zoneout)),
                                           ("recurrent_dropout", self.recurrent_dropout > 0)) if on)

    def in_effect(self, training: bool) -> "CellOptions":
        """The options a forward in this mode computes: recurrent dropout acts only in training (zoneout acts in
        both: by its masks in training, by its expectation in evaluation)."""
        return self if training else self._replace(recurrent_dropout=0.0)


ACTING_VALUES = {"peepholes": True, "input_forget": True, "cell_clip": 3.0, "layer_norm": True, "zoneout": (0.2, 0.3),
                 "recurrent_dropout": 0.2}  # a value of each option's model argument at which it acts


def acting_options(names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Model arguments that turn on each cell option of ``names`` (registry names), at values where each acts:
    what ``lstmx check``, ``lstmx tune`` and the GPU sanitizer run."""
    return {name: ACTING_VALUES[name] for name in names}


class VariantStep(NamedTuple):
    """What the backward of one variant step needs beyond the plain step's gates and tanh(c_t)."""

    c_new: Any  # (B, H) c_t, which o's peephole multiplied
    unclipped: Any  # (B, 4H) 1 where a pre-activation lay inside [−C, C], else 0; None without clipping
    c_norm: NormCache | None = None  # LN(c_t)'s cache with layer_norm, else None


def _clipped(xp: Any, z: Any, clip: float | None) -> tuple[Any, Any]:
    if clip is None:
        return z, None
    inside = xp.astype(xp.abs(z) <= clip, z.dtype)
    return xp.clip(z, -clip, clip), inside


def variant_cell_forward(xp: Any, z: Any, c_prev: Any, peephole: Any, norm_c: Any,
                         options: CellOptions) -> tuple[Any, Any, Any, Any, VariantStep]:
    """:func:`cell_forward` with the options: ``(gates, c, tanh_c, h, step)``; ``peephole`` (3H,) holds p_i,
    p_f, p_o (None without peepholes), ``norm_c`` (2, H) the gain and bias of LN(c_t) (None without layer_norm);
    ``tanh_c`` is tanh(LN(c_t)) with layer norm. The equations are :class:`lstmx.nn.cells.LSTMCell`'s."""
    hidden = c_prev.shape[-1]
    zi, zf, zg, zo = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
    if options.peepholes:
        zi = zi + peephole[:hidden] * c_prev
        zf = zf + peephole[hidden:2 * hidden] * c_prev
    zi, inside_i = _clipped(xp, zi, options.cell_clip)
    zf, inside_f = _clipped(xp, zf, options.cell_clip)
    zg, inside_g = _clipped(xp, zg, options.cell_clip)
    i = 1 / (1 + xp.exp(-zi))
    f = 1 - i if options.input_forget else 1 / (1 + xp.exp(-zf))
    g = xp.tanh(zg)
    c = f * c_prev + i * g
    if options.peepholes:
        zo = zo + peephole[2 * hidden:] * c
    zo, inside_o = _clipped(xp, zo, options.cell_clip)
    o = 1 / (1 + xp.exp(-zo))
    c_norm = None
    if options.layer_norm:
        normalized_c, c_norm = layer_norm_forward(xp, c, norm_c)
        tanh_c = xp.tanh(normalized_c)
    else:
        tanh_c = xp.tanh(c)
    unclipped = None if options.cell_clip is None else xp.concat([inside_i, inside_f, inside_g, inside_o], axis=-1)
    return xp.concat([i, f, g, o], axis=-1), c, tanh_c, o * tanh_c, VariantStep(c, unclipped, c_norm)


def variant_cell_backward(xp: Any, dh: Any, dc_next: Any, gates: Any, c_prev: Any, tanh_c: Any, peephole: Any,
                          norm_c: Any, options: CellOptions, step: VariantStep) -> tuple[Any, Any, Any, Any]:
    """Mirror of :func:`variant_cell_forward`: ``(dz, dc_prev, dpeephole, dnorm_c)`` (the last two None for
    what the cell does not have)."""
    hidden = c_prev.shape[-1]
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    unclipped = (None,) * 4 if step.unclipped is None else tuple(
        step.unclipped[:, k * hidden:(k + 1) * hidden] for k in range(4))

    def through_clip(gradient: Any, inside: Any) -> Any:
        return gradient if inside is None else gradient * inside

    dzo = through_clip(dh * tanh_c * o * (1 - o), unclipped[3])
    dc_through_h = dh * o * (1 - tanh_c * tanh_c)  # dL/d(what the tanh took): c_t, or LN(c_t)
    dnorm_c = None
    if options.layer_norm:
        dc_through_h, dnorm_c = layer_norm_backward(xp, dc_through_h, norm_c, step.c_norm)
    dc = dc_next + dc_through_h
    if options.peepholes:
        dc = dc + dzo * peephole[2 * hidden:]
    di, df, dg = dc * g, dc * c_prev, dc * i
    if options.input_forget:  # f = 1 − i: the forget gate's gradient reaches i with a minus sign
        di, df = di - df, None
    dzi = through_clip(di * i * (1 - i), unclipped[0])
    dzf = xp.zeros_like(dzi) if df is None else through_clip(df * f * (1 - f), unclipped[1])
    dzg = through_clip(dg * (1 - g * g), unclipped[2])
    dc_prev = dc * f
    dpeephole = None
    if options.peepholes:
        dc_prev = dc_prev + dzi * peephole[:hidden] + dzf * peephole[hidden:2 * hidden]
        dpeephole = xp.concat([xp.sum(dzi * c_prev, axis=0), xp.sum(dzf * c_prev, axis=0),
                               xp.sum(dzo * step.c_new, axis=0)])
    return xp.concat([dzi, dzf, dzg, dzo], axis=-1), dc_prev, dpeephole, dnorm_c
