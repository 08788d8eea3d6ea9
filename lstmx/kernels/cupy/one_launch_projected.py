"""The projected cell (LSTMP, ``proj_size``) on a one-launch CuPy path (persistent or tiled): one cooperative
launch per direction and pass, two grid barriers per step (the cell's products with W_h, then the projection
r_t = (o_t ⊙ tanh c_t) W_hr), the kernels ``lstmp_forward_<path>`` / ``lstmp_backward_<path>`` beside the plain
ones.

The signatures and the cache are the generic projected layer's (:class:`~lstmx.nn.layers.lstm_layer.LSTMLayerCache`
with h of width P), so the generic backward consumes this forward's cache and this backward the generic
forward's. The input projection before the loop is one GEMM; the gradients of the weight, the bias, W_hr and x
after it are the stepwise variant path's (:func:`lstmx.kernels.cupy.variants.parameter_gradients`).

Tested against the generic path in the CPU emulator (``tests/test_cuda_emulated.py``) and on a GPU
(``tests/test_variant_paths.py``; the persistent kernels have passed there, the tiled ones, float32, float64 and
TF32, are owed that run). The registry gives the projected cell to these paths asked for by name only: its speed
against the graph path's is not yet measured.
"""

from __future__ import annotations

from typing import Any, Callable

import cupy
import numpy as np

from ...backend import Backend
from ...nn.layers.lstm_layer import PLAIN, ExtraParams, LSTMLayerCache, check_layer_backward, forward_dims
from . import variants
from .shell import NULL

ProjectedLaunch = Callable[..., None]  # launch(kernel, dtype name, batch, hidden, args, proj=P)


def projected_layers(path: str,
                     launcher: Callable[[], ProjectedLaunch]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(lstmp_layer_forward, lstmp_layer_backward)`` of the ``path`` kernels, launching through ``launcher()``."""
    kernels = (f"lstmp_forward_{path}", f"lstmp_backward_{path}")

    def lstmp_layer_forward(backend: Backend, x: Any, weight: Any, bias: Any, projection: Any, h0: Any, c0: Any,
                            step_mask: Any = None) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
        return _forward(launcher(), kernels[0], x, weight, bias, projection, h0, c0, step_mask)

    def lstmp_layer_backward(backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, projection: Any,
                             cache: LSTMLayerCache) -> tuple[Any, tuple[Any, Any], Any, Any, Any]:
        return _backward(launcher(), kernels[1], dy, dh_last, dc_last, weight, projection, cache)

    return lstmp_layer_forward, lstmp_layer_backward


def _forward(launch: ProjectedLaunch, kernel: str, x: Any, weight: Any, bias: Any, projection: Any, h0: Any, c0: Any,
             step_mask: Any) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    steps, batch, features, hidden = forward_dims(x, weight, bias, h0, c0, projection)
    proj = projection.shape[1]
    dtype = np.dtype(x.dtype)
    x, weight, bias, projection = (cupy.ascontiguousarray(a, dtype=dtype) for a in (x, weight, bias, projection))
    mask = None if step_mask is None else cupy.ascontiguousarray(cupy.reshape(step_mask, (steps, batch)), dtype=dtype)
    gates = cupy.empty((steps, batch, 4 * hidden), dtype=dtype)
    cupy.matmul(cupy.reshape(x, (steps * batch, features)), weight[:features],
                out=cupy.reshape(gates, (steps * batch, 4 * hidden)))
    hidden_states, y = cupy.empty((steps + 1, batch, proj), dtype=dtype), cupy.empty((steps, batch, proj), dtype=dtype)
    cells, tanh_c = cupy.empty((steps + 1, batch, hidden), dtype=dtype), cupy.empty((steps, batch, hidden), dtype=dtype)
    hidden_states[0], cells[0] = h0, c0
    if batch > 0:
        launch(kernel, dtype.name, batch, hidden, (
            gates, weight[features:], bias, projection, cells, hidden_states, tanh_c,
            cupy.empty((batch, hidden), dtype=dtype), y, NULL if mask is None else mask, np.int32(steps),
            np.int32(batch), np.int32(hidden), np.int32(proj)), proj=proj)
    cache = LSTMLayerCache(x, hidden_states[:steps], cells[:steps], gates, tanh_c, step_mask)
    return y, (hidden_states[steps].copy(), cells[steps].copy()), cache


def _backward(launch: ProjectedLaunch, kernel: str, dy: Any, dh_last: Any, dc_last: Any, weight: Any,
              projection: Any, cache: LSTMLayerCache) -> tuple[Any, tuple[Any, Any], Any, Any, Any]:
    extra = ExtraParams(projection)
    dims = check_layer_backward(cache, extra, PLAIN, dy, dh_last, dc_last, weight)
    steps, batch, features, hidden = dims
    proj = cache.output_size
    dtype = np.dtype(cache.x.dtype)
    a = variants.stored_arrays(cache, weight, extra, PLAIN)
    dz = cupy.empty((steps, batch, 4 * hidden), dtype=dtype)
    dr = cupy.empty((steps, batch, proj), dtype=dtype)  # dL/dr_t of every step, what W_hr's gradient reads
    dh, dc = (cupy.array(value, dtype=dtype, order="C") for value in (dh_last, dc_last))
    if batch > 0:
        launch(kernel, dtype.name, batch, hidden, (
            cupy.ascontiguousarray(dy, dtype=dtype), a.weight[features:], a.projection, a.gates, a.cells, a.tanh_c,
            NULL if a.step_mask is None else a.step_mask, dz, dr, dh, dc, np.int32(steps), np.int32(batch),
            np.int32(hidden), np.int32(proj)), proj=proj)
    dx, dweight, dbias, dextra = variants.parameter_gradients(a, dz, None, None, dr, cache, weight, extra, PLAIN, dims)
    return dx, (dh, dc), dweight, dbias, dextra.projection
