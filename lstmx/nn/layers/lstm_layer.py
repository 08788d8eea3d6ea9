"""One LSTM layer over a whole sequence: forward and its exact backpropagation through time.

The layer's weight is one fused matrix ``W`` of shape (D + R, 4H): rows ``[:D]`` act on the input x_t, rows
``[D:]`` on the previous hidden state h_{t-1} of width R (H, or P for the projected cell); columns are the gate
blocks i, f, g, o (equations in :class:`lstmx.nn.cells.LSTMCell` and :class:`lstmx.nn.cells.LSTMPCell`). The input
projection for all T steps is one matmul before the loop; only the recurrent matmul (and the cell's projection)
runs per step; the weight gradients are one matmul each over all steps after the backward loop.

Variable lengths come in as a step mask m (``step_mask``, (T, B, 1)), 1 on real steps and 0 on padding. On
a padded step the state is carried unchanged and the output is zero::

    y_t = m_t · h'_t        h_t = y_t + (1 − m_t) · h_{t−1}        c_t = m_t · c'_t + (1 − m_t) · c_{t−1}

where h'_t, c'_t are the cell's new values. ``step_mask=None`` means every step is real.

``lstm_layer_*`` run :class:`~lstmx.nn.cells.LSTMCell`, ``lstmp_layer_*`` :class:`~lstmx.nn.cells.LSTMPCell`: one loop,
the projection an option of it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ...backend import Backend
from . import cell
from .cell import CellOptions, VariantStep, gate_affine
from .norm import NormCache, layer_norm_backward, layer_norm_forward

PLAIN = CellOptions()


class LSTMLayerCache(NamedTuple):
    """What the backward pass of one layer needs from its forward pass."""

    x: Any  # (T, B, D) the layer's input
    h_prev: Any  # (T, B, R) h_{t-1} seen by step t (h0 at t = 0)
    c_prev: Any  # (T, B, H) c_{t-1} seen by step t (c0 at t = 0)
    gates: Any  # (T, B, 4H) activated gates i, f, g, o
    tanh_c: Any  # (T, B, H) tanh of the cell's new value c'_t
    step_mask: Any  # (T, B, 1) 1 on real steps, 0 on padding; None when every step is real
    variant: "VariantCache | None" = None  # with cell options: what their backward needs
    lease: Any = None  # a fast path's hold on buffers these arrays belong to (the CUDA-graph path's), else None

    def dims(self) -> tuple[int, int, int, int]:
        """(steps, batch, features, hidden) this cache was made for."""
        steps, batch, features = self.x.shape
        return steps, batch, features, self.c_prev.shape[-1]

    @property
    def output_size(self) -> int:
        """R: the width of h (H, or P with a projection)."""
        return self.h_prev.shape[-1]


class LayerInputError(ValueError):
    """Arrays handed to one layer whose shapes or dtypes do not fit together (or do not fit the cache)."""


def _expect(name: str, array: Any, shape: tuple[int, ...], dtype: Any) -> None:
    if tuple(array.shape) != shape:
        raise LayerInputError(f"{name} has shape {tuple(array.shape)}, expected {shape}")
    if array.dtype != dtype:
        raise LayerInputError(f"{name} has dtype {array.dtype}, expected {dtype} (the layer input's)")


def forward_dims(x: Any, weight: Any, bias: Any, h0: Any, c0: Any, projection: Any = None) -> tuple[int, int, int, int]:
    """``(steps, batch, features, hidden)`` of one layer's forward, after checking every shape and dtype fits.

    Every implementation calls this first, so a compiled kernel never runs on arrays that do not fit. Without a
    ``projection`` h0 is (B, H); with one (H, P), h0 is (B, P).
    """
    if x.ndim != 3 or h0.ndim != 2 or c0.ndim != 2:
        raise LayerInputError(f"x must be (T, B, D) and h0, c0 (B, *); got {tuple(x.shape)}, {tuple(h0.shape)} "
                              f"and {tuple(c0.shape)}")
    steps, batch, features = x.shape
    if steps == 0:
        raise LayerInputError("x is an empty sequence (T = 0 time steps); a layer needs T >= 1")
    hidden = c0.shape[1]
    output = hidden if projection is None else h0.shape[1]
    _expect("h0", h0, (batch, output), x.dtype)
    _expect("c0", c0, (batch, hidden), x.dtype)
    _expect("weight", weight, (features + output, 4 * hidden), x.dtype)
    _expect("bias", bias, (4 * hidden,), x.dtype)
    if projection is not None:
        _expect("projection", projection, (hidden, output), x.dtype)
    return steps, batch, features, hidden


def check_backward_inputs(dims: tuple[int, int, int, int], dtype: Any, dy: Any, dh_last: Any, dc_last: Any,
                          weight: Any, projection: Any = None) -> None:
    """The gradients and weights handed to a backward fit the ``(steps, batch, features, hidden)`` and dtype of
    its cache."""
    steps, batch, features, hidden = dims
    output = hidden if projection is None else projection.shape[-1]
    _expect("dy", dy, (steps, batch, output), dtype)
    _expect("dh_last", dh_last, (batch, output), dtype)
    _expect("dc_last", dc_last, (batch, hidden), dtype)
    _expect("weight", weight, (features + output, 4 * hidden), dtype)
    if projection is not None:
        _expect("projection", projection, (hidden, output), dtype)


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    """Run one layer over ``x`` (T, B, D) from state ``(h0, c0)`` (B, H) each.

    Returns ``(y, (h_T, c_T), cache)`` with y of shape (T, B, H).
    """
    return _layer_forward(backend, x, weight, bias, ExtraParams(), h0, c0, step_mask)


def lstmp_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, projection: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    """Run one projected layer over ``x`` (T, B, D) from ``h0`` (B, P) and ``c0`` (B, H).

    Returns ``(y, (h_T, c_T), cache)`` with y of shape (T, B, P).
    """
    return _layer_forward(backend, x, weight, bias, ExtraParams(projection), h0, c0, step_mask)


class ExtraParams(NamedTuple):
    """One layer's parameters beyond ``weight`` and ``bias``, named as the cells name them (None: not used)."""

    projection: Any = None  # (H, P) W_hr of the projected cell
    peephole: Any = None  # (3H,) p_i, p_f, p_o
    norm_x: Any = None  # (2, 4H) gain and bias of LN(x_t W_x)
    norm_h: Any = None  # (2, 4H) gain and bias of LN(h_{t-1} W_h)
    norm_c: Any = None  # (2, H) gain and bias of LN(c_t)


class LayerNoise(NamedTuple):
    """The random masks of one training forward of one layer and direction (None: that regulariser is off).

    Without a LayerNoise (evaluation) zoneout acts by its expectation, z_c and z_h, and recurrent dropout not at
    all."""

    recurrent: Any = None  # (B, R) variational dropout on h_{t-1}, 0 or 1/(1 − p), the same at every step
    zoneout_c: Any = None  # (T, B, H) 1 where a unit of c keeps its previous value, else 0
    zoneout_h: Any = None  # (T, B, R) the same for h

    def window(self, start: int, stop: int) -> "LayerNoise":
        """The masks of steps [start, stop) (a segment of a checkpointed layer)."""
        def part(mask: Any) -> Any:
            return None if mask is None else mask[start:stop, ...]
        return LayerNoise(self.recurrent, part(self.zoneout_c), part(self.zoneout_h))


class VariantCache(NamedTuple):
    """What the backward of a layer with cell options keeps beyond :class:`LSTMLayerCache`'s plain fields."""

    c_new: Any  # (T, B, H) each step's c'_t, which o's peephole multiplied
    unclipped: Any  # (T, B, 4H) the clip masks, or None
    c_norm: NormCache | None  # LN(c'_t) per step (T, B, ·), or None
    x_norm: NormCache | None  # LN(x_t W_x) over all steps ((T·B), ·), or None
    h_norm: NormCache | None  # LN(h_{t-1} W_h) per step (T, B, ·), or None
    noise: LayerNoise | None  # the masks the forward drew (None: evaluation)


def lstm_variant_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, extra: ExtraParams, options: CellOptions, h0: Any, c0: Any,
    step_mask: Any = None, noise: LayerNoise | None = None
) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    """A layer of the cell with ``options`` and the ``extra`` parameters they need (a projection, peepholes,
    layer-norm gains and biases); ``noise`` holds a training forward's zoneout and recurrent-dropout masks
    (None: evaluation). Equations in :class:`lstmx.nn.cells.LSTMCell`."""
    return _layer_forward(backend, x, weight, bias, extra, h0, c0, step_mask, options, noise)


def projected_layers(variant_forward: Any, variant_backward: Any) -> tuple[Any, Any]:
    """``(lstmp_layer_forward, lstmp_layer_backward)`` for a fast path whose variant layers take a projection:
    its variant pair with no cell options, under the projected cell's signatures (as this module's own)."""

    def lstmp_layer_forward(backend: Backend, x: Any, weight: Any, bias: Any, projection: Any, h0: Any, c0: Any,
                            step_mask: Any = None) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
        return variant_forward(backend, x, weight, bias, ExtraParams(projection), PLAIN, h0, c0, step_mask)

    def lstmp_layer_backward(backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, projection: Any,
                             cache: LSTMLayerCache) -> tuple[Any, tuple[Any, Any], Any, Any, Any]:
        dx, dstate0, dweight, dbias, dextra = variant_backward(backend, dy, dh_last, dc_last, weight,
                                                               ExtraParams(projection), PLAIN, cache)
        return dx, dstate0, dweight, dbias, dextra.projection

    return lstmp_layer_forward, lstmp_layer_backward


def _stacked_norms(xp: Any, caches: list[NormCache]) -> NormCache | None:
    return None if not caches or caches[0] is None else NormCache(xp.stack([n.normalized for n in caches]),
                                                                  xp.stack([n.inverse_std for n in caches]))


def check_layer_backward(cache: LSTMLayerCache, extra: ExtraParams, options: CellOptions, dy: Any, dh_last: Any,
                         dc_last: Any, weight: Any) -> tuple[int, int, int, int]:
    """The door of every backward that reads an :class:`LSTMLayerCache` (the generic one, and the fast variant
    and projected ones): the cache keeps what ``options`` need (no variant part for the plain cell), was made with
    ``extra``'s projection (or without one, as ``extra`` is), and the gradients and parameters fit it. Returns its
    (steps, batch, features, hidden)."""
    kept = cache.variant
    if (kept is None) != (options == PLAIN) or kept is not None and (
            options.cell_clip is not None and kept.unclipped is None
            or options.layer_norm and (kept.h_norm is None or kept.c_norm is None)):
        raise LayerInputError("the cache was made with other cell options than this backward's")
    dims = cache.dims()
    projection, hidden = extra.projection, dims[3]
    if cache.output_size != (hidden if projection is None else projection.shape[-1]):
        raise LayerInputError("the cache was made by a layer with another projection than this backward's")
    check_backward_inputs(dims, cache.x.dtype, dy, dh_last, dc_last, weight, projection)
    check_extra_params(extra, options, hidden, cache.x.dtype)
    return dims


def check_extra_params(extra: ExtraParams, options: CellOptions, hidden: int, dtype: Any) -> None:
    """The parameters ``options`` need are in ``extra`` with their shapes and the layer's dtype (every
    implementation of a variant layer checks this first, as it does :func:`forward_dims`)."""
    if options.peepholes:
        _expect("peephole", extra.peephole, (3 * hidden,), dtype)
    if options.layer_norm:
        _expect("norm_x", extra.norm_x, (2, 4 * hidden), dtype)
        _expect("norm_h", extra.norm_h, (2, 4 * hidden), dtype)
        _expect("norm_c", extra.norm_c, (2, hidden), dtype)


def _layer_forward(backend: Backend, x: Any, weight: Any, bias: Any, extra: ExtraParams, h0: Any, c0: Any,
                   step_mask: Any, options: CellOptions = PLAIN,
                   noise: LayerNoise | None = None) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    xp = backend.xp
    projection = extra.projection
    steps, batch, features, hidden = forward_dims(x, weight, bias, h0, c0, projection)
    check_extra_params(extra, options, hidden, x.dtype)
    variant = options != PLAIN
    gate = gate_affine(backend, hidden, x.dtype)
    w_hidden = backend.operand(weight[features:, :])  # in the products' operand format once, for every step
    projection_operand = None if projection is None else backend.operand(projection)
    x_product = backend.matmul(xp.reshape(x, (steps * batch, features)), weight[:features, :])
    x_norm = None
    if options.layer_norm:
        x_product, x_norm = layer_norm_forward(xp, x_product, extra.norm_x)
    x_proj = xp.reshape(x_product + bias, (steps, batch, 4 * hidden))
    recurrent = None if noise is None else noise.recurrent
    keep_c, keep_h = options.zoneout  # evaluation: zoneout's expectation; training: the masks below

    h, c = h0, c0
    outputs, h_prevs, c_prevs, gate_steps, tanh_cs, variant_steps, h_norms = [], [], [], [], [], [], []
    for t in range(steps):
        seen_h = h if recurrent is None else h * recurrent
        h_prevs.append(seen_h)  # what W_h multiplies
        c_prevs.append(c)
        h_product = backend.operand(seen_h) @ w_hidden
        if options.layer_norm:
            h_product, h_norm = layer_norm_forward(xp, h_product, extra.norm_h)
            h_norms.append(h_norm)
        z = x_proj[t, ...] + h_product
        if variant:
            gates, c_new, tanh_c, h_new, step = cell.variant_cell_forward(xp, z, c, extra.peephole, extra.norm_c,
                                                                          options)
            variant_steps.append(step)
        else:
            gates, c_new, tanh_c, h_new = cell.cell_forward(xp, z, c, gate)
        if projection is not None:
            h_new = backend.operand(h_new) @ projection_operand
        if noise is not None:
            keep_c = 0.0 if noise.zoneout_c is None else noise.zoneout_c[t, ...]
            keep_h = 0.0 if noise.zoneout_h is None else noise.zoneout_h[t, ...]
        if options.zoneout != (0.0, 0.0):  # each unit keeps its previous value with probability z
            c_new = keep_c * c + (1 - keep_c) * c_new
            h_new = keep_h * h + (1 - keep_h) * h_new
        if step_mask is None:
            y, h, c = h_new, h_new, c_new
        else:
            real = step_mask[t, ...]
            y = real * h_new
            h = y + (1 - real) * h
            c = real * c_new + (1 - real) * c
        outputs.append(y)
        gate_steps.append(gates)
        tanh_cs.append(tanh_c)

    kept = None
    if variant:
        kept = VariantCache(xp.stack([v.c_new for v in variant_steps]),
                            None if options.cell_clip is None else xp.stack([v.unclipped for v in variant_steps]),
                            _stacked_norms(xp, [v.c_norm for v in variant_steps]), x_norm,
                            _stacked_norms(xp, h_norms), noise)
    cache = LSTMLayerCache(x, xp.stack(h_prevs), xp.stack(c_prevs), xp.stack(gate_steps), xp.stack(tanh_cs), step_mask,
                           kept)
    return xp.stack(outputs), (h, c), cache


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: LSTMLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    """Backpropagate through one layer, steps in reverse.

    ``dy`` (T, B, H) is dL/dy, ``(dh_last, dc_last)`` dL/d(h_T, c_T). Returns
    ``(dx, (dh0, dc0), dweight, dbias)``.
    """
    dx, dstate0, dweight, dbias, _ = _layer_backward(backend, dy, dh_last, dc_last, weight, ExtraParams(), cache)
    return dx, dstate0, dweight, dbias


def lstmp_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, projection: Any, cache: LSTMLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any, Any]:
    """Mirror of :func:`lstmp_layer_forward`: ``(dx, (dh0, dc0), dweight, dbias, dprojection)``."""
    dx, dstate0, dweight, dbias, dextra = _layer_backward(backend, dy, dh_last, dc_last, weight,
                                                          ExtraParams(projection), cache)
    return dx, dstate0, dweight, dbias, dextra.projection


def lstm_variant_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, extra: ExtraParams, options: CellOptions,
    cache: LSTMLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
    """Mirror of :func:`lstm_variant_layer_forward`: ``(dx, (dh0, dc0), dweight, dbias, dextra)``, ``dextra``
    holding the gradient of each parameter ``extra`` holds."""
    return _layer_backward(backend, dy, dh_last, dc_last, weight, extra, cache, options)


def _layer_backward(backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, extra: ExtraParams,
                    cache: LSTMLayerCache, options: CellOptions = PLAIN) -> tuple[Any, ...]:
    xp = backend.xp
    x, h_prevs, c_prevs, gate_steps, tanh_cs = cache.x, cache.h_prev, cache.c_prev, cache.gates, cache.tanh_c
    step_mask, kept = cache.step_mask, cache.variant
    steps, batch, features, hidden = check_layer_backward(cache, extra, options, dy, dh_last, dc_last, weight)
    projection = extra.projection
    gate = gate_affine(backend, hidden, x.dtype)
    w_hidden_t = backend.operand(weight[features:, :].T)  # in the products' operand format once, for every step
    projection_t = None if projection is None else backend.operand(projection.T)
    noise = None if kept is None else kept.noise
    recurrent = None if noise is None else noise.recurrent
    keep_c, keep_h = options.zoneout

    dh_next, dc_next = dh_last, dc_last  # dL/dh_t and dL/dc_t arriving from step t+1
    dz_steps, dh_product_steps, dh_outs = [], [], []
    dpeephole = dnorm_h = dnorm_c = None
    for t in reversed(range(steps)):
        if step_mask is None:
            dh_new, dc_in = dy[t, ...] + dh_next, dc_next
        else:
            real = step_mask[t, ...]
            dh_new, dc_in = real * (dy[t, ...] + dh_next), real * dc_next
        carried_h = carried_c = None
        if options.zoneout != (0.0, 0.0):  # the kept share goes straight to the previous state
            if noise is not None:
                keep_c = 0.0 if noise.zoneout_c is None else noise.zoneout_c[t, ...]
                keep_h = 0.0 if noise.zoneout_h is None else noise.zoneout_h[t, ...]
            carried_h, carried_c = keep_h * dh_new, keep_c * dc_in
            dh_new, dc_in = (1 - keep_h) * dh_new, (1 - keep_c) * dc_in
        if projection_t is not None:  # dL/dh'_t reaches the cell's o ⊙ tanh(c_t) through W_hr
            dh_outs.append(dh_new)
            dh_new = backend.operand(dh_new) @ projection_t
        if kept is None:
            dz, dc_prev = cell.cell_backward(xp, dh_new, dc_in, gate_steps[t, ...], c_prevs[t, ...], tanh_cs[t, ...],
                                             gate)
        else:
            c_norm = None if kept.c_norm is None else NormCache(kept.c_norm.normalized[t, ...],
                                                                kept.c_norm.inverse_std[t, ...])
            step = VariantStep(kept.c_new[t, ...], None if kept.unclipped is None else kept.unclipped[t, ...], c_norm)
            dz, dc_prev, dp, dn = cell.variant_cell_backward(xp, dh_new, dc_in, gate_steps[t, ...], c_prevs[t, ...],
                                                             tanh_cs[t, ...], extra.peephole, extra.norm_c, options,
                                                             step)
            dpeephole, dnorm_c = _summed(dpeephole, dp), _summed(dnorm_c, dn)
        dh_product = dz
        if options.layer_norm:
            dh_product, dn = layer_norm_backward(xp, dz, extra.norm_h, NormCache(kept.h_norm.normalized[t, ...],
                                                                                 kept.h_norm.inverse_std[t, ...]))
            dnorm_h = _summed(dnorm_h, dn)
        dh_prev = backend.operand(dh_product) @ w_hidden_t
        if recurrent is not None:
            dh_prev = dh_prev * recurrent
        if carried_h is not None:
            dh_prev, dc_prev = dh_prev + carried_h, dc_prev + carried_c
        if step_mask is not None:  # padded steps pass the state's gradient straight through
            dh_prev = dh_prev + (1 - real) * dh_next
            dc_prev = dc_prev + (1 - real) * dc_next
        dz_steps.append(dz)
        dh_product_steps.append(dh_product)
        dh_next, dc_next = dh_prev, dc_prev

    dz_all = xp.reshape(xp.stack(dz_steps[::-1]), (steps * batch, 4 * hidden))
    dx_product, dnorm_x = dz_all, None
    if options.layer_norm:
        dx_product, dnorm_x = layer_norm_backward(xp, dz_all, extra.norm_x, kept.x_norm)
    dh_product_all = dz_all if not options.layer_norm else xp.reshape(xp.stack(dh_product_steps[::-1]),
                                                                      (steps * batch, 4 * hidden))
    # each gradient in the products' operand format once, for both products it enters (one array without layer norm)
    dx_operand = backend.operand(dx_product)
    dh_operand = dx_operand if dh_product_all is dx_product else backend.operand(dh_product_all)
    dweight = xp.concat([backend.operand(xp.reshape(x, (steps * batch, features))).T @ dx_operand,
                         backend.operand(xp.reshape(h_prevs, (steps * batch, cache.output_size))).T @ dh_operand],
                        axis=0)
    dbias = xp.sum(dz_all, axis=0)
    dx = xp.reshape(dx_operand @ backend.operand(weight[:features, :].T), (steps, batch, features))
    dprojection = None
    if projection is not None:
        unprojected = gate_steps[..., 3 * hidden :] * tanh_cs  # o_t ⊙ tanh(c_t), what W_hr multiplied
        dprojection = backend.matmul(xp.reshape(unprojected, (steps * batch, hidden)).T,
                                     xp.reshape(xp.stack(dh_outs[::-1]), (steps * batch, cache.output_size)))
    dextra = ExtraParams(dprojection, dpeephole, dnorm_x, dnorm_h, dnorm_c)
    return dx, (dh_next, dc_next), dweight, dbias, dextra


def _summed(total: Any, part: Any) -> Any:
    return part if total is None else total + part
