"""The CuPy layer paths with NumPy arrays, their CUDA kernels run by the CPU emulator (``tests/cuda_emulator.py``).

Each function mirrors its CuPy wrapper in :mod:`lstmx.kernels` step for step: the same buffers, the same GEMMs
(here NumPy's), the same kernel arguments in the same order, so a kernel's indexing, barriers and races are
tested on a machine without a GPU. The wrappers themselves run only on a GPU (the CuPy suite).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from lstmx.kernels import cuda_sources, tiling

from .cuda_emulator import EmulatedKernels, compile_kernels, guarded

NULL = np.uint64(0)
PATHS = ("stepwise", "persistent", "tiled")  # the functions below, one per CuPy path


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


def persistent(x, weight, bias, h0, c0, dy, dh_last, dc_last, step_mask=None, seed=0, rows=4) -> dict[str, np.ndarray]:
    """``cupy_persistent``: one launch per direction, grid (ceil(H / 32), ceil(B / rows)) of (32, rows)."""
    b = forward_buffers(x, weight, bias, h0, c0, step_mask)
    steps, batch, features = x.shape
    hidden = h0.shape[1]
    dtype = x.dtype.name
    run = kernels("persistent", dtype)
    mask = NULL if b.step_mask is None else b.step_mask
    grid = ((hidden + 31) // 32, (batch + rows - 1) // rows)
    w_hidden = guarded(b.weight[features:])
    shape_args = (np.int32(steps), np.int32(batch), np.int32(hidden))
    for kernel, args in [
        ("lstm_forward_persistent", (b.gates, w_hidden, b.bias, b.cells, b.hidden_states, b.tanh_c, b.y, mask)),
    ]:
        run.launch(cuda_sources.kernel_name(kernel, dtype), grid, (32, rows), (*args, *shape_args),
                   shared_mem=cuda_sources.persistent_shared_bytes(kernel, hidden, rows, x.itemsize), seed=seed)
    dh, dc, dz = backward_state(dh_last, dc_last, b)
    kernel = "lstm_backward_persistent"
    run.launch(cuda_sources.kernel_name(kernel, dtype), grid, (32, rows),
               (guarded(dy), w_hidden, b.gates, b.cells, b.tanh_c, mask, dz, dh, dc, *shape_args),
               shared_mem=cuda_sources.persistent_shared_bytes(kernel, hidden, rows, x.itemsize), seed=seed)
    return _results(b, dh, dc, dz)


SMALL_TILE = tiling.TileShape(units=4, rows=8, splits=4, forward_chunk=16, backward_chunk=32)


def tiled(x, weight, bias, h0, c0, dy, dh_last, dc_last, step_mask=None, seed=0,
          shape: tiling.TileShape = SMALL_TILE) -> dict[str, np.ndarray]:
    """``cupy_tiled``: one launch per direction on the grid and blocks of ``shape``; the chunk is the last
    argument. The default shape is small, so the tests' sizes take several blocks and several chunks."""
    b = forward_buffers(x, weight, bias, h0, c0, step_mask)
    steps, batch, features = x.shape
    hidden = h0.shape[1]
    dtype = x.dtype.name
    run = kernels("tiled", dtype)
    mask = NULL if b.step_mask is None else b.step_mask
    w_hidden = guarded(b.weight[features:])
    shape_args = (np.int32(steps), np.int32(batch), np.int32(hidden))
    grid, block = shape.grid(batch, hidden), shape.block()

    def launch(kernel: str, args: tuple, chunk: int) -> None:
        run.launch(cuda_sources.kernel_name(kernel, dtype), grid, block, (*args, *shape_args, np.int32(chunk)),
                   shared_mem=tiling.shared_bytes(kernel, shape, hidden, x.itemsize), seed=seed)

    launch("lstm_forward_tiled", (b.gates, w_hidden, b.bias, b.cells, b.hidden_states, b.tanh_c, b.y, mask),
           shape.forward_chunk)
    dh, dc, dz = backward_state(dh_last, dc_last, b)
    launch("lstm_backward_tiled", (guarded(dy), w_hidden, b.gates, b.cells, b.tanh_c, mask, dz, dh, dc),
           shape.backward_chunk)
    return _results(b, dh, dc, dz)


# --- the optimizer updates (cupy_optim) ------------------------------------------------------------------------

def _launch_update(kernel: str, dtype: np.dtype, n: int, args: tuple, seed: int) -> None:
    if n > 0:
        blocks = min(4, (n + 31) // 32)  # few blocks of 32 threads: the grid-stride loop runs several rounds
        kernels("optim", dtype.name).launch(cuda_sources.kernel_name(kernel, dtype.name), (blocks,), (32,),
                                            (*args, np.int64(n)), seed=seed)


def adam_update(optimizer, xp, param, grad, state, lr, seed=0):
    """As ``cupy_optim.adam_update``."""
    dtype = param.dtype
    real = dtype.type
    beta1, beta2 = optimizer.betas
    new_param, new_exp_avg, new_exp_avg_sq = (guarded(np.full(param.shape, np.nan, dtype)) for _ in range(3))
    step_size = lr / (1 - beta1**optimizer.step_count)
    _launch_update("adam_update", dtype, param.size,
                   (guarded(param), guarded(grad), guarded(state["exp_avg"]), guarded(state["exp_avg_sq"]),
                    new_param, new_exp_avg, new_exp_avg_sq, real(lr), real(beta1), real(beta2), real(optimizer.eps),
                    real(optimizer.weight_decay), np.int32(optimizer.decoupled), real(step_size),
                    real(np.sqrt(1 - beta2**optimizer.step_count))), seed)
    state["exp_avg"], state["exp_avg_sq"] = np.asarray(new_exp_avg), np.asarray(new_exp_avg_sq)
    return np.asarray(new_param)


def sgd_update(optimizer, xp, param, grad, state, lr, seed=0):
    """As ``cupy_optim.sgd_update``."""
    dtype = param.dtype
    real = dtype.type
    new_param = guarded(np.full(param.shape, np.nan, dtype))
    buffer, new_buffer = NULL, NULL
    if optimizer.momentum:
        buffer, new_buffer = guarded(state["momentum"]), guarded(np.full(param.shape, np.nan, dtype))
    _launch_update("sgd_update", dtype, param.size,
                   (guarded(param), guarded(grad), buffer, new_param, new_buffer, real(lr), real(optimizer.momentum),
                    real(optimizer.weight_decay), np.int32(optimizer.nesterov), np.int32(optimizer.step_count == 1)),
                   seed)
    if optimizer.momentum:
        state["momentum"] = np.asarray(new_buffer)
    return np.asarray(new_param)


UPDATES = {"SGD": sgd_update, "Adam": adam_update, "AdamW": adam_update}


# --- the loss (cupy_loss) ----------------------------------------------------------------------------------------

def cross_entropy_and_gradient(logits, targets, ignore_index=-100, threads=8, blocks=3, seed=0):
    """As ``cupy_loss.cross_entropy_and_gradient``, with small blocks (the reduction and the grid-stride loop
    run several rounds)."""
    rows, classes = logits.shape
    dtype = logits.dtype
    count = guarded(np.maximum(np.sum(targets != ignore_index), 1).astype(dtype))
    row_loss = guarded(np.full(rows, np.nan, dtype))
    dlogits = guarded(np.full((rows, classes), np.nan, dtype))
    if rows > 0:
        kernels("loss", dtype.name).launch(
            cuda_sources.kernel_name("softmax_cross_entropy", dtype.name), (min(rows, blocks),), (threads,),
            (guarded(logits), guarded(targets, np.int64), count, row_loss, dlogits, np.int32(rows), np.int32(classes),
             np.int64(ignore_index)), shared_mem=threads * dtype.itemsize, seed=seed)
    return np.sum(row_loss) / count, np.asarray(dlogits)
