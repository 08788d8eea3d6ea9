"""NumPy fast path for one LSTM layer: the same math as :mod:`lstmx.layers.lstm`, without temporaries.

Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward`` and tested against them. It
differs only in how memory is used, which is where a CPU step loses its time (every fresh array costs page
faults; the arithmetic itself is cheap next to the GEMMs):

- One buffer ``inputs_and_h_prev`` (T, B, D + H) holds [x_t, h_{t-1}] for every step. The forward writes each
  new h_t straight into the next step's slot, the recurrent matmul reads h_{t-1} from there, and after the
  backward loop the whole weight gradient is one GEMM over this buffer, with no concatenation.
- The input projection is written into the gates buffer, and each step turns its slice into activated gates in
  place (``out=``); the gate scale s of :mod:`lstmx.layers.cell` is folded into the weights once per call.
- The backward writes each step's dz into one preallocated (T, B, 4H) buffer, again with ``out=``.

Only ``mask=None`` (every step real) is handled here; :func:`lstmx.lstm.layer_ops` sends masked batches to the
generic path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import Backend
from .cell import gate_affine


class FusedLSTMLayerCache(NamedTuple):
    inputs_and_h_prev: np.ndarray  # (T, B, D + H): [x_t, h_{t-1}] per step
    cells: np.ndarray  # (T + 1, B, H): c0, c_1, ..., c_T
    gates: np.ndarray  # (T, B, 4H) activated gates i, f, g, o
    tanh_c: np.ndarray  # (T, B, H)

    @property
    def x(self) -> np.ndarray:
        return self.inputs_and_h_prev[:, :, : self.inputs_and_h_prev.shape[2] - self.cells.shape[2]]

    mask = None  # every step real


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, mask: Any = None
) -> tuple[Any, tuple[Any, Any], FusedLSTMLayerCache]:
    if mask is not None:
        raise ValueError("the NumPy fast path takes no step mask; use lstmx.layers.lstm for masked batches")
    steps, batch, features = x.shape
    hidden = h0.shape[-1]
    dtype = x.dtype
    scale, shift, _ = gate_affine(backend, hidden, dtype)
    scaled_weight = weight * scale  # z' = s·z: the gates become tanh(z')·s + (1 − s)

    inputs_and_h_prev = np.empty((steps, batch, features + hidden), dtype=dtype)
    inputs_and_h_prev[:, :, :features] = x
    inputs_and_h_prev[0, :, features:] = h0
    gates = np.matmul(x.reshape(steps * batch, features), scaled_weight[:features]).reshape(steps, batch, 4 * hidden)
    gates += bias * scale
    cells = np.empty((steps + 1, batch, hidden), dtype=dtype)
    cells[0] = c0
    tanh_c = np.empty((steps, batch, hidden), dtype=dtype)
    recurrent_t = np.empty((4 * hidden, batch), dtype=dtype)  # (h W)ᵀ: OpenBLAS is faster writing this orientation
    input_times_candidate = np.empty((batch, hidden), dtype=dtype)
    h_last = np.empty((batch, hidden), dtype=dtype)
    w_hidden_t = np.ascontiguousarray(scaled_weight[features:].T)

    for t in range(steps):
        z = gates[t]
        np.matmul(w_hidden_t, inputs_and_h_prev[t, :, features:].T, out=recurrent_t)
        z += recurrent_t.T
        np.tanh(z, out=z)
        z *= scale
        z += shift
        i, f, g, o = (z[:, k * hidden : (k + 1) * hidden] for k in range(4))
        np.multiply(f, cells[t], out=cells[t + 1])
        np.multiply(i, g, out=input_times_candidate)
        cells[t + 1] += input_times_candidate
        np.tanh(cells[t + 1], out=tanh_c[t])
        h_next = inputs_and_h_prev[t + 1, :, features:] if t + 1 < steps else h_last
        np.multiply(o, tanh_c[t], out=h_next)

    y = np.concatenate([inputs_and_h_prev[1:, :, features:], h_last[None]], axis=0)
    return y, (h_last, cells[steps].copy()), FusedLSTMLayerCache(inputs_and_h_prev, cells, gates, tanh_c)


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: FusedLSTMLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    inputs_and_h_prev, cells, gates, tanh_c = cache
    steps, batch, width = inputs_and_h_prev.shape
    hidden = cells.shape[-1]
    features = width - hidden
    dtype = gates.dtype
    _, shift, scale_squared = gate_affine(backend, hidden, dtype)
    w_hidden_t = np.ascontiguousarray(weight[features:].T)  # row-major copy: the per-step GEMM runs ~25% faster

    dz_all = np.empty((steps, batch, 4 * hidden), dtype=dtype)
    dh = np.empty((batch, hidden), dtype=dtype)  # dL/dh_t: from y_t and from step t+1
    dc = np.empty((batch, hidden), dtype=dtype)  # dL/dc_t
    dh_next, dc_next = np.array(dh_last, dtype=dtype), np.array(dc_last, dtype=dtype)
    derivative = np.empty((batch, 4 * hidden), dtype=dtype)

    for t in reversed(range(steps)):
        i, f, g, o = (gates[t, :, k * hidden : (k + 1) * hidden] for k in range(4))
        dz = dz_all[t]
        np.add(dy[t], dh_next, out=dh)
        np.multiply(tanh_c[t], tanh_c[t], out=dc)  # dc = dc_next + dh·o·(1 − tanh²c)
        np.subtract(1, dc, out=dc)
        dc *= o
        dc *= dh
        dc += dc_next
        np.multiply(dc, g, out=dz[:, :hidden])
        np.multiply(dc, cells[t], out=dz[:, hidden : 2 * hidden])
        np.multiply(dc, i, out=dz[:, 2 * hidden : 3 * hidden])
        np.multiply(dh, tanh_c[t], out=dz[:, 3 * hidden :])
        np.subtract(gates[t], shift, out=derivative)  # s² − (u − (1 − s))²: σ(1−σ) on i, f, o; 1 − g² on g
        np.multiply(derivative, derivative, out=derivative)
        np.subtract(scale_squared, derivative, out=derivative)
        dz *= derivative
        np.multiply(dc, f, out=dc_next)
        np.matmul(dz, w_hidden_t, out=dh_next)

    dz_flat = dz_all.reshape(steps * batch, 4 * hidden)
    dweight = np.matmul(inputs_and_h_prev.reshape(steps * batch, width).T, dz_flat)
    dbias = dz_flat.sum(axis=0)
    dx = np.matmul(dz_flat, np.ascontiguousarray(weight[:features].T)).reshape(steps, batch, features)
    return dx, (dh_next, dc_next), dweight, dbias
