"""The Numba path's layers with cell options: peepholes, ``input_forget``, ``cell_clip``, ``layer_norm``, zoneout
and recurrent dropout, each time step's pointwise work (the layer norms of h W_h and of c included) one compiled
loop between the recurrent GEMMs.

The signatures are the generic ``lstm_variant_layer_forward`` / ``lstm_variant_layer_backward``
(:mod:`lstmx.nn.layers.lstm_layer`), and so is the cache: an :class:`~lstmx.nn.layers.lstm_layer.LSTMLayerCache` with
its :class:`~lstmx.nn.layers.lstm_layer.VariantCache`, so either backward consumes either forward's cache (the
tests run both ways). The equations are :class:`lstmx.nn.cells.LSTMCell`'s. Options that are off cost a multiply by
a constant: no clipping is a clip to ±∞, no zoneout a keep mask of zeros, no peepholes zero weights.

With a projection (the LSTMP cell, ``proj_size``) the cell's o ⊙ tanh(c) goes through W_hr by one GEMM per step
and h's zoneout acts on the projected h, as in the generic path. No step mask, as the rest of the Numba path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from ...backend import Backend
from ...nn.layers.cell import CellOptions
from ...nn.layers.lstm_layer import (PLAIN, ExtraParams, LayerNoise, LSTMLayerCache, VariantCache, check_extra_params,
                                     check_layer_backward, forward_dims, projected_layers)
from ...nn.layers.norm import NORM_EPSILON, NormCache
from .buffers import HOST_BUFFERS
from .numba_layer import _JIT, _sigmoid, _tanh, _transpose_into
from .numpy_layer import refuse_step_mask


class _Settings(NamedTuple):
    """The options as the kernels take them: arrays and numbers, never None (:func:`_settings`)."""

    peephole: np.ndarray  # (3H,), zeros without peepholes
    clip: Any  # the dtype's ±∞ without clipping
    norm_h: np.ndarray  # (2, 4H), the identity without layer_norm
    norm_c: np.ndarray  # (2, H)
    input_forget: bool


def _settings(options: CellOptions, extra: ExtraParams, hidden: int, dtype: np.dtype) -> _Settings:
    def gain_and_bias(value: Any, width: int) -> np.ndarray:
        identity = np.stack([np.ones(width, dtype), np.zeros(width, dtype)])
        return identity if value is None else np.ascontiguousarray(value, dtype)

    peephole = np.zeros(3 * hidden, dtype) if extra.peephole is None else np.ascontiguousarray(extra.peephole, dtype)
    return _Settings(peephole, dtype.type(np.inf if options.cell_clip is None else options.cell_clip),
                     gain_and_bias(extra.norm_h, 4 * hidden), gain_and_bias(extra.norm_c, hidden),
                     options.input_forget)


def _keep(noise: LayerNoise | None, options: CellOptions, steps: int, batch: int, hidden: int, output: int,
          dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Zoneout's keep masks for c (T, B, H) and h (T, B, R): the drawn ones in training, z everywhere in
    evaluation; (T, 1, 1) placeholders the kernels never read without zoneout."""
    if not any(options.zoneout):
        return _unused(steps, dtype, 2), _unused(steps, dtype, 2)
    zoneout_c, zoneout_h = options.zoneout

    def mask(drawn: Any, z: float, width: int) -> np.ndarray:
        if noise is not None:
            return np.zeros((steps, batch, width), dtype) if drawn is None else np.ascontiguousarray(drawn, dtype)
        return np.full((steps, batch, width), z, dtype)
    return (mask(None if noise is None else noise.zoneout_c, zoneout_c, hidden),
            mask(None if noise is None else noise.zoneout_h, zoneout_h, output))


def _unused(steps: int, dtype: np.dtype, ndim: int) -> np.ndarray:
    """A placeholder per step for a buffer an option that is off would fill: (T, 1, ...) of ``ndim`` + 1 axes."""
    return np.zeros((steps,) + (1,) * ndim, dtype)


@njit(**_JIT)
def _normalise_row(values, normalized, gain_and_bias, out):
    """LN of one row: writes (v − mean)/sqrt(var + ε) into ``normalized`` and gain·that + bias into ``out``;
    returns 1/sqrt(var + ε). The sums run in float64: float32 ones lose digits the generic path keeps."""
    width = values.shape[0]
    mean = 0.0
    for k in range(width):
        mean += values[k]
    mean /= width
    variance = 0.0
    for k in range(width):
        centred = values[k] - mean
        variance += centred * centred
    inverse_std = 1.0 / np.sqrt(variance / width + NORM_EPSILON)
    for k in range(width):
        normalized[k] = (values[k] - mean) * inverse_std
        out[k] = normalized[k] * gain_and_bias[0, k] + gain_and_bias[1, k]
    return inverse_std


@njit(**_JIT)
def _normalise_row_backward(dout, normalized, inverse_std, gain_and_bias, d_gain_and_bias, dvalues):
    """Mirror of :func:`_normalise_row`: writes dL/dvalues and adds to d gain_and_bias."""
    width = dout.shape[0]
    mean_d = 0.0  # float64 sums, as in _normalise_row
    mean_dn = 0.0
    for k in range(width):
        d = np.float64(dout[k]) * gain_and_bias[0, k]
        mean_d += d
        mean_dn += d * normalized[k]
        d_gain_and_bias[0, k] += dout[k] * normalized[k]
        d_gain_and_bias[1, k] += dout[k]
    mean_d /= width
    mean_dn /= width
    for k in range(width):
        dvalues[k] = inverse_std * (dout[k] * gain_and_bias[0, k] - mean_d - normalized[k] * mean_dn)


@njit(**_JIT)
def _normalise_rows(values, gain_and_bias, normalized, inverse_std, out):
    """:func:`_normalise_row` over every row of ``values`` (N, W)."""
    for n in range(values.shape[0]):
        inverse_std[n, 0] = _normalise_row(values[n], normalized[n], gain_and_bias, out[n])


@njit(**_JIT)
def _normalise_rows_backward(dout, normalized, inverse_std, gain_and_bias, d_gain_and_bias, dvalues):
    """:func:`_normalise_row_backward` over every row."""
    for n in range(dout.shape[0]):
        _normalise_row_backward(dout[n], normalized[n], inverse_std[n, 0], gain_and_bias, d_gain_and_bias, dvalues[n])


@njit(**_JIT)
def _clip_row(z, clip, unclipped):
    """z clipped to [−clip, clip] in place; ``unclipped`` 1 where it lay inside, else 0."""
    one, zero = z.dtype.type(1), z.dtype.type(0)
    for k in range(z.shape[0]):
        unclipped[k] = one if -clip <= z[k] <= clip else zero
        z[k] = min(max(z[k], -clip), clip)


# Each option is a branch around whole loops, never inside one: every loop stays simple enough to vectorise.
@njit(**_JIT)
def _forward_step(x_gates, recurrent, c_prev, h_prev, peephole, peepholes, clip, clipped, input_forget, layer_norm,
                  norm_h, norm_c, zoned_c, zoned_h, keep_c, keep_h, gates, c_new, tanh_c, unclipped, h_normalized,
                  h_inverse_std, c_normalized, c_inverse_std, h_out, c_out):
    """One step of every row: the pre-activations are ``x_gates`` (B, 4H: LN(x W_x) + b, overwritten) plus
    ``recurrent`` (h W_h, normalised here in place with layer_norm); writes the activated gates, c'_t, tanh of
    (LN of) c'_t, the clip masks, the layer norms' caches, and the state after zoneout (``h_out``, ``c_out``;
    ``h_out`` is o ⊙ tanh(c) before any projection, zoned here only when ``zoned_h``)."""
    hidden = c_prev.shape[1]
    one = c_prev.dtype.type(1)
    p_i, p_f, p_o = peephole[:hidden], peephole[hidden:2 * hidden], peephole[2 * hidden:]
    for b in range(c_prev.shape[0]):
        rec, zb, gb, cp, cn = recurrent[b], x_gates[b], gates[b], c_prev[b], c_new[b]
        if layer_norm:
            h_inverse_std[b, 0] = _normalise_row(rec, h_normalized[b], norm_h, rec)
        for k in range(zb.shape[0]):
            zb[k] += rec[k]
        zi, zf, zg, zo = zb[:hidden], zb[hidden:2 * hidden], zb[2 * hidden:3 * hidden], zb[3 * hidden:]
        i, f, g, o = gb[:hidden], gb[hidden:2 * hidden], gb[2 * hidden:3 * hidden], gb[3 * hidden:]
        if peepholes:
            for j in range(hidden):
                zi[j] += p_i[j] * cp[j]
                zf[j] += p_f[j] * cp[j]
        if clipped:
            _clip_row(zb[:3 * hidden], clip, unclipped[b, :3 * hidden])
        for j in range(hidden):
            i[j] = _sigmoid(zi[j])
            g[j] = _tanh(zg[j])
        if input_forget:
            for j in range(hidden):
                f[j] = one - i[j]
        else:
            for j in range(hidden):
                f[j] = _sigmoid(zf[j])
        for j in range(hidden):
            cn[j] = f[j] * cp[j] + i[j] * g[j]
        if peepholes:
            for j in range(hidden):
                zo[j] += p_o[j] * cn[j]
        if clipped:
            _clip_row(zo, clip, unclipped[b, 3 * hidden:])
        for j in range(hidden):
            o[j] = _sigmoid(zo[j])
        squashed = tanh_c[b]
        if layer_norm:
            c_inverse_std[b, 0] = _normalise_row(cn, c_normalized[b], norm_c, squashed)
        else:
            for j in range(hidden):
                squashed[j] = cn[j]
        h, c = h_out[b], c_out[b]
        for j in range(hidden):
            squashed[j] = _tanh(squashed[j])
            h[j] = o[j] * squashed[j]
        if zoned_c:  # each unit keeps its previous value by its mask (or z)
            kc = keep_c[b]
            for j in range(hidden):
                c[j] = kc[j] * cp[j] + (one - kc[j]) * cn[j]
        else:
            for j in range(hidden):
                c[j] = cn[j]
        if zoned_h:
            kh, hp = keep_h[b], h_prev[b]
            for j in range(hidden):
                h[j] = kh[j] * hp[j] + (one - kh[j]) * h[j]


@njit(**_JIT)
def _backward_step(dy, dh_next, dc_next, gates, c_prev, c_new, tanh_c, clipped, unclipped, peephole, peepholes,
                   input_forget, layer_norm, norm_h, norm_c, zoned_c, zoned_h, keep_c, keep_h, h_normalized,
                   h_inverse_std, c_normalized, c_inverse_std, dz, dh_product, dh_carried, dpeephole, dnorm_h, dnorm_c,
                   scratch):
    """Mirror of :func:`_forward_step`: from dL/dy_t, dL/dh_t and dL/dc_t via step t+1 (``dc_next``, overwritten
    with dL/dc_{t-1}), writes dz, the gradient of h W_h (``dh_product``; ``dz`` itself without layer_norm) and the
    share of dL/dh_{t-1} h's zoneout carries (``dh_carried``, when ``zoned_h``); adds to the peephole and
    layer-norm gradients."""
    hidden = c_prev.shape[1]
    one, zero = c_prev.dtype.type(1), c_prev.dtype.type(0)
    p_i, p_f, p_o = peephole[:hidden], peephole[hidden:2 * hidden], peephole[2 * hidden:]
    dp_i, dp_f, dp_o = dpeephole[:hidden], dpeephole[hidden:2 * hidden], dpeephole[2 * hidden:]
    dh, dc_from_h, dc, carried_c = scratch[0], scratch[1], scratch[2], scratch[3]
    for b in range(c_prev.shape[0]):
        gb, db, tc, cp, cn, dcn = gates[b], dz[b], tanh_c[b], c_prev[b], c_new[b], dc_next[b]
        i, f, g, o = gb[:hidden], gb[hidden:2 * hidden], gb[2 * hidden:3 * hidden], gb[3 * hidden:]
        di, df, dg, do = db[:hidden], db[hidden:2 * hidden], db[2 * hidden:3 * hidden], db[3 * hidden:]
        for j in range(hidden):
            dh[j] = dy[b, j] + dh_next[b, j]
        if zoned_h:
            kh, carried_h = keep_h[b], dh_carried[b]
            for j in range(hidden):
                carried_h[j] = kh[j] * dh[j]
                dh[j] = (one - kh[j]) * dh[j]
        if zoned_c:
            kc = keep_c[b]
            for j in range(hidden):
                carried_c[j] = kc[j] * dcn[j]
                dcn[j] = (one - kc[j]) * dcn[j]
        for j in range(hidden):
            do[j] = dh[j] * tc[j] * o[j] * (one - o[j])
            dc_from_h[j] = dh[j] * o[j] * (one - tc[j] * tc[j])
        if clipped:
            uo = unclipped[b, 3 * hidden:]
            for j in range(hidden):
                do[j] *= uo[j]
        through_c = dc_from_h
        if layer_norm:
            _normalise_row_backward(dc_from_h, c_normalized[b], c_inverse_std[b, 0], norm_c, dnorm_c, dh)
            through_c = dh  # dh is read no more in this row
        for j in range(hidden):
            dc[j] = dcn[j] + through_c[j]
        if peepholes:
            for j in range(hidden):
                dc[j] += do[j] * p_o[j]
        for j in range(hidden):
            di[j] = dc[j] * g[j]
            df[j] = dc[j] * cp[j]
            dg[j] = dc[j] * i[j]
        if input_forget:  # f = 1 − i: the forget gate's gradient reaches i with a minus sign
            for j in range(hidden):
                di[j] -= df[j]
                df[j] = zero
        for j in range(hidden):
            di[j] *= i[j] * (one - i[j])
            df[j] *= f[j] * (one - f[j])
            dg[j] *= one - g[j] * g[j]
        if clipped:
            ub = unclipped[b]
            for k in range(3 * hidden):
                db[k] *= ub[k]
        for j in range(hidden):
            dcn[j] = dc[j] * f[j]
        if peepholes:
            for j in range(hidden):
                dcn[j] += di[j] * p_i[j] + df[j] * p_f[j]
                dp_i[j] += di[j] * cp[j]
                dp_f[j] += df[j] * cp[j]
                dp_o[j] += do[j] * cn[j]
        if zoned_c:
            for j in range(hidden):
                dcn[j] += carried_c[j]
        if layer_norm:
            _normalise_row_backward(db, h_normalized[b], h_inverse_std[b, 0], norm_h, dnorm_h, dh_product[b])


def lstm_variant_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, extra: ExtraParams, options: CellOptions, h0: Any, c0: Any,
    step_mask: Any = None, noise: LayerNoise | None = None
) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    refuse_step_mask(step_mask)
    projection = extra.projection
    steps, batch, features, hidden = forward_dims(x, weight, bias, h0, c0, projection)
    check_extra_params(extra, options, hidden, x.dtype)
    dtype = x.dtype
    output = h0.shape[1]  # R: H, or P with a projection
    settings = _settings(options, extra, hidden, dtype)
    norms, clipped = options.layer_norm, options.cell_clip is not None
    zoned_c, zoned_h = (z > 0 for z in options.zoneout)
    x_product = HOST_BUFFERS.empty((steps * batch, 4 * hidden), dtype)
    np.matmul(np.reshape(x, (steps * batch, features)), weight[:features], out=x_product)
    x_norm = None
    if norms:
        x_norm = NormCache(HOST_BUFFERS.empty(x_product.shape, dtype), HOST_BUFFERS.empty((steps * batch, 1), dtype))
        _normalise_rows(x_product, np.ascontiguousarray(extra.norm_x, dtype), x_norm.normalized, x_norm.inverse_std,
                        x_product)
    x_product += bias
    x_gates = np.reshape(x_product, (steps, batch, 4 * hidden))
    recurrent_mask = None if noise is None else noise.recurrent
    keep_c, keep_h = _keep(noise, options, steps, batch, hidden, output, dtype)
    w_hidden = np.ascontiguousarray(weight[features:])
    w_projection = None if projection is None else np.ascontiguousarray(projection, dtype)

    h_seen = HOST_BUFFERS.empty((steps, batch, output), dtype)  # what W_h multiplied: h_{t-1}, recurrent-dropped
    cells = HOST_BUFFERS.empty((steps + 1, batch, hidden), dtype)  # c_0 and each step's c_t after zoneout
    cells[0] = c0
    outputs = HOST_BUFFERS.empty((steps, batch, output), dtype)
    gates = HOST_BUFFERS.empty((steps, batch, 4 * hidden), dtype)
    tanh_c = HOST_BUFFERS.empty((steps, batch, hidden), dtype)
    c_new = HOST_BUFFERS.empty((steps, batch, hidden), dtype) if zoned_c else cells[1:]  # c'_t, before zoneout
    unclipped = HOST_BUFFERS.empty((steps, batch, 4 * hidden), dtype) if clipped else _unused(steps, dtype, 2)
    h_normalized = HOST_BUFFERS.empty((steps, batch, 4 * hidden), dtype) if norms else _unused(steps, dtype, 2)
    c_normalized = HOST_BUFFERS.empty((steps, batch, hidden), dtype) if norms else _unused(steps, dtype, 2)
    h_inverse_std, c_inverse_std = (HOST_BUFFERS.empty((steps, batch, 1), dtype) if norms else _unused(steps, dtype, 2)
                                    for _ in range(2))
    recurrent = np.empty((batch, 4 * hidden), dtype)
    unprojected = None if projection is None else np.empty((batch, hidden), dtype)  # o ⊙ tanh(c): W_hr's input
    h = np.ascontiguousarray(h0, dtype)
    for t in range(steps):
        if recurrent_mask is None:
            h_seen[t] = h
        else:
            np.multiply(h, recurrent_mask, out=h_seen[t])
        np.matmul(h_seen[t], w_hidden, out=recurrent)
        _forward_step(x_gates[t], recurrent, cells[t], h, settings.peephole, options.peepholes, settings.clip, clipped,
                      settings.input_forget, norms, settings.norm_h, settings.norm_c, zoned_c,
                      zoned_h and projection is None, keep_c[t], keep_h[t], gates[t], c_new[t], tanh_c[t],
                      unclipped[t], h_normalized[t], h_inverse_std[t], c_normalized[t], c_inverse_std[t],
                      outputs[t] if projection is None else unprojected, cells[t + 1])
        if projection is not None:
            np.matmul(unprojected, w_projection, out=outputs[t])
            if zoned_h:  # the projected h keeps its previous value by its mask
                outputs[t] += keep_h[t] * (h - outputs[t])
        h = outputs[t]
    kept = None
    if options != PLAIN:
        kept = VariantCache(c_new, unclipped if clipped else None,
                            NormCache(c_normalized, c_inverse_std) if norms else None, x_norm,
                            NormCache(h_normalized, h_inverse_std) if norms else None, noise)
    cache = LSTMLayerCache(np.asarray(x), h_seen, cells[:-1], gates, tanh_c, None, kept)
    return outputs, (h.copy(), cells[-1].copy()), cache


def lstm_variant_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, extra: ExtraParams, options: CellOptions,
    cache: LSTMLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
    x, h_seen, c_prev, gates, tanh_c = cache.x, cache.h_prev, cache.c_prev, cache.gates, cache.tanh_c
    step_mask, kept = cache.step_mask, cache.variant
    refuse_step_mask(step_mask)
    steps, batch, features, hidden = check_layer_backward(cache, extra, options, dy, dh_last, dc_last, weight)
    projection = extra.projection
    output = cache.output_size
    dtype = x.dtype
    settings = _settings(options, extra, hidden, dtype)
    norms, clipped = options.layer_norm, options.cell_clip is not None
    zoned_c, zoned_h = (z > 0 for z in options.zoneout)
    noise = None if kept is None else kept.noise
    keep_c, keep_h = _keep(noise, options, steps, batch, hidden, output, dtype)
    recurrent_mask = None if noise is None else noise.recurrent
    c_new = c_prev if kept is None else kept.c_new  # read by the peepholes only, which need kept
    unclipped = np.ascontiguousarray(kept.unclipped, dtype) if clipped else _unused(steps, dtype, 2)
    h_norm = kept.h_norm if norms else NormCache(_unused(steps, dtype, 2), _unused(steps, dtype, 2))
    c_norm = kept.c_norm if norms else NormCache(_unused(steps, dtype, 2), _unused(steps, dtype, 2))
    w_hidden = np.ascontiguousarray(weight[features:], dtype)  # (R, 4H): dL/dh_{t-1}ᵀ = W_h dzᵀ, as the plain path
    w_projection_t = None if projection is None else np.ascontiguousarray(np.asarray(projection, dtype).T)

    dz_all = HOST_BUFFERS.empty((steps, batch, 4 * hidden), dtype)
    dh_product_all = HOST_BUFFERS.empty((steps, batch, 4 * hidden), dtype) if norms else dz_all  # dL/d(h W_h)
    dh_next, dc_next = np.array(dh_last, dtype, order="C"), np.array(dc_last, dtype, order="C")
    dh_transposed = np.empty((output, batch), dtype)
    dh_carried = np.zeros((batch, output), dtype)
    dpeephole = np.zeros(3 * hidden, dtype)
    dnorm_h, dnorm_c = np.zeros((2, 4 * hidden), dtype), np.zeros((2, hidden), dtype)
    scratch = np.empty((4, hidden), dtype)
    dy = np.ascontiguousarray(dy, dtype)
    if projection is not None:
        dh_projected = HOST_BUFFERS.empty((steps, batch, output), dtype)  # dL/dh'_t, what reaches W_hr's output
        dh_cell = np.empty((batch, hidden), dtype)  # dL/d(o ⊙ tanh c_t)
        no_dh = np.zeros((batch, hidden), dtype)
    for t in reversed(range(steps)):
        if projection is None:
            step_dy, step_dh = dy[t], dh_next
        else:
            total = dh_projected[t]
            np.add(dy[t], dh_next, out=total)
            if zoned_h:  # the kept share goes straight to h_{t-1}
                np.multiply(keep_h[t], total, out=dh_carried)
                total -= dh_carried
            np.matmul(total, w_projection_t, out=dh_cell)
            step_dy, step_dh = dh_cell, no_dh
        _backward_step(step_dy, step_dh, dc_next, gates[t], c_prev[t], c_new[t], tanh_c[t], clipped, unclipped[t],
                       settings.peephole, options.peepholes, settings.input_forget, norms, settings.norm_h,
                       settings.norm_c, zoned_c, zoned_h and projection is None, keep_c[t], keep_h[t],
                       h_norm.normalized[t], h_norm.inverse_std[t], c_norm.normalized[t], c_norm.inverse_std[t],
                       dz_all[t], dh_product_all[t], dh_carried, dpeephole, dnorm_h, dnorm_c, scratch)
        np.matmul(w_hidden, dh_product_all[t].T, out=dh_transposed)
        _transpose_into(dh_transposed, dh_next)
        if recurrent_mask is not None:
            dh_next *= recurrent_mask
        if zoned_h:
            dh_next += dh_carried

    dz_flat = dz_all.reshape(steps * batch, 4 * hidden)
    dx_product, dnorm_x = dz_flat, None
    if norms:
        dx_product, dnorm_x = HOST_BUFFERS.empty(dz_flat.shape, dtype), np.zeros((2, 4 * hidden), dtype)
        _normalise_rows_backward(dz_flat, kept.x_norm.normalized, kept.x_norm.inverse_std,
                                 np.ascontiguousarray(extra.norm_x, dtype), dnorm_x, dx_product)
    dweight = HOST_BUFFERS.empty(weight.shape, dtype)
    np.matmul(np.reshape(x, (steps * batch, features)).T, dx_product, out=dweight[:features])
    np.matmul(h_seen.reshape(steps * batch, output).T, dh_product_all.reshape(steps * batch, 4 * hidden),
              out=dweight[features:])
    dx = HOST_BUFFERS.empty((steps, batch, features), dtype)
    np.matmul(dx_product, weight[:features].T, out=dx.reshape(steps * batch, features))
    dprojection = None
    if projection is not None:
        unprojected = gates[..., 3 * hidden:] * tanh_c  # o_t ⊙ tanh(c_t), what W_hr multiplied
        dprojection = unprojected.reshape(steps * batch, hidden).T @ dh_projected.reshape(steps * batch, output)
    dextra = ExtraParams(dprojection, dpeephole if options.peepholes else None, dnorm_x, dnorm_h if norms else None,
                         dnorm_c if norms else None)
    return dx, (dh_next, dc_next), dweight, dz_flat.sum(axis=0), dextra



# the projected cell without options: the variant pair with no options, under the generic lstmp signatures
lstmp_layer_forward, lstmp_layer_backward = projected_layers(lstm_variant_layer_forward, lstm_variant_layer_backward)
