"""Layers as pairs of pure functions: each ``*_forward`` returns its output and a small NamedTuple cache,
each ``*_backward`` takes that cache and mirrors the forward in reverse."""

from .cell import cell_backward, cell_forward
from .dropout import dropout_backward, dropout_forward, dropout_mask, keep_mask
from .embedding import embedding_backward, embedding_forward
from .linear import linear_backward, linear_forward
from .loss import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward, log_softmax
from .lstm_layer import LSTMLayerCache, lstm_layer_backward, lstm_layer_forward, lstmp_layer_backward, lstmp_layer_forward

__all__ = [
    "IGNORE_INDEX",
    "LSTMLayerCache",
    "cell_backward",
    "cell_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "embedding_backward",
    "embedding_forward",
    "keep_mask",
    "linear_backward",
    "linear_forward",
    "log_softmax",
    "lstm_layer_backward",
    "lstm_layer_forward",
    "lstmp_layer_backward",
    "lstmp_layer_forward",
]
