"""The stepwise CuPy path's layers with cell options: peepholes, ``input_forget``, ``cell_clip``, ``layer_norm``,
zoneout and recurrent dropout, with or without step masks, and the projected cell (``proj_size``, with or without
options); per time step one GEMM (h_{t-1} W_h) and one kernel (``cuda/variants.cu``: the gates, the layer norms
of h W_h and of c, zoneout and the mask, a block per batch row), and with a projection a second GEMM (o ⊙ tanh c)
W_hr and a kernel for h's zoneout and mask on the projected h (before them in the backward).

The signatures are the generic ``lstm_variant_layer_forward`` / ``lstm_variant_layer_backward``
(:mod:`lstmx.nn.layers.lstm_layer`), and so is the cache (:class:`~lstmx.nn.layers.lstm_layer.LSTMLayerCache` with its
:class:`~lstmx.nn.layers.lstm_layer.VariantCache`): either backward consumes either forward's cache. The layer norm
of x W_x runs over all steps at once before the loop, its backward after it; the gains' and peepholes'
gradients are sums over the stored steps after the loop (no atomics: the same sums every run).

These kernels have run in the CPU emulator only (``tests/test_cuda_emulated.py``), not yet on a GPU: the
registry gives them (the cell options and the LSTMP cell) to ``impl="cupy-stepwise"`` asked for by name, never to
"auto".
"""

from __future__ import annotations

import functools
from typing import Any

import cupy
import numpy as np

from ...backend import Backend
from ...nn.layers.cell import CellOptions
from ...nn.layers.lstm_layer import (PLAIN, ExtraParams, LayerNoise, LSTMLayerCache, VariantCache, check_extra_params,
                                     check_layer_backward, forward_dims, projected_layers)
from ...nn.layers.norm import NormCache
from . import cuda_sources
from .shell import NULL

ROW_THREADS = 128  # per block (one batch row); a power of two, as the block sums need


@functools.cache
def _kernel(kernel: str, dtype: str) -> cupy.RawKernel:
    return cupy.RawKernel(cuda_sources.source("variants", dtype), cuda_sources.kernel_name(kernel, dtype))


def _launch(kernel: str, dtype: np.dtype, rows: int, args: tuple) -> None:
    """One block of ROW_THREADS per row, with ROW_THREADS values of shared memory for the block sums."""
    _kernel(kernel, dtype.name)((rows,), (ROW_THREADS,), args, shared_mem=ROW_THREADS * dtype.itemsize)


def _pointer(array: Any) -> Any:
    return NULL if array is None else array


def _contiguous(array: Any, dtype: np.dtype) -> Any:
    return None if array is None else cupy.ascontiguousarray(array, dtype=dtype)


def _empty(condition: bool, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    return cupy.empty(shape, dtype=dtype) if condition else None


def _zoneout(noise: LayerNoise | None, options: CellOptions, dtype: np.dtype) -> tuple[Any, Any, Any, Any]:
    """(keep_c, keep_h, z_c, z_h): the masks in training (a z of 0 where one is not drawn), else none and the
    expectation z."""
    zoneout_c, zoneout_h = options.zoneout
    if noise is None:
        return None, None, dtype.type(zoneout_c), dtype.type(zoneout_h)
    return _contiguous(noise.zoneout_c, dtype), _contiguous(noise.zoneout_h, dtype), dtype.type(0), dtype.type(0)


def _gain_and_bias_gradient(dout: Any, normalized: Any, width: int) -> Any:
    """d(gain, bias) (2, width) of a layer norm from dL/d(its output) and its normalised input, over every row."""
    rows_d, rows_n = cupy.reshape(dout, (-1, width)), cupy.reshape(normalized, (-1, width))
    gradient = cupy.empty((2, width), dtype=dout.dtype)
    gradient[0] = cupy.sum(rows_d * rows_n, axis=0)
    gradient[1] = cupy.sum(rows_d, axis=0)
    return gradient


def lstm_variant_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, extra: ExtraParams, options: CellOptions, h0: Any, c0: Any,
    step_mask: Any = None, noise: LayerNoise | None = None
) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    projection = extra.projection
    steps, batch, features, hidden = forward_dims(x, weight, bias, h0, c0, projection)
    check_extra_params(extra, options, hidden, x.dtype)
    dtype = np.dtype(x.dtype)
    output = h0.shape[1]  # R: H, or P with a projection
    norms, clipped = options.layer_norm, options.cell_clip is not None
    x, weight = cupy.ascontiguousarray(x), cupy.ascontiguousarray(weight)
    rows, width = steps * batch, 4 * hidden
    x_gates = cupy.empty((steps, batch, width), dtype=dtype)
    flat_gates = cupy.reshape(x_gates, (rows, width))
    cupy.matmul(cupy.reshape(x, (rows, features)), weight[:features], out=flat_gates)
    x_norm = None
    if norms and rows > 0:
        x_norm = NormCache(cupy.empty((rows, width), dtype=dtype), cupy.empty((rows, 1), dtype=dtype))
        _launch("row_norm_forward", dtype, rows, (flat_gates, _contiguous(extra.norm_x, dtype), x_norm.normalized,
                                                  x_norm.inverse_std, flat_gates, np.int32(rows), np.int32(width)))
    flat_gates += cupy.ascontiguousarray(bias)
    mask = None if step_mask is None else _contiguous(cupy.reshape(step_mask, (steps, batch)), dtype)
    recurrent_mask = None if noise is None else _contiguous(noise.recurrent, dtype)
    keep_c, keep_h, zoneout_c, zoneout_h = _zoneout(noise, options, dtype)

    gates, c_new, tanh_c = (cupy.empty(shape, dtype=dtype) for shape in
                            ((steps, batch, width), (steps, batch, hidden), (steps, batch, hidden)))
    y = cupy.empty((steps, batch, output), dtype=dtype)
    unclipped = _empty(clipped, (steps, batch, width), dtype)
    h_normalized, h_inverse_std = _empty(norms, (steps, batch, width), dtype), _empty(norms, (steps, batch, 1), dtype)
    c_normalized, c_inverse_std = _empty(norms, (steps, batch, hidden), dtype), _empty(norms, (steps, batch, 1), dtype)
    cells = cupy.empty((steps + 1, batch, hidden), dtype=dtype)
    hidden_states = cupy.empty((steps + 1, batch, output), dtype=dtype)
    cells[0], hidden_states[0] = c0, h0
    seen = hidden_states  # what each step's GEMM multiplies: h_{t-1}, times the recurrent-dropout mask
    if recurrent_mask is not None:
        seen = cupy.empty((steps + 1, batch, output), dtype=dtype)
        seen[0] = hidden_states[0] * recurrent_mask
    recurrent = cupy.empty((batch, width), dtype=dtype)
    w_hidden = weight[features:]
    w_projection = _contiguous(projection, dtype)
    unprojected = _empty(projection is not None, (batch, hidden), dtype)  # o ⊙ tanh(c), what W_hr multiplies
    projected = _empty(projection is not None, (batch, output), dtype)
    peephole, norm_h, norm_c = (_contiguous(value, dtype) for value in (extra.peephole, extra.norm_h, extra.norm_c))
    clip = dtype.type(options.cell_clip if clipped else 0)
    seen_or_null = _pointer(None if seen is hidden_states else seen)
    for t in range(steps if batch > 0 else 0):
        cupy.matmul(seen[t], w_hidden, out=recurrent)
        _launch("lstm_variant_forward_step", dtype, batch, (
            x_gates, recurrent, _pointer(norm_h), _pointer(norm_c), _pointer(peephole), clip,
            np.int32(options.input_forget), _pointer(keep_c), _pointer(keep_h), zoneout_c, zoneout_h,
            _pointer(recurrent_mask), _pointer(mask), gates, _pointer(unclipped), _pointer(h_normalized),
            _pointer(h_inverse_std), c_new, _pointer(c_normalized), _pointer(c_inverse_std), tanh_c, cells,
            hidden_states, seen_or_null, y, _pointer(unprojected), np.int32(t), np.int32(batch), np.int32(hidden)))
        if projection is not None:
            cupy.matmul(unprojected, w_projection, out=projected)
            _launch("lstm_projected_state_forward_step", dtype, batch, (
                projected, _pointer(keep_h), zoneout_h, _pointer(recurrent_mask), _pointer(mask), hidden_states,
                seen_or_null, y, np.int32(t), np.int32(batch), np.int32(output)))
    kept = None
    if options != PLAIN:
        kept = VariantCache(c_new, unclipped, NormCache(c_normalized, c_inverse_std) if norms else None, x_norm,
                            NormCache(h_normalized, h_inverse_std) if norms else None, noise)
    cache = LSTMLayerCache(x, seen[:steps], cells[:steps], gates, tanh_c, step_mask, kept)
    return y, (hidden_states[steps].copy(), cells[steps].copy()), cache


def lstm_variant_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, extra: ExtraParams, options: CellOptions,
    cache: LSTMLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
    x, h_prev, c_prev, gates, tanh_c, step_mask, kept = cache
    steps, batch, features, hidden = check_layer_backward(cache, extra, options, dy, dh_last, dc_last, weight)
    projection = extra.projection
    output = cache.output_size
    dtype = np.dtype(x.dtype)
    norms, clipped = options.layer_norm, options.cell_clip is not None
    rows, width = steps * batch, 4 * hidden
    x, h_prev, c_prev, gates, tanh_c = (cupy.ascontiguousarray(a, dtype=dtype) for a in (x, h_prev, c_prev, gates,
                                                                                        tanh_c))
    c_new = c_prev if kept is None else cupy.ascontiguousarray(kept.c_new, dtype=dtype)  # read by peepholes only
    weight, dy = cupy.ascontiguousarray(weight), cupy.ascontiguousarray(dy, dtype=dtype)
    mask = None if step_mask is None else _contiguous(cupy.reshape(step_mask, (steps, batch)), dtype)
    noise = None if kept is None else kept.noise
    recurrent_mask = None if noise is None else _contiguous(noise.recurrent, dtype)
    keep_c, keep_h, zoneout_c, zoneout_h = _zoneout(noise, options, dtype)
    unclipped = _contiguous(kept.unclipped, dtype) if clipped else None
    h_norm = NormCache(*(_contiguous(a, dtype) for a in kept.h_norm)) if norms else NormCache(None, None)
    c_norm = NormCache(*(_contiguous(a, dtype) for a in kept.c_norm)) if norms else NormCache(None, None)
    peephole, norm_h, norm_c = (_contiguous(value, dtype) for value in (extra.peephole, extra.norm_h, extra.norm_c))

    dz = cupy.empty((steps, batch, width), dtype=dtype)
    dh_product = cupy.empty((steps, batch, width), dtype=dtype) if norms else dz  # dL/d(h W_h)
    dc_through_h = cupy.empty((steps, batch, hidden), dtype=dtype)
    dh_gemm = cupy.zeros((batch, output), dtype=dtype)
    dh_carried = cupy.array(dh_last, dtype=dtype, order="C")
    dc = cupy.array(dc_last, dtype=dtype, order="C")
    w_hidden_t = cupy.ascontiguousarray(weight[features:].T)
    w_projection_t = None if projection is None else cupy.ascontiguousarray(projection.T, dtype=dtype)
    dh_projected = _empty(projection is not None, (steps, batch, output), dtype)  # dL/dh'_t, into W_hr's output
    dh_cell = _empty(projection is not None, (batch, hidden), dtype)  # dL/d(o ⊙ tanh c_t)
    for t in reversed(range(steps if batch > 0 else 0)):
        if projection is not None:
            _launch("lstm_projected_state_backward_step", dtype, batch, (
                dy, dh_gemm, _pointer(recurrent_mask), dh_carried, _pointer(keep_h), zoneout_h, _pointer(mask),
                dh_projected, np.int32(t), np.int32(batch), np.int32(output)))
            cupy.matmul(dh_projected[t], w_projection_t, out=dh_cell)
        _launch("lstm_variant_backward_step", dtype, batch, (
            dy, dh_gemm, _pointer(recurrent_mask), dh_carried, dc, gates, c_prev, c_new, tanh_c, _pointer(unclipped),
            _pointer(peephole), np.int32(options.input_forget), _pointer(norm_h), _pointer(norm_c),
            _pointer(h_norm.normalized), _pointer(h_norm.inverse_std), _pointer(c_norm.normalized),
            _pointer(c_norm.inverse_std), _pointer(keep_c), _pointer(keep_h), zoneout_c, zoneout_h, _pointer(mask), dz,
            _pointer(dh_product if norms else None), dc_through_h, _pointer(dh_cell), np.int32(t), np.int32(batch),
            np.int32(hidden)))
        cupy.matmul(dh_product[t], w_hidden_t, out=dh_gemm)
    dh0 = (dh_gemm if recurrent_mask is None else dh_gemm * recurrent_mask) + dh_carried

    dz_flat = cupy.reshape(dz, (rows, width))
    dx_product, dnorm_x = dz_flat, None
    if norms:
        x_norm = NormCache(*(_contiguous(a, dtype) for a in kept.x_norm))
        dx_product = cupy.empty((rows, width), dtype=dtype)
        if rows > 0:
            _launch("row_norm_backward", dtype, rows, (dz_flat, x_norm.normalized, x_norm.inverse_std,
                                                       _contiguous(extra.norm_x, dtype), dx_product, np.int32(rows),
                                                       np.int32(width)))
        dnorm_x = _gain_and_bias_gradient(dz_flat, x_norm.normalized, width)
    dweight = cupy.empty(weight.shape, dtype=dtype)
    cupy.matmul(cupy.reshape(x, (rows, features)).T, dx_product, out=dweight[:features])
    cupy.matmul(cupy.reshape(h_prev, (rows, output)).T, cupy.reshape(dh_product, (rows, width)), out=dweight[features:])
    dx = cupy.reshape(cupy.matmul(dx_product, weight[:features].T), (steps, batch, features))
    dpeephole = None
    if options.peepholes:
        dpeephole = cupy.empty((3 * hidden,), dtype=dtype)
        for k, (block, state) in enumerate(((0, c_prev), (1, c_prev), (3, c_new))):
            dpeephole[k * hidden:(k + 1) * hidden] = cupy.sum(dz[..., block * hidden:(block + 1) * hidden] * state,
                                                              axis=(0, 1))
    dnorm_h = _gain_and_bias_gradient(dz, h_norm.normalized, width) if norms else None
    dnorm_c = _gain_and_bias_gradient(dc_through_h, c_norm.normalized, hidden) if norms else None
    dprojection = None
    if projection is not None:
        unprojected = gates[..., 3 * hidden:] * tanh_c  # o_t ⊙ tanh(c_t), what W_hr multiplied
        dprojection = cupy.reshape(unprojected, (rows, hidden)).T @ cupy.reshape(dh_projected, (rows, output))
    dextra = ExtraParams(dprojection, dpeephole, dnorm_x, dnorm_h, dnorm_c)
    return dx, (dh0, dc), dweight, cupy.sum(dz_flat, axis=0), dextra



# the projected cell without options: the variant pair with no options, under the generic lstmp signatures
lstmp_layer_forward, lstmp_layer_backward = projected_layers(lstm_variant_layer_forward, lstm_variant_layer_backward)
