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

The loops themselves (:func:`forward_recurrence`, :func:`backward_recurrence`) read and write only the arrays of
a :class:`ForwardArrays` and a :class:`BackwardArrays`, through :class:`~lstmx.kernels.cupy.shell.Gemm` on raw
pointers, and allocate nothing: the CUDA-graph path (:mod:`lstmx.kernels.cupy.graph_variants`) captures them on
buffer sets of its own; here they run on arrays of the call's own.

Tested against the generic path in the CPU emulator (``tests/test_cuda_emulated.py``) and on a GPU
(``tests/test_variant_paths.py``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import cupy
import numpy as np

from ...backend import Backend
from ...nn.layers.cell import CellOptions
from ...nn.layers.lstm_layer import (PLAIN, ExtraParams, LayerNoise, LSTMLayerCache, VariantCache, check_extra_params,
                                     check_layer_backward, forward_dims, projected_layers)
from ...nn.layers.norm import NormCache
from . import cuda_sources
from .shell import NULL, Dims, Gemm

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


def _into(target: Any, value: Any) -> Any:
    """``target`` (an array of a buffer set) holding ``value``, or None where there is no value."""
    if value is None:
        return None
    target[...] = value
    return target


class Scalars(NamedTuple):
    """The kernels' scalar arguments for these options: a graph captures them with its launches."""

    clip: Any  # 0: no clipping
    input_forget: Any  # np.int32 0 or 1
    zoneout_c: Any  # the expectation in evaluation; 0 in training (the masks act) or without zoneout
    zoneout_h: Any

    @classmethod
    def of(cls, options: CellOptions, training: bool, dtype: np.dtype) -> "Scalars":
        zoneout_c, zoneout_h = (0, 0) if training else options.zoneout
        return cls(dtype.type(0 if options.cell_clip is None else options.cell_clip), np.int32(options.input_forget),
                   dtype.type(zoneout_c), dtype.type(zoneout_h))


class Layout(NamedTuple):
    """What fixes the arrays of one variant layer call besides its dims: a buffer set's key (with the dims)."""

    output: int  # R: H, or P with a projection
    options: CellOptions
    masked: bool  # with a step mask
    recurrent_mask: bool  # with recurrent dropout's mask (training)
    keep_c: bool  # with zoneout masks (training)
    keep_h: bool
    training: bool  # a training forward's (with a LayerNoise): zoneout acts by its masks, not its expectation
    dtype: str

    @classmethod
    def of(cls, h0: Any, c0: Any, options: CellOptions, step_mask: Any, noise: LayerNoise | None) -> "Layout":
        drawn = noise or LayerNoise()
        return cls(h0.shape[1], options, step_mask is not None, drawn.recurrent is not None,
                   drawn.zoneout_c is not None, drawn.zoneout_h is not None, noise is not None,
                   np.dtype(h0.dtype).name)


class ForwardArrays(NamedTuple):
    """What the forward loop reads and writes (None: not needed by these options), and the backward loop reads."""

    weight: Any  # (D + R, 4H) contiguous: the loop's GEMM reads W_h, its rows [D:]
    projection: Any  # (H, P) W_hr
    peephole: Any  # (3H,)
    norm_h: Any  # (2, 4H)
    norm_c: Any  # (2, H)
    x_gates: Any  # (T, B, 4H): LN(x W_x) + b, before the loop
    step_mask: Any  # (T, B)
    recurrent_mask: Any  # (B, R)
    keep_c: Any  # (T, B, H)
    keep_h: Any  # (T, B, R)
    recurrent: Any  # (B, 4H): the step's h_{t-1} W_h
    gates: Any  # (T, B, 4H)
    unclipped: Any  # (T, B, 4H) with cell_clip
    h_normalized: Any  # (T, B, 4H) with layer_norm
    h_inverse_std: Any  # (T, B, 1)
    c_new: Any  # (T, B, H)
    c_normalized: Any  # (T, B, H)
    c_inverse_std: Any  # (T, B, 1)
    tanh_c: Any  # (T, B, H)
    cells: Any  # (T + 1, B, H): c_0 in slot 0
    hidden_states: Any  # (T + 1, B, R): h_0 in slot 0
    seen: Any  # (T + 1, B, R) h times the recurrent-dropout mask, what the GEMM multiplies (None: hidden_states)
    y: Any  # (T, B, R)
    unprojected: Any  # (B, H): o ⊙ tanh(c_t), what W_hr multiplies
    projected: Any  # (B, P)


class BackwardArrays(NamedTuple):
    """What the backward loop writes."""

    dy: Any  # (T, B, R)
    dz: Any  # (T, B, 4H)
    dh_product: Any  # (T, B, 4H) dL/d(h W_h) with layer_norm (None: dz is)
    dc_through_h: Any  # (T, B, H)
    dh_gemm: Any  # (B, R): zero before the loop
    dh_carried: Any  # (B, R): dL/dh_T before the loop
    dc: Any  # (B, H): dL/dc_T before the loop
    dh_projected: Any  # (T, B, P)
    dh_cell: Any  # (B, H)


def allocate_forward(dims: Dims, layout: Layout) -> ForwardArrays:
    """Every array of a :class:`ForwardArrays` for this call's dims and layout (uninitialised)."""
    steps, batch, features, hidden = dims
    output, options, dtype = layout.output, layout.options, np.dtype(layout.dtype)
    projected, norms, width = output != hidden, options.layer_norm, 4 * hidden
    empty = functools.partial(_empty, dtype=dtype)
    return ForwardArrays(
        cupy.empty((features + output, width), dtype=dtype), empty(projected, (hidden, output)),
        empty(options.peepholes, (3 * hidden,)), empty(norms, (2, width)), empty(norms, (2, hidden)),
        cupy.empty((steps, batch, width), dtype=dtype), empty(layout.masked, (steps, batch)),
        empty(layout.recurrent_mask, (batch, output)), empty(layout.keep_c, (steps, batch, hidden)),
        empty(layout.keep_h, (steps, batch, output)), cupy.empty((batch, width), dtype=dtype),
        cupy.empty((steps, batch, width), dtype=dtype), empty(options.cell_clip is not None, (steps, batch, width)),
        empty(norms, (steps, batch, width)), empty(norms, (steps, batch, 1)),
        cupy.empty((steps, batch, hidden), dtype=dtype), empty(norms, (steps, batch, hidden)),
        empty(norms, (steps, batch, 1)), cupy.empty((steps, batch, hidden), dtype=dtype),
        cupy.empty((steps + 1, batch, hidden), dtype=dtype), cupy.empty((steps + 1, batch, output), dtype=dtype),
        empty(layout.recurrent_mask, (steps + 1, batch, output)), cupy.empty((steps, batch, output), dtype=dtype),
        empty(projected, (batch, hidden)), empty(projected, (batch, output)))


def allocate_backward(dims: Dims, layout: Layout) -> BackwardArrays:
    """Every array of a :class:`BackwardArrays` for this call's dims and layout (uninitialised)."""
    steps, batch, features, hidden = dims
    output, dtype = layout.output, np.dtype(layout.dtype)
    projected, width = output != hidden, 4 * hidden
    empty = functools.partial(_empty, dtype=dtype)
    return BackwardArrays(
        cupy.empty((steps, batch, output), dtype=dtype), cupy.empty((steps, batch, width), dtype=dtype),
        empty(layout.options.layer_norm, (steps, batch, width)), cupy.empty((steps, batch, hidden), dtype=dtype),
        cupy.empty((batch, output), dtype=dtype), cupy.empty((batch, output), dtype=dtype),
        cupy.empty((batch, hidden), dtype=dtype), empty(projected, (steps, batch, output)),
        empty(projected, (batch, hidden)))


def fill_parameters(a: ForwardArrays, weight: Any, extra: ExtraParams) -> None:
    """Write a call's weight and the extra parameters its options use into ``a`` (what both loops read)."""
    a.weight[...] = weight
    for target, value in ((a.projection, extra.projection), (a.peephole, extra.peephole), (a.norm_h, extra.norm_h),
                          (a.norm_c, extra.norm_c)):
        _into(target, value)


def fill_forward(a: ForwardArrays, x: Any, weight: Any, bias: Any, extra: ExtraParams, h0: Any, c0: Any,
                 step_mask: Any, noise: LayerNoise | None, dims: Dims) -> NormCache | None:
    """Write the call's parameters, masks and initial state into ``a`` and the input projection of every step
    into ``a.x_gates`` (one GEMM, then LN(x W_x) over every row with layer_norm, then the bias). Returns the
    layer norm's cache of x W_x (None without layer_norm)."""
    steps, batch, features, hidden = dims
    dtype = np.dtype(x.dtype)
    noise = noise or LayerNoise()
    fill_parameters(a, weight, extra)
    for target, value in ((a.recurrent_mask, noise.recurrent), (a.keep_c, noise.zoneout_c), (a.keep_h, noise.zoneout_h)):
        _into(target, value)
    if step_mask is not None:
        a.step_mask[...] = cupy.reshape(step_mask, (steps, batch))
    rows, width = steps * batch, 4 * hidden
    flat_gates = cupy.reshape(a.x_gates, (rows, width))
    cupy.matmul(cupy.reshape(cupy.ascontiguousarray(x), (rows, features)), a.weight[:features], out=flat_gates)
    x_norm = None
    if a.norm_h is not None:
        x_norm = NormCache(cupy.empty((rows, width), dtype=dtype), cupy.empty((rows, 1), dtype=dtype))
        if rows > 0:
            _launch("row_norm_forward", dtype, rows, (flat_gates, _contiguous(extra.norm_x, dtype), x_norm.normalized,
                                                      x_norm.inverse_std, flat_gates, np.int32(rows), np.int32(width)))
    flat_gates += cupy.ascontiguousarray(bias)
    a.cells[0], a.hidden_states[0] = c0, h0
    if a.seen is not None:
        a.seen[0] = a.hidden_states[0] * a.recurrent_mask
    return x_norm


def forward_recurrence(a: ForwardArrays, dims: Dims, scalars: Scalars, gemm: Gemm) -> None:
    """Every forward step on ``a`` (batch > 0): the GEMM h_{t-1} W_h, the fused step kernel, and with a
    projection the GEMM (o ⊙ tanh c_t) W_hr and the projected state's kernel."""
    steps, batch, features, hidden = dims
    output = a.hidden_states.shape[2]
    dtype = np.dtype(a.gates.dtype)
    item = dtype.itemsize
    w_hidden = a.weight.data.ptr + features * 4 * hidden * item
    seen = a.hidden_states if a.seen is None else a.seen
    for t in range(steps):
        gemm(seen.data.ptr + t * batch * output * item, w_hidden, a.recurrent.data.ptr, batch, 4 * hidden, output,
             transpose_b=False, accumulate=False)
        _launch("lstm_variant_forward_step", dtype, batch, (
            a.x_gates, a.recurrent, _pointer(a.norm_h), _pointer(a.norm_c), _pointer(a.peephole), scalars.clip,
            scalars.input_forget, _pointer(a.keep_c), _pointer(a.keep_h), scalars.zoneout_c, scalars.zoneout_h,
            _pointer(a.recurrent_mask), _pointer(a.step_mask), a.gates, _pointer(a.unclipped),
            _pointer(a.h_normalized), _pointer(a.h_inverse_std), a.c_new, _pointer(a.c_normalized),
            _pointer(a.c_inverse_std), a.tanh_c, a.cells, a.hidden_states, _pointer(a.seen), a.y,
            _pointer(a.unprojected), np.int32(t), np.int32(batch), np.int32(hidden)))
        if a.projection is not None:
            gemm(a.unprojected.data.ptr, a.projection.data.ptr, a.projected.data.ptr, batch, output, hidden,
                 transpose_b=False, accumulate=False)
            _launch("lstm_projected_state_forward_step", dtype, batch, (
                a.projected, _pointer(a.keep_h), scalars.zoneout_h, _pointer(a.recurrent_mask), _pointer(a.step_mask),
                a.hidden_states, _pointer(a.seen), a.y, np.int32(t), np.int32(batch), np.int32(output)))


def forward_cache(a: ForwardArrays, x: Any, step_mask: Any, options: CellOptions, noise: LayerNoise | None,
                  x_norm: NormCache | None, lease: Any = None) -> LSTMLayerCache:
    """The cache of a forward whose loop filled ``a`` (its arrays, not copies)."""
    steps = a.gates.shape[0]
    norms = options.layer_norm
    kept = None
    if options != PLAIN:
        kept = VariantCache(a.c_new, a.unclipped, NormCache(a.c_normalized, a.c_inverse_std) if norms else None,
                            x_norm, NormCache(a.h_normalized, a.h_inverse_std) if norms else None, noise)
    seen = a.hidden_states if a.seen is None else a.seen
    return LSTMLayerCache(cupy.ascontiguousarray(x), seen[:steps], a.cells[:steps], a.gates, a.tanh_c, step_mask,
                          kept, lease)


def stored_arrays(cache: LSTMLayerCache, weight: Any, extra: ExtraParams, options: CellOptions) -> ForwardArrays:
    """The :class:`ForwardArrays` a backward loop reads, from a cache of any forward (contiguous, in its dtype)."""
    dtype = np.dtype(cache.x.dtype)
    kept, norms = cache.variant, options.layer_norm
    noise = (None if kept is None else kept.noise) or LayerNoise()
    h_norm = NormCache(None, None) if not norms else kept.h_norm
    c_norm = NormCache(None, None) if not norms else kept.c_norm
    steps, batch = cache.gates.shape[:2]
    mask = None if cache.step_mask is None else cupy.reshape(cache.step_mask, (steps, batch))
    c_prev = _contiguous(cache.c_prev, dtype)
    return ForwardArrays(
        cupy.ascontiguousarray(weight), _contiguous(extra.projection, dtype), _contiguous(extra.peephole, dtype),
        _contiguous(extra.norm_h, dtype), _contiguous(extra.norm_c, dtype), None, _contiguous(mask, dtype),
        _contiguous(noise.recurrent, dtype), _contiguous(noise.zoneout_c, dtype), _contiguous(noise.zoneout_h, dtype),
        None, _contiguous(cache.gates, dtype),
        _contiguous(kept.unclipped, dtype) if options.cell_clip is not None else None,
        _contiguous(h_norm.normalized, dtype), _contiguous(h_norm.inverse_std, dtype),
        c_prev if kept is None else _contiguous(kept.c_new, dtype),  # c_new is read by peepholes only
        _contiguous(c_norm.normalized, dtype), _contiguous(c_norm.inverse_std, dtype),
        _contiguous(cache.tanh_c, dtype), c_prev, None, None, None, None, None)


def fill_backward(b: BackwardArrays, dy: Any, dh_last: Any, dc_last: Any) -> None:
    b.dy[...], b.dh_carried[...], b.dc[...] = dy, dh_last, dc_last
    b.dh_gemm.fill(0)


def backward_recurrence(a: ForwardArrays, b: BackwardArrays, dims: Dims, scalars: Scalars, gemm: Gemm) -> None:
    """Every backward step, in reverse (batch > 0): with a projection the projected state's kernel and the GEMM
    with W_hrᵀ, then the fused step kernel, then dL/d(h W_h) W_hᵀ."""
    steps, batch, features, hidden = dims
    output = b.dy.shape[2]
    dtype = np.dtype(b.dz.dtype)
    item = dtype.itemsize
    w_hidden = a.weight.data.ptr + features * 4 * hidden * item
    dh_product = b.dz if b.dh_product is None else b.dh_product
    for t in reversed(range(steps)):
        if a.projection is not None:
            _launch("lstm_projected_state_backward_step", dtype, batch, (
                b.dy, b.dh_gemm, _pointer(a.recurrent_mask), b.dh_carried, _pointer(a.keep_h), scalars.zoneout_h,
                _pointer(a.step_mask), b.dh_projected, np.int32(t), np.int32(batch), np.int32(output)))
            gemm(b.dh_projected.data.ptr + t * batch * output * item, a.projection.data.ptr, b.dh_cell.data.ptr,
                 batch, hidden, output, transpose_b=True, accumulate=False)
        _launch("lstm_variant_backward_step", dtype, batch, (
            b.dy, b.dh_gemm, _pointer(a.recurrent_mask), b.dh_carried, b.dc, a.gates, a.cells, a.c_new, a.tanh_c,
            _pointer(a.unclipped), _pointer(a.peephole), scalars.input_forget, _pointer(a.norm_h), _pointer(a.norm_c),
            _pointer(a.h_normalized), _pointer(a.h_inverse_std), _pointer(a.c_normalized), _pointer(a.c_inverse_std),
            _pointer(a.keep_c), _pointer(a.keep_h), scalars.zoneout_c, scalars.zoneout_h, _pointer(a.step_mask), b.dz,
            _pointer(b.dh_product), b.dc_through_h, _pointer(b.dh_cell), np.int32(t), np.int32(batch),
            np.int32(hidden)))
        gemm(dh_product.data.ptr + t * 4 * batch * hidden * item, w_hidden, b.dh_gemm.data.ptr, batch, output,
             4 * hidden, transpose_b=True, accumulate=False)


def _gain_and_bias_gradient(dout: Any, normalized: Any, width: int) -> Any:
    """d(gain, bias) (2, width) of a layer norm from dL/d(its output) and its normalised input, over every row."""
    rows_d, rows_n = cupy.reshape(dout, (-1, width)), cupy.reshape(normalized, (-1, width))
    gradient = cupy.empty((2, width), dtype=dout.dtype)
    gradient[0] = cupy.sum(rows_d * rows_n, axis=0)
    gradient[1] = cupy.sum(rows_d, axis=0)
    return gradient


def backward_outputs(a: ForwardArrays, b: BackwardArrays, cache: LSTMLayerCache, weight: Any, extra: ExtraParams,
                     options: CellOptions, dims: Dims) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
    """After the backward loop: dL/dh_0 and dL/dc_0 (copies), then :func:`parameter_gradients`."""
    dh0 = (b.dh_gemm if a.recurrent_mask is None else b.dh_gemm * a.recurrent_mask) + b.dh_carried
    dx, dweight, dbias, dextra = parameter_gradients(a, b.dz, b.dh_product, b.dc_through_h, b.dh_projected, cache,
                                                     weight, extra, options, dims)
    return dx, (dh0, b.dc.copy()), dweight, dbias, dextra


def parameter_gradients(a: ForwardArrays, dz: Any, dh_product: Any, dc_through_h: Any, dh_projected: Any,
                        cache: LSTMLayerCache, weight: Any, extra: ExtraParams, options: CellOptions,
                        dims: Dims) -> tuple[Any, Any, Any, ExtraParams]:
    """``(dx, dW, db, dextra)`` from every step's dz (and dL/d(h W_h) with layer_norm, dL/d(the tanh's input) for
    LN_c's gain, dL/dh'_t for W_hr: :class:`BackwardArrays`' fields), each one GEMM or sum, with ``a`` the
    arrays the backward loop read."""
    steps, batch, features, hidden = dims
    output = cache.output_size
    dtype = np.dtype(dz.dtype)
    rows, width = steps * batch, 4 * hidden
    norms = options.layer_norm
    dh_product = dz if dh_product is None else dh_product
    dz_flat = cupy.reshape(dz, (rows, width))
    dx_product, dnorm_x = dz_flat, None
    if norms:
        x_norm = NormCache(*(_contiguous(array, dtype) for array in cache.variant.x_norm))
        dx_product = cupy.empty((rows, width), dtype=dtype)
        if rows > 0:
            _launch("row_norm_backward", dtype, rows, (dz_flat, x_norm.normalized, x_norm.inverse_std,
                                                       _contiguous(extra.norm_x, dtype), dx_product, np.int32(rows),
                                                       np.int32(width)))
        dnorm_x = _gain_and_bias_gradient(dz_flat, x_norm.normalized, width)
    x, h_prev = _contiguous(cache.x, dtype), _contiguous(cache.h_prev, dtype)
    weight = cupy.ascontiguousarray(weight)
    dweight = cupy.empty(weight.shape, dtype=dtype)
    cupy.matmul(cupy.reshape(x, (rows, features)).T, dx_product, out=dweight[:features])
    cupy.matmul(cupy.reshape(h_prev, (rows, output)).T, cupy.reshape(dh_product, (rows, width)),
                out=dweight[features:])
    dx = cupy.reshape(cupy.matmul(dx_product, weight[:features].T), (steps, batch, features))
    dpeephole = None
    if options.peepholes:
        dpeephole = cupy.empty((3 * hidden,), dtype=dtype)
        for k, (block, state) in enumerate(((0, a.cells[:steps]), (1, a.cells[:steps]), (3, a.c_new))):
            dpeephole[k * hidden:(k + 1) * hidden] = cupy.sum(dz[..., block * hidden:(block + 1) * hidden] * state,
                                                              axis=(0, 1))
    dnorm_h = _gain_and_bias_gradient(dz, a.h_normalized, width) if norms else None
    dnorm_c = _gain_and_bias_gradient(dc_through_h, a.c_normalized, hidden) if norms else None
    dprojection = None
    if a.projection is not None:
        unprojected = a.gates[..., 3 * hidden:] * a.tanh_c  # o_t ⊙ tanh(c_t), what W_hr multiplied
        dprojection = cupy.reshape(unprojected, (rows, hidden)).T @ cupy.reshape(dh_projected, (rows, output))
    dextra = ExtraParams(dprojection, dpeephole, dnorm_x, dnorm_h, dnorm_c)
    return dx, dweight, cupy.sum(dz_flat, axis=0), dextra


def lstm_variant_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, extra: ExtraParams, options: CellOptions, h0: Any, c0: Any,
    step_mask: Any = None, noise: LayerNoise | None = None
) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    dims = forward_dims(x, weight, bias, h0, c0, extra.projection)
    check_extra_params(extra, options, dims[3], x.dtype)
    layout = Layout.of(h0, c0, options, step_mask, noise)
    a = allocate_forward(dims, layout)
    x_norm = fill_forward(a, x, weight, bias, extra, h0, c0, step_mask, noise, dims)
    if dims[1] > 0:
        forward_recurrence(a, dims, Scalars.of(options, layout.training, np.dtype(x.dtype)),
                           Gemm(np.dtype(x.dtype)))
    steps = dims[0]
    return a.y, (a.hidden_states[steps].copy(), a.cells[steps].copy()), forward_cache(a, x, step_mask, options,
                                                                                       noise, x_norm)


def lstm_variant_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, extra: ExtraParams, options: CellOptions,
    cache: LSTMLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
    dims = check_layer_backward(cache, extra, options, dy, dh_last, dc_last, weight)
    noise = None if cache.variant is None else cache.variant.noise
    layout = Layout.of(dh_last, dc_last, options, cache.step_mask, noise)
    a = stored_arrays(cache, weight, extra, options)
    b = allocate_backward(dims, layout)
    fill_backward(b, dy, dh_last, dc_last)
    if dims[1] > 0:
        backward_recurrence(a, b, dims, Scalars.of(options, layout.training, np.dtype(b.dz.dtype)),
                            Gemm(np.dtype(b.dz.dtype)))
    return backward_outputs(a, b, cache, weight, extra, options, dims)


# the projected cell without options: the variant pair with no options, under the generic lstmp signatures
lstmp_layer_forward, lstmp_layer_backward = projected_layers(lstm_variant_layer_forward, lstm_variant_layer_backward)
