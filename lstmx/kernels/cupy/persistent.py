"""CuPy persistent path for one LSTM layer: one cooperative kernel launch per direction for all time steps.

Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward`` and tested against them. The
stepwise CuPy path (:mod:`lstmx.kernels.cupy.stepwise`) pays two calls from Python per time step; here the
whole recurrence is one launch (:data:`lstmx.kernels.cupy.cuda_sources.PERSISTENT_KERNELS`): every thread owns one
(batch row, hidden unit), computes its unit's four recurrent dot products itself and keeps its state in
registers, and a grid-wide barrier separates the steps. The input projection before and dW, db, dx after
are single GEMMs, shared with the stepwise path.

It applies only where the block's slice of W_h fits in shared memory, every block of the grid is resident at
once (a cooperative launch requires it) and the per-thread dot products stay cheap: :func:`refuses_size` says
which sizes, and the registry refuses the others (asked for by name) or gives them to another path ("auto").
CuPy would silently shrink a cooperative grid that is too large (and the kernel would compute garbage), so the
grid is checked against the device's co-resident limit before every launch. The cell options and the projected
cell (LSTMP) run kernels of their own beside the plain ones (:mod:`.one_launch_variants`,
:mod:`.one_launch_projected`).
"""

from __future__ import annotations

import functools
from typing import Any

import cupy
import numpy as np
from cupy_backends.cuda.api import driver

from . import cuda_sources
from .shell import device_attribute, one_launch_layers

ROWS = 4  # batch rows per block: blocks are (32 units, ROWS rows) = 128 threads (4 beat 2, 8 and 16 on an H100)
MAX_HIDDEN = 256  # above this the stepwise path (cuBLAS per step) is faster: the dot products dominate


@functools.cache
def _kernel(kernel: str, dtype: str) -> cupy.RawKernel:
    compiled = cupy.RawKernel(cuda_sources.source("persistent", dtype), cuda_sources.kernel_name(kernel, dtype),
                              options=("--std=c++17",), enable_cooperative_groups=True)
    compiled.max_dynamic_shared_size_bytes = _shared_limit()  # opt in to all of it; each launch asks for its own
    return compiled


def _shared_limit() -> int:
    return device_attribute("MaxSharedMemoryPerBlockOptin")


def _grid(batch: int, hidden: int) -> tuple[int, int]:
    return (hidden + 31) // 32, (batch + ROWS - 1) // ROWS


def _shared_bytes(kernel: str, hidden: int, dtype: str, proj: int = 0) -> int:
    return cuda_sources.persistent_shared_bytes(kernel, hidden, ROWS, np.dtype(dtype).itemsize, proj)


@functools.cache
def _resident_blocks(dtype: str, hidden: int, device: int, kernels: tuple[str, ...], proj: int = 0) -> int:
    """How many blocks of either of ``kernels`` (a forward and its backward) for this hidden size (and
    projection) fit on the device at once."""
    sms = device_attribute("MultiProcessorCount", device)
    return sms * min(driver.occupancyMaxActiveBlocksPerMultiprocessor(
        _kernel(kernel, dtype).kernel.ptr, 32 * ROWS, _shared_bytes(kernel, hidden, dtype, proj)) for kernel in kernels)


def _kernels_of(kernel: str | None, options: tuple[str, ...] = (), cell: str = "lstm") -> tuple[str, ...]:
    """The forward and backward kernels a layer runs: those of ``kernel``'s kind, else of the cell and options."""
    for kernels in (cuda_sources.PERSISTENT_PROJECTED_KERNELS, cuda_sources.PERSISTENT_VARIANT_KERNELS):
        if kernel in kernels:
            return kernels
    if kernel is None and cell == "lstmp":
        return cuda_sources.PERSISTENT_PROJECTED_KERNELS
    if kernel is None and options:
        return cuda_sources.PERSISTENT_VARIANT_KERNELS
    return cuda_sources.PERSISTENT_KERNELS


def refuses_size(batch: int, hidden: int, dtype: Any, options: tuple[str, ...] = (), directions: int = 1,
                 cell: str = "lstm") -> str | None:
    """None when a layer of this batch and hidden size (with the cell ``options`` named; ``directions`` 2: both
    directions of a bidirectional layer in one launch; ``cell`` "lstmp": the projected cell, sized for the
    largest projection, P = H) runs here, else why not (for the registry)."""
    return _refuses(batch, hidden, np.dtype(dtype).name, _kernels_of(None, options, cell), directions)


def _refuses(batch: int, hidden: int, dtype: str, kernels: tuple[str, ...], directions: int,
             proj: int = 0) -> str | None:
    if hidden > MAX_HIDDEN:
        return f"runs hidden sizes up to {MAX_HIDDEN}, not {hidden}"
    needed = max(_shared_bytes(kernel, hidden, dtype, proj) for kernel in kernels)
    if needed > _shared_limit():
        return f"needs {needed} bytes of shared memory per block for hidden {hidden} in {dtype}; a block has {_shared_limit()}"
    x_blocks, y_blocks = _grid(batch, hidden)
    resident = _resident_blocks(dtype, hidden, cupy.cuda.Device().id, kernels, proj)
    if x_blocks * y_blocks * directions > resident:
        return (f"needs {x_blocks * y_blocks * directions} co-resident blocks for batch {batch} × hidden {hidden}"
                f"{' in both directions' if directions == 2 else ''}; this GPU holds {resident}")
    return None


def _launch(kernel: str, dtype: str, batch: int, hidden: int, args: tuple, directions: int = 1,
            proj: int = 0) -> None:
    reason = _refuses(batch, hidden, dtype, _kernels_of(kernel), directions, proj)
    if reason is not None:
        raise ValueError(f"the persistent CuPy path {reason}; use the stepwise path (impl='cupy-stepwise')")
    _kernel(kernel, dtype)((*_grid(batch, hidden), directions), (32, ROWS), args,
                           shared_mem=_shared_bytes(kernel, hidden, dtype, proj))


lstm_layer_forward, lstm_layer_backward, lstm_layer_pair_forward, lstm_layer_pair_backward = one_launch_layers(
    _launch, "lstm_forward_persistent", "lstm_backward_persistent")


# the layers with cell options (peepholes, input_forget, cell_clip, zoneout), in the module both one-launch paths
# share, exposed here, where the registry's "cupy-persistent" entry points
from .one_launch_variants import variant_layers  # noqa: E402

lstm_variant_layer_forward, lstm_variant_layer_backward = variant_layers("persistent", lambda: _launch)

# the projected cell (proj_size), likewise in its own module
from .one_launch_projected import projected_layers  # noqa: E402

lstmp_layer_forward, lstmp_layer_backward = projected_layers("persistent", lambda: _launch)
