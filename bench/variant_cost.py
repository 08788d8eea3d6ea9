"""What each LSTM variant costs per training step (forward + full BPTT of one layer) against the plain LSTM, on
the path "auto" picks for it and on the generic path, in one run (every column takes turns).

    python bench/variant_cost.py                        # B 32, T 100, D = H 256, float32, NumPy
    python bench/variant_cost.py --config 16,50,64,64 --repeats 3
    python bench/variant_cost.py --backend cupy --impl cupy-stepwise   # a path by name (where it takes the option)

Each row is one option of ``lstmx.LSTM`` ("proj_size": the LSTMP cell with P = H / 4; "everything": every cell
option at once); "auto" is the
implementation the registry chooses for that model (named in the table), or with ``--impl`` the path named,
where it takes the row's options (else the registry's choice); the ratios divide by the plain LSTM's time on the
same path. Writes bench/results/variant_cost.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser, machine_report, sizes, turn_taking_medians, write_json  # noqa: E402

import lstmx  # noqa: E402
from lstmx.dispatch import registry  # noqa: E402
from lstmx.cli import flag_type  # noqa: E402
from lstmx.options import POSITIVE_INT  # noqa: E402

VARIANTS = {
    "plain": {},
    "peepholes": {"peepholes": True},
    "input_forget": {"input_forget": True},
    "cell_clip": {"cell_clip": 3.0},
    "layer_norm": {"layer_norm": True},
    "zoneout": {"zoneout": 0.1},
    "recurrent_dropout": {"recurrent_dropout": 0.25},
    "weight_drop": {"weight_drop": 0.5},
    "proj_size": {"proj_size": "H/4"},  # the LSTMP cell, P = H / 4 (as speech LSTMPs: H 1024, P 256)
    "everything": {"peepholes": True, "input_forget": True, "cell_clip": 3.0, "layer_norm": True, "zoneout": 0.1,
                   "recurrent_dropout": 0.25, "weight_drop": 0.5},
}


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--config", type=sizes, default=(32, 100, 256, 256), help="B,T,D,H (default 32,100,256,256)")
    parser.add_argument("--repeats", type=flag_type("--repeats", POSITIVE_INT, int), default=6,
                        help="timed steps per column, over three rounds of turns")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"), help="array backend (default numpy)")
    parser.add_argument("--impl", default=None, choices=registry.NAMES,
                        help="time this layer path in the first column where it takes the row's options")
    args = parser.parse_args()
    batch, steps, features, hidden = args.config
    machine = machine_report()
    print(f"machine: {machine}")
    rng = np.random.default_rng(0)
    models = {name: lstmx.LSTM(features, hidden, seed=0, backend=args.backend,
                               **{k: max(1, hidden // 4) if v == "H/4" else v for k, v in options.items()})
              for name, options in VARIANTS.items()}
    backend = models["plain"].backend
    x = backend.asarray(rng.standard_normal((steps, batch, features)), dtype=models["plain"].dtype)
    dys = {name: backend.asarray(rng.standard_normal((steps, batch, model.stack.output_size)), dtype=model.dtype)
           for name, model in models.items()}

    def first_path(model: lstmx.LSTM) -> str | None:
        """--impl where it takes the model's options, else None (the registry's choice)."""
        if args.impl is None:
            return None
        cell = model.stack.cell
        call = registry.Call(backend, model.dtype, False, (batch, hidden), cell.kind, cell.options.names())
        taken = registry.layer_impl(args.impl).refuses(call) is None
        return args.impl if taken else None

    chosen = {name: model.forward(x[:1, ...], impl=first_path(model))[2].impl for name, model in models.items()}

    def sync() -> None:
        if args.backend == "cupy":  # the GPU's queue drained before the clock stops
            import cupy

            cupy.cuda.Stream.null.synchronize()

    def step(model: lstmx.LSTM, dy, impl: str | None):
        def run() -> None:
            _, _, cache = model.forward(x, impl=impl)
            model.backward(dy, cache)
        return run, sync

    runs = {}
    for name, model in models.items():
        runs[f"{name}|auto"] = step(model, dys[name], first_path(model))
        runs[f"{name}|generic"] = step(model, dys[name], "generic")
    medians = turn_taking_medians(runs, args.repeats)
    rows = {}
    for name in VARIANTS:
        auto, generic = medians[f"{name}|auto"] * 1e3, medians[f"{name}|generic"] * 1e3
        rows[name] = {"impl": chosen[name], "auto_ms": auto, "generic_ms": generic,
                      "auto / plain auto": auto / (medians["plain|auto"] * 1e3),
                      "generic / plain generic": generic / (medians["plain|generic"] * 1e3)}
    print(f"\nB {batch}, T {steps}, D {features}, H {hidden}, float32, {args.backend}, one layer, forward + backward")
    print(f"{'variant':<18} {'auto path':<8} {'auto ms':>9} {'× plain':>8} {'generic ms':>11} {'× plain':>8}")
    for name, row in rows.items():
        print(f"{name:<18} {row['impl']:<8} {row['auto_ms']:>9.1f} {row['auto / plain auto']:>8.2f} "
              f"{row['generic_ms']:>11.1f} {row['generic / plain generic']:>8.2f}")
    report = {"machine": machine, "backend": args.backend,
              "config": {"B": batch, "T": steps, "D": features, "H": hidden},
              "variants": rows}
    name = 'variant_cost.json' if args.backend == 'numpy' else f'variant_cost_{args.backend}.json'
    print(f"wrote {write_json(name, report)}")


if __name__ == "__main__":
    main()
