"""Compiled CPU fast path for one LSTM layer: the pointwise work of each time step as one Numba kernel.

Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward`` and tested against them. The
buffers and GEMMs are those of :mod:`lstmx.kernels.host.numpy_layer` (the same cache, so either backward can consume
it); what changes is the pointwise math between the GEMMs. NumPy spends ~10 ufunc calls per step in the
forward and ~16 in the backward, each a pass over memory; here each step's pointwise work is one loop that reads
every value once, and each direction's whole time loop is compiled too, calling NumPy's own BLAS GEMM
(:mod:`lstmx.kernels.host.blas`), so no step returns to Python (where that entry is not found, the same loop
runs in Python around ``np.matmul``: the same library and kernels, the same bits). Numba is optional
(``pip install 'lstmx[fast]'``); :mod:`lstmx.dispatch.registry` picks this module by default for NumPy input
without step masks when it imports.

float32 tanh is Eigen's rational approximation (clamped to ±7.905, max abs error 2.4e-7 against ``np.tanh``),
which the compiler vectorises; float64 uses the exact ``math.tanh`` so the gradient checks can run here too.
Fast-math flags allow fused multiply-add and approximate functions, but neither reassociation (with it, a step
inlined into the compiled time loop may round otherwise than the same step called from Python, so the two loops
would not give the same bits) nor "no NaN/Inf" (a NaN still propagates).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import overload

from ...backend import Backend
from ...nn.layers.lstm_layer import check_backward_inputs, forward_dims
from . import blas, numpy_layer
from .blas import NO_TRANSPOSE, ROW_MAJOR, TRANSPOSE
from .buffers import HOST_BUFFERS
from .numpy_layer import HostLayerCache

_FAST_MATH = {"contract", "afn", "arcp", "nsz"}  # not reassoc (one rounding in both loops), not nnan/ninf
_JIT = {"fastmath": _FAST_MATH, "error_model": "numpy", "cache": True}


def _tanh(x):  # replaced inside compiled code by the overload below
    return math.tanh(x)


def _tanh_float32(x):
    x = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))  # tanh(±7.905) rounds to ±1
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return p * x / q


@overload(_tanh, inline="always", jit_options={"fastmath": _FAST_MATH, "error_model": "numpy"})
def _tanh_for(x):
    if x == types.float32:
        return _tanh_float32
    return lambda x: math.tanh(x)


def _sigmoid(x):  # replaced inside compiled code by the overload below
    return 0.5 * math.tanh(0.5 * x) + 0.5


@overload(_sigmoid, inline="always", jit_options={"fastmath": _FAST_MATH, "error_model": "numpy"})
def _sigmoid_for(x):
    """σ(z) = ½·tanh(½z) + ½: the gates' σ through the same tanh, in the argument's precision."""
    if x == types.float32:
        return lambda x: np.float32(0.5) * _tanh(np.float32(0.5) * x) + np.float32(0.5)
    return lambda x: 0.5 * _tanh(0.5 * x) + 0.5


# Loops index views from 0 with range(n): the compiler then drops the negative-index check and vectorises.
@njit(**_JIT)
def _forward_step(z, recurrent, bias, c_prev, c_next, tanh_c, next_inputs, features):
    """z (B, 4H): x_t W_x on entry, the activated gates i, f, g, o on return; writes c_t, tanh(c_t) and h_t
    (into columns [features:] of ``next_inputs``, the next step's [x, h_prev] rows)."""
    hidden = c_prev.shape[1]
    for b in range(z.shape[0]):
        zb, rb = z[b], recurrent[b]
        for k in range(zb.shape[0]):
            zb[k] += rb[k] + bias[k]
        i, f, g, o = zb[:hidden], zb[hidden : 2 * hidden], zb[2 * hidden : 3 * hidden], zb[3 * hidden :]
        for j in range(hidden):
            i[j] = _sigmoid(i[j])
            f[j] = _sigmoid(f[j])
            g[j] = _tanh(g[j])
            o[j] = _sigmoid(o[j])
        cp, cn, tc, h = c_prev[b], c_next[b], tanh_c[b], next_inputs[b][features:]
        for j in range(hidden):
            c = f[j] * cp[j] + i[j] * g[j]
            cn[j] = c
            tc[j] = _tanh(c)
            h[j] = o[j] * tc[j]


@njit(**_JIT)
def _backward_step(dy, dh_next, dc, gates, c_prev, tanh_c, dz):
    """Mirror of :func:`_forward_step`: from dL/dy_t, dL/dh_t via step t+1 and dL/dc_t via step t+1 (``dc``,
    overwritten with dL/dc_{t-1} through c_t), write dz (B, 4H). σ' and tanh' come from the stored outputs."""
    hidden = dy.shape[1]
    one = dy.dtype.type(1)
    for b in range(dy.shape[0]):
        gb, db = gates[b], dz[b]
        i, f, g, o = gb[:hidden], gb[hidden : 2 * hidden], gb[2 * hidden : 3 * hidden], gb[3 * hidden :]
        di, df, dg, do = db[:hidden], db[hidden : 2 * hidden], db[2 * hidden : 3 * hidden], db[3 * hidden :]
        dyb, dhb, dcb, cp, tc = dy[b], dh_next[b], dc[b], c_prev[b], tanh_c[b]
        for j in range(hidden):
            dh = dyb[j] + dhb[j]
            dc_total = dcb[j] + dh * o[j] * (one - tc[j] * tc[j])
            do[j] = dh * tc[j] * o[j] * (one - o[j])
            di[j] = dc_total * g[j] * i[j] * (one - i[j])
            df[j] = dc_total * cp[j] * f[j] * (one - f[j])
            dg[j] = dc_total * i[j] * (one - g[j] * g[j])
            dcb[j] = dc_total * f[j]


@njit(nogil=True, **_JIT)
def _forward_loop(gemm, gates, w_hidden, bias, cells, tanh_c, inputs_and_h_prev, features, recurrent):
    """The forward's time loop compiled: per step h_{t-1} W_h by ``gemm`` (:mod:`lstmx.kernels.host.blas`; every
    array C-contiguous, h_{t-1} read in place from columns [features:] of ``inputs_and_h_prev[t]``), then
    :func:`_forward_step`."""
    batch, hidden, width = cells.shape[1], cells.shape[2], inputs_and_h_prev.shape[2]
    one, zero = gates.dtype.type(1), gates.dtype.type(0)
    for t in range(gates.shape[0]):
        h_prev = inputs_and_h_prev[t].ctypes.data + features * inputs_and_h_prev.itemsize
        gemm(ROW_MAJOR, NO_TRANSPOSE, NO_TRANSPOSE, batch, 4 * hidden, hidden, one, h_prev, width,
             w_hidden.ctypes.data, 4 * hidden, zero, recurrent.ctypes.data, 4 * hidden)
        _forward_step(gates[t], recurrent, bias, cells[t], cells[t + 1], tanh_c[t], inputs_and_h_prev[t + 1], features)


@njit(**_JIT)
def _transpose_into(source, destination):
    """``destination`` (B, H) = ``source`` (H, B)ᵀ."""
    for b in range(destination.shape[0]):
        row = destination[b]
        for j in range(destination.shape[1]):
            row[j] = source[j, b]


@njit(nogil=True, **_JIT)
def _backward_loop(gemm, dy, dh_next, dc, gates, cells, tanh_c, dz_all, w_hidden, dh_transposed):
    """Mirror of :func:`_forward_loop`, steps in reverse: :func:`_backward_step`, then dL/dh_{t-1} = dz_t W_hᵀ,
    formed as its transpose W_h dz_tᵀ (``w_hidden`` the (H, 4H) rows of the weight; this shape of the product
    runs faster than dz_t times a copy of W_hᵀ) into ``dh_transposed`` (H, B), and turned into ``dh_next``."""
    batch, hidden = dh_next.shape
    one, zero = dy.dtype.type(1), dy.dtype.type(0)
    for t in range(dy.shape[0] - 1, -1, -1):
        _backward_step(dy[t], dh_next, dc, gates[t], cells[t], tanh_c[t], dz_all[t])
        gemm(ROW_MAJOR, NO_TRANSPOSE, TRANSPOSE, hidden, batch, 4 * hidden, one, w_hidden.ctypes.data, 4 * hidden,
             dz_all[t].ctypes.data, 4 * hidden, zero, dh_transposed.ctypes.data, batch)
        _transpose_into(dh_transposed, dh_next)


def _compiled_gemm(dtype: Any, batch: int, hidden: int) -> Any:
    """NumPy's BLAS GEMM for the compiled loops, or None: then the loop runs in Python around ``np.matmul``
    (the same library, so the same bits). Empty sizes stay in Python, where BLAS never sees a zero leading
    dimension."""
    return blas.gemm(np.dtype(dtype).name) if batch > 0 and hidden > 0 else None


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], HostLayerCache]:
    numpy_layer.refuse_step_mask(step_mask)
    steps, batch, features, hidden = forward_dims(x, weight, bias, h0, c0)
    inputs_and_h_prev, cells = numpy_layer.state_buffers(x, h0, c0)
    gates = numpy_layer.input_projection(x, weight[:features])
    tanh_c = HOST_BUFFERS.empty((steps, batch, hidden), x.dtype)
    recurrent = np.empty((batch, 4 * hidden), dtype=x.dtype)
    bias = np.ascontiguousarray(bias, dtype=x.dtype)
    w_hidden = np.ascontiguousarray(weight[features:])
    gemm = _compiled_gemm(x.dtype, batch, hidden)
    if gemm is not None:
        _forward_loop(gemm, gates, w_hidden, bias, cells, tanh_c, inputs_and_h_prev, features, recurrent)
    else:
        for t in range(steps):
            np.matmul(inputs_and_h_prev[t, :, features:], w_hidden, out=recurrent)
            _forward_step(gates[t], recurrent, bias, cells[t], cells[t + 1], tanh_c[t], inputs_and_h_prev[t + 1],
                          features)
    return numpy_layer.forward_outputs(inputs_and_h_prev, cells, gates, tanh_c)


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: HostLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    check_backward_inputs(cache.dims(), cache.gates.dtype, dy, dh_last, dc_last, weight)  # the kernels index without bounds checks
    inputs_and_h_prev, cells, gates, tanh_c = cache
    steps, batch, hidden = tanh_c.shape
    dtype = gates.dtype
    w_hidden = np.ascontiguousarray(weight[inputs_and_h_prev.shape[2] - hidden:], dtype=dtype)
    dz_all = HOST_BUFFERS.empty((steps, batch, 4 * hidden), dtype)
    dh_next, dc = (np.array(value, dtype=dtype, order="C") for value in (dh_last, dc_last))
    dh_transposed = np.empty((hidden, batch), dtype=dtype)
    dy = np.ascontiguousarray(dy, dtype=dtype)
    gemm = _compiled_gemm(dtype, batch, hidden)
    if gemm is not None and all(a.flags.c_contiguous for a in (gates, cells, tanh_c)):
        _backward_loop(gemm, dy, dh_next, dc, gates, cells, tanh_c, dz_all, w_hidden, dh_transposed)
    else:  # (a cache another path made may hold strided views)
        for t in reversed(range(steps)):
            _backward_step(dy[t], dh_next, dc, gates[t], cells[t], tanh_c[t], dz_all[t])
            np.matmul(w_hidden, dz_all[t].T, out=dh_transposed)
            _transpose_into(dh_transposed, dh_next)
    dx, dweight, dbias = numpy_layer.parameter_gradients(inputs_and_h_prev, dz_all, weight)
    return dx, (dh_next, dc), dweight, dbias


# the layers with cell options: their own module, exposed here, where the registry's "numba" entry points
from .numba_variants import (lstm_variant_layer_backward, lstm_variant_layer_forward, lstmp_layer_backward,  # noqa: E402
                             lstmp_layer_forward)
