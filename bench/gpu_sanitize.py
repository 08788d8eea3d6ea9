"""One small training step through a CuPy layer path (and optionally the fused loss, clipping and Adam update),
against the generic path, sized to run under NVIDIA's compute-sanitizer on a GPU.

    compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/gpu_sanitize.py --impl cupy-tiled
    python3 bench/gpu_sanitize.py --impl cupy-graph --fused        # the same check without the sanitizer
    bash bench/gpu_session.sh sanitize                               # the paths never run on a GPU, under the tools

A two-layer language model (batch 3, 5 steps, hidden 40: not a multiple of 32, so tiles and warps run partly
empty) in float32 and float64, on full batches and with lengths, forward and backward through ``--impl``; with
``--fused``, the loss and its gradient through the fused kernel, then global-norm clipping and two Adam steps
through the fused updates. Each result is compared with the generic path's (so a wrong result shows even where
the sanitizer finds nothing); exits 1 on a mismatch. CuPy's memory pool is turned off, so that every array is
its own allocation and memcheck sees an access past its end (inside a pool block it would not).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser  # noqa: E402

import lstmx  # noqa: E402
from lstmx import registry  # noqa: E402
from lstmx.backend import to_numpy  # noqa: E402
from lstmx.gradcheck import max_relative_error  # noqa: E402
from lstmx.optim import Adam, clip_grad_norm  # noqa: E402

CUPY_LAYER_PATHS = [impl.name for impl in registry.LAYER_IMPLS if impl.backends == ("cupy",)]
VOCAB, EMBEDDING, HIDDEN, LAYERS, STEPS, BATCH = 11, 6, 40, 2, 5, 3
TOLERANCE = {"float32": 2e-5, "float64": 1e-10}


def compare(label: str, fast: dict, slow: dict, dtype: str) -> bool:
    errors = {name: max_relative_error(np.asarray(fast[name], dtype=np.float64),
                                       np.asarray(slow[name], dtype=np.float64))[0] for name in slow}
    worst = max(errors, key=errors.get)
    passed = errors[worst] < TOLERANCE[dtype]
    print(f"{label:<52} {errors[worst]:9.2e} (worst: {worst})  {'pass' if passed else 'FAIL'}", flush=True)
    return passed


def host(output) -> dict:
    h, c = output.state  # each (layers, batch, hidden)
    return {"loss": to_numpy(output.loss), "h": to_numpy(h), "c": to_numpy(c),
            **{name: to_numpy(grad) for name, grad in output.grads.items()}}


def check(backend: lstmx.Backend, impl: str, fused: bool) -> bool:
    """Every comparison for layer path ``impl`` (and the fused loss, clipping and updates when ``fused``) on
    ``backend``, printed a line each; True when all pass."""
    loss_impl = "cupy-fused" if fused else "generic"
    rng = np.random.default_rng(0)
    tokens = backend.asarray(rng.integers(0, VOCAB, (STEPS, BATCH)))
    targets = backend.asarray(rng.integers(0, VOCAB, (STEPS, BATCH)))
    model = lambda dtype: lstmx.LanguageModel(VOCAB, EMBEDDING, HIDDEN, LAYERS, backend=backend, dtype=dtype,  # noqa: E731
                                              seed=0)
    passed = True
    for dtype in ("float32", "float64"):
        refused = registry.layer_impl(impl).refuses(backend, np.dtype(dtype), True, (BATCH, HIDDEN))
        if refused is not None:
            print(f"{impl} {dtype}: left out, it {refused}")
            continue
        for lengths in (None, [STEPS, 3, 1]):
            trial = model(dtype)
            outputs = {name: host(trial.loss(tokens, targets, lengths=lengths, impl=name, loss_impl=loss))
                       for name, loss in ((impl, loss_impl), ("generic", "generic"))}
            label = f"{impl}{' + fused loss' if fused else ''} {dtype}{', lengths' if lengths else ''}"
            passed &= compare(label, outputs[impl], outputs["generic"], dtype)
        if fused:
            states = {}
            for update in ("cupy-fused", "generic"):
                trial = model(dtype)
                optimizer = Adam(trial, 1e-2, impl=update)
                for _ in range(2):
                    grads = trial.loss(tokens, targets, impl="generic").grads
                    optimizer.step(clip_grad_norm(backend, grads, 0.5, impl=update)[0])
                states[update] = trial.state_dict()
            passed &= compare(f"clipping + Adam cupy-fused {dtype}", states["cupy-fused"], states["generic"], dtype)
    return passed


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--impl", choices=CUPY_LAYER_PATHS, default="cupy-stepwise", help="the CuPy layer path")
    parser.add_argument("--fused", action="store_true", help="also the fused loss, clipping and Adam update")
    args = parser.parse_args()
    try:
        backend = lstmx.get_backend("cupy")
    except lstmx.BackendError as error:
        parser.exit(2, f"{parser.prog}: error: needs a GPU: {error}\n")
    import cupy

    cupy.cuda.set_allocator(None)  # one cudaMalloc per array: memcheck then knows where each one ends
    sys.exit(0 if check(backend, args.impl, args.fused) else 1)


if __name__ == "__main__":
    main()
