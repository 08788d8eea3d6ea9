"""A stack of recurrent layers of any cell, in one or two directions, with dropout between layers, as pure
functions (forward beside backward).

Layer k of a bidirectional stack runs the cell once forward in time and once in reverse over the same input
and concatenates the two outputs along the features, as PyTorch's ``nn.LSTM(bidirectional=True)``: y (T, B, 2·R),
and the next layer reads 2·R features. The final states are ordered layer by layer, the forward direction
first: index ``k * directions + d``. The reverse direction is the forward computation run on the input
reversed in time — with variable lengths, each sequence reversed within its own length (:class:`TimeReversal`),
so it starts at its last real step as a packed sequence's reverse direction does — and its output reversed
back. Every implementation therefore runs both directions; none has a direction of its own.

The implementation (:mod:`lstmx.registry`) is chosen once per forward at the model boundary and recorded in the
cache; the backward runs the implementation the cache names.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple, Sequence

import numpy as np

from .backend import Backend
from .cells import Cell
from .layers import dropout_backward, dropout_forward

LayerParams = tuple[Any, ...]  # one layer and direction's parameters, in the cell's parameter order


class TimeReversal(NamedTuple):
    """Reverses a (T, B, F) array in time, each sequence within its own length; its own inverse.

    ``rows`` indexes the (T·B) rows of the flattened array: row t·B + b takes row (L_b − 1 − t)·B + b for
    t < L_b and stays where it is on padding, so padded steps stay last.
    """

    rows: Any  # (T·B,) integer indices on the backend's device
    steps: int
    batch: int

    def __call__(self, backend: Backend, values: Any) -> Any:
        xp = backend.xp
        features = values.shape[-1]
        flat = xp.reshape(values, (self.steps * self.batch, features))
        return xp.reshape(xp.take(flat, self.rows, axis=0), (self.steps, self.batch, features))


def time_reversal(backend: Backend, steps: int, batch: int, lengths: np.ndarray | None) -> TimeReversal:
    """The reversal for sequences of ``lengths`` (host integers, checked; None: every sequence has T steps)."""
    full = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    t = np.arange(steps)[:, None]
    source_step = np.where(t < full[None, :], full[None, :] - 1 - t, t)
    rows = source_step * batch + np.arange(batch)[None, :]
    return TimeReversal(backend.asarray(rows.reshape(-1).astype(np.int64)), steps, batch)


class StackCache(NamedTuple):
    impl: str  # registry name of the layer implementation that made the layer caches
    layer_params: tuple[tuple[LayerParams, ...], ...]  # [layer][direction]: the exact arrays the forward used
    layers: tuple[tuple[Any, ...], ...]  # [layer][direction]: one cache each, of the implementation's own type
    dropout_masks: tuple[Any, ...]  # mask applied to layer k's output before layer k+1 (None: no dropout)
    reversal: TimeReversal | None  # how the reverse direction reversed time (None: one direction)
    steps: int
    batch: int

    def parameter_arrays(self) -> tuple[Any, ...]:
        """Every parameter array the forward used, flat (what a model compares with its current ones)."""
        return tuple(array for layer in self.layer_params for params in layer for array in params)


LSTMCache = StackCache  # the name the models' docs and error messages use


def stack_forward(
    backend: Backend,
    cell: Cell,
    impl_name: str,
    kernel: ModuleType,
    layers: Sequence[Sequence[LayerParams]],
    x: Any,
    state: Sequence[Any],
    step_mask: Any = None,
    dropout_masks: Sequence[Any] | None = None,
    reversal: TimeReversal | None = None,
) -> tuple[Any, tuple[Any, ...], StackCache]:
    """``x`` (T, B, D) and ``state`` (h0 (L·dirs, B, R), c0 (L·dirs, B, H)) → ``y`` (T, B, dirs·R), final state
    (same shapes), cache. ``layers[k][d]`` holds layer k's parameters in direction d; ``reversal`` is required
    when there are two directions. ``kernel`` is the implementation module named ``impl_name``."""
    xp = backend.xp
    directions = len(layers[0])
    masks = tuple(dropout_masks) if dropout_masks is not None else (None,) * (len(layers) - 1)
    inputs, finals, caches = x, [], []
    for k, layer in enumerate(layers):
        outputs, layer_caches = [], []
        for d, params in enumerate(layer):
            index = k * directions + d
            seen = inputs if d == 0 else reversal(backend, inputs)
            y, final, cache = cell.layer_forward(kernel, backend, seen, tuple(params),
                                                 tuple(s[index, ...] for s in state), step_mask)
            outputs.append(y if d == 0 else reversal(backend, y))
            finals.append(final)
            layer_caches.append(cache)
        y = outputs[0] if directions == 1 else xp.concat(outputs, axis=-1)
        inputs = dropout_forward(y, masks[k]) if k < len(layers) - 1 else y
        caches.append(tuple(layer_caches))
    final_state = tuple(xp.stack([f[s] for f in finals]) for s in range(len(state)))
    cache = StackCache(impl_name, tuple(tuple(tuple(p) for p in layer) for layer in layers), tuple(caches), masks,
                       reversal if directions == 2 else None, x.shape[0], x.shape[1])
    return inputs, final_state, cache


def stack_backward(
    backend: Backend, cell: Cell, kernel: ModuleType, dy: Any, dstate: Sequence[Any], cache: StackCache
) -> tuple[Any, tuple[Any, ...], list[list[LayerParams]]]:
    """Mirror of :func:`stack_forward`: ``(dx, d initial state, [[d params per direction] per layer])``.

    ``dstate`` is dL/d(final state), shaped as the final state; ``kernel`` runs the backward of the
    implementation the cache names."""
    xp = backend.xp
    layers = cache.layer_params
    directions = len(layers[0])
    width = cell.output_size
    grads: list[list[LayerParams]] = [[] for _ in layers]
    dinitial: list[Any] = [None] * (len(layers) * directions)
    for k in reversed(range(len(layers))):
        if k < len(layers) - 1:
            dy = dropout_backward(dy, cache.dropout_masks[k])
        dx_sum = None
        for d in range(directions):
            index = k * directions + d
            if directions == 1:
                part = dy
            elif d == 0:
                part = xp.asarray(dy[..., :width], copy=True)  # a contiguous copy: kernels read dense arrays
            else:
                part = cache.reversal(backend, dy[..., width:])
            dx, d0, dparams = cell.layer_backward(kernel, backend, part, tuple(s[index, ...] for s in dstate),
                                                  layers[k][d], cache.layers[k][d])
            dx = dx if d == 0 else cache.reversal(backend, dx)
            dx_sum = dx if dx_sum is None else dx_sum + dx
            grads[k].append(dparams)
            dinitial[index] = d0
        dy = dx_sum
    return dy, tuple(xp.stack([d0[s] for d0 in dinitial]) for s in range(len(dstate))), grads
