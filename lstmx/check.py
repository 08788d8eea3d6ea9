"""``lstmx check``: prove on this machine that the gradients are exact and that the backends agree.

Runs the float64 finite-difference check of the whole language model on every backend available here
(NumPy always; CuPy when it and a GPU are present), the NumPy-vs-CuPy parity check in float32, and every layer
implementation of :mod:`lstmx.dispatch.registry` that runs here (layers, the loss, optimizer updates and clipping)
against the generic path in float32 (and under ``precision="tf32"`` each path whose recurrence then runs in
TensorFloat-32, within TF32's error); prints a table naming the implementation each backend runs by default,
and returns a non-zero exit status when any check fails. An implementation that raises fails its own row, with
the error, and the other checks still run (a path's first run on a new GPU should cost its row, not the table).
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from .backend import BackendError, get_backend, to_numpy
from .dispatch import registry
from .dispatch.precision import SIXTEEN_BIT_PRECISIONS
from .gradcheck import check_language_model, check_lstm, max_relative_error
from .nn.layers.cell import acting_options

PARITY_TOLERANCE = 1e-4  # float32: relative to each tensor's largest entry
TF32_TOLERANCE = 2e-2  # TensorFloat-32 products keep 10 mantissa bits
SIXTEEN_BIT_TOLERANCE = 1e-2  # two runs of a 16-bit precision: the same roundings but where a sum's order moves an
# operand across a midpoint, which then rounds one ulp (2**-8 for bfloat16) apart
FLOAT64_TOLERANCE = 1e-10  # the same math in float64: only the summation order differs


class CheckResult(NamedTuple):
    check: str
    backend: str
    error: float
    tolerance: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.error < self.tolerance


HEADER = f"{'check':<40} {'backend':<8} {'max rel. error':>14} {'tolerance':>10}  result  detail"


def row(result: CheckResult) -> str:
    """One line of the table under :data:`HEADER`."""
    r = result
    return (f"{r.check:<40} {r.backend:<8} {r.error:>14.2e} {r.tolerance:>10.0e}  {'pass' if r.passed else 'FAIL':<6}  "
            f"{r.detail}")


def gradient_check(backend_name: str, tolerance: float) -> CheckResult:
    rows = check_language_model(backend_name)
    worst = max(rows, key=lambda row: row.max_relative_error)
    return CheckResult("gradients (float64)", backend_name, worst.max_relative_error, tolerance,
                       f"worst: {worst.name}; {sum(r.entries for r in rows)} entries")


def stack_gradient_checks(backend_name: str, tolerance: float) -> Iterator[CheckResult]:
    """Float64 gradient checks of a bidirectional and of a projected LSTM stack (generic path, with lengths)."""
    for label, options in (("bidirectional LSTM", dict(bidirectional=True, proj_size=0)),
                           ("LSTMP (proj_size)", dict(bidirectional=False, proj_size=2)),
                           ("bidirectional LSTMP", dict(bidirectional=True, proj_size=2)),
                           ("LSTM variants", dict(bidirectional=True, proj_size=0, peepholes=True,
                                                  input_forget=True, cell_clip=1.0)),
                           ("weight drop", dict(bidirectional=False, proj_size=0, weight_drop=0.4,
                                                locked_dropout=True)),
                           ("LN-LSTMP, zoneout", dict(bidirectional=True, proj_size=2, layer_norm=True,
                                                              zoneout=(0.2, 0.4), recurrent_dropout=0.3))):
        rows = check_lstm(backend_name, **options)
        worst = max(rows, key=lambda r: r.max_relative_error)
        yield CheckResult(f"gradients {label} (float64)", backend_name, worst.max_relative_error, tolerance,
                          f"worst: {worst.name}; {sum(r.entries for r in rows)} entries")


def _stack_outputs(backend_name: str, seed: int, lengths: list[int] | None, impl: str, dtype: str = "float32",
                   **options: Any) -> dict[str, np.ndarray]:
    """A two-layer bidirectional LSTM's y, final state and every gradient (host copies) under ``impl``, with the
    ``options`` (cell options, ``proj_size``; a new model each call: the same masks for zoneout and recurrent
    dropout)."""
    from .nn.models import LSTM

    model = LSTM(16, 32, 2, bidirectional=True, backend=backend_name, seed=seed, dtype=dtype, **options)
    rng = np.random.default_rng(seed)
    backend = model.backend
    x = backend.asarray(rng.standard_normal((20, 8, 16)), dtype=model.dtype)
    dy = backend.asarray(rng.standard_normal((20, 8, 2 * model.stack.cell.output_size)), dtype=model.dtype)
    y, (h, c), cache = model.forward(x, lengths=lengths, impl=impl)
    dx, _, grads = model.backward(dy, cache)
    return {"y": to_numpy(y), "h": to_numpy(h), "c": to_numpy(c), "dx": to_numpy(dx),
            **{name: to_numpy(grad) for name, grad in grads.items()}}


def _loss_state_and_grads(backend_name: str, seed: int, lengths: list[int] | None, impl: str | None = None,
                          loss_impl: str | None = None, precision: str = "float32") -> dict[str, np.ndarray]:
    """A float32 LanguageModel's loss, final h and every gradient (host copies) on fixed random tokens."""
    from .nn.models import LanguageModel

    rng = np.random.default_rng(seed)
    tokens, targets = rng.integers(0, 50, (20, 8)), rng.integers(0, 50, (20, 8))
    model = LanguageModel(50, 16, 32, 2, backend=backend_name, seed=seed, precision=precision)
    backend = model.backend
    return host_arrays(model.loss(backend.asarray(tokens), backend.asarray(targets), lengths=lengths, impl=impl,
                                  loss_impl=loss_impl))


def host_arrays(output: Any) -> dict[str, np.ndarray]:
    """A model's loss output as host arrays by name: the loss, the final h and c of every layer, every gradient."""
    h, c = output.state  # each (layers, batch, hidden)
    return {"loss": np.atleast_1d(to_numpy(output.loss)), "h": to_numpy(h), "c": to_numpy(c),
            **{name: to_numpy(grad) for name, grad in output.grads.items()}}


def agreement(check: str, backend_name: str, reference: dict, compute: Callable[[], dict],
              tolerance: float = PARITY_TOLERANCE) -> CheckResult:
    """How far ``compute()``'s host arrays are from ``reference``'s (each relative to its largest entry); a
    ``compute`` that raises fails the row with its error in one line."""
    try:
        other = compute()
    except Exception as error:  # noqa: BLE001 (reported in the row; the other checks go on)
        message = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        return CheckResult(check, backend_name, math.inf, tolerance, f"raised {message}")
    errors = {name: max_relative_error(other[name].astype(np.float64), reference[name].astype(np.float64))[0]
              for name in reference}
    worst = max(errors, key=errors.get)
    return CheckResult(check, backend_name, errors[worst], tolerance, f"worst: {worst}")


def parity_check(first: str, second: str, seed: int = 0) -> CheckResult:
    """Same seed on two backends → same loss, gradients and final state to float32 tolerance."""
    lengths = [20] * 7 + [11]
    return agreement(f"parity {first} vs {second} (float32)", second, _loss_state_and_grads(first, seed, lengths),
                      lambda: _loss_state_and_grads(second, seed, lengths))


def implementation_checks(backend_name: str, seed: int = 0) -> Iterator[CheckResult]:
    """Each layer and loss implementation that runs on ``backend_name`` here against the generic paths, in
    float32 (on unmasked batches, and on masked ones for those that take step masks). Every row changes one
    implementation: the others run their generic path, whatever "auto" would pick."""
    backend = get_backend(backend_name)
    for masked in (False, True):
        lengths = [20] * 7 + [11] if masked else None
        reference = _loss_state_and_grads(backend_name, seed, lengths, impl="generic", loss_impl="generic")
        kind = f"(float32{', lengths' if masked else ''})"

        def run(**options: Any) -> Callable[[], dict]:
            return functools.partial(_loss_state_and_grads, backend_name, seed, lengths, **options)

        for impl in registry.available_layer_impls(backend, np.float32, masked):
            if impl.name == "generic":
                continue
            yield agreement(f"{impl.name} vs generic {kind}", backend_name, reference,
                            run(impl=impl.name, loss_impl="generic"))
            yield agreement(f"{impl.name} vs generic (bidirectional{', lengths' if masked else ''})",
                            backend_name, _stack_outputs(backend_name, seed, lengths, "generic"),
                            functools.partial(_stack_outputs, backend_name, seed, lengths, impl.name))
            if "lstmp" in impl.cells:
                yield agreement(f"{impl.name} vs generic (LSTMP{', lengths' if masked else ''})",
                                backend_name, _stack_outputs(backend_name, seed, lengths, "generic",
                                                             proj_size=8),
                                functools.partial(_stack_outputs, backend_name, seed, lengths, impl.name,
                                                  proj_size=8))
            if impl.cell_options and not masked and "float64" in impl.dtypes:
                # in float64: layer norms over few units amplify float32 rounding (either path's) past 1e-4
                options = acting_options(impl.cell_options)
                yield agreement(f"{impl.name} vs generic (options, float64)", backend_name,
                                _stack_outputs(backend_name, seed, None, "generic", "float64", **options),
                                functools.partial(_stack_outputs, backend_name, seed, None, impl.name,
                                                  "float64", **options), FLOAT64_TOLERANCE)
        if backend_name == "cupy":  # each path whose recurrence runs in TF32 under precision="tf32"
            for impl in registry.available_layer_impls(backend, np.float32, masked, precision="tf32"):
                if impl.tf32_recurrence:
                    yield agreement(f"{impl.name} tf32 vs generic {kind}", backend_name, reference,
                                    run(impl=impl.name, loss_impl="generic", precision="tf32"),
                                    TF32_TOLERANCE)
        for half in SIXTEEN_BIT_PRECISIONS:  # each path that runs a 16-bit precision, against the generic one at it
            paths = [impl for impl in registry.available_layer_impls(backend, np.float32, masked, precision=half)
                     if impl.name != "generic"]
            if paths:
                rounded_reference = run(impl="generic", loss_impl="generic", precision=half)()
                for impl in paths:
                    yield agreement(f"{impl.name} {half} vs generic {half} {kind}", backend_name, rounded_reference,
                                    run(impl=impl.name, loss_impl="generic", precision=half), SIXTEEN_BIT_TOLERANCE)
        for loss_impl in registry.available_loss_impls(backend):
            if loss_impl != "generic":
                yield agreement(f"loss {loss_impl} vs generic {kind}", backend_name, reference,
                                run(impl="generic", loss_impl=loss_impl))
    yield from update_checks(backend_name, seed)


def update_checks(backend_name: str, seed: int = 0) -> Iterator[CheckResult]:
    """Each optimizer-update fast path here against the generic update: three steps of every optimizer it
    runs, from the same gradients, in float32; and its global-norm clipping against the generic one."""
    from .nn.models import LanguageModel
    from .training.optim import OPTIMIZERS, clip_grad_norm, make_optimizer

    backend = get_backend(backend_name)
    model = LanguageModel(50, 16, 32, backend=backend_name, seed=seed)
    rng = np.random.default_rng(seed)
    steps = [{k: rng.standard_normal(p.shape) for k, p in model.params.items()} for _ in range(3)]

    def trained(name: str, impl: str) -> dict:
        """The state after three steps of optimizer ``name`` run by ``impl``, from the same model and gradients."""
        trainee = LanguageModel(50, 16, 32, backend=backend_name, seed=seed)
        optimizer = make_optimizer(name, trainee, 1e-2, impl=impl)
        for grads in steps:
            optimizer.step({k: backend.asarray(g, dtype=trainee.dtype) for k, g in grads.items()})
        return trainee.state_dict()

    def clipped(impl: str) -> dict:
        grads = {k: backend.asarray(g, dtype=model.dtype) for k, g in steps[0].items()}
        scaled, norm = clip_grad_norm(backend, grads, 1.0, impl=impl)
        return {"norm": np.atleast_1d(to_numpy(norm)), **{k: to_numpy(g) for k, g in scaled.items()}}

    for name, optimizer in OPTIMIZERS.items():
        for impl in registry.available_update_impls(backend, optimizer):
            if impl != "generic":
                yield agreement(f"update {impl} vs generic ({name}, float32)", backend_name,
                                trained(name, "generic"), lambda: trained(name, impl))
    for impl in registry.available_clipping_impls(backend):
        if impl != "generic":
            yield agreement(f"clipping {impl} vs generic (float32)", backend_name, clipped("generic"),
                            lambda: clipped(impl))


EXAMPLE_HIDDEN_SIZES = (128, 256, 512, 1024)  # batch 32


def default_impls(backend_name: str) -> str:
    """What "auto" runs on ``backend_name`` per dtype, at a few hidden sizes where the choice depends on size."""
    backend = get_backend(backend_name)
    described = []
    for dtype in ("float32", "float64"):
        names = [registry.choose_layer_impl(backend, getattr(np, dtype), False, None, (32, hidden)).name
                 for hidden in EXAMPLE_HIDDEN_SIZES]
        if len(set(names)) == 1:
            described.append(f"{dtype}: {names[0]}")
        else:
            described.append(f"{dtype}: " + ", ".join(f"H={h} {n}" for h, n in zip(EXAMPLE_HIDDEN_SIZES, names)))
    return "; ".join(described)


def available_gpu_backend() -> tuple[bool, str]:
    try:
        get_backend("cupy")
    except BackendError as error:
        return False, str(error)
    return True, ""


def run_checks(tolerance: float = 1e-6, out: Any = None) -> int:
    """Run every check available here, print the table to ``out`` (stdout) a row as each check ends, return the
    exit status."""
    out = out or sys.stdout
    has_gpu, reason = available_gpu_backend()
    for name in ("numpy", "cupy") if has_gpu else ("numpy",):
        here = registry.available_layer_impls(get_backend(name), np.float32, False, None, "lstm")
        print(f"layer implementations on {name}: " + "; ".join(f"{i.name} ({i.summary})" for i in here), file=out)
        print(f"layer implementation on {name} by default: {default_impls(name)}", file=out)
    print(HEADER, file=out, flush=True)
    checks = [lambda: [gradient_check("numpy", tolerance)], lambda: stack_gradient_checks("numpy", tolerance),
              lambda: implementation_checks("numpy")]
    if has_gpu:
        checks += [lambda: [gradient_check("cupy", tolerance)], lambda: stack_gradient_checks("cupy", tolerance),
                   lambda: [parity_check("numpy", "cupy")], lambda: implementation_checks("cupy")]
    results = []
    for group in checks:
        for result in group():
            print(row(result), file=out, flush=True)  # a slow or stuck check shows how far the table got
            results.append(result)
    if not has_gpu:
        print(f"CuPy checks skipped: {reason}", file=out)
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", file=out)
    return 1 if failed else 0
