"""The register-tiled CuPy path (:mod:`lstmx.kernels.cupy.tiled`) under a 16-bit precision, ``"bf16"`` or
``"fp16"``: its recurrent products on tensor cores with operands in that format and float32 sums, the gates, cell
and state in float32, as the generic path computes those precisions (:mod:`lstmx.dispatch.precision`). Each
precision is a registered path of its own, ``cupy-tiled-bf16`` (:mod:`lstmx.kernels.cupy.tiled_bf16`) and
``cupy-tiled-fp16`` (:mod:`lstmx.kernels.cupy.tiled_fp16`), built here: float32 layers of the plain LSTM cell,
one direction or both in one launch.

The kernels are the TF32 variant's (``cuda/tiled.cu`` with ``LSTMX_MMA``), compiled with ``LSTMX_OPERANDS`` set
to the format: every operand is rounded to it as it enters shared memory, and bfloat16 and half-precision values
are exact in TF32 (8 and 11 of its 11 significant bits, within its exponent range), so the TF32 ``mma.sync``
multiplies them exactly. That is the 16-bit numerics at TF32's speed; the 16-bit instructions (twice the rate,
W_h in half the shared memory) are the step after. The input projection and the weight gradients are the
shell's GEMMs on operands rounded alike (:func:`lstmx.kernels.cupy.shell.one_launch_layers`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from . import cuda_sources, tiled
from .shell import one_launch_layers


class RoundedPath(NamedTuple):
    """A 16-bit path's module functions (the registry's ``refuses_size`` and the plain and paired layers)."""

    refuses_size: Callable[..., str | None]
    lstm_layer_forward: Callable[..., Any]
    lstm_layer_backward: Callable[..., Any]
    lstm_layer_pair_forward: Callable[..., Any]
    lstm_layer_pair_backward: Callable[..., Any]


def rounded_path(variant: str) -> RoundedPath:
    """The path whose kernels are the tiled ``variant`` ("bf16" or "fp16": cuda_sources.MMA_VARIANTS)."""
    launch = tiled.launcher(variant)

    def refuses_size(batch: int, hidden: int, dtype: Any, options: tuple[str, ...] = (), directions: int = 1,
                     cell: str = "lstm") -> str | None:
        """None when a float32 layer of the plain cell of this batch and hidden size (``directions`` 2: both
        directions in one launch) runs here, else why not (for the registry)."""
        if np.dtype(dtype) != np.float32:
            return f"runs float32 layers ({variant} products), not {np.dtype(dtype).name}"
        return tiled.refuses_variant(batch, hidden, variant, cuda_sources.TILED_KERNELS, directions)

    return RoundedPath(refuses_size, *one_launch_layers(launch, "lstm_forward_tiled", "lstm_backward_tiled"))
