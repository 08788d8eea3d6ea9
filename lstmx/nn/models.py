"""Public models: :class:`LSTM` (a stack of layers) and :class:`LanguageModel` (Embedding → LSTM → Linear).

Both hold their recurrent layers through one :class:`Stack` (a cell, its parameter names and initialisation, one
or two directions, the forward and backward of the stack); the math lives in :mod:`lstmx.nn.cells`,
:mod:`lstmx.nn.layers` and :mod:`lstmx.nn.stack`. ``backward`` returns gradients as a dict with the same names as
``params``.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..backend import Backend, check_same_backend
from ..dispatch import registry
from ..validate import check_finite, check_float_array, check_lengths, check_token_array, mask_of_lengths
from . import init
from .cells import Cell, lstm_cell
from .layers import (
    IGNORE_INDEX,
    dropout_mask,
    cross_entropy_forward,
    keep_mask,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
)
from .layers.cell import CellOptions
from .layers.embedding import EmbeddingCache
from .layers.linear import LinearCache
from .layers.lstm_layer import LayerNoise
from .module import Module, State
from .stack import LSTMCache, StackCache, TimeReversal, stack_backward, stack_forward, stack_infer, time_reversal


class Stack(NamedTuple):
    """The recurrent layers of a model: ``cell`` over ``num_layers`` layers, in one or two directions.

    Parameter names: ``{prefix}{suffix}_l{k}`` for each of the cell's suffixes (``weight``, ``bias``, and
    ``projection`` for the projected cell), with ``_reverse`` appended for the reverse direction (PyTorch's
    naming). The state is the cell's: h (L·dirs, B, R) and c (L·dirs, B, H), index ``k * dirs + d``.
    """

    prefix: str
    cell: Cell
    input_size: int
    num_layers: int
    bidirectional: bool = False

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """The features of y: dirs · R."""
        return self.directions * self.cell.output_size

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size

    def parameter_names(self, layer: int, direction: int) -> tuple[str, ...]:
        suffix = "_reverse" if direction else ""
        return tuple(f"{self.prefix}{stem}_l{layer}{suffix}" for stem in self.cell.parameter_suffixes)

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        host = {}
        for k in range(self.num_layers):
            for d in range(self.directions):
                host.update(zip(self.parameter_names(k, d), self.cell.initialize(rng, self.layer_input_size(k))))
        return host

    def layer_params(self, params: dict[str, Any]) -> list[list[tuple[Any, ...]]]:
        return [[tuple(params[name] for name in self.parameter_names(k, d)) for d in range(self.directions)]
                for k in range(self.num_layers)]

    def named_grads(self, layer_grads: list[list[tuple[Any, ...]]]) -> dict[str, Any]:
        grads = {}
        for k, layer in enumerate(layer_grads):
            for d, dparams in enumerate(layer):
                grads.update(zip(self.parameter_names(k, d), dparams))
        return grads

    def state_shapes(self, batch: int) -> tuple[tuple[int, int, int], ...]:
        return tuple((self.num_layers * self.directions, batch, size) for size in self.cell.state_sizes())

    def reversal(self, backend: Backend, steps: int, batch: int, lengths: np.ndarray | None) -> TimeReversal | None:
        """How the reverse direction reverses time (None without one)."""
        return time_reversal(backend, steps, batch, lengths) if self.bidirectional else None

    def forward(self, model: Module, x: Any, state: State | None, lengths: np.ndarray | None,
                dropout_masks: tuple[Any, ...], impl: str | None) -> tuple[Any, State, StackCache]:
        """Run the stack on checked input (``lengths``: checked host lengths or None); ``state`` (checked here)
        defaults to zeros. The layer implementation is chosen here, once, and named in the cache."""
        steps, batch = x.shape[0], x.shape[1]
        initial = model._initial_state(state, self.state_shapes(batch))
        cell = self.cell_in_effect(model.training)
        call = self._layer_call(model, cell, x, lengths)
        chosen = registry.choose("layer", call, impl)
        step_mask = mask_of_lengths(model.backend, lengths, steps, model.dtype)
        layers = self.layer_params(model.params)
        weight_masks = self._weight_masks(model)
        noise = self._noise(model, cell, steps, batch)
        paired = (self.bidirectional and model.checkpoint_every is None and noise is None
                  and chosen.pairs_directions(call, registry.requested_impl(impl)[0] == chosen.name))
        y, final, cache = stack_forward(model.backend, cell, chosen.name, chosen.load(),
                                        self._dropped(model.backend.xp, layers, weight_masks), x, initial, step_mask,
                                        dropout_masks,
                                        self.reversal(model.backend, steps, batch, lengths), model.checkpoint_every,
                                        noise, paired)
        if weight_masks is not None:  # the cache names the parameters themselves, and the masks
            cache = cache._replace(layer_params=tuple(tuple(tuple(p) for p in layer) for layer in layers),
                                   weight_masks=weight_masks)
        return y, final, cache

    def cell_in_effect(self, training: bool) -> Cell:
        """The cell a forward in this mode runs: its options as they act then (:meth:`CellOptions.in_effect`)."""
        return self.cell._replace(options=self.cell.options.in_effect(training))

    def _layer_call(self, model: Module, cell: Cell, x: Any, lengths: np.ndarray | None) -> registry.Call:
        """What this forward asks of a layer implementation (:func:`lstmx.dispatch.registry.choose`)."""
        return registry.Call(model.backend, x.dtype, lengths is not None, (x.shape[1], cell.hidden_size), cell.kind,
                             cell.options.names(), model.precision)

    def _noise(self, model: Module, cell: Cell, steps: int, batch: int) -> tuple[tuple[LayerNoise, ...], ...] | None:
        """Zoneout's and recurrent dropout's masks for a training forward, per layer and direction, drawn on the
        host; None in evaluation or without them."""
        options = cell.options
        (zoneout_c, zoneout_h), p = options.zoneout, options.recurrent_dropout
        if not model.training or not (zoneout_c or zoneout_h or p):
            return None
        backend, rng, dtype, width = model.backend, model.dropout_rng, model.dtype, cell.output_size

        def drawn() -> LayerNoise:
            return LayerNoise(dropout_mask(backend, rng, (batch, width), p, dtype) if p else None,
                              keep_mask(backend, rng, (steps, batch, cell.hidden_size), zoneout_c, dtype)
                              if zoneout_c else None,
                              keep_mask(backend, rng, (steps, batch, width), zoneout_h, dtype) if zoneout_h else None)
        return tuple(tuple(drawn() for _ in range(self.directions)) for _ in range(self.num_layers))

    def _weight_masks(self, model: Module) -> tuple[tuple[Any, ...], ...] | None:
        """DropConnect (``weight_drop``, training only): one mask per layer and direction on the recurrent rows
        W_h of its weight, drawn on the host, {0, 1/(1 − p)}."""
        p = getattr(model, "weight_drop", 0.0)
        if not model.training or not p:
            return None
        shape = (self.cell.output_size, 4 * self.cell.hidden_size)
        return tuple(tuple(dropout_mask(model.backend, model.dropout_rng, shape, p, model.dtype)
                           for _ in range(self.directions)) for _ in range(self.num_layers))

    def _dropped(self, xp: Any, layers: Any, masks: tuple[tuple[Any, ...], ...] | None) -> Any:
        """The layers' parameters (or their gradients) with W_h ⊙ mask in place of W_h: the weight every
        implementation runs, and dL/dW_h from dL/d(W_h ⊙ mask)."""
        if masks is None:
            return layers
        dropped = []
        for k, layer in enumerate(layers):
            rows = self.layer_input_size(k)
            dropped.append([(xp.concat([params[0][:rows, ...], params[0][rows:, ...] * masks[k][d]], axis=0),
                             *params[1:]) for d, params in enumerate(layer)])
        return dropped

    def infer(self, model: Module, x: Any, state: State | None, lengths: np.ndarray | None,
              impl: str | None) -> tuple[Any, State]:
        """:meth:`forward` without dropout, keeping nothing for a backward (:func:`lstmx.nn.stack.stack_infer`)."""
        steps, batch = x.shape[0], x.shape[1]
        initial = model._initial_state(state, self.state_shapes(batch))
        cell = self.cell_in_effect(False)
        chosen = registry.choose("layer", self._layer_call(model, cell, x, lengths), impl)
        step_mask = mask_of_lengths(model.backend, lengths, steps, model.dtype)
        return stack_infer(model.backend, cell, chosen.load(), self.layer_params(model.params), x, initial,
                           step_mask, self.reversal(model.backend, steps, batch, lengths))

    def backward(self, model: Module, dy: Any, cache: StackCache, dstate: State | None) -> tuple[Any, State, dict]:
        """Mirror of :meth:`forward`: ``(dx, (dh0, dc0), grads by parameter name)``; ``dstate`` checked here."""
        final = model._initial_state(dstate, self.state_shapes(cache.batch), "dstate")
        kernel = registry.layer_impl(cache.impl).load()
        masks, xp = cache.weight_masks, model.backend.xp
        ran = cache if masks is None else cache._replace(layer_params=tuple(
            tuple(tuple(p) for p in layer) for layer in self._dropped(xp, cache.layer_params, masks)))
        dx, dstate0, layer_grads = stack_backward(model.backend, cache.cell, kernel, dy, final, ran)
        return dx, dstate0, self.named_grads(self._dropped(xp, layer_grads, masks))


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


def _check_checkpoint_every(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"checkpoint_every must be a positive integer (steps between kept states) or None, got "
                         f"{value!r}")
    return int(value)


def _cell_options(peepholes: Any, input_forget: Any, cell_clip: Any, layer_norm: Any, zoneout: Any,
                  recurrent_dropout: Any) -> CellOptions:
    _check_flags(peepholes=peepholes, input_forget=input_forget, layer_norm=layer_norm)
    if cell_clip is not None and (isinstance(cell_clip, bool) or not isinstance(cell_clip, (int, float, np.number))
                                  or not np.isfinite(cell_clip) or cell_clip <= 0):
        raise ValueError(f"cell_clip must be a finite number > 0 (or None: no clipping), got {cell_clip!r}")
    return CellOptions(bool(peepholes), bool(input_forget), None if cell_clip is None else float(cell_clip),
                       bool(layer_norm), _check_zoneout(zoneout),
                       _check_fraction("recurrent_dropout", recurrent_dropout))


def _options_config(options: CellOptions) -> dict[str, Any]:
    """The cell options as constructor arguments: zoneout as one probability when z_c = z_h."""
    zoneout_c, zoneout_h = options.zoneout
    return {**options._asdict(), "zoneout": zoneout_c if zoneout_c == zoneout_h else options.zoneout}


def _check_zoneout(value: Any) -> tuple[float, float]:
    """``z`` or ``(z_c, z_h)``, each in [0, 1), as the pair (z_c, z_h)."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"zoneout must be one probability or a pair (z_c, z_h), each in [0, 1), got {value!r}")
    return (_check_fraction("zoneout", pair[0]), _check_fraction("zoneout", pair[1]))


def _check_proj_size(proj_size: Any, hidden_size: int) -> None:
    if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)) or not 0 <= proj_size < hidden_size:
        raise ValueError(f"proj_size must be an integer in [0, hidden_size) = [0, {hidden_size}) (0: no projection), "
                         f"got {proj_size!r}")


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_cache_type(cache: Any, expected: type) -> None:
    if not isinstance(cache, expected):
        raise TypeError(f"cache must be the {expected.__name__} returned by this model's forward, "
                        f"got {type(cache).__name__}")


class LSTM(Module):
    """A multi-layer LSTM on any Array API backend with exact backpropagation through time, with PyTorch
    ``nn.LSTM``'s options, shapes and parameter layout (fused as below).

    Parameters per layer k (and ``..._reverse`` for the reverse direction): ``weight_l{k}`` (D_k + R, 4H), rows
    for the input then for h_{t-1}, columns for the gates i, f, g, o; ``bias_l{k}`` (4H,); with ``proj_size``
    P > 0 also ``projection_l{k}`` (H, P), and R = P (:class:`lstmx.nn.cells.LSTMPCell`), else R = H. Dropout
    (training mode only) acts between layers. ``bidirectional`` runs each layer in both directions and
    concatenates them (y has 2R features). ``batch_first`` takes x and gives y as (B, T, ·); states stay
    (L·dirs, B, ·). ``precision="tf32"`` (CuPy, float32) runs the cuBLAS GEMMs on TensorFloat-32 tensor cores
    (:mod:`lstmx.dispatch.precision`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        *,
        bidirectional: bool = False,
        proj_size: int = 0,
        batch_first: bool = False,
        peepholes: bool = False,
        input_forget: bool = False,
        cell_clip: float | None = None,
        layer_norm: bool = False,
        zoneout: float | tuple[float, float] = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        locked_dropout: bool = False,
        checkpoint_every: int | None = None,
        backend: Any = "numpy",
        dtype: Any = "float32",
        seed: int = 0,
        precision: str = "float32",
    ) -> None:
        _check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        self.checkpoint_every = _check_checkpoint_every(checkpoint_every)
        self.cell_options = _cell_options(peepholes, input_forget, cell_clip, layer_norm, zoneout,
                                          recurrent_dropout)
        self.weight_drop = _check_fraction("weight_drop", weight_drop)
        _check_flags(locked_dropout=locked_dropout)
        self.locked_dropout = bool(locked_dropout)
        _check_proj_size(proj_size, hidden_size)
        _check_flags(bidirectional=bidirectional, batch_first=batch_first)
        super().__init__(backend, dtype, seed, dropout, precision)
        if self.dropout and num_layers == 1:
            warnings.warn(f"lstmx: dropout={dropout} has no effect with num_layers=1: an LSTM's dropout acts between "
                          "its layers", UserWarning, stacklevel=2)
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.proj_size, self.bidirectional, self.batch_first = int(proj_size), bidirectional, batch_first
        self.stack = Stack("", lstm_cell(self.hidden_size, self.proj_size, self.cell_options), self.input_size,
                           self.num_layers, bidirectional)
        self._set_host_params(self.stack.init_params(np.random.default_rng(seed)))

    @property
    def output_size(self) -> int:
        """The features of y: dirs · (proj_size or hidden_size)."""
        return self.stack.output_size

    def config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "dropout": self.dropout, "bidirectional": self.bidirectional, "proj_size": self.proj_size,
                "batch_first": self.batch_first, "checkpoint_every": self.checkpoint_every,
                **_options_config(self.cell_options), "weight_drop": self.weight_drop, "locked_dropout": self.locked_dropout}

    def _time_major(self, name: str, values: Any, features: int, steps: int | None = None,
                    batch: int | None = None) -> Any:
        """Check ``values`` ((T, B, F), or (B, T, F) when batch_first) and return them as (T, B, F)."""
        shape = (batch, steps, features) if self.batch_first else (steps, batch, features)
        check_float_array(self.backend, name, values, shape, self.dtype)
        if not self.batch_first:
            return values
        return self.backend.contiguous(self.backend.xp.permute_dims(values, (1, 0, 2)))

    def _as_given(self, values: Any) -> Any:
        """(T, B, F) → the layout the caller uses."""
        return self.backend.xp.permute_dims(values, (1, 0, 2)) if self.batch_first else values

    def forward(
        self, x: Any, state: State | None = None, lengths: Any = None, *, check_finite: bool = False,
        impl: str | None = None,
    ) -> tuple[Any, State, LSTMCache]:
        """``x`` (T, B, input_size) → ``(y (T, B, dirs·R), (h_T (L·dirs, B, R), c_T (L·dirs, B, H)), cache)``
        ((B, T, ·) for x and y when ``batch_first``).

        ``state`` is the initial ``(h0, c0)`` (zeros when None); ``lengths`` (B,) integers in [0, T] mark
        variable-length sequences (a packed sequence's semantics): padded steps output zeros and keep the
        state, so the final state is each sequence's last real step, and the reverse direction starts at each
        sequence's last real step. ``check_finite`` also refuses NaN/Inf in ``x`` (one host sync). ``impl``
        names the layer implementation (:mod:`lstmx.dispatch.registry`; default: the registry's choice).
        """
        x = self._time_major("x", x, self.input_size)
        steps, batch = x.shape[0], x.shape[1]
        if steps == 0:
            raise ValueError("x is an empty sequence (T = 0 time steps)")
        if check_finite:
            _check_finite_all(self.backend, x=x, state=state)
        host_lengths = None if lengths is None else check_lengths(self.backend, lengths, steps, batch)
        masks = self._dropout_masks((steps, batch, self.output_size), self.num_layers - 1)
        with self._matmuls():
            y, final, cache = self.stack.forward(self, x, state, host_lengths, masks, impl)
        return self._as_given(y), final, cache

    def infer(self, x: Any, state: State | None = None, lengths: Any = None, *,
              impl: str | None = None) -> tuple[Any, State]:
        """``(y, (h_T, c_T))`` as :meth:`forward` gives them in evaluation mode, keeping nothing for a backward:
        the memory beyond y does not grow with T."""
        x = self._time_major("x", x, self.input_size)
        if x.shape[0] == 0:
            raise ValueError("x is an empty sequence (T = 0 time steps)")
        host_lengths = None if lengths is None else check_lengths(self.backend, lengths, x.shape[0], x.shape[1])
        with self._matmuls():
            y, final = self.stack.infer(self, x, state, host_lengths, impl)
        return self._as_given(y), final

    def backward(self, dy: Any, cache: LSTMCache, dstate: State | None = None) -> tuple[Any, State, dict[str, Any]]:
        """Exact BPTT from ``dy`` = dL/dy (shaped as y) and optional ``dstate`` = dL/d(h_T, c_T).

        ``cache`` must come from this model's latest forward with its current parameters (matched by the
        parameter arrays themselves: one replaced since, as an optimizer step does, is refused; a change written
        into a parameter array in place is not detected). Returns ``(dx, (dh0, dc0), grads)`` with dx shaped as x
        and ``grads`` keyed like ``params``.
        """
        _check_cache_type(cache, LSTMCache)
        self._check_cache_owner(cache.parameter_arrays())
        dy = self._time_major("dy", dy, self.output_size, cache.steps, cache.batch)
        with self._matmuls():
            dx, dstate0, grads = self.stack.backward(self, dy, cache, dstate)
        return self._as_given(dx), dstate0, grads


def _check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")


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
    embedding_mask: Any = None  # (V, 1) embedding-dropout mask, or None


class LossOutput(NamedTuple):
    """What :meth:`LanguageModel.loss` returns."""

    loss: Any  # 0-d array: mean cross-entropy per real target token (nats)
    grads: dict[str, Any] | None  # keyed like ``params``; None when grads=False
    state: State  # final (h, c), to carry into the next window
    initial_state_grad: State | None  # dL/d(h0, c0); None when grads=False


class LanguageModel(Module):
    """Token ids → Embedding → LSTM → (dropout) → Linear → logits over the vocabulary.

    Parameter names: ``embedding.weight`` (V, E); ``lstm.weight_l{k}``, ``lstm.bias_l{k}`` (and
    ``lstm.projection_l{k}`` with ``proj_size``) as in :class:`LSTM`; ``head.weight`` (R, V), ``head.bias`` (V,),
    R = proj_size or hidden_size. Dropout acts between LSTM layers and on the LSTM output. ``precision`` as in
    :class:`LSTM`. A causal language model cannot look ahead, so ``bidirectional=True`` is refused.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 64,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.0,
        *,
        proj_size: int = 0,
        bidirectional: bool = False,
        peepholes: bool = False,
        input_forget: bool = False,
        cell_clip: float | None = None,
        layer_norm: bool = False,
        zoneout: float | tuple[float, float] = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        locked_dropout: bool = False,
        embedding_dropout: float = 0.0,
        tie_weights: bool = False,
        checkpoint_every: int | None = None,
        backend: Any = "numpy",
        dtype: Any = "float32",
        seed: int = 0,
        precision: str = "float32",
    ) -> None:
        _check_positive(vocab_size=vocab_size, embedding_size=embedding_size, hidden_size=hidden_size,
                        num_layers=num_layers)
        self.checkpoint_every = _check_checkpoint_every(checkpoint_every)
        self.cell_options = _cell_options(peepholes, input_forget, cell_clip, layer_norm, zoneout,
                                          recurrent_dropout)
        self.weight_drop = _check_fraction("weight_drop", weight_drop)
        self.embedding_dropout = _check_fraction("embedding_dropout", embedding_dropout)
        _check_flags(locked_dropout=locked_dropout, tie_weights=tie_weights)
        self.locked_dropout, self.tie_weights = bool(locked_dropout), bool(tie_weights)
        width = proj_size or hidden_size
        if self.tie_weights and embedding_size != width:
            raise ValueError(f"tie_weights needs embedding_size = the LSTM's output size (proj_size or hidden_size), "
                             f"got {embedding_size} and {width}; set proj_size={embedding_size} or "
                             f"embedding_size={width}")
        _check_proj_size(proj_size, hidden_size)
        if bidirectional is not False:
            raise ValueError("bidirectional must be False for a LanguageModel: a causal language model cannot look "
                             "ahead (use lstmx.LSTM(bidirectional=True) as an encoder)")
        super().__init__(backend, dtype, seed, dropout, precision)
        self.vocab_size, self.embedding_size = int(vocab_size), int(embedding_size)
        self.hidden_size, self.num_layers, self.proj_size = int(hidden_size), int(num_layers), int(proj_size)
        self.stack = Stack("lstm.", lstm_cell(self.hidden_size, self.proj_size, self.cell_options),
                           self.embedding_size, self.num_layers)
        rng = np.random.default_rng(seed)
        host = {"embedding.weight": init.embedding(rng, self.vocab_size, self.embedding_size)}
        host.update(self.stack.init_params(rng))
        host["head.weight"], host["head.bias"] = init.linear(rng, self.output_size, self.vocab_size)
        if self.tie_weights:  # the head multiplies by the embedding's transpose: one matrix, two uses
            del host["head.weight"]
        self._set_host_params(host)

    def _draws_masks(self) -> bool:
        """Whether a forward in this mode draws random masks (then even a loss without gradients runs it)."""
        options = self.cell_options
        return self.training and bool(self.dropout or self.weight_drop or self.embedding_dropout
                                      or any(options.zoneout) or options.recurrent_dropout)

    def _head_weight(self) -> Any:
        """The head's (R, V) matrix: its own, or the embedding's transpose when the weights are tied."""
        return self.params["embedding.weight"].T if self.tie_weights else self.params["head.weight"]

    @property
    def output_size(self) -> int:
        """R: the LSTM's output features (proj_size or hidden_size), the head's input."""
        return self.stack.output_size

    def config(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "embedding_size": self.embedding_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers, "dropout": self.dropout,
                "proj_size": self.proj_size, "checkpoint_every": self.checkpoint_every, **_options_config(self.cell_options),
                "weight_drop": self.weight_drop, "locked_dropout": self.locked_dropout,
                "embedding_dropout": self.embedding_dropout, "tie_weights": self.tie_weights}

    def forward(
        self, tokens: Any, state: State | None = None, lengths: Any = None, *, check_input: bool = True,
        impl: str | None = None,
    ) -> tuple[Any, State, LanguageModelCache]:
        """``tokens`` (T, B) integer ids → ``(logits (T, B, V), (h_T, c_T), cache)``.

        ``check_input`` verifies the ids lie in the vocabulary (one host sync; training loops that built the
        batches themselves may turn it off). ``impl`` names the LSTM layer implementation (:mod:`lstmx.dispatch.registry`).
        """
        host_lengths = self._lengths(tokens, lengths, check_input)
        with self._matmuls():
            return self._forward(tokens, state, host_lengths, impl)

    def infer(self, tokens: Any, state: State | None = None, lengths: Any = None, *, check_input: bool = True,
              impl: str | None = None) -> tuple[Any, State]:
        """``(logits, (h_T, c_T))`` as :meth:`forward` gives them in evaluation mode, keeping nothing for a
        backward (evaluation and sampling use it)."""
        host_lengths = self._lengths(tokens, lengths, check_input)
        with self._matmuls():
            return self._infer(tokens, state, host_lengths, impl)

    def _infer(self, tokens: Any, state: State | None, lengths: np.ndarray | None,
               impl: str | None) -> tuple[Any, State]:
        """The evaluation forward on checked input: ``(logits, final state)``, keeping nothing."""
        vectors, _ = embedding_forward(self.backend, tokens, self.params["embedding.weight"])
        y, final = self.stack.infer(self, vectors, state, lengths, impl)
        logits, _ = linear_forward(self.backend, y, self._head_weight(), self.params["head.bias"])
        return logits, final

    def _lengths(self, tokens: Any, lengths: Any, check_input: bool) -> np.ndarray | None:
        """Validate ``tokens`` and ``lengths``: the checked host lengths (None: every step real)."""
        check_same_backend(self.backend, "tokens", tokens)
        if check_input:
            check_token_array(self.backend, "tokens", tokens, 2, self.vocab_size)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise ValueError(f"tokens must be a non-empty sequence of shape (T, B), got {tuple(tokens.shape)}")
        return None if lengths is None else check_lengths(self.backend, lengths, *tokens.shape)

    def draw_dropout_masks(self, steps: int, batch: int) -> tuple[Any, ...]:
        """The dropout masks a training forward of (steps, batch) tokens would draw (None entries in eval mode or
        without dropout): one per LSTM layer, the last acting on the LSTM output. Drawing them first lets a
        caller hand slices of one batch's masks to several forwards (``dropout_masks=``)."""
        return self._dropout_masks((steps, batch, self.output_size), self.num_layers)

    def _embedding_mask(self) -> Any:
        """Embedding dropout (training only): whole tokens dropped, one (V, 1) mask of {0, 1/(1 − p)} per
        forward; None otherwise."""
        if not self.training or not self.embedding_dropout:
            return None
        return dropout_mask(self.backend, self.dropout_rng, (self.vocab_size, 1), self.embedding_dropout, self.dtype)

    def _forward(self, tokens: Any, state: State | None, lengths: np.ndarray | None, impl: str | None,
                 dropout_masks: Sequence[Any] | None = None) -> tuple[Any, State, LanguageModelCache]:
        steps, batch = tokens.shape
        embedding_mask = self._embedding_mask()
        table = self.params["embedding.weight"]
        vectors, embedding_cache = embedding_forward(self.backend, tokens,
                                                     table if embedding_mask is None else table * embedding_mask)
        masks = self._given_masks(dropout_masks, steps, batch) if dropout_masks is not None else \
            self.draw_dropout_masks(steps, batch)
        y, final, lstm_cache = self.stack.forward(self, vectors, state, lengths, masks[:-1], impl)
        logits, head_cache = linear_forward(
            self.backend, dropout_forward(y, masks[-1]), self._head_weight(), self.params["head.bias"]
        )
        cache = LanguageModelCache(tuple(self.params.values()), embedding_cache, lstm_cache, masks[-1], head_cache,
                                   embedding_mask)
        return logits, final, cache

    def _given_masks(self, masks: Sequence[Any], steps: int, batch: int) -> tuple[Any, ...]:
        if len(masks) != self.num_layers:
            raise ValueError(f"dropout_masks must hold {self.num_layers} masks (one per layer), got {len(masks)}")
        for k, mask in enumerate(masks):
            if mask is not None:
                check_float_array(self.backend, f"dropout_masks[{k}]", mask,
                                  (1 if self.locked_dropout else steps, batch, self.output_size), self.dtype)
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
        dy, dhead_weight, dhead_bias = linear_backward(self.backend, dlogits, self._head_weight(), cache.head)
        dvectors, dstate0, grads = self.stack.backward(self, dropout_backward(dy, cache.output_dropout), cache.lstm,
                                                       dstate)
        _, scatter_add = registry.choose_scatter_add(self.backend, self.vocab_size)
        dtable = embedding_backward(self.backend, dvectors, cache.embedding, scatter_add)
        if cache.embedding_mask is not None:
            dtable = dtable * cache.embedding_mask
        if self.tie_weights:  # the embedding is used twice: its gradient is the sum of both uses
            grads = {"embedding.weight": dtable + dhead_weight.T, **grads, "head.bias": dhead_bias}
        else:
            grads = {"embedding.weight": dtable, **grads, "head.weight": dhead_weight, "head.bias": dhead_bias}
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
        grad_scale: Any = None,
    ) -> LossOutput:
        """Mean cross-entropy per real target token (a 0-d array) and, when ``grads``, the gradients.

        ``targets`` (T, B) holds the next token of each input; entries equal to ``ignore_index``, and steps
        past ``lengths``, do not count. ``dropout_masks`` (from :meth:`draw_dropout_masks`, possibly sliced along
        the batch) replaces the masks the forward would draw. ``loss_impl`` names the implementation of the loss
        and its gradient (:func:`lstmx.dispatch.registry.choose_loss`). ``grad_scale`` (a 0-d array of the model's
        dtype on its backend, or None) multiplies dL/dlogits before the backward, and so every gradient returned: a
        loss scale (:mod:`lstmx.training.loss_scale`). Returns a :class:`LossOutput`
        ``(loss, grads, state, initial_state_grad)``.
        """
        host_lengths = self._lengths(inputs, lengths, check_input)
        if check_input:
            _check_targets(self.backend, targets, inputs.shape, self.vocab_size, ignore_index)
        if grad_scale is not None:
            check_float_array(self.backend, "grad_scale", grad_scale, (), self.dtype)
        with self._matmuls():
            return self._loss(inputs, targets, state, host_lengths, ignore_index, grads, impl, dropout_masks,
                              loss_impl, grad_scale)

    def _loss(self, inputs: Any, targets: Any, state: State | None, lengths: np.ndarray | None, ignore_index: int,
              grads: bool, impl: str | None, dropout_masks: Sequence[Any] | None, loss_impl: str | None,
              grad_scale: Any = None) -> LossOutput:
        if grads or self._draws_masks():
            logits, final, cache = self._forward(inputs, state, lengths, impl, dropout_masks)
        else:  # nothing to backpropagate and no dropout to draw: keep nothing
            logits, final = self._infer(inputs, state, lengths, impl)
        xp = self.backend.xp
        flat_targets = xp.reshape(targets, (-1,))
        if lengths is not None:  # steps past a sequence's length do not count
            real = self.backend.asarray((np.arange(inputs.shape[0])[:, None] < lengths[None, :]).reshape(-1))
            flat_targets = xp.where(real, flat_targets, xp.full_like(flat_targets, ignore_index))
        flat_logits = xp.reshape(logits, (-1, self.vocab_size))
        if not grads:
            loss, _ = cross_entropy_forward(self.backend, flat_logits, flat_targets, ignore_index)
            return LossOutput(loss, None, final, None)
        _, loss_and_gradient = registry.choose_loss(self.backend, loss_impl)
        loss, dlogits = loss_and_gradient(self.backend, flat_logits, flat_targets, ignore_index)
        if grad_scale is not None:
            dlogits = dlogits * grad_scale
        gradients, dstate0 = self._backward(xp.reshape(dlogits, logits.shape), cache, None)
        return LossOutput(loss, gradients, final, dstate0)


def _check_targets(backend: Backend, targets: Any, shape: tuple[int, ...], vocab_size: int, ignore_index: int) -> None:
    check_same_backend(backend, "targets", targets)
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"targets must have the inputs' shape {tuple(shape)}, got {tuple(targets.shape)}")
    check_token_array(backend, "targets", targets, len(shape), vocab_size, ignore_index)
