"""CuPy fast path for one LSTM layer: per time step one cuBLAS GEMM and one fused CUDA kernel.

Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward`` (:mod:`lstmx.nn.layers.lstm_layer`)
and tested against them, float32 and float64, with and without step masks. The generic path launches ~15 small
operations per time step, each costing tens of microseconds from Python; here a step is two calls:

- forward: the GEMM adds h_{t-1} W_h into the step's slice of the precomputed input projection (cuBLAS with
  β = 1), then one kernel (:mod:`lstmx.kernels.cupy.cuda_sources`) adds the bias, activates the gates and writes the
  cell, tanh(c), the output and the carried state;
- backward: one kernel writes dz_t and dL/dc_{t-1}, then the GEMM writes dL/dh_{t-1} = dz_t W_hᵀ (+ the part
  padded rows pass through).

The kernels take the step index, so no array is sliced per step, and nothing is read back to the host. The door,
buffers, projections and weight gradients are the shell's (:mod:`lstmx.kernels.cupy.shell`).
"""

from __future__ import annotations

import functools
from typing import Any

import cupy
import numpy as np

from ...backend import Backend
from . import cuda_sources
from .shell import NULL, BackwardBuffers, CupyLayerCache, Dims, ForwardBuffers, Gemm, layer_backward, layer_forward

THREADS = 256  # per block of the pointwise kernels


@functools.cache
def _kernel(kernel: str, dtype: str) -> cupy.RawKernel:
    """A compiled kernel (NVRTC through CuPy on first use, then CuPy's on-disk cache)."""
    return cupy.RawKernel(cuda_sources.source("stepwise", dtype), cuda_sources.kernel_name(kernel, dtype))


def _launch(kernel: str, dtype: str, count: int, args: tuple) -> None:
    _kernel(kernel, dtype)(((count + THREADS - 1) // THREADS,), (THREADS,), args)


def forward_recurrence(b: ForwardBuffers, dims: Dims, gemm: Gemm) -> None:
    """Every forward step on ``b`` (batch > 0): the GEMM adds h_{t-1} W_h into the step's gates, then the fused
    kernel. ``b`` may be any object with ForwardBuffers' arrays (the CUDA-graph path captures this loop on its
    own buffers)."""
    steps, batch, features, hidden = dims
    dtype = np.dtype(b.gates.dtype)
    w_hidden = b.weight.data.ptr + features * 4 * hidden * dtype.itemsize
    row, gate_row = batch * hidden * dtype.itemsize, batch * 4 * hidden * dtype.itemsize
    mask = NULL if b.step_mask is None else b.step_mask
    shape_args = (np.int32(batch), np.int32(hidden))
    for t in range(steps):
        gemm(b.hidden_states.data.ptr + t * row, w_hidden, b.gates.data.ptr + t * gate_row, batch, 4 * hidden,
             hidden, transpose_b=False, accumulate=True)
        _launch("lstm_forward_step", dtype.name, batch * hidden,
                (b.gates, b.bias, b.cells, b.hidden_states, b.tanh_c, b.y, mask, np.int32(t), *shape_args))


def backward_recurrence(b: BackwardBuffers, stored: CupyLayerCache, dims: Dims, gemm: Gemm) -> None:
    """Every backward step, in reverse (batch > 0): the fused kernel writes dz_t and dL/dc_{t-1}, then the GEMM
    writes dL/dh_{t-1} = dz_t W_hᵀ (+ the part padded rows pass through). ``stored`` gives the forward's gates,
    cells, tanh(c) and step mask (any object with those arrays, as for :func:`forward_recurrence`)."""
    steps, batch, features, hidden = dims
    dtype = np.dtype(b.dz.dtype)
    w_hidden = b.weight.data.ptr + features * 4 * hidden * dtype.itemsize
    gate_row = batch * 4 * hidden * dtype.itemsize
    mask = NULL if stored.step_mask is None else stored.step_mask
    shape_args = (np.int32(batch), np.int32(hidden))
    for t in reversed(range(steps)):
        _launch("lstm_backward_step", dtype.name, batch * hidden,
                (b.dy, b.dh, b.dc, stored.gates, stored.cells, stored.tanh_c, mask, b.dz, np.int32(t), *shape_args))
        gemm(b.dz.data.ptr + t * gate_row, w_hidden, b.dh.data.ptr, batch, hidden, 4 * hidden,
             transpose_b=True, accumulate=stored.step_mask is not None)


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
    return layer_forward(lambda b, dims: forward_recurrence(b, dims, Gemm(np.dtype(b.gates.dtype))),
                         x, weight, bias, h0, c0, step_mask)


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: CupyLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    return layer_backward(lambda b, stored: backward_recurrence(b, stored, stored.dims(), Gemm(np.dtype(b.dz.dtype))),
                          dy, dh_last, dc_last, weight, cache)


# the layers with cell options and the projected cell: their own module and kernels, exposed here, where the
# registry's "cupy-stepwise" entry points
from .variants import (lstm_variant_layer_backward, lstm_variant_layer_forward, lstmp_layer_backward,  # noqa: E402
                       lstmp_layer_forward)
