"""A stack of recurrent layers of any cell, in one or two directions, with dropout between layers, as pure
functions (forward beside backward).

Layer k of a bidirectional stack runs the cell once forward in time and once in reverse over the same input
and concatenates the two outputs along the features, as PyTorch's ``nn.LSTM(bidirectional=True)``: y (T, B, 2·R),
and the next layer reads 2·R features. The final states are ordered layer by layer, the forward direction
first: index ``k * directions + d``. The reverse direction is the forward computation run on the input
reversed in time — with variable lengths, each sequence reversed within its own length (:class:`TimeReversal`),
so it starts at its last real step as a packed sequence's reverse direction does — and its output reversed
back. Every implementation therefore runs both directions; none has a direction of its own. An implementation
with pair kernels may run both directions of a layer at once (``paired``: one launch for two independent
recurrences, as cuDNN does); the model boundary decides, and the cache records it.

The implementation (:mod:`lstmx.dispatch.registry`) is chosen once per forward at the model boundary and recorded in the
cache; the backward runs the implementation the cache names.

**Checkpointing over time** (``checkpoint_every`` = K): the forward runs each layer and direction in segments of
K steps and keeps only each segment's starting state (and each layer's input); the backward runs each segment's
forward again, from its saved state, then its backward, last segment first. The gradients are exact (the same
arithmetic as without checkpointing), the kept activations O(T/K) states per layer plus one segment's O(K)
while it is recomputed. :func:`stack_infer` runs the same segments and keeps nothing, for evaluation and
sampling: memory independent of T beyond the output. Any implementation runs segments: they are shorter layers.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ..backend import Backend
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


class Segments(NamedTuple):
    """What a checkpointed layer and direction keeps: the state at the start of each segment of ``length`` steps."""

    starts: tuple[tuple[Any, ...], ...]
    length: int


INFERENCE_SEGMENT = 64  # steps run at once by stack_infer: long enough for the GEMMs, short enough to bound memory


class StackCache(NamedTuple):
    impl: str  # registry name of the layer implementation that made the layer caches
    layer_params: tuple[tuple[LayerParams, ...], ...]  # [layer][direction]: the exact arrays the forward used
    layers: tuple[tuple[Any, ...], ...]  # [layer][direction]: one cache each, of the implementation's own type
    dropout_masks: tuple[Any, ...]  # mask applied to layer k's output before layer k+1 (None: no dropout)
    reversal: TimeReversal | None  # how the reverse direction reversed time (None: one direction)
    steps: int
    batch: int
    step_mask: Any = None  # kept when checkpointed: the segments are run again
    layer_inputs: tuple[Any, ...] | None = None  # each layer's input, when checkpointed (layers hold Segments)
    weight_masks: tuple[tuple[Any, ...], ...] | None = None  # [layer][direction] DropConnect masks on W_h, or None
    noise: tuple[tuple[Any, ...], ...] | None = None  # [layer][direction] LayerNoise (zoneout, recurrent dropout)
    cell: Cell | None = None  # the cell the forward ran (its options as in effect in that mode)
    paired: bool = False  # both directions of each layer ran in one launch (the implementation's pair kernels)

    def parameter_arrays(self) -> tuple[Any, ...]:
        """Every parameter array the forward used, flat (what a model compares with its current ones)."""
        return tuple(array for layer in self.layer_params for params in layer for array in params)


LSTMCache = StackCache  # the name the models' docs and error messages use


Run = Callable[[int, int, Any, tuple[Any, ...], tuple[Any, ...]], tuple[Any, tuple[Any, ...], Any]]
RunPair = Callable[[tuple[Any, Any], tuple[Any, Any], tuple[Any, Any]], tuple[tuple[Any, Any], tuple[Any, Any],
                                                                             tuple[Any, Any]]]


def _over_layers(backend: Backend, layers: Sequence[Sequence[LayerParams]], x: Any, state: Sequence[Any],
                 dropout_masks: Sequence[Any], reversal: TimeReversal | None, run: Run, run_pair: RunPair | None = None
                 ) -> tuple[Any, tuple[Any, ...], list[tuple[Any, ...]], list[Any]]:
    """The layer and direction loop :func:`stack_forward` and :func:`stack_infer` share: ``run(k, d, input as
    direction d sees it, params, initial state) -> (y as it sees it, final state, cache)`` for each layer k and
    direction d (or, given, ``run_pair(inputs, params, initial states)`` of both directions at once, each a pair),
    the reverse direction's input and output reversed in time, the directions' outputs concatenated and dropout
    applied between layers. Returns ``(y, final state, [layer caches per direction], [each layer's input])``."""
    xp = backend.xp
    directions = len(layers[0])
    inputs, finals, caches, layer_inputs = x, [], [], []
    for k, layer in enumerate(layers):
        outputs, layer_caches = [], []
        layer_inputs.append(inputs)
        seen = [inputs if d == 0 else reversal(backend, inputs) for d in range(directions)]
        initial = [tuple(s[k * directions + d, ...] for s in state) for d in range(directions)]
        if run_pair is not None:
            ran = zip(*run_pair(tuple(seen), tuple(tuple(p) for p in layer), tuple(initial)))
        else:
            ran = (run(k, d, seen[d], tuple(params), initial[d]) for d, params in enumerate(layer))
        for d, (y, final, cache) in enumerate(ran):
            outputs.append(y if d == 0 else reversal(backend, y))
            finals.append(final)
            layer_caches.append(cache)
        y = outputs[0] if directions == 1 else xp.concat(outputs, axis=-1)
        inputs = dropout_forward(y, dropout_masks[k]) if k < len(layers) - 1 else y
        caches.append(tuple(layer_caches))
    return inputs, tuple(xp.stack([f[s] for f in finals]) for s in range(len(state))), caches, layer_inputs


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
    checkpoint_every: int | None = None,
    noise: Sequence[Sequence[Any]] | None = None,
    paired: bool = False,
) -> tuple[Any, tuple[Any, ...], StackCache]:
    """``x`` (T, B, D) and ``state`` (h0 (L·dirs, B, R), c0 (L·dirs, B, H)) → ``y`` (T, B, dirs·R), final state
    (same shapes), cache. ``layers[k][d]`` holds layer k's parameters in direction d; ``reversal`` is required
    when there are two directions. ``kernel`` is the implementation module named ``impl_name``;
    ``checkpoint_every`` = K keeps only every K-th state (module docstring); ``noise[k][d]`` holds a training
    forward's :class:`~lstmx.nn.layers.lstm_layer.LayerNoise` for layer k and direction d (None: evaluation);
    ``paired``: both directions of each layer in one launch of the kernel's pair functions (two directions, no
    checkpointing, the cell's :meth:`layer_pair_forward`)."""
    masks = tuple(dropout_masks) if dropout_masks is not None else (None,) * (len(layers) - 1)
    if paired and (len(layers[0]) != 2 or checkpoint_every is not None or noise is not None):
        raise ValueError("paired directions need a bidirectional stack without checkpointing or noise")

    def run_pair(seen: tuple[Any, Any], params: tuple[Any, Any], initial: tuple[Any, Any]) -> tuple[Any, ...]:
        return cell.layer_pair_forward(kernel, backend, seen, params, initial, step_mask)

    def run(k: int, d: int, seen: Any, params: tuple[Any, ...], initial: tuple[Any, ...]) -> tuple[Any, ...]:
        drawn = None if noise is None else noise[k][d]
        if checkpoint_every is None:
            return cell.layer_forward(kernel, backend, seen, params, initial, step_mask, drawn)
        y, final, starts = _segments_forward(backend, cell, kernel, seen, params, initial, step_mask,
                                             checkpoint_every, keep=True, noise=drawn)
        return y, final, Segments(starts, checkpoint_every)

    y, final_state, caches, layer_inputs = _over_layers(backend, layers, x, state, masks, reversal, run,
                                                        run_pair if paired else None)
    checkpointed = checkpoint_every is not None
    cache = StackCache(impl_name, tuple(tuple(tuple(p) for p in layer) for layer in layers), tuple(caches), masks,
                       reversal if len(layers[0]) == 2 else None, x.shape[0], x.shape[1],
                       step_mask if checkpointed else None, tuple(layer_inputs) if checkpointed else None,
                       noise=None if noise is None else tuple(tuple(layer) for layer in noise), cell=cell,
                       paired=paired)
    return y, final_state, cache


def _segments_forward(backend: Backend, cell: Cell, kernel: ModuleType, x: Any, params: tuple[Any, ...],
                      state: tuple[Any, ...], step_mask: Any, length: int, keep: bool,
                      noise: Any = None) -> tuple[Any, tuple[Any, ...], tuple[tuple[Any, ...], ...]]:
    """One layer and direction over ``x`` in segments of ``length`` steps, each cache dropped as soon as it is
    made: ``(y, final state, the state at each segment's start (when ``keep``))``."""
    xp = backend.xp
    outputs, starts = [], []
    for start in range(0, x.shape[0], length):
        stop = min(start + length, x.shape[0])
        if keep:
            starts.append(state)
        mask = None if step_mask is None else step_mask[start:stop, ...]
        drawn = None if noise is None else noise.window(start, stop)
        y, state, _ = cell.layer_forward(kernel, backend, x[start:stop, ...], params, state, mask, drawn)
        outputs.append(y)
    return (outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=0)), state, tuple(starts)


def _segments_backward(backend: Backend, cell: Cell, kernel: ModuleType, x: Any, dy: Any, dstate: tuple[Any, ...],
                       params: tuple[Any, ...], segments: Segments, step_mask: Any,
                       noise: Any = None) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
    """Mirror of :func:`_segments_forward` with ``keep``: each segment's forward again from its saved state, then
    its backward, last segment first; the parameter gradients summed over the segments."""
    xp = backend.xp
    dxs, total = [], None
    for number in reversed(range(len(segments.starts))):
        start = number * segments.length
        stop = min(start + segments.length, x.shape[0])
        mask = None if step_mask is None else step_mask[start:stop, ...]
        drawn = None if noise is None else noise.window(start, stop)
        _, _, cache = cell.layer_forward(kernel, backend, x[start:stop, ...], params, segments.starts[number], mask,
                                         drawn)
        dx, dstate, dparams = cell.layer_backward(kernel, backend, backend.contiguous(dy[start:stop, ...]), dstate,
                                                  params, cache)
        dxs.append(dx)
        total = dparams if total is None else tuple(a + b for a, b in zip(total, dparams))
    return (dxs[0] if len(dxs) == 1 else xp.concat(dxs[::-1], axis=0)), dstate, total


def stack_infer(
    backend: Backend,
    cell: Cell,
    kernel: ModuleType,
    layers: Sequence[Sequence[LayerParams]],
    x: Any,
    state: Sequence[Any],
    step_mask: Any = None,
    reversal: TimeReversal | None = None,
    segment: int = INFERENCE_SEGMENT,
) -> tuple[Any, tuple[Any, ...]]:
    """The forward of :func:`stack_forward` (no dropout: evaluation) that keeps nothing for a backward: ``(y,
    final state)``, each layer run in segments of ``segment`` steps whose caches are dropped at once."""
    def run(k: int, d: int, seen: Any, params: tuple[Any, ...], initial: tuple[Any, ...]) -> tuple[Any, ...]:
        return _segments_forward(backend, cell, kernel, seen, params, initial, step_mask, segment, keep=False)

    y, final_state, _, _ = _over_layers(backend, layers, x, state, (None,) * (len(layers) - 1), reversal, run)
    return y, final_state


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
        parts = [dy if directions == 1 else xp.asarray(dy[..., :width], copy=True) if d == 0  # a contiguous copy:
                 else cache.reversal(backend, dy[..., width:]) for d in range(directions)]  # kernels read dense arrays
        finals = [tuple(s[k * directions + d, ...] for s in dstate) for d in range(directions)]
        if cache.paired:
            paired = cell.layer_pair_backward(kernel, backend, tuple(parts), tuple(finals), tuple(layers[k]),
                                              tuple(cache.layers[k]))
        for d in range(directions):
            index = k * directions + d
            part, final = parts[d], finals[d]
            if cache.paired:
                dx, d0, dparams = (value[d] for value in paired)
            elif cache.layer_inputs is None:
                dx, d0, dparams = cell.layer_backward(kernel, backend, part, final, layers[k][d], cache.layers[k][d])
            else:
                seen = cache.layer_inputs[k] if d == 0 else cache.reversal(backend, cache.layer_inputs[k])
                dx, d0, dparams = _segments_backward(backend, cell, kernel, seen, part, final, layers[k][d],
                                                     cache.layers[k][d], cache.step_mask,
                                                     None if cache.noise is None else cache.noise[k][d])
            dx = dx if d == 0 else cache.reversal(backend, dx)
            dx_sum = dx if dx_sum is None else dx_sum + dx
            grads[k].append(dparams)
            dinitial[index] = d0
        dy = dx_sum
    return dy, tuple(xp.stack([d0[s] for d0 in dinitial]) for s in range(len(dstate))), grads
