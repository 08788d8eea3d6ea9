"""Host arrays reused from one call to the next, so a training loop stops paying for fresh memory.

A large ``np.empty`` is a fresh ``mmap``: the kernel zero-fills every page the first time it is written
(~1 µs per 4 KiB page). One training step of the NumPy fast paths at B=64, T=100, H=256 touches ~90 MB of
such memory: ~25 ms of page faults against ~110 ms of arithmetic. :class:`BufferPool` keeps those arrays and
hands one out again once nothing else refers to it (CPython's reference count: every NumPy view holds its
base array, so an array still seen through a cache, an output or any view is never handed out twice).

The pool holds on to at most the memory of the busiest call pattern it has seen; :meth:`BufferPool.clear`
gives it back.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np


def _reference_counts(arrays: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(array) for array in arrays]


# The count of an array held by nothing but a list, measured the same way as the pool measures its own (the
# exact number differs between CPython versions, so it is not written down).
_ONLY_THE_POOL = _reference_counts([np.empty(1)])[0]


class BufferPool:
    def __init__(self, per_shape: int = 8, shapes: int = 32, min_bytes: int = 1 << 16) -> None:
        self.per_shape = per_shape  # arrays kept per (shape, dtype): one per layer alive at once
        self.shapes = shapes  # distinct (shape, dtype) keys kept, least recently used dropped first
        self.min_bytes = min_bytes  # smaller arrays come from malloc's heap, which is reused already
        self._arrays: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()  # two threads must not both find the same array free

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised C-contiguous array, reused when one of this shape and dtype is free."""
        dtype = np.dtype(dtype)
        if int(np.prod(shape)) * dtype.itemsize < self.min_bytes:
            return np.empty(shape, dtype=dtype)
        key = (tuple(shape), dtype.str)
        with self._lock:
            arrays = self._arrays.setdefault(key, [])
            self._arrays.move_to_end(key)
            for array, count in zip(arrays, _reference_counts(arrays)):
                if count == _ONLY_THE_POOL:
                    return array
            array = np.empty(shape, dtype=dtype)
            if len(arrays) < self.per_shape:
                arrays.append(array)
            while len(self._arrays) > self.shapes:
                self._arrays.popitem(last=False)
            return array

    def clear(self) -> None:
        """Drop every kept array (those still in use stay alive with their users)."""
        with self._lock:
            self._arrays.clear()

    def nbytes(self) -> int:
        return sum(a.nbytes for arrays in self._arrays.values() for a in arrays)


HOST_BUFFERS = BufferPool()
