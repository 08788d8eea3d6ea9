"""The layers with cell options of the one-launch CuPy paths (persistent and tiled): peepholes, ``input_forget``,
``cell_clip`` and zoneout (each a change of the cell's pointwise step, not of the product), with or without step
masks. One cooperative launch per direction and pass, as the plain layers: the same products
(``lstm_variant_*_persistent`` / ``lstm_variant_*_tiled`` beside the plain kernels), the cell of
``variant_cell_forward`` / ``variant_cell_backward`` (``cuda/cell.cuh``). ``weight_drop`` reaches every path as a
masked weight; ``layer_norm`` and recurrent dropout (a reduction over a row, a mask on the staged h) are the
stepwise and graph paths'.

The signatures and the cache are the generic variant layer's (:class:`~lstmx.nn.layers.lstm_layer.LSTMLayerCache`
with its :class:`~lstmx.nn.layers.lstm_layer.VariantCache`), so the generic backward consumes this forward's
cache and this backward the generic forward's. The input projection and the gradients of the weights and the
peepholes after the loop are the stepwise variant path's (:func:`lstmx.kernels.cupy.variants.parameter_gradients`).

Tested against the generic path in the CPU emulator (``tests/test_cuda_emulated.py``) and on a GPU
(``tests/test_variant_paths.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import cupy
import numpy as np

from ...backend import Backend
from ...nn.layers.cell import CellOptions
from ...nn.layers.lstm_layer import (ExtraParams, LayerInputError, LayerNoise, LSTMLayerCache, VariantCache,
                                     check_extra_params, check_layer_backward, forward_dims)
from . import shell, variants
from .shell import NULL

TAKEN = ("peepholes", "input_forget", "cell_clip", "zoneout")  # the cell options these kernels apply


def _refuse_untaken(path: str, options: CellOptions, projection: Any) -> None:
    untaken = [name for name in options.names() if name not in TAKEN]
    if untaken or projection is not None:
        raise LayerInputError(f"the {path} CuPy path takes the cell options {', '.join(TAKEN)} of the lstm cell, not "
                              f"{', '.join(untaken or ['a projection (proj_size)'])}; impl='cupy-stepwise' runs them")


def _pointer(array: Any) -> Any:
    return NULL if array is None else array


def variant_layers(path: str, launcher: Callable[[], shell.Launch]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(lstm_variant_layer_forward, lstm_variant_layer_backward)`` of the ``path`` ("persistent" or "tiled")
    kernels, launching through ``launcher()`` (that path's launch; the tiled path's of its float or TF32
    kernels)."""
    kernels = (f"lstm_variant_forward_{path}", f"lstm_variant_backward_{path}")

    def lstm_variant_layer_forward(
        backend: Backend, x: Any, weight: Any, bias: Any, extra: ExtraParams, options: CellOptions, h0: Any,
        c0: Any, step_mask: Any = None, noise: LayerNoise | None = None
    ) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
        _refuse_untaken(path, options, extra.projection)
        return _forward(launcher(), kernels[0], x, weight, bias, extra, options, h0, c0, step_mask, noise)

    def lstm_variant_layer_backward(
        backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, extra: ExtraParams, options: CellOptions,
        cache: LSTMLayerCache
    ) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
        _refuse_untaken(path, options, extra.projection)
        return _backward(launcher(), kernels[1], dy, dh_last, dc_last, weight, extra, options, cache)

    return lstm_variant_layer_forward, lstm_variant_layer_backward


def _forward(_launch: shell.Launch, kernel: str, x: Any, weight: Any, bias: Any, extra: ExtraParams,
             options: CellOptions, h0: Any, c0: Any, step_mask: Any,
             noise: LayerNoise | None) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    dims = forward_dims(x, weight, bias, h0, c0)
    check_extra_params(extra, options, dims[3], x.dtype)
    steps, batch, features, hidden = dims
    dtype = np.dtype(x.dtype)
    b = shell.forward_buffers(x, weight, bias, h0, c0, step_mask, dims)
    c_new = cupy.empty((steps, batch, hidden), dtype=dtype)
    unclipped = None if options.cell_clip is None else cupy.empty((steps, batch, 4 * hidden), dtype=dtype)
    drawn = noise or LayerNoise()
    keep_c, keep_h = (variants._contiguous(mask, dtype) for mask in (drawn.zoneout_c, drawn.zoneout_h))
    scalars = variants.Scalars.of(options, noise is not None, dtype)
    peephole = variants._contiguous(extra.peephole, dtype)
    if batch > 0:
        _launch(kernel, dtype.name, batch, hidden, (
            b.gates, b.weight[features:], b.bias, b.cells, b.hidden_states, b.tanh_c, b.y, _pointer(b.step_mask),
            _pointer(peephole), scalars.clip, scalars.input_forget, _pointer(keep_c), _pointer(keep_h),
            scalars.zoneout_c, scalars.zoneout_h, c_new, _pointer(unclipped), np.int32(steps), np.int32(batch),
            np.int32(hidden)))
    kept = VariantCache(c_new, unclipped, None, None, None, noise)
    cache = LSTMLayerCache(b.x, b.hidden_states[:steps], b.cells[:steps], b.gates, b.tanh_c, step_mask, kept)
    return b.y, (b.hidden_states[steps].copy(), b.cells[steps].copy()), cache


def _backward(_launch: shell.Launch, kernel: str, dy: Any, dh_last: Any, dc_last: Any, weight: Any,
              extra: ExtraParams, options: CellOptions,
              cache: LSTMLayerCache) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
    dims = check_layer_backward(cache, extra, options, dy, dh_last, dc_last, weight)
    steps, batch, features, hidden = dims
    dtype = np.dtype(cache.x.dtype)
    a = variants.stored_arrays(cache, weight, extra, options)
    dz = cupy.empty((steps, batch, 4 * hidden), dtype=dtype)
    dh, dc = (cupy.array(value, dtype=dtype, order="C") for value in (dh_last, dc_last))
    scalars = variants.Scalars.of(options, cache.variant.noise is not None, dtype)
    if batch > 0:
        _launch(kernel, dtype.name, batch, hidden, (
            cupy.ascontiguousarray(dy, dtype=dtype), a.weight[features:], a.gates, a.cells, a.tanh_c,
            _pointer(a.step_mask), dz, dh, dc, _pointer(a.peephole), scalars.input_forget, _pointer(a.keep_c),
            _pointer(a.keep_h), scalars.zoneout_c, scalars.zoneout_h, _pointer(a.unclipped), np.int32(steps),
            np.int32(batch), np.int32(hidden)))
    dx, dweight, dbias, dextra = variants.parameter_gradients(a, dz, None, None, None, cache, weight, extra, options,
                                                              dims)
    return dx, (dh, dc), dweight, dbias, dextra

