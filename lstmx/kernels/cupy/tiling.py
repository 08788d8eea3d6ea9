"""Tile shapes of the register-tiled persistent kernels (``cuda/tiled.cu``, :mod:`lstmx.kernels.cupy.cuda_sources`).

Plain Python (no CuPy), so the shapes and their limits are tested on any machine. A launch of either tiled
kernel has grid ``(ceil(H / units), ceil(B / rows))`` and blocks of ``(units, rows / 4, splits)`` threads: a block
owns ``units`` hidden units of ``rows`` batch rows, ``splits`` threads share each 4-row tile's reduction, and
the staged rows of h (forward) or dz (backward) pass through shared memory ``chunk`` columns at a time.

The TF32 variant (``mma=True``) runs the same block on warp tiles of tensor-core MMAs: 16 rows by 8 columns, so
its shapes also need ``units`` a multiple of 8, ``rows`` of 16 and ``splits`` of 4 (:data:`MMA_MULTIPLES`).
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

MAX_THREADS = 512  # per block; the kernels are compiled with __launch_bounds__(512), so at most 128 registers each
ROW_TILE = 4  # rows per thread in the product (the kernels' register tile)
MMA_MULTIPLES = {"units": 8, "rows": 16, "splits": 4}  # what the TF32 variant's 16 × 8 warp tiles need
TENSOR_CORE_SPEEDUP = 8  # TF32 tensor cores against float32 FMAs on an H100, roughly (for step_cost only)


class TileShape(NamedTuple):
    units: int  # hidden units per block
    rows: int  # batch rows per block, a multiple of ROW_TILE
    splits: int  # threads sharing one tile's reduction; at least ROW_TILE, so a thread owns at most one cell
    forward_chunk: int  # columns of h staged at a time, a multiple of 4
    backward_chunk: int  # columns of dz staged at a time, a multiple of 4

    def grid(self, batch: int, hidden: int) -> tuple[int, int]:
        return -(-hidden // self.units), -(-batch // self.rows)

    def block(self) -> tuple[int, int, int]:
        return self.units, self.rows // ROW_TILE, self.splits

    def threads(self) -> int:
        return self.units * self.rows // ROW_TILE * self.splits


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def reduction(kernel: str, hidden: int) -> int:
    """The length of ``kernel``'s reduction, padded with zeros to a multiple of 8: over k < H forward, over the
    4H gate columns backward."""
    return _round8(hidden if kernel == "lstm_forward_tiled" else 4 * hidden)


def _fixed_and_staged(kernel: str, shape: TileShape, hidden: int) -> tuple[int, int]:
    """Elements of shared memory a block holds for the whole launch (its W_h slice and the partial sums) and
    per staged row (a chunk of columns, padded by 4 so rows read at once fall in different banks)."""
    if kernel == "lstm_forward_tiled":
        return (reduction(kernel, hidden) * shape.units * 4 + shape.splits * shape.rows * shape.units * 4,
                shape.forward_chunk + 4)
    return (shape.units * (reduction(kernel, hidden) + 4) + shape.splits * shape.rows * shape.units,
            shape.backward_chunk + 4)


def shared_bytes(kernel: str, shape: TileShape, hidden: int, itemsize: int) -> int:
    """Dynamic shared memory of one block of ``kernel`` ("lstm_forward_tiled" or "lstm_backward_tiled")."""
    fixed, per_row = _fixed_and_staged(kernel, shape, hidden)
    return (fixed + shape.rows * per_row) * itemsize


PROJECTED_FORWARD = "lstmp_forward_tiled"  # the projected cell's kernels (cuda_sources.TILED_PROJECTED_KERNELS)


def _projected_fixed_and_longest(kernel: str, shape: TileShape, hidden: int, proj: int) -> tuple[int, int]:
    """Elements a projected-cell block holds for the whole launch (its slices of W_h and W_hr, the partial sums),
    and the longest reduction its staged rows pass through: forward z = r W_h (over P) then r = m W_hr (over H);
    backward dL/dm = dL/dr W_hrᵀ (over P) then dL/dr = dz W_hᵀ (over 4H)."""
    units, rows, splits = shape.units, shape.rows, shape.splits
    if kernel == PROJECTED_FORWARD:
        return (_round8(proj) * units * 4 + units * (_round8(hidden) + 4) + splits * rows * units * 4,
                _round8(hidden))
    return units * (_round8(4 * hidden) + 4) + units * (_round8(proj) + 4) + splits * rows * units, _round8(4 * hidden)


def projected_chunk(kernel: str, shape: TileShape, hidden: int, proj: int, itemsize: int, shared_limit: int) -> int:
    """The chunk of a projected-cell kernel (one for both of its products): every column of its longest
    reduction, at most the shape's chunk of that direction, else the widest multiple of 32 that fits beside its
    fixed part; 0 when not even 32 (or the wanted chunk, if shorter) fit."""
    fixed, longest = _projected_fixed_and_longest(kernel, shape, hidden, proj)
    wanted = min(longest, shape.forward_chunk if kernel == PROJECTED_FORWARD else shape.backward_chunk)
    room = (shared_limit // itemsize - fixed) // shape.rows - 4
    chunk = wanted if room >= wanted else room // 32 * 32
    return chunk if chunk >= min(32, wanted) else 0


def projected_shared_bytes(kernel: str, shape: TileShape, hidden: int, proj: int, chunk: int, itemsize: int) -> int:
    """Dynamic shared memory of one block of a projected-cell kernel staging ``chunk`` columns at a time."""
    fixed, _ = _projected_fixed_and_longest(kernel, shape, hidden, proj)
    return (fixed + shape.rows * (chunk + 4)) * itemsize


def refuses_shape(shape: TileShape, mma: bool = False) -> str | None:
    """None when the kernels (the TF32 variant's with ``mma``) can run this shape (any batch and hidden size),
    else why not."""
    units, rows, splits, forward_chunk, backward_chunk = shape
    if min(shape) < 1:
        return f"every part of a tile shape must be positive, got {shape}"
    if rows % ROW_TILE:
        return f"rows must be a multiple of {ROW_TILE}, got {rows}"
    if splits < ROW_TILE:
        return f"splits must be at least {ROW_TILE}, got {splits}"
    if forward_chunk % 8 or backward_chunk % 8:
        return f"chunks must be multiples of 8, got {forward_chunk} and {backward_chunk}"
    if shape.threads() > MAX_THREADS:
        return f"a block of units × rows/{ROW_TILE} × splits = {shape.threads()} threads exceeds {MAX_THREADS}"
    if mma:
        for part, multiple in MMA_MULTIPLES.items():
            if getattr(shape, part) % multiple:
                return f"the TF32 kernels need {part} a multiple of {multiple}, got {getattr(shape, part)}"
    return None


def _widest_chunk(kernel: str, shape: TileShape, hidden: int, itemsize: int, shared_limit: int) -> int:
    """The widest chunk (every column, else a multiple of 32) whose staged rows fit beside the fixed part."""
    columns = reduction(kernel, hidden)
    fixed, _ = _fixed_and_staged(kernel, shape, hidden)
    room = (shared_limit // itemsize - fixed) // shape.rows - 4
    return columns if room >= columns else room // 32 * 32


def step_cost(shape: TileShape, batch: int, hidden: int, mma: bool = False) -> float:
    """A rough per-step cost in units of one FMA of one thread (smaller is better), for choosing a shape:
    the longest per-thread product, staging spread over the block, the partial-sum reduction and one barrier
    per chunk. The tuner (``bench/tune_tiled.py``) measures instead."""
    k8, columns = reduction("lstm_forward_tiled", hidden), reduction("lstm_backward_tiled", hidden)
    product = 16 * k8 / shape.splits  # both directions: 16 FMAs per 4 k (forward) or 4 columns (backward)
    if mma:
        product /= TENSOR_CORE_SPEEDUP
    staging = 2 * shape.rows * (k8 + columns) / shape.threads()
    chunks = -(-k8 // shape.forward_chunk) + -(-columns // shape.backward_chunk)
    return product + staging + 4 * shape.splits + 64 * chunks


def fitted_shape(units: int, rows: int, splits: int, hidden: int, itemsize: int, shared_limit: int,
                 mma: bool = False) -> TileShape | None:
    """The shape with these units, rows and splits and the widest chunks that fit in ``shared_limit`` bytes;
    None when the shape is refused or its W_h slice leaves too little room to stage rows."""
    probe = TileShape(units, rows, splits, 8, 8)
    if refuses_shape(probe, mma) is not None:
        return None
    forward_chunk = _widest_chunk("lstm_forward_tiled", probe, hidden, itemsize, shared_limit)
    backward_chunk = _widest_chunk("lstm_backward_tiled", probe, hidden, itemsize, shared_limit)
    if (forward_chunk < min(32, reduction("lstm_forward_tiled", hidden))
            or backward_chunk < min(32, reduction("lstm_backward_tiled", hidden))):
        return None
    return TileShape(units, rows, splits, forward_chunk, backward_chunk)


@functools.lru_cache(maxsize=256)  # a pure function of its arguments, asked for at every launch
def choose_tile_shape(batch: int, hidden: int, itemsize: int, shared_limit: int, max_blocks: int,
                      mma: bool = False) -> TileShape | None:
    """The cheapest shape (by :func:`step_cost`) for the FMA kernels (the TF32 ones with ``mma``) whose grid has
    at most ``max_blocks`` blocks and whose blocks fit in ``shared_limit`` bytes of shared memory; None when no
    shape does."""
    best: tuple[float, int, TileShape] | None = None
    for units, rows, splits in itertools.product((1, 2, 4, 8, 16, 32), (4, 8, 16, 32, 64, 128), (4, 8, 16, 32)):
        largest_rows, largest_units = -(-batch // ROW_TILE) * ROW_TILE * 2, hidden * 2
        if mma:
            largest_rows, largest_units = max(largest_rows, MMA_MULTIPLES["rows"]), max(largest_units, MMA_MULTIPLES["units"])
        if rows > largest_rows or units > largest_units:
            continue  # a tile far larger than the problem only idles threads
        if -(-hidden // units) * -(-batch // rows) > max_blocks:
            continue
        shape = fitted_shape(units, rows, splits, hidden, itemsize, shared_limit, mma)
        if shape is None:
            continue
        ranked = (step_cost(shape, batch, hidden, mma), shape.threads(), shape)
        if best is None or ranked[:2] < best[:2]:
            best = ranked
    return None if best is None else best[2]
