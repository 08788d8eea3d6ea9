"""The stepwise CuPy layer path with NumPy arrays, its CUDA kernels run by the CPU emulator.

The other CuPy wrappers run unchanged on the emulator through ``tests/fake_cupy.py``; this one calls cuBLAS on
raw device pointers between its launches, which the stand-in does not have, so :func:`stepwise` mirrors
``lstmx.kernels.cupy_layer`` step for step instead: the same buffers, the same GEMMs (here NumPy's), the same
kernel arguments in the same order. The wrapper itself runs only on a GPU (the CuPy suite).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from lstmx.kernels import cuda_sources

from .cuda_emulator import EmulatedKernels, compile_kernels, guarded

NULL = np.uint64(0)


@functools.cache
def kernels(kind: str, dtype: str) -> EmulatedKernels:
    names = [cuda_sources.kernel_name(k, dtype) for k in cuda_sources.SOURCES[kind][1]]
    return compile_kernels(cuda_sources.source(kind, dtype), names)


class Buffers(NamedTuple):
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    step_mask: Any
    gates: np.ndarray
    hidden_states: np.ndarray
    cells: np.ndarray
    tanh_c: np.ndarray
    y: np.ndarray


def forward_buffers(x, weight, bias, h0, c0, step_mask) -> Buffers:
    """As ``cupy_layer.forward_buffers``: x W_x for every step, h_0/c_0 in slot 0 (outputs start as NaN)."""
    steps, batch, features = x.shape
    hidden = h0.shape[1]
    dtype = x.dtype
    mask = None if step_mask is None else guarded(np.reshape(step_mask, (steps, batch)), dtype)
    gates = guarded(np.reshape(np.reshape(x, (steps * batch, features)) @ weight[:features], (steps, batch, 4 * hidden)))
    hidden_states = guarded(np.full((steps + 1, batch, hidden), np.nan, dtype))
    cells = guarded(np.full((steps + 1, batch, hidden), np.nan, dtype))
    hidden_states[0], cells[0] = h0, c0
    nan = np.full((steps, batch, hidden), np.nan, dtype)
    return Buffers(guarded(x), guarded(weight), guarded(bias), mask, gates, hidden_states, cells, guarded(nan),
                   guarded(nan))


def parameter_gradients(b: Buffers, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``cupy_layer.parameter_gradients``."""
    steps, batch, features = b.x.shape
    hidden = b.cells.shape[2]
    dz_flat = np.reshape(dz, (steps * batch, 4 * hidden))
    dweight = np.concatenate([np.reshape(b.x, (steps * batch, features)).T @ dz_flat,
                              np.reshape(b.hidden_states[:steps], (steps * batch, hidden)).T @ dz_flat])
    dx = np.reshape(dz_flat @ b.weight[:features].T, (steps, batch, features))
    return dx, dweight, np.sum(dz_flat, axis=0)


def backward_state(dh_last, dc_last, b: Buffers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps, batch, _ = b.x.shape
    hidden = b.cells.shape[2]
    dz = guarded(np.full((steps, batch, 4 * hidden), np.nan, b.x.dtype))
    return guarded(dh_last), guarded(dc_last), dz


def stepwise(x, weight, bias, h0, c0, dy, dh_last, dc_last, step_mask=None, seed=0) -> dict[str, np.ndarray]:
    """``cupy_layer``: per step the GEMM (NumPy here) and one kernel launch, forward then backward."""
    b = forward_buffers(x, weight, bias, h0, c0, step_mask)
    steps, batch, features = x.shape
    hidden = h0.shape[1]
    dtype = x.dtype.name
    run = kernels("stepwise", dtype)
    mask = NULL if b.step_mask is None else b.step_mask
    w_hidden = b.weight[features:]
    blocks = ((batch * hidden + 255) // 256,)
    for t in range(steps):
        b.gates[t] += b.hidden_states[t] @ w_hidden
        run.launch(cuda_sources.kernel_name("lstm_forward_step", dtype), blocks, (256,),
                   (b.gates, b.bias, b.cells, b.hidden_states, b.tanh_c, b.y, mask, np.int32(t), np.int32(batch),
                    np.int32(hidden)), seed=seed + t)
    dh, dc, dz = backward_state(dh_last, dc_last, b)
    dy = guarded(dy)
    for t in reversed(range(steps)):
        run.launch(cuda_sources.kernel_name("lstm_backward_step", dtype), blocks, (256,),
                   (dy, dh, dc, b.gates, b.cells, b.tanh_c, mask, dz, np.int32(t), np.int32(batch), np.int32(hidden)),
                   seed=seed + t)
        through = dz[t] @ w_hidden.T
        dh[...] = through + dh if b.step_mask is not None else through
    return _results(b, dh, dc, dz)


def _results(b: Buffers, dh, dc, dz) -> dict[str, np.ndarray]:
    dx, dweight, dbias = parameter_gradients(b, dz)
    return {"y": b.y, "h": b.hidden_states[-1], "c": b.cells[-1], "dx": dx, "dh0": dh, "dc0": dc,
            "dweight": dweight, "dbias": dbias}
