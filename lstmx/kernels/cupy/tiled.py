"""CuPy register-tiled persistent path for one LSTM layer: one cooperative launch per direction for all steps,
for hidden sizes whose W_h no longer fits one block per 32 units (:mod:`lstmx.kernels.cupy.persistent`).

Same signatures as the generic ``lstm_layer_forward`` / ``lstm_layer_backward``, and the same buffers, input
projection and weight-gradient GEMMs as the other CuPy paths. The kernels (``cuda/tiled.cu``,
:mod:`lstmx.kernels.cupy.cuda_sources`) split W_h over a 2-D grid (units × batch rows) and tile the per-step product
in registers. Their TF32 variant, whose products are tensor-core MMAs, is a path of its own
(:mod:`lstmx.kernels.cupy.tiled_tf32`, ``impl="cupy-tiled-tf32"``): which kernels run is the registry's choice,
named in the cache, never one this module makes. The tile shape is chosen per (batch, hidden, variant) by
:func:`lstmx.kernels.cupy.tiling.choose_tile_shape` or given with :func:`use_tile_shape` (the tuner does).
Every launch checks the grid against the device's co-resident limit first: CuPy would silently shrink a
cooperative grid, and the kernel would compute garbage.

"auto" runs this path up to the hidden size ``registry.CUPY_TILED_AUTO_MAX_HIDDEN`` gives for the dtype; its
kernels are tested on the GPU against the generic path and on the CPU by the emulator
(``tests/test_cuda_emulated.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Iterator

import cupy
import numpy as np
from cupy_backends.cuda.api import driver

from . import cuda_sources, tiling
from .shell import Launch, device_attribute, one_launch_layers

_chosen_shape: contextvars.ContextVar[tiling.TileShape | None] = contextvars.ContextVar("lstmx_tile_shape",
                                                                                         default=None)


@contextlib.contextmanager
def use_tile_shape(shape: tiling.TileShape) -> Iterator[None]:
    """Within the block, launches use ``shape`` instead of the chosen one (for tuning)."""
    reason = tiling.refuses_shape(shape)
    if reason is not None:
        raise ValueError(f"tile shape: {reason}")
    token = _chosen_shape.set(shape)
    try:
        yield
    finally:
        _chosen_shape.reset(token)


@functools.cache
def _kernel(kernel: str, variant: str) -> cupy.RawKernel:
    compiled = cupy.RawKernel(cuda_sources.source("tiled", variant), cuda_sources.kernel_name(kernel, variant),
                              options=("--std=c++17",), enable_cooperative_groups=True)
    compiled.max_dynamic_shared_size_bytes = device_attribute("MaxSharedMemoryPerBlockOptin")
    return compiled


@functools.cache
def _resident_blocks(kernel: str, variant: str, threads: int, shared: int, device: int) -> int:
    sms = device_attribute("MultiProcessorCount", device)
    return sms * driver.occupancyMaxActiveBlocksPerMultiprocessor(_kernel(kernel, variant).kernel.ptr, threads, shared)


def _shape_for(batch: int, hidden: int, variant: str) -> tiling.TileShape | None:
    chosen = _chosen_shape.get()
    if chosen is not None:
        return chosen
    return tiling.choose_tile_shape(batch, hidden, 8 if variant == "float64" else 4,
                                    device_attribute("MaxSharedMemoryPerBlockOptin"),
                                    device_attribute("MultiProcessorCount"), variant in cuda_sources.MMA_VARIANTS)


def refuses_size(batch: int, hidden: int, dtype: Any, options: tuple[str, ...] = (), directions: int = 1,
                 cell: str = "lstm") -> str | None:
    """None when a layer of this batch and hidden size (with the cell ``options`` named; ``directions`` 2: both
    directions of a bidirectional layer in one launch; ``cell`` "lstmp": the projected cell, sized for the
    largest projection, P = H) runs here, else why not (for the registry)."""
    if cell == "lstmp":
        return refuses_projected(batch, hidden, hidden, np.dtype(dtype).name, directions)
    kernels = cuda_sources.TILED_VARIANT_KERNELS if options else cuda_sources.TILED_KERNELS
    return refuses_variant(batch, hidden, np.dtype(dtype).name, kernels, directions)


def refuses_projected(batch: int, hidden: int, proj: int, variant: str, directions: int = 1) -> str | None:
    """As :func:`refuses_size`, for the projected cell's kernels with projection ``proj`` in ``variant``
    ("float32", "float64", "tf32" or "bf16"): the plain kernels' tile shape, with a chunk of its own (the block also holds
    its slice of W_hr)."""
    if directions != 1:
        return "runs each direction of a projected layer in a launch of its own"
    shape = _shape_for(batch, hidden, variant)
    if shape is None:
        return f"has no tile shape for batch {batch} × hidden {hidden} in {variant} that fits this GPU"
    reason = tiling.refuses_shape(shape, mma=variant in cuda_sources.MMA_VARIANTS)
    if reason is not None:
        return f"cannot run tile shape {shape}: {reason}"
    itemsize = 8 if variant == "float64" else 4
    limit = device_attribute("MaxSharedMemoryPerBlockOptin")
    blocks = int(np.prod(shape.grid(batch, hidden)))
    for kernel in cuda_sources.TILED_PROJECTED_KERNELS:
        chunk = tiling.projected_chunk(kernel, shape, hidden, proj, itemsize, limit)
        if chunk == 0:
            return (f"cannot stage rows beside the projected cell's weights with {shape} for hidden {hidden}, "
                    f"projection {proj} in {variant}: a block has {limit} bytes of shared memory")
        shared = tiling.projected_shared_bytes(kernel, shape, hidden, proj, chunk, itemsize)
        resident = _resident_blocks(kernel, variant, shape.threads(), shared, cupy.cuda.Device().id)
        if blocks > resident:
            return f"needs {blocks} co-resident blocks with {shape} for the projected cell; this GPU holds {resident}"
    return None


def refuses_variant(batch: int, hidden: int, variant: str, kernels: tuple[str, ...] = cuda_sources.TILED_KERNELS,
                    directions: int = 1) -> str | None:
    """As :func:`refuses_size`, for ``kernels`` (a forward and its backward) of ``variant`` ("float32", "float64",
    "tf32" or "bf16")."""
    shape = _shape_for(batch, hidden, variant)
    if shape is None:
        return f"has no tile shape for batch {batch} × hidden {hidden} in {variant} that fits this GPU"
    reason = tiling.refuses_shape(shape, mma=variant in cuda_sources.MMA_VARIANTS)
    if reason is not None:
        return f"cannot run tile shape {shape}: {reason}"
    itemsize = 8 if variant == "float64" else 4
    limit = device_attribute("MaxSharedMemoryPerBlockOptin")
    blocks = int(np.prod(shape.grid(batch, hidden))) * directions
    for kernel in kernels:
        shared = tiling.shared_bytes(cuda_sources.TILED_LAYOUT[kernel], shape, hidden, itemsize)
        if shared > limit:
            return f"needs {shared} bytes of shared memory per block with {shape}; a block has {limit}"
        resident = _resident_blocks(kernel, variant, shape.threads(), shared, cupy.cuda.Device().id)
        if blocks > resident:
            return f"needs {blocks} co-resident blocks with {shape}; this GPU holds {resident}"
    return None


def launcher(variant: str | None) -> Launch:
    """The launch of the kernels of ``variant`` (one of cuda_sources.MMA_VARIANTS; None: those of the layer's dtype),
    its size checked first."""
    def launch(kernel: str, dtype: str, batch: int, hidden: int, args: tuple, directions: int = 1,
               proj: int = 0) -> None:
        chosen = dtype if variant is None else variant
        if kernel in cuda_sources.TILED_PROJECTED_KERNELS:
            _launch_projected(kernel, chosen, batch, hidden, proj, args)
            return
        pair = cuda_sources.TILED_VARIANT_KERNELS if kernel in cuda_sources.TILED_VARIANT_KERNELS \
            else cuda_sources.TILED_KERNELS
        reason = refuses_variant(batch, hidden, chosen, pair, directions)
        if reason is not None:
            raise ValueError(f"the tiled CuPy path {reason}; use the stepwise path (impl='cupy-stepwise')")
        shape = _shape_for(batch, hidden, chosen)
        layout = cuda_sources.TILED_LAYOUT[kernel]
        chunk = shape.forward_chunk if layout == "lstm_forward_tiled" else shape.backward_chunk
        _kernel(kernel, chosen)((*shape.grid(batch, hidden), directions), shape.block(), (*args, np.int32(chunk)),
                                shared_mem=tiling.shared_bytes(layout, shape, hidden, np.dtype(dtype).itemsize))

    return launch


def _launch_projected(kernel: str, variant: str, batch: int, hidden: int, proj: int, args: tuple) -> None:
    reason = refuses_projected(batch, hidden, proj, variant)
    if reason is not None:
        raise ValueError(f"the tiled CuPy path {reason}; use the stepwise path (impl='cupy-stepwise')")
    shape = _shape_for(batch, hidden, variant)
    itemsize = 8 if variant == "float64" else 4
    limit = device_attribute("MaxSharedMemoryPerBlockOptin")
    chunk = tiling.projected_chunk(kernel, shape, hidden, proj, itemsize, limit)
    _kernel(kernel, variant)((*shape.grid(batch, hidden), 1), shape.block(), (*args, np.int32(chunk)),
                             shared_mem=tiling.projected_shared_bytes(kernel, shape, hidden, proj, chunk, itemsize))


_launch = launcher(None)


lstm_layer_forward, lstm_layer_backward, lstm_layer_pair_forward, lstm_layer_pair_backward = one_launch_layers(
    _launch, "lstm_forward_tiled", "lstm_backward_tiled")


# the layers with cell options (peepholes, input_forget, cell_clip, zoneout), in the module both one-launch paths
# share, exposed here, where the registry's "cupy-tiled" entry points
from .one_launch_variants import variant_layers  # noqa: E402

lstm_variant_layer_forward, lstm_variant_layer_backward = variant_layers("tiled", lambda: _launch)

# the projected cell (LSTMP), in the module both one-launch paths share
from .one_launch_projected import projected_layers  # noqa: E402

lstmp_layer_forward, lstmp_layer_backward = projected_layers("tiled", lambda: _launch)
