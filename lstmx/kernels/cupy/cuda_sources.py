"""CUDA C++ sources of the CuPy paths, one variant per dtype (and a TF32 variant of the tiled kernels).

The kernels live in ``lstmx/kernels/cupy/cuda/`` (``cell.cuh``, the LSTM cell the plain layer kernels share, and one
``.cu`` file per kind below), each a :class:`string.Template` that :func:`source` fills in for a variant: ``$real`` (float
or double), ``$tanh``, ``$sqrt``, ``$exp``, ``$log`` (its math functions), ``$suffix`` (the variant's name, the
end of every kernel's name), ``$max_threads`` (the tiled kernels' launch bound), ``$mma`` (1 in the tensor-core
variants) and ``$operands`` (what those round their operands to: 0 TF32, 1 bfloat16, 2 half precision). Plain
strings, no CuPy import: the offline test compiles every variant with NVRTC on a machine without a GPU (``tests/test_cuda_compile.py``), and g++ builds them for the CPU emulator that runs them in the tests
(``tests/cuda_emulator.h``). The CuPy modules of :mod:`lstmx.kernels` compile the same strings through CuPy.

Every kernel works on C-contiguous buffers laid out time-major; the four gate values of a unit are read from
the same row of the (B, 4H) gate block.

- ``stepwise.cu``: one step per launch; the step index is an argument, so the Python loop passes base pointers
  and never slices an array per step. The recurrent GEMM runs in cuBLAS between launches.
- ``persistent.cu``: one cooperative launch runs every step of a direction, with a grid-wide barrier between
  steps; each thread computes its unit's four recurrent dot products itself and keeps its cell state (and, in
  the backward, its dL/dh and dL/dc) in registers across steps. Values other blocks wrote during the launch
  are read with ``__ldcg`` (through L2, never a stale L1 line). One thread per (row b, unit j).
- ``tiled.cu``: persistent too, tiled for larger hidden sizes: a block owns a few units of a group of rows, its
  threads split the reduction, and the partial sums meet in shared memory. The product is register-tiled FMAs
  (each thread a 4 × 4 tile of rows × gates from vector loads), or in the MMA_VARIANTS warp-wide tensor-core
  MMAs (``mma.sync`` m16n8k8 in TF32, float32 sums; "bf16" and "fp16" round the operands to their format first).
  The tile shape is a launch argument (:mod:`lstmx.kernels.cupy.tiling`).
- ``optim.cu``: one optimizer step (Adam/AdamW, SGD, RMSprop) for up to 8 parameter tensors per launch, and clipping by
  the global norm in two launches for up to 8 tensors (:mod:`lstmx.kernels.cupy.optim`).
- ``loss.cu``: the softmax cross-entropy's per-row loss and its gradient, a block per row
  (:mod:`lstmx.kernels.cupy.loss`).
- ``generate.cu``: the token loop of generation, a block per sample: draw (greedy, or temperature and top-k
  against the host's uniforms), embedding, every layer, head, for a chunk of tokens per launch
  (:mod:`lstmx.kernels.cupy.generate`).
- ``variants.cu``: the stepwise path's steps with cell options (peepholes, ``input_forget``, ``cell_clip``,
  ``layer_norm``, zoneout, recurrent dropout) and of the projected cell (the h side of a step after and before the
  W_hr product), a block per batch row so the layer norms reduce in shared memory, and a row-wise layer norm
  (:mod:`lstmx.kernels.cupy.variants`).
"""

from __future__ import annotations

import functools
from importlib import resources
from string import Template

from . import tiling

# float32 and float64 (also the suffix of the kernels' names): the C type and its tanh, sqrt, exp and log.
DTYPES = {"float32": ("float", "tanhf", "sqrtf", "expf", "logf"), "float64": ("double", "tanh", "sqrt", "exp", "log")}
CELL_KINDS = ("stepwise", "persistent", "tiled", "generate")  # their files follow cell.cuh


@functools.cache
def _template(kind: str) -> Template:
    folder = resources.files(__package__) / "cuda"
    text = (folder / f"{kind}.cu").read_text(encoding="utf-8")
    if kind in CELL_KINDS:
        text = (folder / "cell.cuh").read_text(encoding="utf-8") + "\n" + text
    return Template(text)


def persistent_shared_bytes(kernel: str, hidden: int, rows: int, itemsize: int, proj: int = 0) -> int:
    """Dynamic shared memory of a persistent kernel: the block's W_h slice and its rows of h (forward) or dz
    (backward); for the projected cell's kernels also the block's slice of W_hr, with ``proj`` P (0: the largest
    projection a hidden size takes, P = H, where only H is known)."""
    if kernel in PERSISTENT_PROJECTED_KERNELS:
        proj = proj or hidden
        if kernel == PERSISTENT_PROJECTED_KERNELS[0]:
            return (128 * proj + 32 * hidden + rows * hidden) * itemsize
        return (128 * hidden + 32 * proj + rows * 4 * hidden) * itemsize
    staged = hidden if PERSISTENT_LAYOUT[kernel] == "lstm_forward_persistent" else 4 * hidden
    return (128 * hidden + rows * staged) * itemsize


STEPWISE_KERNELS = ("lstm_forward_step", "lstm_backward_step")
PERSISTENT_KERNELS = ("lstm_forward_persistent", "lstm_backward_persistent")
PERSISTENT_VARIANT_KERNELS = ("lstm_variant_forward_persistent", "lstm_variant_backward_persistent")
PERSISTENT_PROJECTED_KERNELS = ("lstmp_forward_persistent", "lstmp_backward_persistent")  # the LSTMP cell
PERSISTENT_LAYOUT = {**{kernel: kernel for kernel in PERSISTENT_KERNELS},
                     **dict(zip(PERSISTENT_VARIANT_KERNELS, PERSISTENT_KERNELS))}  # as TILED_LAYOUT
TILED_KERNELS = ("lstm_forward_tiled", "lstm_backward_tiled")
TILED_VARIANT_KERNELS = ("lstm_variant_forward_tiled", "lstm_variant_backward_tiled")  # with cell options
TILED_PROJECTED_KERNELS = ("lstmp_forward_tiled", "lstmp_backward_tiled")  # the LSTMP cell
# each tiled kernel's plain counterpart, whose shared-memory layout and chunk it shares (the projected kernels have
# layouts of their own: tiling.projected_shared_bytes)
TILED_LAYOUT = {**{kernel: kernel for kernel in TILED_KERNELS}, **dict(zip(TILED_VARIANT_KERNELS, TILED_KERNELS))}
OPTIM_KERNELS = ("adam_update", "sgd_update", "rmsprop_update", "global_norm", "scale_tensors")
LOSS_KERNELS = ("softmax_cross_entropy",)
GENERATE_KERNELS = ("lstm_generate",)
VARIANT_KERNELS = ("row_norm_forward", "row_norm_backward", "lstm_variant_forward_step", "lstm_variant_backward_step",
                   "lstm_projected_state_forward_step", "lstm_projected_state_backward_step")
SOURCES = {"stepwise": STEPWISE_KERNELS,
           "persistent": PERSISTENT_KERNELS + PERSISTENT_VARIANT_KERNELS + PERSISTENT_PROJECTED_KERNELS,
           "tiled": TILED_KERNELS + TILED_VARIANT_KERNELS + TILED_PROJECTED_KERNELS,
           "optim": OPTIM_KERNELS, "loss": LOSS_KERNELS, "variants": VARIANT_KERNELS,
           "generate": GENERATE_KERNELS}  # kind → its file's kernels


# the tiled kernels' tensor-core variants (float32 data, float32 sums), by what the TF32 MMA's operands are rounded
# to: TensorFloat-32, bfloat16 or half precision (both exact in TF32: 8 and 11 of its 11 significant bits, within
# its exponent range); the value is the kernels' $operands
MMA_VARIANTS = {"tf32": 0, "bf16": 1, "fp16": 2}


def variants(kind: str) -> tuple[str, ...]:
    """The variants of the ``kind`` kernels: every kind has "float32" and "float64"; the tiled kernels also have
    the MMA_VARIANTS (float32 data, recurrent products on tensor cores)."""
    return (*DTYPES, *MMA_VARIANTS) if kind == "tiled" else tuple(DTYPES)


def source(kind: str, variant: str) -> str:
    """The CUDA C++ source of the ``kind`` ("stepwise", "persistent", "tiled", "optim" or "loss") kernels in
    ``variant`` (:func:`variants`)."""
    if variant not in variants(kind):
        raise ValueError(f"the {kind} kernels come in {', '.join(variants(kind))}, not {variant!r}")
    real, tanh, sqrt, exp, log = DTYPES["float32" if variant in MMA_VARIANTS else variant]
    return _template(kind).substitute(real=real, tanh=tanh, sqrt=sqrt, exp=exp, log=log, suffix=variant,
                                      max_threads=tiling.MAX_THREADS, mma=int(variant in MMA_VARIANTS),
                                      operands=MMA_VARIANTS.get(variant, 0))


def kernel_name(kernel: str, variant: str) -> str:
    return f"{kernel}_{variant}"
