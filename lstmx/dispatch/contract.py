"""The kernel contract: the functions an LSTM-layer implementation's module provides, as ``typing.Protocol``\\ s.

A module is the implementation (PEP 544: a module satisfies a protocol through its functions). Which protocols
it must satisfy follows from what its registry record declares it takes: :class:`PlainLayerKernel` for the
``lstm`` cell, :class:`ProjectedLayerKernel` for ``lstmp``, and :class:`VariantLayerKernel` for any cell option
(its ``extra`` carries a projection too when it takes ``lstmp``). :func:`contract_breaches` names what a module
lacks; :meth:`lstmx.dispatch.registry.Impl.load` refuses such a module, so a path that declares more than it
has never reaches a model. The shapes, dtypes and caches behind these signatures are those of the generic path
(:mod:`lstmx.nn.layers.lstm_layer`), whose checks every implementation calls first.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Protocol

from ..backend import Backend
from ..nn.layers.cell import CellOptions
from ..nn.layers.lstm_layer import ExtraParams, LayerNoise

Outputs = tuple[Any, tuple[Any, Any], Any]  # y (T, B, R), (h_T, c_T), the cache its backward reads


class PlainLayerKernel(Protocol):
    """One layer of the ``lstm`` cell: forward over T steps, and its backward from the cache."""

    def lstm_layer_forward(self, backend: Backend, x: Any, weight: Any, bias: Any, h0: Any, c0: Any,
                           step_mask: Any = None) -> Outputs: ...

    def lstm_layer_backward(self, backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any,
                            cache: Any) -> tuple[Any, tuple[Any, Any], Any, Any]:
        """``(dx, (dh0, dc0), dweight, dbias)``."""
        ...


class ProjectedLayerKernel(Protocol):
    """One layer of the ``lstmp`` cell (``proj_size``): the plain signatures with W_hr after the bias."""

    def lstmp_layer_forward(self, backend: Backend, x: Any, weight: Any, bias: Any, projection: Any, h0: Any,
                            c0: Any, step_mask: Any = None) -> Outputs: ...

    def lstmp_layer_backward(self, backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any,
                             projection: Any, cache: Any) -> tuple[Any, tuple[Any, Any], Any, Any, Any]:
        """``(dx, (dh0, dc0), dweight, dbias, dprojection)``."""
        ...


class VariantLayerKernel(Protocol):
    """One layer with cell options: their parameters in ``extra``, zoneout's and recurrent dropout's masks in
    ``noise`` (None in evaluation)."""

    def lstm_variant_layer_forward(self, backend: Backend, x: Any, weight: Any, bias: Any, extra: ExtraParams,
                                   options: CellOptions, h0: Any, c0: Any, step_mask: Any = None,
                                   noise: LayerNoise | None = None) -> Outputs: ...

    def lstm_variant_layer_backward(self, backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any,
                                    extra: ExtraParams, options: CellOptions,
                                    cache: Any) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
        """``(dx, (dh0, dc0), dweight, dbias, dextra)``, ``dextra`` the gradient of each array ``extra`` holds."""
        ...


Pair = tuple[Any, Any]  # (forward direction, reverse direction)


class PairedLayerKernel(Protocol):
    """Both directions of a bidirectional layer of the ``lstm`` cell at once (one launch for two independent
    recurrences): each argument and result the pair of :class:`PlainLayerKernel`'s, the reverse direction's input
    already reversed in time; the backward takes the pair of caches its forward made."""

    def lstm_layer_pair_forward(self, backend: Backend, xs: Pair, weights: Pair, biases: Pair, h0s: Pair, c0s: Pair,
                                step_mask: Any = None) -> tuple[Pair, tuple[Pair, Pair], Pair]: ...

    def lstm_layer_pair_backward(self, backend: Backend, dys: Pair, dh_lasts: Pair, dc_lasts: Pair, weights: Pair,
                                 caches: Pair) -> tuple[Pair, tuple[Pair, Pair], Pair, Pair]:
        """``((dx, dx'), ((dh0, dc0), (dh0', dc0')), (dweight, dweight'), (dbias, dbias'))``."""
        ...


def protocols_for(cells: tuple[str, ...], cell_options: tuple[str, ...], paired: bool = False) -> tuple[type, ...]:
    """The protocols a module must satisfy to run these cells and cell options (``paired``: and both directions
    of a layer at once)."""
    needed = {"lstm": PlainLayerKernel, "lstmp": ProjectedLayerKernel}
    return (tuple(needed[cell] for cell in cells) + ((VariantLayerKernel,) if cell_options else ())
            + ((PairedLayerKernel,) if paired else ()))


def contract_breaches(module: ModuleType, protocols: tuple[type, ...]) -> list[str]:
    """What ``module`` lacks of ``protocols``: each function missing, or whose parameters differ in name or
    order from the protocol's (one line each; empty when it satisfies them all)."""
    breaches = []
    for protocol in protocols:
        for name, declared in vars(protocol).items():  # in the order the protocol declares them
            if name.startswith("_") or not inspect.isfunction(declared):
                continue
            function = getattr(module, name, None)
            if not callable(function):
                breaches.append(f"{name} is missing ({protocol.__name__})")
                continue
            expected = list(inspect.signature(declared).parameters)[1:]  # without self
            given = list(inspect.signature(function).parameters)
            if given != expected:
                breaches.append(f"{name}({', '.join(given)}) should take ({', '.join(expected)})")
    return breaches
