"""NumPy fast path for one LSTM layer: the same math as :mod:`lstmx.nn.layers.lstm_layer`, without temporaries.

Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward`` and tested against them. It
differs only in how memory is used, which is where a CPU step loses its time (every fresh array costs page
faults; the arithmetic itself is cheap next to the GEMMs):

- One buffer ``inputs_and_h_prev`` (T + 1, B, D + H) holds [x_t, h_{t-1}] for every step (slot T keeps h_T).
  The forward writes each new h_t straight into the next step's slot, the recurrent matmul reads h_{t-1} from
  there, and after the backward loop the whole weight gradient is one GEMM over this buffer, with no
  concatenation.
- The input projection is written into the gates buffer, and each step turns its slice into activated gates in
  place (``out=``); the gate scale s of :mod:`lstmx.nn.layers.cell` is folded into the weights once per call.
- The backward writes each step's dz into one preallocated (T, B, 4H) buffer, again with ``out=``.

Only ``step_mask=None`` (every step real) is handled here; :mod:`lstmx.dispatch.registry` sends masked batches elsewhere.
The buffer helpers below are shared with the Numba path (:mod:`lstmx.kernels.host.numba_layer`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ...backend import Backend
from ...nn.layers.cell import gate_affine
from ...nn.layers.lstm_layer import check_backward_inputs, forward_dims
from .buffers import HOST_BUFFERS


class HostLayerCache(NamedTuple):
    """What the host-buffer layer paths (NumPy and Numba) keep for backward; either backward reads it."""

    inputs_and_h_prev: np.ndarray  # (T + 1, B, D + H): [x_t, h_{t-1}] per step; slot T holds h_T
    cells: np.ndarray  # (T + 1, B, H): c0, c_1, ..., c_T
    gates: np.ndarray  # (T, B, 4H) activated gates i, f, g, o
    tanh_c: np.ndarray  # (T, B, H)

    @property
    def x(self) -> np.ndarray:
        return self.inputs_and_h_prev[:-1, :, : self.inputs_and_h_prev.shape[2] - self.cells.shape[2]]

    step_mask = None  # every step real

    def dims(self) -> tuple[int, int, int, int]:
        """(steps, batch, features, hidden) this cache was made for."""
        steps, batch, hidden = self.tanh_c.shape
        return steps, batch, self.inputs_and_h_prev.shape[2] - hidden, hidden


def refuse_step_mask(step_mask: Any) -> None:
    if step_mask is not None:
        raise ValueError("the NumPy fast paths take no step mask; use lstmx.nn.layers.lstm_layer for masked batches")


def state_buffers(x: np.ndarray, h0: np.ndarray, c0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``inputs_and_h_prev`` (T + 1, B, D + H) with x and h0 in place, and ``cells`` (T + 1, B, H) with c0."""
    steps, batch, features = x.shape
    hidden = h0.shape[-1]
    inputs_and_h_prev = HOST_BUFFERS.empty((steps + 1, batch, features + hidden), x.dtype)
    inputs_and_h_prev[:steps, :, :features] = x
    inputs_and_h_prev[steps, :, :features] = 0  # never read; keeps the buffer free of garbage
    inputs_and_h_prev[0, :, features:] = h0
    cells = HOST_BUFFERS.empty((steps + 1, batch, hidden), x.dtype)
    cells[0] = c0
    return inputs_and_h_prev, cells


def forward_outputs(
    inputs_and_h_prev: np.ndarray, cells: np.ndarray, gates: np.ndarray, tanh_c: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], HostLayerCache]:
    """``(y, (h_T, c_T), cache)`` once the loop has filled the buffers; y and the state are copies, so callers
    may change them without touching the cache."""
    features = inputs_and_h_prev.shape[2] - cells.shape[2]
    hidden_states = inputs_and_h_prev[:, :, features:]
    y = HOST_BUFFERS.empty(hidden_states[1:].shape, hidden_states.dtype)
    y[...] = hidden_states[1:]
    return y, (y[-1].copy(), cells[-1].copy()), HostLayerCache(inputs_and_h_prev, cells, gates, tanh_c)


def parameter_gradients(
    inputs_and_h_prev: np.ndarray, dz_all: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After the backward loop: ``(dx, dweight, dbias)`` from every step's dz (T, B, 4H), each one GEMM."""
    steps, batch, width = dz_all.shape[0], dz_all.shape[1], inputs_and_h_prev.shape[2]
    features = width - dz_all.shape[2] // 4
    dz_flat = dz_all.reshape(steps * batch, dz_all.shape[2])
    dweight = np.matmul(inputs_and_h_prev[:steps].reshape(steps * batch, width).T, dz_flat,
                        out=HOST_BUFFERS.empty(weight.shape, weight.dtype))
    dbias = dz_flat.sum(axis=0)
    dx = HOST_BUFFERS.empty((steps, batch, features), dz_all.dtype)
    np.matmul(dz_flat, weight[:features].T, out=dx.reshape(steps * batch, features))  # a tall GEMM: the view is as fast
    return dx, dweight, dbias


class BackwardBuffers(NamedTuple):
    w_hidden_t: np.ndarray  # (4H, H) row-major copy of W_hᵀ: the per-step GEMM runs ~25% faster than on the view
    dz_all: np.ndarray  # (T, B, 4H), one step's dz written at a time
    dh_next: np.ndarray  # dL/dh_t arriving from step t+1 (starts as dL/dh_T), updated in place
    dc_next: np.ndarray  # dL/dc_t arriving from step t+1 (starts as dL/dc_T), updated in place


def backward_buffers(cache: HostLayerCache, weight: np.ndarray, dh_last: Any, dc_last: Any) -> BackwardBuffers:
    """What both fast backwards set up before their loop; dh/dc are private copies, the caller's stay as given."""
    steps, batch, hidden = cache.tanh_c.shape
    dtype = cache.gates.dtype
    features = cache.inputs_and_h_prev.shape[2] - hidden
    return BackwardBuffers(transposed_copy(weight[features:]),
                           HOST_BUFFERS.empty((steps, batch, 4 * hidden), dtype),
                           np.array(dh_last, dtype=dtype, order="C"), np.array(dc_last, dtype=dtype, order="C"))


def input_projection(x: np.ndarray, weight_x: np.ndarray) -> np.ndarray:
    """x (T, B, D) @ weight_x (D, 4H) for every step at once, into a reused (T, B, 4H) buffer."""
    steps, batch, features = x.shape
    projected = HOST_BUFFERS.empty((steps, batch, weight_x.shape[1]), x.dtype)
    np.matmul(x.reshape(steps * batch, features), weight_x, out=projected.reshape(steps * batch, weight_x.shape[1]))
    return projected


TRANSPOSE_ROWS = 16  # rows of ``matrix`` per block: a block's columns land in cache lines still held


def transposed_copy(matrix: np.ndarray) -> np.ndarray:
    """A row-major copy of ``matrix.T`` in a reused buffer (the per-step GEMMs read it faster than the strided
    view), copied in blocks of rows: one whole-matrix strided copy misses the cache on every element."""
    copy = HOST_BUFFERS.empty(matrix.shape[::-1], matrix.dtype)
    for start in range(0, matrix.shape[0], TRANSPOSE_ROWS):
        copy[:, start:start + TRANSPOSE_ROWS] = matrix[start:start + TRANSPOSE_ROWS].T
    return copy


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], HostLayerCache]:
    refuse_step_mask(step_mask)
    steps, batch, features, hidden = forward_dims(x, weight, bias, h0, c0)
    dtype = x.dtype
    scale, shift, _ = gate_affine(backend, hidden, dtype)
    scaled_weight = weight * scale  # z' = s·z: the gates become tanh(z')·s + (1 − s)

    inputs_and_h_prev, cells = state_buffers(x, h0, c0)
    gates = input_projection(x, scaled_weight[:features])
    gates += bias * scale
    tanh_c = HOST_BUFFERS.empty((steps, batch, hidden), dtype)
    recurrent_t = np.empty((4 * hidden, batch), dtype=dtype)  # (h W)ᵀ: OpenBLAS is faster writing this orientation
    input_times_candidate = np.empty((batch, hidden), dtype=dtype)
    w_hidden_t = transposed_copy(scaled_weight[features:])

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
        np.multiply(o, tanh_c[t], out=inputs_and_h_prev[t + 1, :, features:])

    return forward_outputs(inputs_and_h_prev, cells, gates, tanh_c)


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: HostLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    check_backward_inputs(cache.dims(), cache.gates.dtype, dy, dh_last, dc_last, weight)
    inputs_and_h_prev, cells, gates, tanh_c = cache
    steps, batch, hidden = tanh_c.shape
    dtype = gates.dtype
    _, shift, scale_squared = gate_affine(backend, hidden, dtype)
    w_hidden_t, dz_all, dh_next, dc_next = backward_buffers(cache, weight, dh_last, dc_last)
    dh = np.empty((batch, hidden), dtype=dtype)  # dL/dh_t: from y_t and from step t+1
    dc = np.empty((batch, hidden), dtype=dtype)  # dL/dc_t
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

    dx, dweight, dbias = parameter_gradients(inputs_and_h_prev, dz_all, weight)
    return dx, (dh_next, dc_next), dweight, dbias
