"""Public models: :class:`LSTM` (a stack of layers) and :class:`LanguageModel` (Embedding → LSTM → Linear).

A model holds its parameters in ``model.params`` (name → array on ``model.backend``) and checks its input once;
the math lives in the pure functions of :mod:`lstmx.layers` and :mod:`lstmx.lstm`. ``backward`` returns
gradients as a dict with the same names as ``params``.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from . import init
from .backend import Backend, check_same_backend, dtype_name, get_backend, to_numpy
from .layers import (
    IGNORE_INDEX,
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
)
from .layers.embedding import EmbeddingCache
from .layers.linear import LinearCache
from .lstm import LSTMCache, LayerParams, lstm_backward, lstm_forward
from .validate import check_finite, check_float_array, check_token_array, lengths_to_mask

State = tuple[Any, Any]  # (h, c), each (num_layers, B, H)


class Module:
    """Parameters on one backend, a training flag and the host RNG that draws dropout masks."""

    params: dict[str, Any]

    def __init__(self, backend: Any, dtype: Any, seed: int, dropout: float) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.backend: Backend = get_backend(backend)
        self.dtype = self.backend.dtype(dtype)
        if self.dtype not in (self.backend.xp.float32, self.backend.xp.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.seed = seed
        self.dropout = float(dropout)
        self.training = True
        self.dropout_rng = np.random.default_rng([seed, 1])
        self.params = {}

    def _set_host_params(self, host: Mapping[str, np.ndarray]) -> None:
        self.params = {name: self.backend.asarray(value, dtype=self.dtype) for name, value in host.items()}

    def train(self, mode: bool = True) -> "Module":
        self.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host NumPy copies of every parameter, by name."""
        return {name: to_numpy(value) for name, value in self.params.items()}

    def load_state_dict(self, arrays: Mapping[str, Any]) -> None:
        """Replace every parameter; names and shapes must match exactly (a clear error otherwise)."""
        missing = sorted(set(self.params) - set(arrays))
        unexpected = sorted(set(arrays) - set(self.params))
        if missing or unexpected:
            raise KeyError(f"parameter names do not match: missing {missing}, unexpected {unexpected}")
        host = {name: np.asarray(to_numpy(value)) for name, value in arrays.items()}
        for name, value in host.items():
            if value.shape != tuple(self.params[name].shape):
                raise ValueError(f"parameter {name!r} has shape {value.shape}, expected {tuple(self.params[name].shape)}")
            if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
                raise ValueError(f"parameter {name!r} must be finite floating-point values")
        self._set_host_params(host)

    def to(self, backend: Any) -> "Module":
        """Move the parameters to another backend (through host memory) and return ``self``."""
        host, dtype_name = self.state_dict(), self.dtype_name
        self.backend = get_backend(backend)
        self.dtype = self.backend.dtype(dtype_name)
        self._set_host_params(host)
        return self

    def _dropout_masks(self, shape: tuple[int, ...], count: int) -> tuple[Any, ...]:
        if not self.training or self.dropout == 0.0:
            return (None,) * count
        return tuple(dropout_mask(self.backend, self.dropout_rng, shape, self.dropout, self.dtype) for _ in range(count))

    def _initial_state(self, state: State | None, num_layers: int, batch: int, hidden: int) -> State:
        if state is None:
            zeros = self.backend.xp.zeros((num_layers, batch, hidden), dtype=self.dtype, device=self.backend.device)
            return zeros, zeros
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("state must be a pair (h, c) of arrays, each (num_layers, batch, hidden_size)")
        for name, value in zip(("state h", "state c"), state):
            check_float_array(self.backend, name, value, (num_layers, batch, hidden), self.dtype)
        return state[0], state[1]


def _lstm_host_params(rng: np.random.Generator, input_size: int, hidden: int, layers: int, prefix: str) -> dict:
    host = {}
    for k in range(layers):
        weight, bias = init.lstm_layer(rng, input_size if k == 0 else hidden, hidden)
        host[f"{prefix}weight_l{k}"] = weight
        host[f"{prefix}bias_l{k}"] = bias
    return host


def _lstm_layers(params: Mapping[str, Any], prefix: str, layers: int) -> list[LayerParams]:
    return [(params[f"{prefix}weight_l{k}"], params[f"{prefix}bias_l{k}"]) for k in range(layers)]


def _lstm_grads(layer_grads: list[LayerParams], prefix: str) -> dict[str, Any]:
    grads = {}
    for k, (dweight, dbias) in enumerate(layer_grads):
        grads[f"{prefix}weight_l{k}"] = dweight
        grads[f"{prefix}bias_l{k}"] = dbias
    return grads


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class LSTM(Module):
    """A multi-layer LSTM on any Array API backend with exact backpropagation through time.

    Parameters per layer k: ``weight_l{k}`` (D_k + H, 4H), rows for the input then for h_{t-1}, columns for the
    gates i, f, g, o; ``bias_l{k}`` (4H,). Dropout (training mode only) acts between layers.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        *,
        backend: Any = "numpy",
        dtype: Any = "float32",
        seed: int = 0,
    ) -> None:
        _check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        super().__init__(backend, dtype, seed, dropout)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        rng = np.random.default_rng(seed)
        self._set_host_params(_lstm_host_params(rng, input_size, hidden_size, num_layers, ""))

    def config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "dropout": self.dropout}

    def forward(
        self, x: Any, state: State | None = None, lengths: Any = None, *, check_finite: bool = False
    ) -> tuple[Any, State, LSTMCache]:
        """``x`` (T, B, input_size) → ``(y (T, B, H), (h_T, c_T) (L, B, H) each, cache)``.

        ``state`` is the initial ``(h0, c0)`` (zeros when None); ``lengths`` (B,) integers in [0, T] mark
        variable-length sequences: padded steps output zeros and keep the state, so the final state is each
        sequence's last real step. ``check_finite`` also refuses NaN/Inf in ``x`` (one host sync).
        """
        check_float_array(self.backend, "x", x, (None, None, self.input_size), self.dtype)
        steps, batch = x.shape[0], x.shape[1]
        if steps == 0:
            raise ValueError("x is an empty sequence (T = 0 time steps)")
        if check_finite:
            _check_finite_all(self.backend, x=x, state=state)
        h0, c0 = self._initial_state(state, self.num_layers, batch, self.hidden_size)
        mask = None if lengths is None else lengths_to_mask(self.backend, lengths, steps, batch, self.dtype)
        masks = self._dropout_masks((steps, batch, self.hidden_size), self.num_layers - 1)
        return lstm_forward(self.backend, _lstm_layers(self.params, "", self.num_layers), x, h0, c0, mask, masks)

    def backward(self, dy: Any, cache: LSTMCache, dstate: State | None = None) -> tuple[Any, State, dict[str, Any]]:
        """Exact BPTT from ``dy`` = dL/dy (T, B, H) and optional ``dstate`` = dL/d(h_T, c_T).

        Returns ``(dx, (dh0, dc0), grads)`` with ``grads`` keyed like ``params``.
        """
        steps, batch, _ = cache.layers[0].x.shape
        check_float_array(self.backend, "dy", dy, (steps, batch, self.hidden_size), self.dtype)
        dh, dc = self._initial_state(dstate, self.num_layers, batch, self.hidden_size)
        layers = _lstm_layers(self.params, "", self.num_layers)
        dx, dstate0, layer_grads = lstm_backward(self.backend, layers, dy, dh, dc, cache)
        return dx, dstate0, _lstm_grads(layer_grads, "")


def _check_finite_all(backend: Backend, **arrays: Any) -> None:
    for name, value in arrays.items():
        for part in value if isinstance(value, (tuple, list)) else (value,):
            if part is not None:
                check_finite(backend, name, part)


class LanguageModelCache(NamedTuple):
    embedding: EmbeddingCache
    lstm: LSTMCache
    output_dropout: Any  # mask on the LSTM output before the head, or None
    head: LinearCache


class LossOutput(NamedTuple):
    """What :meth:`LanguageModel.loss` returns."""

    loss: Any  # 0-d array: mean cross-entropy per real target token (nats)
    grads: dict[str, Any] | None  # keyed like ``params``; None when grads=False
    state: State  # final (h, c), to carry into the next window
    initial_state_grad: State | None  # dL/d(h0, c0); None when grads=False


class LanguageModel(Module):
    """Token ids → Embedding → LSTM → (dropout) → Linear → logits over the vocabulary.

    Parameter names: ``embedding.weight`` (V, E); ``lstm.weight_l{k}``, ``lstm.bias_l{k}`` as in :class:`LSTM`;
    ``head.weight`` (H, V), ``head.bias`` (V,). Dropout acts between LSTM layers and on the LSTM output.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 64,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.0,
        *,
        backend: Any = "numpy",
        dtype: Any = "float32",
        seed: int = 0,
    ) -> None:
        _check_positive(vocab_size=vocab_size, embedding_size=embedding_size, hidden_size=hidden_size,
                        num_layers=num_layers)
        super().__init__(backend, dtype, seed, dropout)
        self.vocab_size, self.embedding_size = vocab_size, embedding_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        rng = np.random.default_rng(seed)
        host = {"embedding.weight": init.embedding(rng, vocab_size, embedding_size)}
        host.update(_lstm_host_params(rng, embedding_size, hidden_size, num_layers, "lstm."))
        host["head.weight"], host["head.bias"] = init.linear(rng, hidden_size, vocab_size)
        self._set_host_params(host)

    def config(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "embedding_size": self.embedding_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers, "dropout": self.dropout}

    def initial_state(self, batch: int) -> State:
        """Zero state ``(h, c)``, each (num_layers, batch, hidden_size)."""
        return self._initial_state(None, self.num_layers, batch, self.hidden_size)

    def forward(
        self, tokens: Any, state: State | None = None, lengths: Any = None, *, check_input: bool = True
    ) -> tuple[Any, State, LanguageModelCache]:
        """``tokens`` (T, B) integer ids → ``(logits (T, B, V), (h_T, c_T), cache)``.

        ``check_input`` verifies the ids lie in the vocabulary (one host sync; training loops that built the
        batches themselves may turn it off).
        """
        return self._forward(tokens, state, self._step_mask(tokens, lengths, check_input))

    def _step_mask(self, tokens: Any, lengths: Any, check_input: bool) -> Any:
        """Validate ``tokens`` and turn ``lengths`` into the (T, B, 1) step mask (None: every step real)."""
        if check_input:
            check_token_array(self.backend, "tokens", tokens, 2, self.vocab_size)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise ValueError(f"tokens must be a non-empty sequence of shape (T, B), got {tuple(tokens.shape)}")
        return None if lengths is None else lengths_to_mask(self.backend, lengths, *tokens.shape, self.dtype)

    def _forward(self, tokens: Any, state: State | None, mask: Any) -> tuple[Any, State, LanguageModelCache]:
        steps, batch = tokens.shape
        h0, c0 = self._initial_state(state, self.num_layers, batch, self.hidden_size)
        vectors, embedding_cache = embedding_forward(self.backend, tokens, self.params["embedding.weight"])
        masks = self._dropout_masks((steps, batch, self.hidden_size), self.num_layers)
        layers = _lstm_layers(self.params, "lstm.", self.num_layers)
        y, final, lstm_cache = lstm_forward(self.backend, layers, vectors, h0, c0, mask, masks[:-1])
        logits, head_cache = linear_forward(
            self.backend, dropout_forward(y, masks[-1]), self.params["head.weight"], self.params["head.bias"]
        )
        return logits, final, LanguageModelCache(embedding_cache, lstm_cache, masks[-1], head_cache)

    def backward(
        self, dlogits: Any, cache: LanguageModelCache, dstate: State | None = None
    ) -> tuple[dict[str, Any], State]:
        """Mirror of :meth:`forward`: returns ``(grads keyed like params, (dh0, dc0))``."""
        batch = cache.embedding.tokens.shape[1]
        dh, dc = self._initial_state(dstate, self.num_layers, batch, self.hidden_size)
        dy, dhead_weight, dhead_bias = linear_backward(self.backend, dlogits, self.params["head.weight"], cache.head)
        layers = _lstm_layers(self.params, "lstm.", self.num_layers)
        dvectors, dstate0, layer_grads = lstm_backward(
            self.backend, layers, dropout_backward(dy, cache.output_dropout), dh, dc, cache.lstm
        )
        grads = {"embedding.weight": embedding_backward(self.backend, dvectors, cache.embedding)}
        grads.update(_lstm_grads(layer_grads, "lstm."))
        grads["head.weight"], grads["head.bias"] = dhead_weight, dhead_bias
        return grads, dstate0

    def loss(
        self,
        inputs: Any,
        targets: Any,
        state: State | None = None,
        lengths: Any = None,
        *,
        ignore_index: int = IGNORE_INDEX,
        grads: bool = True,
        check_input: bool = True,
    ) -> LossOutput:
        """Mean cross-entropy per real target token (a 0-d array) and, when ``grads``, the gradients.

        ``targets`` (T, B) holds the next token of each input; entries equal to ``ignore_index``, and steps
        past ``lengths``, do not count. Returns a :class:`LossOutput` ``(loss, grads, state, initial_state_grad)``.
        """
        if check_input:
            _check_targets(self.backend, targets, inputs.shape, self.vocab_size, ignore_index)
        mask = self._step_mask(inputs, lengths, check_input)
        logits, final, cache = self._forward(inputs, state, mask)
        xp = self.backend.xp
        flat_targets = xp.reshape(targets, (-1,))
        if mask is not None:  # steps past a sequence's length do not count
            real = xp.reshape(mask, (-1,)) > 0
            flat_targets = xp.where(real, flat_targets, xp.full_like(flat_targets, ignore_index))
        flat_logits = xp.reshape(logits, (-1, self.vocab_size))
        loss, loss_cache = cross_entropy_forward(self.backend, flat_logits, flat_targets, ignore_index)
        if not grads:
            return LossOutput(loss, None, final, None)
        dlogits = cross_entropy_backward(self.backend, xp.ones_like(loss), loss_cache)
        gradients, dstate0 = self.backward(xp.reshape(dlogits, logits.shape), cache)
        return LossOutput(loss, gradients, final, dstate0)


def _check_targets(backend: Backend, targets: Any, shape: tuple[int, ...], vocab_size: int, ignore_index: int) -> None:
    check_same_backend(backend, "targets", targets)
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"targets must have the inputs' shape {tuple(shape)}, got {tuple(targets.shape)}")
    check_token_array(backend, "targets", targets, len(shape), vocab_size, ignore_index)
