"""The one place that decides which implementation runs each kind of work.

Every kind (an LSTM layer, the optimizer's update, the gradient clipping, the language model's loss, the
embedding gradient's scatter-add, the generation loop) has one generic Array API implementation and
backend-specific fast paths in :mod:`lstmx.kernels`, each an :class:`Impl` record in :data:`IMPLS` with the
generic one's signature and tested against it (the tests take their list from the records). What is to be run is
a :class:`Call`; which implementation runs it is decided by one function, :func:`choose`, in one order for every
kind:

1. the ``impl=`` argument (``LSTM.forward``, ``LanguageModel.loss``, an optimizer, ``sample``, ...), else
2. the innermost context of that kind (:func:`use_layer_impl`, :func:`use_update_impl`, ...), else
3. the kind's environment variable (``LSTMX_LAYER_IMPL``, ...; read at each choice), else
4. ``"auto"``: for layers the one ``lstmx tune`` measured fastest for the call on this device, else the first
   record of the kind that "auto" may pick (:meth:`Impl.auto_takes`) and that runs the call (:meth:`Impl.refuses`).

A name given by argument or context must run the call, or the choice fails with an error saying why and which
implementations could. The environment variable is only a default: where its implementation cannot run a call
(a masked batch for ``numpy``, say) the choice is made as for "auto". A layer forward records the chosen name in
its cache; the backward looks the implementation up by that name (:func:`layer_impl`) and never decides again.
The update and the clipping are asked for together (one ``impl`` and ``LSTMX_UPDATE_IMPL``), so both run one
family. :mod:`lstmx.dispatch.plan` resolves a training step's choices once.
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
from .precision import FLOAT32_OPERAND_PRECISIONS, PRECISIONS

AUTO = "auto"


class ImplError(ValueError):
    """An implementation was asked for that does not exist, cannot run this call, or cannot be imported here."""


class LayerImplError(ImplError):
    """An LSTM-layer implementation that does not exist or cannot run this call here."""


class Call(NamedTuple):
    """What is to be run, as every kind of implementation is asked: the backend, and for layers the dtype,
    whether a step mask is given, ``sizes`` = (batch, hidden) (None: any), the cell's kind, its options and the
    model's precision; for updates the optimizer's class; for the embedding gradient's scatter-add the table's
    rows. A field a kind does not read keeps its default."""

    backend: Backend
    dtype: Any = None
    masked: bool = False
    sizes: tuple[int, int] | None = None
    cell: str = "lstm"
    options: tuple[str, ...] = ()
    precision: str = "float32"
    optimizer: type | None = None
    rows: int | None = None


class Impl(NamedTuple):
    """One implementation of one kind of work (a layer, an optimizer update, the gradient clipping, the loss, the
    embedding gradient's scatter-add, the generation loop): what it runs on, what it takes, and whether "auto"
    may pick it. Its module is imported on first use, so optional dependencies (Numba, CuPy) stay optional; the
    implementation is the module itself for layers (:mod:`lstmx.dispatch.contract`), else the module's
    attribute ``entry`` (for updates a mapping from optimizer class names to steps, "Optimizer" meaning every
    one)."""

    kind: str  # a key of KINDS
    name: str
    module: str
    summary: str
    entry: str = ""  # the module's attribute that is the implementation ("": the module)
    backends: tuple[str, ...] | None = None  # backend names it runs on; None: every backend
    dtypes: tuple[str, ...] | None = None  # dtypes it computes correctly; None: every one
    auto: bool = True  # "auto" may pick it (False: only when asked for by name)
    auto_dtypes: tuple[str, ...] | None = None  # ... and only for these dtypes (None: every one it computes)
    step_masks: bool = True  # handles variable-length batches
    size_limited: bool = False  # its module's refuses_size(batch, hidden, dtype, options, cell=) says which sizes it
    # runs
    cells: tuple[str, ...] | None = None  # the kinds of cell (lstmx.nn.cells) it runs; None: every one
    cell_options: tuple[str, ...] = ()  # the cell options (lstmx.nn.layers.cell.CellOptions) it takes
    options_cells: tuple[str, ...] | None = None  # the cells it takes those options on (None: every one it runs)
    auto_max_hidden: dict[str, int] | None = None  # per dtype, the largest hidden size "auto" picks it for (a dtype
    # not named, or None: every size it runs)
    auto_cell_options: tuple[str, ...] | None = None  # the cell options "auto" gives it (None: every one it takes;
    # fewer where its kernels for the others have not yet run on a GPU)
    auto_cells: tuple[str, ...] | None = None  # the cells "auto" gives it (None: every one it runs), likewise
    auto_min_rows: int = 0  # "auto" picks it for tables of this many rows and more
    precisions: tuple[str, ...] = FLOAT32_OPERAND_PRECISIONS  # the model precisions (lstmx.dispatch.precision) it
    # runs under; a 16-bit one only where its products round their operands as Backend.operand does
    tf32_recurrence: bool = False  # under precision="tf32" its recurrent products run in TensorFloat-32 too
    paired_directions: bool = False  # runs both directions of a bidirectional lstm layer in one launch (its
    # module's lstm_layer_pair_* functions) where the doubled grid fits
    auto_paired: bool = False  # ... also under "auto" (False: only when asked for by name)
    backward_own_cache: bool = False  # its backward reads only a cache its own forward made (the graph path's
    # cache leases the buffer set its graphs run on); every other backward also reads the generic forward's cache

    def refuses(self, call: Call) -> str | None:
        """None when this implementation can run ``call`` here, else why not (for error messages and skips).

        Cheap checks first, then the import (optional dependencies), then what the module itself says: the
        sizes of an implementation that runs only some (``call.sizes`` None skips that check), the optimizer of
        an update."""
        if self.backends is not None and call.backend.name not in self.backends:
            return f"runs on {', '.join(self.backends)}, not {call.backend.name}"
        if call.dtype is not None and self.dtypes is not None and dtype_name(call.dtype) not in self.dtypes:
            return f"computes {', '.join(self.dtypes)}, not {dtype_name(call.dtype)}"
        if call.precision not in self.precisions:
            return f"runs under precision={' or '.join(map(repr, self.precisions))}, not {call.precision!r}"
        if self.cells is not None and call.cell not in self.cells:
            return f"runs the {', '.join(self.cells)} cell, not {call.cell} (proj_size)"
        untaken = [option for option in call.options if option not in self.cell_options]
        if untaken:
            return f"takes no {', '.join(untaken)}"
        if call.options and self.options_cells is not None and call.cell not in self.options_cells:
            return (f"takes cell options on the {', '.join(self.options_cells)} cell only, not on {call.cell} "
                    f"(proj_size)")
        if call.masked and not self.step_masks:
            return "takes no step mask (lengths)"
        module, reason = _runnable_module(self.module, None, call.backend)  # its backend was checked first
        if module is None:
            return reason
        if self.size_limited and call.sizes is not None:
            return module.refuses_size(*call.sizes, call.dtype, call.options, cell=call.cell)
        return _entry(module, self.entry, call.optimizer)[1]

    def auto_takes(self, call: Call) -> bool:
        """Whether "auto" may pick it for ``call``: its auto switch, dtypes, hidden-size limit (where
        ``call.sizes`` is given), auto options, auto cells and smallest table. Whether it can run the call at all
        is :meth:`refuses`'s to say."""
        name = None if call.dtype is None else dtype_name(call.dtype)
        if not self.auto or (name is not None and self.auto_dtypes is not None and name not in self.auto_dtypes):
            return False
        auto_cells = self.cells if self.auto_cells is None else self.auto_cells
        if auto_cells is not None and call.cell not in auto_cells:
            return False
        auto_options = self.cell_options if self.auto_cell_options is None else self.auto_cell_options
        if any(option not in auto_options for option in call.options):
            return False
        if call.rows is not None and call.rows < self.auto_min_rows:
            return False
        limit = None if self.auto_max_hidden is None or name is None else self.auto_max_hidden.get(name)
        return limit is None or call.sizes is None or call.sizes[1] <= limit

    def function(self, call: Call) -> Any:
        """What runs ``call`` (which :meth:`refuses` let it run): the module of a layer implementation (its kernel
        contract checked), else the module's ``entry`` (for an update, the optimizer's step)."""
        if self.kind == "layer":
            return self.load()
        return _entry(importlib.import_module(self.module), self.entry, call.optimizer)[0]

    def largest_hidden(self, backend: Backend, dtype: Any, batch: int, upper: int = 4096,
                       precision: str = "float32") -> int:
        """The largest hidden size up to ``upper`` this layer implementation runs for ``batch`` rows here (under
        the model ``precision``), at which the next size up is refused (0 when none runs); a bisection over
        :meth:`refuses`."""
        def runs(hidden: int) -> bool:
            return self.refuses(Call(backend, dtype, sizes=(batch, hidden), precision=precision)) is None

        if runs(upper):
            return upper
        if not runs(1):
            return 0
        low, high = 1, upper  # runs(low), not runs(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if runs(middle) else (low, middle)
        return low

    def pairs_directions(self, call: Call, by_name: bool) -> bool:
        """Whether a bidirectional layer of ``call`` (which :meth:`refuses` let it run) runs both directions in
        one launch: the path has pair kernels, the plain lstm cell, both directions' grid fits at once, and it
        was asked for by name (or :attr:`auto_paired`). Else each direction is a launch of its own."""
        if (not self.paired_directions or call.cell != "lstm" or call.options or call.sizes is None
                or not (by_name or self.auto_paired)):
            return False
        return self.load().refuses_size(*call.sizes, call.dtype, call.options, directions=2) is None

    def load(self) -> ModuleType:
        """The layer implementation's module; ImportError when its optional dependency is missing,
        LayerImplError when it lacks a function of the kernel contract (:mod:`lstmx.dispatch.contract`) for
        what it declares."""
        from .contract import contract_breaches, protocols_for

        module = importlib.import_module(self.module)
        claim = (self.module, self.cells, self.cell_options, self.paired_directions)
        if claim not in _CONTRACTS_KEPT:  # checked once per module and claim: a layer call loads it every time
            breaches = contract_breaches(module, protocols_for(self.cells or EVERY_CELL, self.cell_options,
                                                               self.paired_directions))
            if breaches:
                raise LayerImplError(f"{self.name} ({self.module}) breaks the kernel contract: {'; '.join(breaches)}")
            _CONTRACTS_KEPT.add(claim)
        return module


def _entry(module: ModuleType, entry: str, optimizer: type | None) -> tuple[Any, str | None]:
    """``(what runs, None)`` from an imported implementation ``module``, else ``(None, why not)``: the module
    itself (``entry`` ""), its attribute ``entry``, or for an update that mapping's step for ``optimizer``."""
    if not entry:
        return module, None
    target = getattr(module, entry)
    if optimizer is None:
        return target, None
    step = target.get(optimizer.__name__, target.get("Optimizer"))  # a fast path names each class it runs
    if step is None:
        return None, f"has no {optimizer.__name__} update (it has {', '.join(target)})"
    return step, None


_CONTRACTS_KEPT: set[tuple] = set()  # (module, cells, cell options) whose module was found to keep the contract

# Which dtypes "auto" picks each CuPy path for: a path that has not yet passed the CuPy suite on a GPU is () and
# runs only when asked for by name. All four passed it on an H100 (docs/benchmarks.md); where "auto" runs which
# one follows bench/gpu_vs_cpu.py's fastest column per row there (--dtype float32 and float64).
CUPY_TILED_AUTO = ("float32", "float64")
CUPY_PERSISTENT_AUTO = ("float32",)  # in float64 the graph path beat it at every size it runs
CUPY_GRAPH_AUTO = ("float32", "float64")
CUPY_STEPWISE_AUTO = ("float32", "float64")
# Up to these hidden sizes the tiled kernels beat every other path on the H100's rows, and in float32 on the H200's;
# above them the graph path's cuBLAS GEMMs did (float32 at H = 512, float64 at H = 256), though the tiles still fit.
CUPY_TILED_AUTO_MAX_HIDDEN = {"float32": 256, "float64": 128}
CUPY_FUSED_UPDATE_AUTO = True  # passed the CuPy suite and lstmx check on an H100 (every optimizer, clipping)
CUPY_FUSED_LOSS_AUTO = True  # passed the CuPy suite and lstmx check on an H100
FLOATS = ("float32", "float64")
LSTM_ONLY = ("lstm",)
EVERY_CELL = ("lstm", "lstmp")
EVERY_OPTION = ("peepholes", "input_forget", "cell_clip", "layer_norm", "zoneout", "recurrent_dropout")
POINTWISE_OPTIONS = ("peepholes", "input_forget", "cell_clip", "zoneout")  # changes of the cell's pointwise step only
ONE_HOT_MAX_ROWS = 256  # up to this many table rows the one-hot GEMM beats a native scatter-add

# Within a kind, in order of preference: "auto" runs the first that takes the call. For layers: where the tiled
# kernels are not picked (dtype among their auto_dtypes, hidden size within auto_max_hidden, then mask and size),
# the float32 persistent kernels (small hidden sizes) come before the graph path, which they beat at H = 128; the
# graph path then runs every size, and the stepwise path what no other takes.
IMPLS: tuple[Impl, ...] = (
    Impl(kind="layer", name="cupy-tiled", module="lstmx.kernels.cupy.tiled", backends=("cupy",), dtypes=FLOATS,
         auto_dtypes=CUPY_TILED_AUTO, size_limited=True, cells=EVERY_CELL, auto_cells=LSTM_ONLY,
         cell_options=POINTWISE_OPTIONS, options_cells=LSTM_ONLY,  # its LSTMP kernels take no option and have
         # run in the emulator only
         auto_max_hidden=CUPY_TILED_AUTO_MAX_HIDDEN, paired_directions=True, auto_paired=True,  # variant kernels
         # and paired launches passed the CuPy suite on an H200; paired, a bidirectional layer beat two launches
         summary="CuPy: register-tiled cooperative kernels, W_h split over units × rows (sizes whose tiles fit on "
                 "chip; the pointwise cell options; both directions of a layer in one launch; the LSTMP cell by "
                 "name)"),
    Impl(kind="layer", name="cupy-tiled-tf32", module="lstmx.kernels.cupy.tiled_tf32", backends=("cupy",),
         dtypes=("float32",), auto=False, size_limited=True, cells=EVERY_CELL, cell_options=POINTWISE_OPTIONS,
         options_cells=LSTM_ONLY, precisions=("tf32",), tf32_recurrence=True, paired_directions=True,
         summary="CuPy: the tiled kernels with TF32 tensor-core products (float32 under precision='tf32'; by name, "
                 "with the tiled path's options, paired directions and LSTMP cell)"),
    Impl(kind="layer", name="cupy-tiled-bf16", module="lstmx.kernels.cupy.tiled_bf16", backends=("cupy",),
         dtypes=("float32",), auto=False, size_limited=True, cells=LSTM_ONLY, precisions=("bf16",),
         paired_directions=True,
         summary="CuPy: the tiled kernels with bfloat16 operands on tensor cores (float32 under precision='bf16'; "
                 "by name, the plain cell, paired directions; not yet run on a GPU)"),
    Impl(kind="layer", name="cupy-tiled-fp16", module="lstmx.kernels.cupy.tiled_fp16", backends=("cupy",),
         dtypes=("float32",), auto=False, size_limited=True, cells=LSTM_ONLY, precisions=("fp16",),
         paired_directions=True,
         summary="CuPy: the tiled kernels with half-precision operands on tensor cores (float32 under "
                 "precision='fp16'; by name, the plain cell, paired directions; not yet run on a GPU)"),
    Impl(kind="layer", name="cupy-persistent", module="lstmx.kernels.cupy.persistent", backends=("cupy",),
         dtypes=FLOATS, auto_dtypes=CUPY_PERSISTENT_AUTO, size_limited=True, cells=EVERY_CELL, auto_cells=LSTM_ONLY,
         cell_options=POINTWISE_OPTIONS, options_cells=LSTM_ONLY,  # its LSTMP kernels take no option
         paired_directions=True, auto_paired=True,  # its variant, projected and paired kernels passed the CuPy
         # suite on an H200; its LSTMP speed against the graph path's is not yet measured (by name only)
         summary="CuPy: one cooperative kernel per direction for all steps (small hidden sizes; the pointwise cell "
                 "options; both directions of a layer in one launch; the LSTMP cell by name)"),
    Impl(kind="layer", name="cupy-graph", module="lstmx.kernels.cupy.graph", backends=("cupy",), dtypes=FLOATS,
         auto_dtypes=CUPY_GRAPH_AUTO, cells=EVERY_CELL, cell_options=EVERY_OPTION, tf32_recurrence=True,
         backward_own_cache=True,  # its variant and projected graphs passed the CuPy suite on an H200
         summary="CuPy: the stepwise path's GEMMs and kernels captured once per shape as a CUDA graph, one launch "
                 "per direction (every size; every cell and cell option)"),
    Impl(kind="layer", name="cupy-stepwise", module="lstmx.kernels.cupy.stepwise", backends=("cupy",),
         dtypes=FLOATS, auto_dtypes=CUPY_STEPWISE_AUTO, cells=EVERY_CELL, cell_options=EVERY_OPTION,
         tf32_recurrence=True,  # its variant and projected kernels passed the CuPy suite on an H200
         summary="CuPy: per step one cuBLAS GEMM and one fused CUDA kernel (every size; every cell and cell "
                 "option)"),
    Impl(kind="layer", name="numba", module="lstmx.kernels.host.numba_layer", backends=("numpy",), dtypes=FLOATS,
         step_masks=False, cells=EVERY_CELL, cell_options=EVERY_OPTION,  # float64 too: its compiled loop beat the
         # numpy path there (docs/benchmarks.md)
         summary="NumPy + Numba: the plain cell's whole time loop compiled around NumPy's BLAS, the other "
                 "cells' pointwise step per time step (float32 tanh approximated; every cell and cell option)"),
    Impl(kind="layer", name="numpy", module="lstmx.kernels.host.numpy_layer", backends=("numpy",), dtypes=FLOATS,
         step_masks=False, cells=LSTM_ONLY,
         summary="NumPy: in-place ufuncs into reused host buffers"),
    Impl(kind="layer", name="generic", module="lstmx.nn.layers.lstm_layer", dtypes=FLOATS, cells=EVERY_CELL,
         cell_options=EVERY_OPTION, precisions=PRECISIONS,
         summary="the Array API reference path (every backend, cell, cell option and step mask)"),

    Impl(kind="update", name="cupy-fused", module="lstmx.kernels.cupy.optim", entry="UPDATES", backends=("cupy",),
         auto=CUPY_FUSED_UPDATE_AUTO,
         summary="CuPy: one fused kernel launch per 8 parameter tensors and step (SGD, Adam, AdamW, RMSprop)"),
    Impl(kind="update", name="generic", module="lstmx.training.optim", entry="UPDATES",
         summary="the Array API reference (every optimizer and backend)"),
    Impl(kind="clipping", name="cupy-fused", module="lstmx.kernels.cupy.optim", entry="clip_by_global_norm",
         backends=("cupy",), auto=CUPY_FUSED_UPDATE_AUTO,
         summary="CuPy: global-norm clipping in two launches per 8 tensors"),
    Impl(kind="clipping", name="generic", module="lstmx.training.optim", entry="clip_by_global_norm",
         summary="the Array API reference"),

    Impl(kind="loss", name="cupy-fused", module="lstmx.kernels.cupy.loss", entry="cross_entropy_and_gradient",
         backends=("cupy",), auto=CUPY_FUSED_LOSS_AUTO,
         summary="CuPy: one kernel per batch for the loss terms and dL/dlogits (a block per row)"),
    Impl(kind="loss", name="generic", module="lstmx.nn.layers.loss", entry="cross_entropy_and_gradient",
         summary="the Array API reference: log-softmax, then its gradient"),

    Impl(kind="scatter", name="numpy-add-at", module="lstmx.kernels.scatter", entry="scatter_add_rows_numpy",
         backends=("numpy",), auto_min_rows=ONE_HOT_MAX_ROWS + 1,
         summary="NumPy: np.add.at into the table's gradient"),
    Impl(kind="scatter", name="cupy-scatter-add", module="lstmx.kernels.scatter", entry="scatter_add_rows_cupy",
         backends=("cupy",), auto_min_rows=ONE_HOT_MAX_ROWS + 1,
         summary="CuPy: an atomic scatter-add into the table's gradient"),
    Impl(kind="scatter", name="one-hot", module="lstmx.nn.layers.embedding", entry="scatter_add_rows_generic",
         summary="the Array API reference: a one-hot matrix times the rows' gradients (for small tables, "
                 "character vocabularies, faster than a native scatter-add)"),

    Impl(kind="generation", name="cupy-fused", module="lstmx.kernels.cupy.generate", entry="token_steps",
         backends=("cupy",), cells=LSTM_ONLY, auto=False,
         summary="CuPy: the whole token loop in one launch per 64 tokens, a block per sample (embedding, layers, "
                 "head, softmax, draw on the host generators' uniforms; by name: not yet run on a GPU)"),
    Impl(kind="generation", name="numba", module="lstmx.kernels.host.numba_generate", entry="token_steps",
         backends=("numpy",), cells=LSTM_ONLY,
         summary="NumPy + Numba: the whole token loop compiled (embedding, layers, head, softmax, draw)"),
    Impl(kind="generation", name="generic", module="lstmx.nn.sample", entry="token_steps", cells=EVERY_CELL,
         cell_options=EVERY_OPTION, precisions=PRECISIONS,
         summary="the reference: the model's inference forward per token, the draw on the host"),
)


def of_kind(kind: str) -> tuple[Impl, ...]:
    """The records of one kind, in order of preference."""
    return tuple(impl for impl in IMPLS if impl.kind == kind)


LAYER_IMPLS = of_kind("layer")
UPDATE_IMPLS = of_kind("update")
CLIPPING_IMPLS = of_kind("clipping")
LOSS_IMPLS = of_kind("loss")
SCATTER_IMPLS = of_kind("scatter")
GENERATION_IMPLS = of_kind("generation")
NAMES = tuple(impl.name for impl in LAYER_IMPLS)
# the layer paths whose recurrent products run in TensorFloat-32 under precision="tf32" (cuBLAS's math mode, or
# the tiled kernels' tensor-core MMAs); those of the other CuPy paths stay float32
TF32_RECURRENCE_IMPLS = tuple(impl.name for impl in LAYER_IMPLS if impl.tf32_recurrence)


def _runnable_module(module: str, backends: tuple[str, ...] | None, backend: Backend) -> tuple[Any, str | None]:
    """``(the module, None)`` when an implementation in ``module`` for ``backends`` (None: all) runs on ``backend``
    here, else ``(None, why not)``: another backend, or an import that fails (an optional dependency)."""
    if backends is not None and backend.name not in backends:
        return None, f"runs on {', '.join(backends)}, not {backend.name}"
    try:
        return importlib.import_module(module), None
    except ImportError as error:
        return None, f"is not importable here ({error})"


# --- how callers ask ---------------------------------------------------------------------------------------

class Requests:
    """How callers ask for an implementation of one kind: the ``impl`` argument, else the innermost :meth:`use`
    context (both binding), else the environment variable (a default, read at each choice; None: the kind has
    none), else "auto"."""

    def __init__(self, kind: str, names: tuple[str, ...], variable: str | None, error: type[ImplError]) -> None:
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
        default = os.environ.get(self.variable, "") if self.variable else ""
        return self.check(default or AUTO, self.variable or "impl"), False


class UpdateImplError(ImplError):
    """An optimizer-update implementation that does not exist or cannot run this optimizer here."""


class LossImplError(ImplError):
    """A loss implementation that does not exist or cannot run here."""


class GenerationImplError(ImplError):
    """A generation implementation that does not exist or cannot run this model here."""


ENVIRONMENT_VARIABLE = "LSTMX_LAYER_IMPL"
UPDATE_ENVIRONMENT_VARIABLE = "LSTMX_UPDATE_IMPL"
LOSS_ENVIRONMENT_VARIABLE = "LSTMX_LOSS_IMPL"
GENERATION_ENVIRONMENT_VARIABLE = "LSTMX_GENERATION_IMPL"
LAYER_REQUESTS = Requests("layer", NAMES, ENVIRONMENT_VARIABLE, LayerImplError)
UPDATE_REQUESTS = Requests("update", tuple(i.name for i in UPDATE_IMPLS), UPDATE_ENVIRONMENT_VARIABLE, UpdateImplError)
LOSS_REQUESTS = Requests("loss", tuple(i.name for i in LOSS_IMPLS), LOSS_ENVIRONMENT_VARIABLE, LossImplError)
GENERATION_REQUESTS = Requests("generation", tuple(i.name for i in GENERATION_IMPLS), GENERATION_ENVIRONMENT_VARIABLE,
                               GenerationImplError)
SCATTER_REQUESTS = Requests("scatter", tuple(i.name for i in SCATTER_IMPLS), None, ImplError)


def _tuned_layer(call: Call) -> str | None:
    return tuning.tuned_choice(call.backend, call.dtype, call.masked, call.sizes, call.cell, call.options)


class Kind(NamedTuple):
    """How one kind of work is asked for and described in errors."""

    requests: Requests  # the clipping shares the update's: asked for together, they run one family
    action: str  # completes "... cannot {action}"; "{optimizer}" is the call's optimizer class name
    tuned: Callable[[Call], str | None] | None = None  # the name lstmx tune measured fastest for a call, if any


KINDS: dict[str, Kind] = {
    "layer": Kind(LAYER_REQUESTS, "run this call", _tuned_layer),
    "update": Kind(UPDATE_REQUESTS, "run {optimizer} here"),
    "clipping": Kind(UPDATE_REQUESTS, "clip gradients here"),
    "loss": Kind(LOSS_REQUESTS, "run here"),
    "scatter": Kind(SCATTER_REQUESTS, "scatter-add rows here"),
    "generation": Kind(GENERATION_REQUESTS, "generate from this model here"),
}


def _named(kind: str, name: str | None) -> Impl | None:
    return next((impl for impl in IMPLS if impl.kind == kind and impl.name == name), None)


def available(kind: str, call: Call) -> list[Impl]:
    """Every implementation of ``kind`` that can run ``call`` here (what the tests compare with the generic one)."""
    return [impl for impl in of_kind(kind) if impl.refuses(call) is None]


def choose(kind: str, call: Call, impl: str | None = None) -> Impl:
    """The implementation of ``kind`` that runs ``call``: the one asked for (``impl``, else the kind's context,
    else its environment variable; see the module's docstring); else, for "auto", the one ``lstmx tune`` measured
    fastest (layers), else the first record of the kind that "auto" may pick and that runs the call."""
    how = KINDS[kind]
    name, binding = how.requests.request(impl)
    action = how.action.format(optimizer=getattr(call.optimizer, "__name__", ""))
    if name != AUTO:
        chosen = _named(kind, name)
        reason = chosen.refuses(call)
        if reason is None:
            return chosen
        if binding:
            able = ", ".join(i.name for i in available(kind, call))
            raise how.requests.error(f"{how.requests.kind} implementation {name!r} cannot {action}: it {reason}; "
                                     f"implementations that can: {able}")
    tuned = _named(kind, how.tuned(call)) if how.tuned is not None else None
    if tuned is not None and tuned.auto_takes(call._replace(sizes=None)) and tuned.refuses(call) is None:
        return tuned  # measured fastest for this call on this device (lstmx tune)
    for candidate in of_kind(kind):
        if candidate.auto_takes(call) and candidate.refuses(call) is None:
            return candidate
    raise how.requests.error(f"no {how.requests.kind} implementation can {action}")  # the generic ones always can


# --- the named entry points each caller uses -----------------------------------------------------------------

def use_layer_impl(name: str) -> contextlib.AbstractContextManager[None]:
    """Within the block, layers run ``name`` (or "auto") unless a call passes ``impl=`` itself."""
    return LAYER_REQUESTS.use(name)


def use_update_impl(name: str) -> contextlib.AbstractContextManager[None]:
    """Optimizers made within the block update and clip with ``name`` (or "auto") unless given ``impl=``."""
    return UPDATE_REQUESTS.use(name)


def use_loss_impl(name: str) -> contextlib.AbstractContextManager[None]:
    """Within the block, the language model's loss gradient runs ``name`` (or "auto") unless asked otherwise."""
    return LOSS_REQUESTS.use(name)


def requested_impl(impl: str | None = None) -> tuple[str, bool]:
    """The layer implementation asked for, and whether it is binding."""
    return LAYER_REQUESTS.request(impl)


def choose_layer_impl(backend: Backend, dtype: Any, masked: bool, impl: str | None = None,
                      sizes: tuple[int, int] | None = None, cell: str = "lstm",
                      options: tuple[str, ...] = (), precision: str = "float32") -> Impl:
    """:func:`choose` for a layer of ``dtype`` on ``backend`` (``masked``: a step mask is given; ``sizes``:
    (batch, hidden); ``cell``: the cell's kind; ``options``: its options; ``precision``: the model's)."""
    return choose("layer", Call(backend, dtype, masked, sizes, cell, options, precision), impl)


def layer_impl(name: str) -> Impl:
    """The layer implementation a cache names (recorded by the forward that made it)."""
    found = _named("layer", name)
    if found is None:
        raise LayerImplError(f"the cache names an unknown layer implementation {name!r}")
    return found


def available_layer_impls(backend: Backend, dtype: Any, masked: bool = False,
                          sizes: tuple[int, int] | None = None, cell: str = "lstm",
                          options: tuple[str, ...] = (), precision: str = "float32") -> list[Impl]:
    """Every layer implementation that can run such a call here."""
    return available("layer", Call(backend, dtype, masked, sizes, cell, options, precision))


def _chosen(kind: str, call: Call, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    chosen = choose(kind, call, impl)
    return chosen.name, chosen.function(call)


def choose_scatter_add(backend: Backend, num_rows: int) -> tuple[str, Callable[..., Any]]:
    """``(name, function)`` of the scatter-add for a table of ``num_rows`` rows on ``backend``: a native one for
    large tables; for small ones (character vocabularies) the one-hot GEMM, which measured faster there."""
    return _chosen("scatter", Call(backend, rows=num_rows))


def choose_update(backend: Backend, optimizer: type, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(name, step)`` of the update an optimizer of class ``optimizer`` runs on ``backend``."""
    return _chosen("update", Call(backend, optimizer=optimizer), impl)


def choose_clipping(backend: Backend, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(name, clip_by_global_norm)`` on ``backend``, asked for as updates are: a trainer passes its optimizer's
    ``impl``, so both run one family."""
    return _chosen("clipping", Call(backend), impl)


def choose_loss(backend: Backend, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(name, cross_entropy_and_gradient)`` for ``backend``."""
    return _chosen("loss", Call(backend), impl)


def generation_call(model: Any) -> Call:
    """What generating from ``model`` asks of an implementation: its backend, dtype, cell, the cell options
    in effect in evaluation and its precision."""
    cell = model.stack.cell
    return Call(model.backend, model.dtype, cell=cell.kind, options=cell.options.in_effect(False).names(),
                precision=model.precision)


def choose_generation(model: Any, impl: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(name, token_steps)`` for generating from ``model``."""
    return _chosen("generation", generation_call(model), impl)


def available_update_impls(backend: Backend, optimizer: type) -> list[str]:
    return [impl.name for impl in available("update", Call(backend, optimizer=optimizer))]


def available_clipping_impls(backend: Backend) -> list[str]:
    return [impl.name for impl in available("clipping", Call(backend))]


def available_loss_impls(backend: Backend) -> list[str]:
    return [impl.name for impl in available("loss", Call(backend))]


def available_generation_impls(model: Any) -> list[str]:
    return [impl.name for impl in available("generation", generation_call(model))]
