"""The plan: which implementation runs each part of the work, and at which precision, resolved once.

The requests (``impl=`` arguments, the :func:`lstmx.dispatch.registry.use_layer_impl` family of contexts, and the
``LSTMX_*_IMPL`` environment variables as defaults) are inputs to :func:`resolve_plan` only. A trainer resolves
its plan when it is built, for its batch shape, and passes every choice down explicitly at each step, so nothing
below reads a context or the environment again; a model's forward resolves the layer part for its call and
records the layer implementation in its cache, and the backward runs what the cache names.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import Backend
from . import registry, tuning


class Plan(NamedTuple):
    """The implementations a language model's training step runs (names from :mod:`lstmx.dispatch.registry`)."""

    layer: str  # the LSTM layers
    loss: str  # the softmax cross-entropy with its gradient
    update: str  # the optimizer's update, and the global-norm clipping of the same family
    scatter: str  # the embedding gradient's scatter-add
    precision: str  # "float32" or "tf32"
    layer_tuned: bool = False  # the layer choice is what lstmx tune measured fastest here (not a threshold)

    def describe(self) -> str:
        tuned = " (measured by lstmx tune)" if self.layer_tuned else ""
        return (f"layers {self.layer}{tuned}, loss {self.loss}, update and clipping {self.update}, embedding gradient "
                f"{self.scatter}, precision {self.precision}")


def resolve_plan(model: Any, optimizer: type, batch: int, *, layer: str | None = None, loss: str | None = None,
                 update: str | None = None, masked: bool = False) -> Plan:
    """The plan for training ``model`` with an optimizer of class ``optimizer`` on batches of ``batch`` streams
    (``masked``: with lengths), from the requests given here (None: the context, then the environment, then
    "auto"). An implementation asked for that cannot run the work raises here, naming those that can."""
    backend: Backend = model.backend
    cell = model.stack.cell
    sizes = (batch, cell.hidden_size)
    chosen_layer = registry.choose_layer_impl(backend, model.dtype, masked, layer, sizes, cell.kind,
                                              cell.options.names(), model.precision).name
    tuned = (registry.requested_impl(layer)[0] == registry.AUTO
             and tuning.tuned_choice(backend, model.dtype, masked, sizes, cell.kind,
                                     cell.options.names()) == chosen_layer)
    chosen_loss, _ = registry.choose_loss(backend, loss)
    chosen_update, _ = registry.choose_update(backend, optimizer, update)
    scatter, _ = registry.choose_scatter_add(backend, model.vocab_size)
    return Plan(chosen_layer, chosen_loss, chosen_update, scatter, model.precision, tuned)
