"""The register-tiled CuPy path (:mod:`lstmx.kernels.cupy.tiled`) with its recurrent products on tensor cores:
TF32 ``mma.sync`` warp tiles (10-bit mantissa operands, float32 accumulation), the gates, cell and state in
float32. Registered as ``cupy-tiled-tf32``, which runs float32 layers of a model whose ``precision`` is "tf32"
(the registry refuses it under "float32"); the input projection and the weight gradients are the shell's GEMMs,
in TF32 too under that precision (cuBLAS's math mode, :mod:`lstmx.dispatch.precision`).

Same signatures, buffers and cache as the tiled path; only the kernels differ (``cuda/tiled.cu`` compiled with
``LSTMX_TF32``), and their tile shapes, which must also cover whole 16 × 8 warp tiles
(:data:`lstmx.kernels.cupy.tiling.MMA_MULTIPLES`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import cuda_sources, tiled
from .one_launch_projected import projected_layers
from .one_launch_variants import variant_layers
from .shell import one_launch_layers

_launch = tiled.launcher("tf32")


def refuses_size(batch: int, hidden: int, dtype: Any, options: tuple[str, ...] = (), directions: int = 1,
                 cell: str = "lstm") -> str | None:
    """None when a float32 layer of this batch and hidden size (with the cell ``options`` named; ``directions``
    2: both directions in one launch; ``cell`` "lstmp": the projected cell, sized for P = H) runs here, else why
    not (for the registry)."""
    if np.dtype(dtype) != np.float32:
        return f"runs float32 layers (TF32 products), not {np.dtype(dtype).name}"
    if cell == "lstmp":
        return tiled.refuses_projected(batch, hidden, hidden, "tf32", directions)
    kernels = cuda_sources.TILED_VARIANT_KERNELS if options else cuda_sources.TILED_KERNELS
    return tiled.refuses_variant(batch, hidden, "tf32", kernels, directions)


lstm_layer_forward, lstm_layer_backward, lstm_layer_pair_forward, lstm_layer_pair_backward = one_launch_layers(
    _launch, "lstm_forward_tiled", "lstm_backward_tiled")


# the layers with the pointwise cell options, on the TF32 kernels
lstm_variant_layer_forward, lstm_variant_layer_backward = variant_layers("tiled", lambda: _launch)

# the projected cell (LSTMP), on the TF32 kernels
lstmp_layer_forward, lstmp_layer_backward = projected_layers("tiled", lambda: _launch)
