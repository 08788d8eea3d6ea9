"""Backend-native scatter-adds for the embedding gradient (NumPy's ``add.at``, CuPy's ``scatter_add``).

Same signature as :func:`lstmx.nn.layers.embedding.scatter_add_rows_generic`, against which they are tested;
:mod:`lstmx.dispatch.registry` chooses between them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend


def scatter_add_rows_numpy(backend: Backend, rows: Any, values: Any, num_rows: int) -> Any:
    out = np.zeros((num_rows, values.shape[-1]), dtype=values.dtype)
    np.add.at(out, rows, values)
    return out


def scatter_add_rows_cupy(backend: Backend, rows: Any, values: Any, num_rows: int) -> Any:
    import cupyx

    out = backend.xp.zeros((num_rows, values.shape[-1]), dtype=values.dtype, device=backend.device)
    cupyx.scatter_add(out, rows, values)
    return out
