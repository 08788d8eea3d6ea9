"""Small shared helpers for the tests."""

from __future__ import annotations

import numpy as np

from lstmx.backend import to_numpy

GRAD_TOLERANCE = 1e-6  # max relative error (lstmx.gradcheck's definition) allowed in float64 checks


def host(array) -> np.ndarray:
    return np.asarray(to_numpy(array), dtype=np.float64)


def weighted_sum(backend, outputs, weights) -> float:
    """Σ weights·outputs over several arrays, as a host float: a scalar loss with O(1) gradients."""
    return float(sum(np.sum(host(o) * w) for o, w in zip(outputs, weights)))


def cupy_runs_here() -> bool:
    """Whether the CuPy backend runs on this machine (CuPy installed and a CUDA device present)."""
    from lstmx.backend import BackendError, get_backend

    try:
        get_backend("cupy")
    except BackendError:
        return False
    return True
