"""The one place that decides which implementation runs a layer.

An LSTM layer has one generic Array API implementation (:mod:`lstmx.nn.layers.lstm_layer`) and backend-specific
fast paths in :mod:`lstmx.kernels`, each with the generic functions' signatures and tested against them (the
tests take their list from :data:`LAYER_IMPLS`). Which one runs is decided here, per call, from the backend,
the dtype and whether the batch has a step mask:

1. the ``impl=`` argument of a forward (``LSTM.forward``, ``LanguageModel.loss``, ...), else
2. the innermost :func:`use_layer_impl` context, else
3. the ``LSTMX_LAYER_IMPL`` environment variable (read at each choice), else
4. ``"auto"``: the first entry of :data:`LAYER_IMPLS` marked ``auto`` that supports the call and imports.

A name given by argument or context must support the call, or the choice fails with an error saying which
implementations could run it. The environment variable is only a default: where its implementation cannot
run a call (a masked batch for ``numpy``, say) the choice is made as for "auto". The forward records the chosen name in its cache; the backward looks the
implementation up by that name (:func:`layer_impl`) and never decides again.

The embedding gradient's scatter-add is chosen here too (:func:`choose_scatter_add`), and the optimizers' update
(:func:`choose_update`: argument, context, ``LSTMX_UPDATE_IMPL``, then "auto", as for layers) with the
gradient clipping of the same family (:func:`choose_clipping`), and the language model's cross-entropy gradient
(:func:`choose_loss`, ``LSTMX_LOSS_IMPL``).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from types import ModuleType
from typing import Any, Callable, Iterator, NamedTuple

from ..backend import Backend, dtype_name
from . import tuning
from .precision import PRECISIONS

ENVIRONMENT_VARIABLE = "LSTMX_LAYER_IMPL"
AUTO = "auto"


class ImplError(ValueError):
    """An implementation was asked for that does not exist, cannot run this call, or cannot be imported here."""


class LayerImplError(ImplError):
    """An LSTM-layer implementation that does not exist or cannot run this call here."""


class LayerImpl(NamedTuple):
    """One implementation of an LSTM layer: a module with ``lstm_layer_forward`` / ``lstm_layer_backward``."""

    name: str
    module: str  # imported on first use, so optional dependencies (Numba, CuPy) stay optional
    backends: tuple[str, ...] | None  # backend names it runs on; None: every backend
    dtypes: tuple[str, ...]  # dtypes it computes correctly
    auto_dtypes: tuple[str, ...]  # dtypes for which "auto" picks it (empty: only when asked for by name)
    step_masks: bool  # handles variable-length batches
    size_limited: bool  # its module's refuses_size(batch, hidden, dtype, options) says which sizes it runs
    summary: str
    cells: tuple[str, ...] = ("lstm",)  # the kinds of cell (lstmx.nn.cells) it runs
    cell_options: tuple[str, ...] = ()  # the cell options (lstmx.nn.layers.cell.CellOptions) it takes
    auto_max_hidden: dict[str, int] | None = None  # per dtype, the largest hidden size "auto" picks it for (a dtype
    # not named, or None: every size it runs)
    auto_cell_options: tuple[str, ...] | None = None  # the cell options "auto" gives it (None: every one it takes;
    # fewer where its kernels for the others have not yet run on a GPU)
    auto_cells: tuple[str, ...] | None = None  # the cells "auto" gives it (None: every one it runs), likewise
    precisions: tuple[str, ...] = PRECISIONS  # the model precisions (lstmx.dispatch.precision) it runs under
    tf32_recurrence: bool = False  # under precision="tf32" its recurrent products run in TensorFloat-32 too
    paired_directions: bool = False  # runs both directions of a bidirectional lstm layer in one launch (its
    # module's lstm_layer_pair_* functions) where the doubled grid fits
    auto_paired: bool = False  # ... also under "auto" (False: only when asked for by name)

    def refuses(self, backend: Backend, dtype: Any, masked: bool, sizes: tuple[int, int] | None = None,
                cell: str = "lstm", options: tuple[str, ...] = (), precision: str = "float32") -> str | None:
        """None when this implementation can run the call here, else why not (for error messages and skips).

        Cheap checks first, then the import (optional dependencies), then ``sizes`` = (batch, hidden) for
        implementations that run only some sizes (None skips that check). ``precision`` is the model's.
        """
        if self.backends is not None and backend.name not in self.backends:
            return f"runs on {', '.join(self.backends)}, not {backend.name}"
        if dtype_name(dtype) not in self.dtypes:
            return f"computes {', '.join(self.dtypes)}, not {dtype_name(dtype)}"
        if precision not in self.precisions:
            return f"runs under precision={' or '.join(map(repr, self.precisions))}, not {precision!r}"
        if cell not in self.cells:
            return f"runs the {', '.join(self.cells)} cell, not {cell} (proj_size)"
        untaken = [option for option in options if option not in self.cell_options]
        if untaken:
            return f"takes no {', '.join(untaken)}"
        if masked and not self.step_masks:
            return "takes no step mask (lengths)"
        module, reason = _runnable_module(self.module, None, backend)  # its backend was checked first
        if module is None:
            return reason
        if self.size_limited and sizes is not None:
            return module.refuses_size(*sizes, dtype, options)
        return None

    def auto_takes(self, dtype: Any, sizes: tuple[int, int] | None, options: tuple[str, ...] = (),
                   cell: str = "lstm") -> bool:
        """Whether "auto" may pick it for ``dtype``, ``sizes`` = (batch, hidden) (None: any size), the cell
        ``options`` and the ``cell``: its auto dtypes, hidden-size limit, auto options and auto cells. Whether it
        can run the call at all is :meth:`refuses`'s to say."""
        name = dtype_name(dtype)
        if name not in self.auto_dtypes or cell not in (self.cells if self.auto_cells is None else self.auto_cells):
            return False
        auto_options = self.cell_options if self.auto_cell_options is None else self.auto_cell_options
        if any(option not in auto_options for option in options):
            return False
        limit = None if self.auto_max_hidden is None else self.auto_max_hidden.get(name)
        return limit is None or sizes is None or sizes[1] <= limit

    def largest_hidden(self, backend: Backend, dtype: Any, batch: int, upper: int = 4096,
                       precision: str = "float32") -> int:
        """The largest hidden size up to ``upper`` this implementation runs for ``batch`` rows here (under the
        model ``precision``), at which the next size up is refused (0 when none runs); a bisection over
        :meth:`refuses`."""
        def runs(hidden: int) -> bool:
            return self.refuses(backend, dtype, False, (batch, hidden), precision=precision) is None

        if runs(upper):
            return upper
        if not runs(1):
            return 0
        low, high = 1, upper  # runs(low), not runs(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if runs(middle) else (low, middle)
        return low

    def pairs_directions(self, backend: Backend, dtype: Any, sizes: tuple[int, int], cell: str,
                         options: tuple[str, ...], by_name: bool) -> bool:
        """Whether a bidirectional layer of this call (which :meth:`refuses` let it run) runs both directions in
        one launch: the path has pair kernels, the plain lstm cell, both directions' grid fits at once, and it
        was asked for by name (or :attr:`auto_paired`). Else each direction is a launch of its own."""
        if not self.paired_directions or cell != "lstm" or options or not (by_name or self.auto_paired):
            return False
        return self.load().refuses_size(*sizes, dtype, options, directions=2) is None

    def load(self) -> ModuleType:
        """The implementation's module; ImportError when its optional dependency is missing, LayerImplError when
        it lacks a function of the kernel contract (:mod:`lstmx.dispatch.contract`) for what it declares."""
        from .contract import contract_breaches, protocols_for

        module = importlib.import_module(self.module)
        claim = (self.module, self.cells, self.cell_options, self.paired_directions)
        if claim not in _CONTRACTS_KEPT:  # checked once per module and claim: a layer call loads it every time
            breaches = contract_breaches(module, protocols_for(self.cells, self.cell_options, self.paired_directions))
            if breaches:
                raise LayerImplError(f"{self.name} ({self.module}) breaks the kernel contract: {'; '.join(breaches)}")
            _CONTRACTS_KEPT.add(claim)
        return module


_CONTRACTS_KEPT: set[tuple] = set()  # (module, cells, cell options) whose module was found to keep the contract

# Which dtypes "auto" picks each CuPy path for: a path that has not yet passed the CuPy suite on a GPU is () and
# runs only when asked for by name. All four passed it on an H100 (README, "GPU"); where "auto" runs which one
# follows bench/gpu_vs_cpu.py's fastest column per row there (--dtype float32 and float64).
CUPY_TILED_AUTO = ("float32", "float64")
CUPY_PERSISTENT_AUTO = ("float32",)  # in float64 the graph path beat it at every size it runs
CUPY_GRAPH_AUTO = ("float32", "float64")
CUPY_STEPWISE_AUTO = ("float32", "float64")
# Up to these hidden sizes the tiled kernels beat every other path on the H100's rows; above them the graph path's
# cuBLAS GEMMs did (float32 at H = 512, float64 at H = 256), though the tiles still fit.
CUPY_TILED_AUTO_MAX_HIDDEN = {"float32": 256, "float64": 128}
FLOATS = ("float32", "float64")

# In order of preference: "auto" runs the first that takes the call (dtype among its auto_dtypes, hidden size
# within its auto_max_hidden, then mask and size). Where the tiled kernels are not picked, the float32 persistent
# kernels (small hidden sizes) come before the graph path, which they beat at H = 128; the graph path then runs
# every size, and the stepwise path what no other takes (it is the fallback the others' errors name).
LSTM_ONLY = ("lstm",)
EVERY_CELL = ("lstm", "lstmp")
EVERY_OPTION = ("peepholes", "input_forget", "cell_clip", "layer_norm", "zoneout", "recurrent_dropout")
POINTWISE_OPTIONS = ("peepholes", "input_forget", "cell_clip", "zoneout")  # changes of the cell's pointwise step only

LAYER_IMPLS: tuple[LayerImpl, ...] = (
    LayerImpl(name="cupy-tiled", module="lstmx.kernels.cupy.tiled", backends=("cupy",), dtypes=FLOATS,
              auto_dtypes=CUPY_TILED_AUTO, step_masks=True, size_limited=True, cells=LSTM_ONLY,
              cell_options=POINTWISE_OPTIONS, auto_cell_options=(),  # its variant kernels have run in the emulator
              # only
              auto_max_hidden=CUPY_TILED_AUTO_MAX_HIDDEN, paired_directions=True,  # paired launches: emulator only
              summary="CuPy: register-tiled cooperative kernels, W_h split over units × rows (sizes whose tiles "
                      "fit on chip; the pointwise cell options, and both directions in one launch, by name)"),
    LayerImpl(name="cupy-tiled-tf32", module="lstmx.kernels.cupy.tiled_tf32", backends=("cupy",),
              dtypes=("float32",), auto_dtypes=(), step_masks=True, size_limited=True, cells=LSTM_ONLY,
              cell_options=POINTWISE_OPTIONS, auto_cell_options=(), precisions=("tf32",), tf32_recurrence=True,
              paired_directions=True,
              summary="CuPy: the tiled kernels with TF32 tensor-core products (float32 under precision='tf32'; "
                      "by name, with the tiled path's options and paired directions)"),
    LayerImpl(name="cupy-persistent", module="lstmx.kernels.cupy.persistent", backends=("cupy",), dtypes=FLOATS,
              auto_dtypes=CUPY_PERSISTENT_AUTO, step_masks=True, size_limited=True, cells=LSTM_ONLY,
              cell_options=POINTWISE_OPTIONS, auto_cell_options=(), paired_directions=True,  # its variant kernels
              # and paired launches have run in the emulator only
              summary="CuPy: one cooperative kernel per direction for all steps (small hidden sizes; the "
                      "pointwise cell options, and both directions in one launch, by name)"),
    LayerImpl(name="cupy-graph", module="lstmx.kernels.cupy.graph", backends=("cupy",), dtypes=FLOATS,
              auto_dtypes=CUPY_GRAPH_AUTO, step_masks=True, size_limited=False, cells=EVERY_CELL,
              cell_options=EVERY_OPTION, auto_cell_options=(), auto_cells=LSTM_ONLY, tf32_recurrence=True,  # its
              # variant and projected graphs have run in the emulator only
              summary="CuPy: the stepwise path's GEMMs and kernels captured once per shape as a CUDA graph, one "
                      "launch per direction (every size; every cell and cell option, the variants by name)"),
    LayerImpl(name="cupy-stepwise", module="lstmx.kernels.cupy.stepwise", backends=("cupy",), dtypes=FLOATS,
              auto_dtypes=CUPY_STEPWISE_AUTO, step_masks=True, size_limited=False, cells=EVERY_CELL,
              cell_options=EVERY_OPTION, auto_cell_options=(), auto_cells=LSTM_ONLY, tf32_recurrence=True,  # its
              # variant and projected kernels have run in the emulator only
              summary="CuPy: per step one cuBLAS GEMM and one fused CUDA kernel (every size; every cell and cell "
                      "option, the variants by name)"),
    LayerImpl(name="numba", module="lstmx.kernels.host.numba_layer", backends=("numpy",), dtypes=FLOATS,
              auto_dtypes=("float32",), step_masks=False, size_limited=False, cells=EVERY_CELL,
              cell_options=EVERY_OPTION,
              summary="NumPy + Numba: one compiled pointwise loop per time step and direction (float32 tanh "
                      "approximated; every cell and cell option)"),
    LayerImpl(name="numpy", module="lstmx.kernels.host.numpy_layer", backends=("numpy",), dtypes=FLOATS,
              auto_dtypes=FLOATS, step_masks=False, size_limited=False, cells=LSTM_ONLY,
              summary="NumPy: in-place ufuncs into reused host buffers"),
    LayerImpl(name="generic", module="lstmx.nn.layers.lstm_layer", backends=None, dtypes=FLOATS, auto_dtypes=FLOATS,
              step_masks=True, size_limited=False, cells=EVERY_CELL,
              cell_options=EVERY_OPTION,
              summary="the Array API reference path (every backend, cell, cell option and step mask)"),
)
_BY_NAME = {impl.name: impl for impl in LAYER_IMPLS}
# the layer paths whose recurrent products run in TensorFloat-32 under precision="tf32" (cuBLAS's math mode, or
# the tiled kernels' tensor-core MMAs); those of the other CuPy paths stay float32
TF32_RECURRENCE_IMPLS = tuple(impl.name for impl in LAYER_IMPLS if impl.tf32_recurrence)
NAMES = tuple(_BY_NAME)

class Requests:
    """How callers ask for an implementation of one kind (layers, updates, losses), in one order for every kind:
    the ``impl`` argument, else the innermost :meth:`use` context (both binding), else the environment variable
    (a default, read at each choice), else "auto"."""

    def __init__(self, kind: str, names: tuple[str, ...], variable: str, error: type[ImplError]) -> None:
        self.kind, self.names, self.variable, self.error = kind, names, variable, error
        self.context: contextvars.ContextVar[str | None] = contextvars.ContextVar(f"lstmx_{kind}_impl", default=None)

    def check(self, name: str, argument: str = "impl") -> str:
        """``name`` if it is "auto" or one of ``names``; a one-line error naming ``argument`` otherwise."""
        if name != AUTO and name not in self.names:
            raise self.error(f"{argument} must be one of {AUTO}, {', '.join(self.names)}; got {name!r}")
        return name

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[None]:
        token = self.context.set(self.check(name))
        try:
            yield
        finally:
            self.context.reset(token)

    def request(self, impl: str | None) -> tuple[str, bool]:
        """What the caller asked for and whether it is binding."""
        if impl is not None:
            return self.check(impl), True
        if self.context.get() is not None:
            return self.context.get(), True
        return self.check(os.environ.get(self.variable, "") or AUTO, self.variable), False

    def choose(self, impl: str | None, candidates: tuple[Any, ...],
               resolve: Callable[[Any], tuple[Callable[..., Any] | None, str | None]],
               action: str) -> tuple[str, Callable[..., Any]]:
        """``(name, function)`` in this order: the implementation asked for, when ``resolve`` finds it able (an
        error naming why not when the request was binding), else the first of ``candidates`` marked ``auto``
        that is able. ``resolve(candidate)`` gives ``(function, None)`` or ``(None, why not)``; ``action``
        ("run Adam here") completes the error messages. (Layers choose by dtype as well: ``choose_layer_impl``.)"""
        name, binding = self.request(impl)
        if name != AUTO:
            function, reason = resolve(next(c for c in candidates if c.name == name))
            if function is not None:
                return name, function
            if binding:
                raise self.error(f"{self.kind} implementation {name!r} cannot {action}: it {reason}")
        for candidate in candidates:
            if candidate.auto:
                function, _ = resolve(candidate)
                if function is not None:
                    return candidate.name, function
        raise self.error(f"no {self.kind} implementation can {action}")  # the generic ones always can


LAYER_REQUESTS = Requests("layer", NAMES, ENVIRONMENT_VARIABLE, LayerImplError)


def use_layer_impl(name: str) -> contextlib.AbstractContextManager[None]:
    """Within the block, layers run ``name`` (or "auto") unless a call passes ``impl=`` itself."""
    return LAYER_REQUESTS.use(name)


def requested_impl(impl: str | None = None) -> tuple[str, bool]:
    """The layer implementation asked for, and whether it is binding."""
    return LAYER_REQUESTS.request(impl)


def choose_layer_impl(backend: Backend, dtype: Any, masked: bool, impl: str | None = None,
                      sizes: tuple[int, int] | None = None, cell: str = "lstm",
                      options: tuple[str, ...] = (), precision: str = "float32") -> LayerImpl:
    """The implementation that runs a layer of ``dtype`` on ``backend`` (``masked``: a step mask is given;
    ``sizes``: (batch, hidden), for implementations that run only some sizes; ``cell``: the cell's kind;
    ``precision``: the model's): the one asked for; else, for "auto", the one ``lstmx tune`` measured fastest
    for this call here (:mod:`lstmx.dispatch.tuning`), else the first in :data:`LAYER_IMPLS` that "auto" may
    pick."""
    name, binding = requested_impl(impl)
    call = (backend, dtype, masked, sizes, cell, options, precision)
    if name != AUTO:
        chosen = _BY_NAME[name]
        reason = chosen.refuses(*call)
        if reason is None:
            return chosen
        if binding:
            able = [i.name for i in available_layer_impls(*call)]
            raise LayerImplError(f"layer implementation {name!r} cannot run this call: it {reason}; "
                                 f"implementations that can: {', '.join(able)}")
    tuned = _BY_NAME.get(tuning.tuned_choice(backend, dtype, masked, sizes, cell, options) or "")
    if tuned is not None and tuned.auto_takes(dtype, None, options, cell) and tuned.refuses(*call) is None:
        return tuned  # measured fastest for this call on this device (lstmx tune)
    for candidate in LAYER_IMPLS:
        if candidate.auto_takes(dtype, sizes, options, cell) and candidate.refuses(*call) is None:
            return candidate
    raise LayerImplError(f"no layer implementation runs {dtype_name(dtype)} on {backend.name}")  # generic always does


def layer_impl(name: str) -> LayerImpl:
    """The implementation a cache names (recorded by the forward that made it)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise LayerImplError(f"the cache names an unknown layer implementation {name!r}") from None


def available_layer_impls(backend: Backend, dtype: Any, masked: bool = False,
                          sizes: tuple[int, int] | None = None, cell: str = "lstm",
                          options: tuple[str, ...] = (), precision: str = "float32") -> list[LayerImpl]:
    """Every implementation that can run such a call here (what the tests compare against the generic path)."""
    return [i for i in LAYER_IMPLS if i.refuses(backend, dtype, masked, sizes, cell, options, precision) is None]


# --- the embedding gradient's scatter-add ------------------------------------------------------------------

ONE_HOT_MAX_ROWS = 256  # up to this many table rows the one-hot GEMM beats a native scatter-add


class ScatterImpl(NamedTuple):
    name: str
    module: str
    function: str
    backends: tuple[str, ...] | None
    min_rows: int  # chosen from this table size up


SCATTER_IMPLS: tuple[ScatterImpl, ...] = (
    ScatterImpl(name="numpy-add-at", module="lstmx.kernels.scatter", function="scatter_add_rows_numpy",
                backends=("numpy",), min_rows=ONE_HOT_MAX_ROWS + 1),
    ScatterImpl(name="cupy-scatter-add", module="lstmx.kernels.scatter", function="scatter_add_rows_cupy",
                backends=("cupy",), min_rows=ONE_HOT_MAX_ROWS + 1),
    ScatterImpl(name="one-hot", module="lstmx.nn.layers.embedding", function="scatter_add_rows_generic", backends=None,
                min_rows=0),
)


def choose_scatter_add(backend: Backend, num_rows: int) -> tuple[str, Callable[..., Any]]:
    """``(name, function)`` of the scatter-add for a table of ``num_rows`` rows on ``backend``: a native one for
    large tables; for small ones (character vocabularies) the one-hot GEMM, which measured faster there
    (README, "Layer implementations")."""
    for candidate in SCATTER_IMPLS:
        if (candidate.backends is None or backend.name in candidate.backends) and num_rows >= candidate.min_rows:
            return candidate.name, getattr(importlib.import_module(candidate.module), candidate.function)
    raise LookupError("no scatter-add implementation")  # the generic one always applies


# --- optimizer updates ---------------------------------------------------------------------------------------

UPDATE_ENVIRONMENT_VARIABLE = "LSTMX_UPDATE_IMPL"


class UpdateImplError(ImplError):
    """An optimizer-update implementation that does not exist or cannot run this optimizer here."""

CUPY_FUSED_UPDATE_AUTO = True  # passed the CuPy suite and lstmx check on an H100 (every optimizer, clipping)


def _runnable_module(module: str, backends: tuple[str, ...] | None, backend: Backend) -> tuple[Any, str | None]:
    """``(the module, None)`` when an implementation in ``module`` for ``backends`` (None: all) runs on ``backend``
    here, else ``(None, why not)``: another backend, or an import that fails (an optional dependency)."""
    if backends is not None and backend.name not in backends:
        return None, f"runs on {', '.join(backends)}, not {backend.name}"
    try:
        return importlib.import_module(module), None
    except ImportError as error:
        return None, f"is not importable here ({error})"


class UpdateImpl(NamedTuple):
    """One implementation of how gradients become new parameters: a module whose ``UPDATES`` maps optimizer class
    names to functions ``(optimizer, xp, params, grads, states, lr) -> new params``, one optimizer step over
    every tensor (:func:`lstmx.training.optim.update_each`'s signature; under the name "Optimizer": a step for every
    optimizer, subclasses included), and whose ``clip_by_global_norm(backend, grads, max_norm) -> (clipped,
    norm)`` clips them."""

    name: str
    module: str
    backends: tuple[str, ...] | None
    auto: bool  # "auto" picks it where it applies
    summary: str

    def function(self, backend: Backend, optimizer: type) -> tuple[Callable[..., Any] | None, str | None]:
        """``(function, None)`` when it runs ``optimizer`` on ``backend`` here, else ``(None, why not)``."""
        module, reason = _runnable_module(self.module, self.backends, backend)
        if module is None:
            return None, reason
        updates = module.UPDATES
        step = updates.get(optimizer.__name__, updates.get("Optimizer"))  # a fast path names each class it runs
        if step is None:
            return None, f"has no {optimizer.__name__} update (it has {', '.join(updates)})"
        return step, None

    def clipping(self, backend: Backend) -> tuple[Callable[..., Any] | None, str | None]:
        """``(clip_by_global_norm, None)`` when it runs on ``backend`` here, else ``(None, why not)``."""
        module, reason = _runnable_module(self.module, self.backends, backend)
        return (None, reason) if module is None else (module.clip_by_global_norm, None)


UPDATE_IMPLS: tuple[UpdateImpl, ...] = (
    UpdateImpl(name="cupy-fused", module="lstmx.kernels.cupy.optim", backends=("cupy",), auto=CUPY_FUSED_UPDATE_AUTO,
               summary="CuPy: one fused kernel launch per 8 parameter tensors and step (SGD, Adam, AdamW, RMSprop); "
                       "global-norm clipping in two launches per 8 tensors"),
    UpdateImpl(name="generic", module="lstmx.training.optim", backends=None, auto=True,
               summary="the Array API reference (every optimizer and backend)"),
)
UPDATE_REQUESTS = Requests("update", tuple(i.name for i in UPDATE_IMPLS), UPDATE_ENVIRONMENT_VARIABLE, UpdateImplError)


def use_update_impl(name: str) -> contextlib.AbstractContextManager[None]:
    """Optimizers made within the block use ``name`` (or "auto") unless given ``impl=`` themselves."""
    return UPDATE_REQUESTS.use(name)


def choose_update(backend: Backend, optimizer: type, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(name, function)`` of the update an optimizer of class ``optimizer`` runs on ``backend``: the ``impl``
    argument, else the :func:`use_update_impl` context (both binding), else ``LSTMX_UPDATE_IMPL`` (a default),
    else the first implementation marked ``auto`` that runs it."""
    return UPDATE_REQUESTS.choose(impl, UPDATE_IMPLS, lambda candidate: candidate.function(backend, optimizer),
                                  f"run {optimizer.__name__} here")


def choose_clipping(backend: Backend, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(name, clip_by_global_norm)`` of the update implementation that clips gradients on ``backend``, asked for
    as updates are (:class:`Requests`): a trainer passes its optimizer's ``impl``, so both run one family."""
    return UPDATE_REQUESTS.choose(impl, UPDATE_IMPLS, lambda candidate: candidate.clipping(backend),
                                  "clip gradients here")


def available_clipping_impls(backend: Backend) -> list[str]:
    """Every update implementation whose clipping runs on ``backend`` here (what the tests compare)."""
    return [impl.name for impl in UPDATE_IMPLS if impl.clipping(backend)[0] is not None]


def available_update_impls(backend: Backend, optimizer: type) -> list[str]:
    """Every update implementation that runs ``optimizer`` on ``backend`` here (what the tests compare)."""
    return [impl.name for impl in UPDATE_IMPLS if impl.function(backend, optimizer)[0] is not None]


# --- the language model's softmax cross-entropy with its gradient ------------------------------------------

LOSS_ENVIRONMENT_VARIABLE = "LSTMX_LOSS_IMPL"


class LossImplError(ImplError):
    """A loss implementation that does not exist or cannot run here."""
CUPY_FUSED_LOSS_AUTO = True  # passed the CuPy suite and lstmx check on an H100


class LossImpl(NamedTuple):
    """One implementation of ``cross_entropy_and_gradient(backend, logits, targets, ignore_index) -> (loss,
    dlogits)`` (:mod:`lstmx.nn.layers.loss`)."""

    name: str
    module: str
    backends: tuple[str, ...] | None
    auto: bool
    summary: str

    def function(self, backend: Backend) -> tuple[Callable[..., Any] | None, str | None]:
        """``(cross_entropy_and_gradient, None)`` when it runs on ``backend`` here, else ``(None, why not)``."""
        module, reason = _runnable_module(self.module, self.backends, backend)
        return (None, reason) if module is None else (module.cross_entropy_and_gradient, None)


LOSS_IMPLS: tuple[LossImpl, ...] = (
    LossImpl(name="cupy-fused", module="lstmx.kernels.cupy.loss", backends=("cupy",), auto=CUPY_FUSED_LOSS_AUTO,
             summary="CuPy: one kernel per batch for the loss terms and dL/dlogits (a block per row)"),
    LossImpl(name="generic", module="lstmx.nn.layers.loss", backends=None, auto=True,
             summary="the Array API reference: log-softmax, then its gradient"),
)
LOSS_REQUESTS = Requests("loss", tuple(i.name for i in LOSS_IMPLS), LOSS_ENVIRONMENT_VARIABLE, LossImplError)


def use_loss_impl(name: str) -> contextlib.AbstractContextManager[None]:
    """Within the block, the language model's loss gradient runs ``name`` (or "auto") unless asked otherwise."""
    return LOSS_REQUESTS.use(name)


def choose_loss(backend: Backend, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(name, cross_entropy_and_gradient)`` for ``backend``, asked for as :class:`Requests` says."""
    return LOSS_REQUESTS.choose(impl, LOSS_IMPLS, lambda candidate: candidate.function(backend), "run here")


# --- text generation's token loop ---------------------------------------------------------------------------

GENERATION_ENVIRONMENT_VARIABLE = "LSTMX_GENERATION_IMPL"


class GenerationImplError(ImplError):
    """A generation implementation that does not exist or cannot run this model here."""


class GenerationImpl(NamedTuple):
    """One implementation of ``token_steps(model, logits, state, length, rngs, temperature, top_k, greedy)``: the
    loop of :func:`lstmx.nn.sample.generate` after the prime (:mod:`lstmx.nn.sample` has the generic one)."""

    name: str
    module: str
    backends: tuple[str, ...] | None
    cells: tuple[str, ...]  # the kinds of cell it runs
    cell_options: tuple[str, ...]  # the cell options it takes (as in effect in evaluation)
    auto: bool
    summary: str

    def function(self, model: Any) -> tuple[Callable[..., Any] | None, str | None]:
        """``(token_steps, None)`` when it runs ``model`` here, else ``(None, why not)``."""
        cell = model.stack.cell
        untaken = [option for option in cell.options.in_effect(False).names() if option not in self.cell_options]
        if cell.kind not in self.cells:
            return None, f"runs the {', '.join(self.cells)} cell, not {cell.kind} (proj_size)"
        if untaken:
            return None, f"takes no {', '.join(untaken)}"
        module, reason = _runnable_module(self.module, self.backends, model.backend)
        return (None, reason) if module is None else (module.token_steps, None)


GENERATION_IMPLS: tuple[GenerationImpl, ...] = (
    GenerationImpl(name="numba", module="lstmx.kernels.host.numba_generate", backends=("numpy",), cells=LSTM_ONLY,
                   cell_options=(), auto=True,
                   summary="NumPy + Numba: the whole token loop compiled (embedding, layers, head, softmax, draw)"),
    GenerationImpl(name="generic", module="lstmx.nn.sample", backends=None, cells=EVERY_CELL,
                   cell_options=EVERY_OPTION, auto=True,
                   summary="the reference: the model's inference forward per token, the draw on the host"),
)
GENERATION_REQUESTS = Requests("generation", tuple(i.name for i in GENERATION_IMPLS), GENERATION_ENVIRONMENT_VARIABLE,
                               GenerationImplError)


def choose_generation(model: Any, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(name, token_steps)`` for generating from ``model``, asked for as :class:`Requests` says."""
    return GENERATION_REQUESTS.choose(impl, GENERATION_IMPLS, lambda candidate: candidate.function(model),
                                      "generate from this model here")


def available_generation_impls(model: Any) -> list[str]:
    return [impl.name for impl in GENERATION_IMPLS if impl.function(model)[0] is not None]


def available_loss_impls(backend: Backend) -> list[str]:
    return [impl.name for impl in LOSS_IMPLS if impl.function(backend)[0] is not None]
