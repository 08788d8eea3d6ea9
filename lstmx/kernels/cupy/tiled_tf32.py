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

from ...backend import Backend
from . import cuda_sources, tiled
from .one_launch_variants import variant_layers
from .shell import (CupyLayerCache, one_launch_backward, one_launch_forward, one_launch_pair_backward,
                    one_launch_pair_forward)

_launch = tiled.launcher("tf32")


def refuses_size(batch: int, hidden: int, dtype: Any, options: tuple[str, ...] = (), directions: int = 1) -> str | None:
    """None when a float32 layer of this batch and hidden size (with the cell ``options`` named; ``directions``
    2: both directions in one launch) runs here, else why not (for the registry)."""
    if np.dtype(dtype) != np.float32:
        return f"runs float32 layers (TF32 products), not {np.dtype(dtype).name}"
    kernels = cuda_sources.TILED_VARIANT_KERNELS if options else cuda_sources.TILED_KERNELS
    return tiled.refuses_variant(batch, hidden, "tf32", kernels, directions)


def lstm_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any, step_mask: Any = None
) -> tuple[Any, tuple[Any, Any], CupyLayerCache]:
    return one_launch_forward(_launch, "lstm_forward_tiled", x, weight, bias, h0, c0, step_mask)


def lstm_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, cache: CupyLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any]:
    return one_launch_backward(_launch, "lstm_backward_tiled", dy, dh_last, dc_last, weight, cache)


def lstm_layer_pair_forward(
    backend: Backend, xs: tuple[Any, Any], weights: tuple[Any, Any], biases: tuple[Any, Any], h0s: tuple[Any, Any],
    c0s: tuple[Any, Any], step_mask: Any = None
) -> tuple[tuple[Any, Any], tuple[tuple[Any, Any], tuple[Any, Any]], tuple[CupyLayerCache, CupyLayerCache]]:
    return one_launch_pair_forward(_launch, "lstm_forward_tiled", xs, weights, biases, h0s, c0s, step_mask)


def lstm_layer_pair_backward(
    backend: Backend, dys: tuple[Any, Any], dh_lasts: tuple[Any, Any], dc_lasts: tuple[Any, Any],
    weights: tuple[Any, Any], caches: tuple[CupyLayerCache, CupyLayerCache]
) -> tuple[tuple[Any, Any], tuple[tuple[Any, Any], tuple[Any, Any]], tuple[Any, Any], tuple[Any, Any]]:
    return one_launch_pair_backward(_launch, "lstm_backward_tiled", dys, dh_lasts, dc_lasts, weights, caches)


# the layers with the pointwise cell options, on the TF32 kernels
lstm_variant_layer_forward, lstm_variant_layer_backward = variant_layers("tiled", lambda: _launch)
