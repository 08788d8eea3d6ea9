"""One small training step through a CuPy layer path (and optionally the fused loss, clipping and Adam update),
against the generic path, sized to run under NVIDIA's compute-sanitizer on a GPU.

    compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/gpu_sanitize.py --impl cupy-tiled
    python3 bench/gpu_sanitize.py --impl cupy-graph --fused        # the same check without the sanitizer
    python3 bench/gpu_sanitize.py --impl cupy-stepwise --cell-options   # its variant kernels (every cell option)
    python3 bench/gpu_sanitize.py --impl cupy-persistent --bidirectional   # both directions in one launch
    bash bench/gpu_session.sh sanitize                               # the paths never run on a GPU, under the tools

A two-layer language model (batch 3, 5 steps, hidden 40: not a multiple of 32, so tiles and warps run partly
empty) in float32 and float64, on full batches and with lengths, forward and backward through ``--impl``; with
``--fused``, the loss and its gradient through the fused kernel, then global-norm clipping and two Adam steps
through the fused updates; with ``--cell-options``, the model has every cell option the path takes (the masks of
zoneout and recurrent dropout drawn alike for both paths), so its variant kernels run. Each result is compared with the generic path's (so a wrong result shows even where
the sanitizer finds nothing) and printed as a row of ``lstmx check``'s table; exits 1 on a mismatch. CuPy's
memory pool is turned off, so that every array is its own allocation and memcheck sees an access past its end
(inside a pool block it would not).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser  # noqa: E402

import lstmx  # noqa: E402
from lstmx.dispatch import registry  # noqa: E402
from lstmx.dispatch.precision import SIXTEEN_BIT_PRECISIONS  # noqa: E402
from lstmx.backend import to_numpy  # noqa: E402
from lstmx.check import (HEADER, SIXTEEN_BIT_TOLERANCE, TF32_TOLERANCE, CheckResult, agreement,  # noqa: E402
                         host_arrays, row)
from lstmx.cli import flag_type  # noqa: E402
from lstmx.nn.layers.cell import acting_options  # noqa: E402
from lstmx.options import NON_NEGATIVE_INT  # noqa: E402
from lstmx.training.optim import Adam, clip_grad_norm  # noqa: E402

CUPY_LAYER_PATHS = [impl.name for impl in registry.LAYER_IMPLS if impl.backends == ("cupy",)]
VOCAB, EMBEDDING, HIDDEN, LAYERS, STEPS, BATCH = 11, 6, 40, 2, 5, 3
TOLERANCE = {"float32": 2e-5, "float64": 1e-10}


def check(backend: lstmx.Backend, impl: str, fused: bool, cell_options: bool = False,
          proj_size: int = 0) -> list[CheckResult]:
    """Every comparison for layer path ``impl`` (and the fused loss, clipping and updates when ``fused``; every
    cell option ``impl`` takes when ``cell_options``; the LSTMP cell when ``proj_size``) on ``backend``, each
    printed as a row of ``lstmx check``'s table (a comparison that raises fails its row)."""
    options = acting_options(registry.layer_impl(impl).cell_options) if cell_options else {}
    # a path that does not run precision="float32" is checked under the one it runs: a "tf32" one against the
    # generic path at full float32, a "bf16" or "fp16" one against the generic path at that precision (which
    # rounds alike)
    precision = registry.layer_impl(impl).precisions[0]
    reference_precision = precision if precision in SIXTEEN_BIT_PRECISIONS else "float32"
    reduced = {"tf32": TF32_TOLERANCE, "bf16": SIXTEEN_BIT_TOLERANCE, "fp16": SIXTEEN_BIT_TOLERANCE}.get(precision)
    if proj_size:
        options["proj_size"] = proj_size
    loss_impl = "cupy-fused" if fused else "generic"
    rng = np.random.default_rng(0)
    tokens = backend.asarray(rng.integers(0, VOCAB, (STEPS, BATCH)))
    targets = backend.asarray(rng.integers(0, VOCAB, (STEPS, BATCH)))

    def model(dtype: str, precision: str = "float32") -> lstmx.LanguageModel:
        return lstmx.LanguageModel(VOCAB, EMBEDDING, HIDDEN, LAYERS, backend=backend, dtype=dtype, seed=0,
                                   precision=precision, **options)

    def losses(dtype: str, lengths: list[int] | None, layer: str, loss: str, precision: str = "float32") -> dict:
        return host_arrays(model(dtype, precision).loss(tokens, targets, lengths=lengths, impl=layer,
                                                        loss_impl=loss))

    def trained(dtype: str, update: str) -> dict:
        """The state after two clipped Adam steps run by ``update``, from generic gradients."""
        trial = model(dtype)
        optimizer = Adam(trial, 1e-2, impl=update)
        for _ in range(2):
            grads = trial.loss(tokens, targets, impl="generic", loss_impl="generic").grads
            optimizer.step(clip_grad_norm(backend, grads, 0.5, impl=update)[0])
        return trial.state_dict()

    print(HEADER)
    results = []
    for dtype in ("float32", "float64"):
        call = registry.Call(backend, np.dtype(dtype), True, (BATCH, HIDDEN), "lstmp" if proj_size else "lstm",
                             tuple(name for name in options if name != "proj_size"), precision)
        refused = registry.layer_impl(impl).refuses(call)
        if refused is not None:
            print(f"{impl} {dtype}: left out, it {refused}")
            continue
        for lengths in (None, [STEPS, 3, 1]):
            label = (f"{impl}{'' if precision == 'float32' else ' ' + precision}{' + options' if cell_options else ''}"
                     f"{f' + proj {proj_size}' if proj_size else ''}"
                     f"{' + fused loss' if fused else ''} {dtype}"
                     f"{', lengths' if lengths else ''}")
            results.append(agreement(label, backend.name,
                                     losses(dtype, lengths, "generic", "generic", reference_precision),
                                     lambda: losses(dtype, lengths, impl, loss_impl, precision),
                                     reduced or TOLERANCE[dtype]))
            print(row(results[-1]), flush=True)
        if fused:
            results.append(agreement(f"clipping + Adam cupy-fused {dtype}", backend.name, trained(dtype, "generic"),
                                     lambda: trained(dtype, "cupy-fused"), TOLERANCE[dtype]))
            print(row(results[-1]), flush=True)
    return results


def check_bidirectional(backend: lstmx.Backend, impl: str) -> list[CheckResult]:
    """A two-layer bidirectional LSTM's outputs, final state and every gradient through ``impl`` (asked for by
    name: the persistent and tiled paths then run both directions of a layer in one launch) against the generic
    path's, in float32 and float64, on full batches and with lengths."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((STEPS, BATCH, EMBEDDING))
    dy = rng.standard_normal((STEPS, BATCH, 2 * HIDDEN))

    def run(dtype: str, lengths: list[int] | None, layer: str) -> dict:
        model = lstmx.LSTM(EMBEDDING, HIDDEN, LAYERS, bidirectional=True, backend=backend, dtype=dtype, seed=0)
        y, (h, c), cache = model.forward(backend.asarray(x, dtype=model.dtype), lengths=lengths, impl=layer)
        dx, _, grads = model.backward(backend.asarray(dy, dtype=model.dtype), cache)
        return {name: to_numpy(value) for name, value in {"y": y, "h": h, "c": c, "dx": dx, **grads}.items()}

    print(HEADER)
    results = []
    for dtype in ("float32", "float64"):
        call = registry.Call(backend, np.dtype(dtype), True, (BATCH, HIDDEN))
        if registry.layer_impl(impl).refuses(call) is not None:
            continue
        for lengths in (None, [STEPS, 3, 1]):
            results.append(agreement(f"{impl} bidirectional {dtype}{', lengths' if lengths else ''}", backend.name,
                                     run(dtype, lengths, "generic"), lambda: run(dtype, lengths, impl),
                                     TOLERANCE[dtype]))
            print(row(results[-1]), flush=True)
    return results


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--impl", choices=CUPY_LAYER_PATHS, default="cupy-stepwise", help="the CuPy layer path")
    parser.add_argument("--fused", action="store_true", help="also the fused loss, clipping and Adam update")
    parser.add_argument("--cell-options", action="store_true",
                        help="with every cell option the path takes (peepholes, input_forget, cell_clip, layer_norm, "
                             "zoneout, recurrent_dropout), so its variant kernels run")
    parser.add_argument("--bidirectional", action="store_true",
                        help="a bidirectional LSTM instead (the paired kernels where the path has them)")
    parser.add_argument("--proj-size", type=flag_type("--proj-size", NON_NEGATIVE_INT, int), default=0,
                        help=f"the LSTMP cell with this projection (below {HIDDEN}), so the projected kernels run")
    args = parser.parse_args()
    if args.proj_size >= HIDDEN:
        parser.error(f"--proj-size must be below the hidden size {HIDDEN}, got {args.proj_size}")
    try:
        backend = lstmx.get_backend("cupy")
    except lstmx.BackendError as error:
        parser.exit(2, f"{parser.prog}: error: needs a GPU: {error}\n")
    import cupy

    cupy.cuda.set_allocator(None)  # one cudaMalloc per array: memcheck then knows where each one ends
    if args.bidirectional:
        results = check_bidirectional(backend, args.impl)
    else:
        results = check(backend, args.impl, args.fused, args.cell_options, args.proj_size)
    sys.exit(0 if all(result.passed for result in results) else 1)


if __name__ == "__main__":
    main()
