"""lstmx: an LSTM with exact BPTT written once against the Python Array API (NumPy, CuPy, array-api-strict)."""

from .backend import Backend, BackendError, MixedBackendError, backend_of, get_backend, to_numpy
from .models import LSTM, LanguageModel, Module

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "Backend",
    "BackendError",
    "LanguageModel",
    "MixedBackendError",
    "Module",
    "backend_of",
    "get_backend",
    "to_numpy",
]
