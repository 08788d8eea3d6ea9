"""The register-tiled CuPy path (:mod:`lstmx.kernels.cupy.tiled`) under ``precision="bf16"``: its recurrent
products on tensor cores with bfloat16 operands and float32 sums, the gates, cell and state in float32, as the
generic path computes that precision (:mod:`lstmx.dispatch.precision`). Registered as ``cupy-tiled-bf16``, which
runs float32 layers of the plain LSTM cell of a model whose precision is "bf16", one direction or both in one
launch.

The kernels are the TF32 variant's (``cuda/tiled.cu`` with ``LSTMX_MMA``), compiled with ``LSTMX_BF16``: every
operand is rounded to bfloat16 as it enters shared memory, and a bfloat16 value is exact in TF32 (8 significant
bits of its 11, one exponent range), so the TF32 ``mma.sync`` multiplies bfloat16 operands exactly. That is
bfloat16's numerics at TF32's speed; the bfloat16 instruction (twice the rate, W_h in half the shared memory) is
the step after. The input projection and the weight gradients are the shell's GEMMs on operands rounded alike
(:func:`lstmx.kernels.cupy.shell.one_launch_layers`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import cuda_sources, tiled
from .shell import one_launch_layers

_launch = tiled.launcher("bf16")


def refuses_size(batch: int, hidden: int, dtype: Any, options: tuple[str, ...] = (), directions: int = 1,
                 cell: str = "lstm") -> str | None:
    """None when a float32 layer of the plain cell of this batch and hidden size (``directions`` 2: both
    directions in one launch) runs here, else why not (for the registry)."""
    if np.dtype(dtype) != np.float32:
        return f"runs float32 layers (bfloat16 products), not {np.dtype(dtype).name}"
    return tiled.refuses_variant(batch, hidden, "bf16", cuda_sources.TILED_KERNELS, directions)


lstm_layer_forward, lstm_layer_backward, lstm_layer_pair_forward, lstm_layer_pair_backward = one_launch_layers(
    _launch, "lstm_forward_tiled", "lstm_backward_tiled")
