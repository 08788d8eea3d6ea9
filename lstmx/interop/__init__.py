"""Weights to and from other frameworks, as plain NumPy arrays (lstmx never imports them): one module per format.

- :mod:`lstmx.interop.torch`: ``nn.LSTM`` (bidirectional, ``proj_size``, ``bias=False``) and an
  Embedding → LSTM → Linear language model, both ways.
- :mod:`lstmx.interop.keras`: Keras 3 ``LSTM`` and ``Bidirectional(LSTM)`` weight lists, both ways.
"""

from .keras import lstm_from_keras, lstm_to_keras
from .torch import (language_model_from_torch, language_model_to_torch, lstm_from_torch, lstm_params_from_torch,
                    lstm_params_to_torch, lstm_to_torch)

__all__ = [
    "language_model_from_torch",
    "language_model_to_torch",
    "lstm_from_keras",
    "lstm_from_torch",
    "lstm_params_from_torch",
    "lstm_params_to_torch",
    "lstm_to_keras",
    "lstm_to_torch",
]
