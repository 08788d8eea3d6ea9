"""lstmx: an LSTM with exact BPTT written once against the Python Array API (NumPy, CuPy, array-api-strict)."""

from .backend import Backend, BackendError, MixedBackendError, backend_of, get_backend, to_numpy
from .models import LSTM, LanguageModel
from .module import Module
from .registry import LAYER_IMPLS, use_layer_impl
from .validate import CacheMismatchError

__version__ = "0.1.0"

__all__ = [
    "LAYER_IMPLS",
    "LSTM",
    "Backend",
    "BackendError",
    "CacheMismatchError",
    "LanguageModel",
    "MixedBackendError",
    "Module",
    "backend_of",
    "get_backend",
    "to_numpy",
    "use_layer_impl",
]
