"""lstmx: an LSTM with exact BPTT written once against the Python Array API (NumPy, CuPy, array-api-strict).

The names below are the public API; the packages hold the architecture: :mod:`lstmx.nn` (cells, layers, the
stack, the models, generation), :mod:`lstmx.training` (the loop, data, optimizers, checkpoints),
:mod:`lstmx.dispatch` (the registry and the plan), :mod:`lstmx.kernels` (the fast paths), :mod:`lstmx.interop`.
"""

from .backend import Backend, BackendError, MixedBackendError, backend_of, get_backend, to_numpy
from .dispatch.registry import LAYER_IMPLS, use_layer_impl
from .nn.models import LSTM, LanguageModel
from .nn.module import Module
from .nn.sample import generate, sample, samples
from .training.checkpoint import load_model
from .training.data import CharVocab, StreamBatches, WordVocab, split_ids
from .training.loop import TrainConfig, Trainer
from .training.optim import SGD, Adam, AdamW, RMSprop, clip_grad_norm, clip_grad_value
from .validate import CacheMismatchError

__version__ = "0.1.0"

__all__ = [
    "LAYER_IMPLS",
    "LSTM",
    "SGD",
    "Adam",
    "AdamW",
    "Backend",
    "BackendError",
    "CacheMismatchError",
    "CharVocab",
    "LanguageModel",
    "MixedBackendError",
    "Module",
    "RMSprop",
    "StreamBatches",
    "TrainConfig",
    "Trainer",
    "WordVocab",
    "backend_of",
    "clip_grad_norm",
    "clip_grad_value",
    "generate",
    "get_backend",
    "load_model",
    "sample",
    "samples",
    "split_ids",
    "to_numpy",
    "use_layer_impl",
]
