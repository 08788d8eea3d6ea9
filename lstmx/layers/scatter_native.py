"""Backend-specific fast path for the embedding gradient's scatter-add (NumPy and CuPy).

Same signature as :func:`lstmx.layers.embedding.scatter_add_rows_generic`, against which it is tested.
"""

from __future__ import annotations

from typing import Any

from ..backend import Backend, is_cupy


def scatter_add_rows_native(backend: Backend, rows: Any, values: Any, num_rows: int) -> Any:
    out = backend.xp.zeros((num_rows, values.shape[-1]), dtype=values.dtype, device=backend.device)
    if is_cupy(backend):
        import cupyx

        cupyx.scatter_add(out, rows, values)
    else:
        import numpy as np

        np.add.at(out, rows, values)
    return out
