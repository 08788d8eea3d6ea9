"""Precision of the float32 matrix products: full float32 (the default), TensorFloat-32 on CuPy, or bfloat16 or
half-precision operands.

``precision="tf32"`` lets cuBLAS run float32 GEMMs on tensor cores with 10-bit mantissa inputs and float32
accumulation (PyTorch's ``allow_tf32``): the input projection, the recurrent GEMMs of the stepwise and graph
paths, the weight gradients, the output layer. Under it the registry also offers ``impl="cupy-tiled-tf32"``,
the tiled kernels with their recurrent products on tensor cores (``mma.sync`` in TF32); the recurrent products of
``cupy-tiled`` and ``cupy-persistent`` stay float32. Expect relative errors around 1e-3 in the products (and so in
the gradients). A model's public methods (forward, backward, loss) run under their model's precision
(:func:`matmul_precision`, which sets cuBLAS's math mode for the block), and its layer choice is made for it
(:func:`lstmx.dispatch.registry.choose_layer_impl`); no kernel reads the precision itself.

``precision="bf16"`` is mixed precision: both operands of every matrix product of the LSTM layers and the output
layer, forward and backward (the gradients flowing into a product as well), are rounded to bfloat16 and the
products summed in float32, as tensor cores multiply bfloat16 with float32 accumulation; the gates, the cell
state, the loss, the optimizer and its master weights stay float32. bfloat16 keeps float32's exponent range, so
no loss scaling is needed. Any backend, float32 only: the model's backend carries it
(:attr:`lstmx.backend.Backend.operands`) to the generic layers, which round in
:meth:`lstmx.backend.Backend.matmul`, and to the paths that declare the precision (``cupy-tiled-bf16``, whose
kernels round alike); the registry refuses it for every other path, naming why. The operands are rounded, not
stored, in bfloat16: the numerics of bfloat16 training, not its memory, and on the generic path not its speed.

``precision="fp16"`` is the same with IEEE half precision operands: 11 significant bits (bfloat16 has 8) but
only 2**-24 to 65504, so the gradients flowing into the backward's products, ~1e-6 and smaller, would fall
below it. A trainer under "fp16" therefore scales the loss (:mod:`lstmx.training.loss_scale`, PyTorch's
``GradScaler`` defaults): the gradient leaves the loss multiplied by the scale, the parameter gradients are
divided by it before clipping and the update, and a step whose gradients overflowed is not applied (the scale
halves); after 2000 steps without one the scale doubles. All on the device: no host sync.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..backend import Backend, dtype_name, is_cupy

SIXTEEN_BIT_PRECISIONS = ("bf16", "fp16")  # mixed precision: the products' operands rounded to that format
FLOAT32_OPERAND_PRECISIONS = ("float32", "tf32")  # those whose products take float32 operands (every path runs them)
PRECISIONS = FLOAT32_OPERAND_PRECISIONS + SIXTEEN_BIT_PRECISIONS


def operand_format(precision: str) -> str:
    """The operand format (:attr:`lstmx.backend.Backend.operands`) the generic path's products take under a
    checked ``precision``: "bf16" and "fp16" round them, the others leave them float32 (TF32 is cuBLAS's own
    mode)."""
    return precision if precision in SIXTEEN_BIT_PRECISIONS else "float32"


def check_precision(precision: Any, backend: Backend, dtype: Any) -> str:
    """``precision`` if this backend and dtype can run it, else a one-line ValueError naming the argument."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "tf32" and not (is_cupy(backend) and dtype_name(dtype) == "float32"):
        raise ValueError(f"precision='tf32' needs backend='cupy' and dtype float32 (TensorFloat-32 is a CUDA "
                         f"tensor-core mode); got backend {backend.name!r}, dtype {dtype_name(dtype)}")
    if precision in SIXTEEN_BIT_PRECISIONS and dtype_name(dtype) != "float32":
        raise ValueError(f"precision={precision!r} needs dtype float32 (16-bit operands with float32 "
                         f"accumulation); got dtype {dtype_name(dtype)}")
    return precision


@contextlib.contextmanager
def matmul_precision(backend: Backend, precision: str) -> Iterator[None]:
    """Within the block, float32 GEMMs on ``backend`` run at ``precision`` (checked by :func:`check_precision`
    at the door): on CuPy under "tf32", cuBLAS's TF32 math mode on the current device's handle."""
    if precision == "tf32" and is_cupy(backend):
        from ..kernels.cupy.precision import tf32_gemms

        with tf32_gemms():
            yield
    else:
        yield
