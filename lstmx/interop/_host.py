"""Host copies of whatever another framework hands over."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy


def host(value: Any) -> np.ndarray:
    """A NumPy copy of a NumPy array, an Array API array, or a torch tensor (through its ``.numpy()``)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(to_numpy(value))
