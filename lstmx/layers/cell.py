"""The pointwise part of one LSTM time step (everything but the recurrent matmul), generic Array API.

The equations are :class:`lstmx.cells.LSTMCell`'s docstring; here is how the generic path computes them.

All four activations come from one ``tanh``: σ(z) = ½·tanh(½z) + ½ and tanh(z) = 1·tanh(1·z) + 0, so with
a per-column ``scale`` s (½ on the i, f, o columns, 1 on g) the gates are ``tanh(s·z)·s + (1 − s)``.
The derivative taken from the *stored gate outputs* u is then ``s² − (u − (1 − s))²``, which is
σ(1 − σ) on the sigmoid columns and 1 − g² on the g columns: no pre-activation is kept.

Backend kernels (:mod:`lstmx.kernels`) fuse this same math into their own loops; they are chosen per layer by
:mod:`lstmx.registry` and tested against these functions.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import Backend


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
