"""Public models: :class:`LSTM` (a stack of layers) and :class:`LanguageModel` (Embedding → LSTM → Linear).

Both hold their LSTM layers through one :class:`LSTMStack` (parameter names, initialisation, forward and
backward of the stack); the math lives in :mod:`lstmx.layers` and :mod:`lstmx.stack`. ``backward`` returns
gradients as a dict with the same names as ``params``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from . import init, registry
from .backend import Backend, check_same_backend
from .layers import (
    IGNORE_INDEX,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
)
from .layers.embedding import EmbeddingCache
from .layers.linear import LinearCache
from .module import Module, State
from .stack import LSTMCache, LayerParams, lstm_backward, lstm_forward
from .validate import check_finite, check_float_array, check_token_array, lengths_to_mask


class LSTMStack(NamedTuple):
    """The LSTM layers of a model: ``{prefix}weight_l{k}`` (D_k + H, 4H) and ``{prefix}bias_l{k}`` (4H,)."""

    prefix: str
    input_size: int
    hidden_size: int
    num_layers: int

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        host = {}
        for k in range(self.num_layers):
            weight, bias = init.lstm_layer(rng, self.input_size if k == 0 else self.hidden_size, self.hidden_size)
            host[f"{self.prefix}weight_l{k}"], host[f"{self.prefix}bias_l{k}"] = weight, bias
        return host

    def layer_params(self, params: dict[str, Any]) -> list[LayerParams]:
        return [(params[f"{self.prefix}weight_l{k}"], params[f"{self.prefix}bias_l{k}"]) for k in range(self.num_layers)]

    def named_grads(self, layer_grads: list[LayerParams]) -> dict[str, Any]:
        grads = {}
        for k, (dweight, dbias) in enumerate(layer_grads):
            grads[f"{self.prefix}weight_l{k}"], grads[f"{self.prefix}bias_l{k}"] = dweight, dbias
        return grads

    def forward(self, model: Module, x: Any, state: State | None, step_mask: Any, dropout_masks: tuple[Any, ...],
                impl: str | None) -> tuple[Any, State, LSTMCache]:
        """Run the stack on checked input; ``state`` (checked here) defaults to zeros."""
        h0, c0 = model._initial_state(state, self.num_layers, x.shape[1], self.hidden_size)
        return lstm_forward(model.backend, self.layer_params(model.params), x, h0, c0, step_mask, dropout_masks, impl)

    def backward(self, model: Module, dy: Any, cache: LSTMCache, dstate: State | None) -> tuple[Any, State, dict]:
        """Mirror of :meth:`forward`: ``(dx, (dh0, dc0), grads by parameter name)``; ``dstate`` checked here."""
        dh, dc = model._initial_state(dstate, self.num_layers, cache.batch, self.hidden_size)
        dx, dstate0, layer_grads = lstm_backward(model.backend, self.layer_params(model.params), dy, dh, dc, cache)
        return dx, dstate0, self.named_grads(layer_grads)


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_cache_type(cache: Any, expected: type) -> None:
    if not isinstance(cache, expected):
        raise TypeError(f"cache must be the {expected.__name__} returned by this model's forward, "
                        f"got {type(cache).__name__}")


class LSTM(Module):
    """A multi-layer LSTM on any Array API backend with exact backpropagation through time.

    Parameters per layer k: ``weight_l{k}`` (D_k + H, 4H), rows for the input then for h_{t-1}, columns for the
    gates i, f, g, o; ``bias_l{k}`` (4H,). Dropout (training mode only) acts between layers. ``precision="tf32"``
    (CuPy, float32) runs the cuBLAS GEMMs on TensorFloat-32 tensor cores (:mod:`lstmx.precision`).
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
        precision: str = "float32",
    ) -> None:
        _check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        super().__init__(backend, dtype, seed, dropout, precision)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.stack = LSTMStack("", input_size, hidden_size, num_layers)
        self._set_host_params(self.stack.init_params(np.random.default_rng(seed)))

    def config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "dropout": self.dropout}

    def forward(
        self, x: Any, state: State | None = None, lengths: Any = None, *, check_finite: bool = False,
        impl: str | None = None,
    ) -> tuple[Any, State, LSTMCache]:
        """``x`` (T, B, input_size) → ``(y (T, B, H), (h_T, c_T) (L, B, H) each, cache)``.

        ``state`` is the initial ``(h0, c0)`` (zeros when None); ``lengths`` (B,) integers in [0, T] mark
        variable-length sequences: padded steps output zeros and keep the state, so the final state is each
        sequence's last real step. ``check_finite`` also refuses NaN/Inf in ``x`` (one host sync). ``impl``
        names the layer implementation (:mod:`lstmx.registry`; default: the registry's choice).
        """
        check_float_array(self.backend, "x", x, (None, None, self.input_size), self.dtype)
        steps, batch = x.shape[0], x.shape[1]
        if steps == 0:
            raise ValueError("x is an empty sequence (T = 0 time steps)")
        if check_finite:
            _check_finite_all(self.backend, x=x, state=state)
        step_mask = None if lengths is None else lengths_to_mask(self.backend, lengths, steps, batch, self.dtype)
        masks = self._dropout_masks((steps, batch, self.hidden_size), self.num_layers - 1)
        with self._matmuls():
            return self.stack.forward(self, x, state, step_mask, masks, impl)

    def backward(self, dy: Any, cache: LSTMCache, dstate: State | None = None) -> tuple[Any, State, dict[str, Any]]:
        """Exact BPTT from ``dy`` = dL/dy (T, B, H) and optional ``dstate`` = dL/d(h_T, c_T).

        ``cache`` must come from this model's latest forward with its current parameters. Returns
        ``(dx, (dh0, dc0), grads)`` with ``grads`` keyed like ``params``.
        """
        _check_cache_type(cache, LSTMCache)
        self._check_cache_owner(tuple(array for pair in cache.layer_params for array in pair))
        check_float_array(self.backend, "dy", dy, (cache.steps, cache.batch, self.hidden_size), self.dtype)
        with self._matmuls():
            return self.stack.backward(self, dy, cache, dstate)


def _check_finite_all(backend: Backend, **arrays: Any) -> None:
    for name, value in arrays.items():
        for part in value if isinstance(value, (tuple, list)) else (value,):
            if part is not None:
                check_finite(backend, name, part)


class LanguageModelCache(NamedTuple):
    params: tuple[Any, ...]  # the parameter arrays the forward used (checked against the model's in backward)
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
    ``precision`` as in :class:`LSTM`.
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
        precision: str = "float32",
    ) -> None:
        _check_positive(vocab_size=vocab_size, embedding_size=embedding_size, hidden_size=hidden_size,
                        num_layers=num_layers)
        super().__init__(backend, dtype, seed, dropout, precision)
        self.vocab_size, self.embedding_size = vocab_size, embedding_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.stack = LSTMStack("lstm.", embedding_size, hidden_size, num_layers)
        rng = np.random.default_rng(seed)
        host = {"embedding.weight": init.embedding(rng, vocab_size, embedding_size)}
        host.update(self.stack.init_params(rng))
        host["head.weight"], host["head.bias"] = init.linear(rng, hidden_size, vocab_size)
        self._set_host_params(host)

    def config(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "embedding_size": self.embedding_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers, "dropout": self.dropout}

    def initial_state(self, batch: int) -> State:
        """Zero state ``(h, c)``, each (num_layers, batch, hidden_size)."""
        return self._initial_state(None, self.num_layers, batch, self.hidden_size)

    def forward(
        self, tokens: Any, state: State | None = None, lengths: Any = None, *, check_input: bool = True,
        impl: str | None = None,
    ) -> tuple[Any, State, LanguageModelCache]:
        """``tokens`` (T, B) integer ids → ``(logits (T, B, V), (h_T, c_T), cache)``.

        ``check_input`` verifies the ids lie in the vocabulary (one host sync; training loops that built the
        batches themselves may turn it off). ``impl`` names the LSTM layer implementation (:mod:`lstmx.registry`).
        """
        step_mask = self._step_mask(tokens, lengths, check_input)
        with self._matmuls():
            return self._forward(tokens, state, step_mask, impl)

    def _step_mask(self, tokens: Any, lengths: Any, check_input: bool) -> Any:
        """Validate ``tokens`` and turn ``lengths`` into the (T, B, 1) step mask (None: every step real)."""
        check_same_backend(self.backend, "tokens", tokens)
        if check_input:
            check_token_array(self.backend, "tokens", tokens, 2, self.vocab_size)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise ValueError(f"tokens must be a non-empty sequence of shape (T, B), got {tuple(tokens.shape)}")
        return None if lengths is None else lengths_to_mask(self.backend, lengths, *tokens.shape, self.dtype)

    def draw_dropout_masks(self, steps: int, batch: int) -> tuple[Any, ...]:
        """The dropout masks a training forward of (steps, batch) tokens would draw (None entries in eval mode or
        without dropout): one per LSTM layer, the last acting on the LSTM output. Drawing them first lets a
        caller hand slices of one batch's masks to several forwards (``dropout_masks=``)."""
        return self._dropout_masks((steps, batch, self.hidden_size), self.num_layers)

    def _forward(self, tokens: Any, state: State | None, step_mask: Any, impl: str | None,
                 dropout_masks: Sequence[Any] | None = None) -> tuple[Any, State, LanguageModelCache]:
        steps, batch = tokens.shape
        vectors, embedding_cache = embedding_forward(self.backend, tokens, self.params["embedding.weight"])
        masks = self._given_masks(dropout_masks, steps, batch) if dropout_masks is not None else \
            self.draw_dropout_masks(steps, batch)
        y, final, lstm_cache = self.stack.forward(self, vectors, state, step_mask, masks[:-1], impl)
        logits, head_cache = linear_forward(
            self.backend, dropout_forward(y, masks[-1]), self.params["head.weight"], self.params["head.bias"]
        )
        cache = LanguageModelCache(tuple(self.params.values()), embedding_cache, lstm_cache, masks[-1], head_cache)
        return logits, final, cache

    def _given_masks(self, masks: Sequence[Any], steps: int, batch: int) -> tuple[Any, ...]:
        if len(masks) != self.num_layers:
            raise ValueError(f"dropout_masks must hold {self.num_layers} masks (one per layer), got {len(masks)}")
        for k, mask in enumerate(masks):
            if mask is not None:
                check_float_array(self.backend, f"dropout_masks[{k}]", mask, (steps, batch, self.hidden_size), self.dtype)
        return tuple(masks)

    def backward(
        self, dlogits: Any, cache: LanguageModelCache, dstate: State | None = None
    ) -> tuple[dict[str, Any], State]:
        """Mirror of :meth:`forward`: returns ``(grads keyed like params, (dh0, dc0))``.

        ``cache`` must come from this model's latest forward with its current parameters.
        """
        _check_cache_type(cache, LanguageModelCache)
        self._check_cache_owner(cache.params)
        lstm = cache.lstm
        check_float_array(self.backend, "dlogits", dlogits, (lstm.steps, lstm.batch, self.vocab_size), self.dtype)
        with self._matmuls():
            return self._backward(dlogits, cache, dstate)

    def _backward(self, dlogits: Any, cache: LanguageModelCache, dstate: State | None) -> tuple[dict[str, Any], State]:
        dy, dhead_weight, dhead_bias = linear_backward(self.backend, dlogits, self.params["head.weight"], cache.head)
        dvectors, dstate0, grads = self.stack.backward(self, dropout_backward(dy, cache.output_dropout), cache.lstm,
                                                       dstate)
        _, scatter_add = registry.choose_scatter_add(self.backend, self.vocab_size)
        grads = {"embedding.weight": embedding_backward(self.backend, dvectors, cache.embedding, scatter_add),
                 **grads, "head.weight": dhead_weight, "head.bias": dhead_bias}
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
        impl: str | None = None,
        dropout_masks: Sequence[Any] | None = None,
        loss_impl: str | None = None,
    ) -> LossOutput:
        """Mean cross-entropy per real target token (a 0-d array) and, when ``grads``, the gradients.

        ``targets`` (T, B) holds the next token of each input; entries equal to ``ignore_index``, and steps
        past ``lengths``, do not count. ``dropout_masks`` (from :meth:`draw_dropout_masks`, possibly sliced along
        the batch) replaces the masks the forward would draw. ``loss_impl`` names the implementation of the loss
        and its gradient (:func:`lstmx.registry.choose_loss`). Returns a :class:`LossOutput`
        ``(loss, grads, state, initial_state_grad)``.
        """
        step_mask = self._step_mask(inputs, lengths, check_input)
        if check_input:
            _check_targets(self.backend, targets, inputs.shape, self.vocab_size, ignore_index)
        with self._matmuls():
            return self._loss(inputs, targets, state, step_mask, ignore_index, grads, impl, dropout_masks, loss_impl)

    def _loss(self, inputs: Any, targets: Any, state: State | None, step_mask: Any, ignore_index: int, grads: bool,
              impl: str | None, dropout_masks: Sequence[Any] | None, loss_impl: str | None) -> LossOutput:
        logits, final, cache = self._forward(inputs, state, step_mask, impl, dropout_masks)
        xp = self.backend.xp
        flat_targets = xp.reshape(targets, (-1,))
        if step_mask is not None:  # steps past a sequence's length do not count
            real = xp.reshape(step_mask, (-1,)) > 0
            flat_targets = xp.where(real, flat_targets, xp.full_like(flat_targets, ignore_index))
        flat_logits = xp.reshape(logits, (-1, self.vocab_size))
        if not grads:
            loss, _ = cross_entropy_forward(self.backend, flat_logits, flat_targets, ignore_index)
            return LossOutput(loss, None, final, None)
        _, loss_and_gradient = registry.choose_loss(self.backend, loss_impl)
        loss, dlogits = loss_and_gradient(self.backend, flat_logits, flat_targets, ignore_index)
        gradients, dstate0 = self._backward(xp.reshape(dlogits, logits.shape), cache, None)
        return LossOutput(loss, gradients, final, dstate0)


def _check_targets(backend: Backend, targets: Any, shape: tuple[int, ...], vocab_size: int, ignore_index: int) -> None:
    check_same_backend(backend, "targets", targets)
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"targets must have the inputs' shape {tuple(shape)}, got {tuple(targets.shape)}")
    check_token_array(backend, "targets", targets, len(shape), vocab_size, ignore_index)
