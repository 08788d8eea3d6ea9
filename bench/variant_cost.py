"""What each LSTM variant costs per training step (forward + full BPTT of one layer) against the plain LSTM, on
the path "auto" picks for it and on the generic path, in one run (every column takes turns).

    python bench/variant_cost.py                        # B 32, T 100, D = H 256, float32, NumPy
    python bench/variant_cost.py --config 16,50,64,64 --repeats 3

Each row is one option of ``lstmx.LSTM`` (and "everything": every cell option at once); "auto" is the
implementation the registry chooses for that model (named in the table); the ratios divide by the plain LSTM's
time on the same path. Writes bench/results/variant_cost.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser, machine_report, sizes, turn_taking_medians, write_json  # noqa: E402

import lstmx  # noqa: E402
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
    "everything": {"peepholes": True, "input_forget": True, "cell_clip": 3.0, "layer_norm": True, "zoneout": 0.1,
                   "recurrent_dropout": 0.25, "weight_drop": 0.5},
}


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--config", type=sizes, default=(32, 100, 256, 256), help="B,T,D,H (default 32,100,256,256)")
    parser.add_argument("--repeats", type=flag_type("--repeats", POSITIVE_INT, int), default=6,
                        help="timed steps per column, over three rounds of turns")
    args = parser.parse_args()
    batch, steps, features, hidden = args.config
    machine = machine_report()
    print(f"machine: {machine}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps, batch, features)).astype(np.float32)
    dy = rng.standard_normal((steps, batch, hidden)).astype(np.float32)
    models = {name: lstmx.LSTM(features, hidden, seed=0, **options) for name, options in VARIANTS.items()}
    chosen = {name: model.forward(x[:1])[2].impl for name, model in models.items()}

    def step(model: lstmx.LSTM, impl: str | None):
        def run() -> None:
            _, _, cache = model.forward(x, impl=impl)
            model.backward(dy, cache)
        return run, lambda: None

    runs = {}
    for name, model in models.items():
        runs[f"{name}|auto"] = step(model, None)
        runs[f"{name}|generic"] = step(model, "generic")
    medians = turn_taking_medians(runs, args.repeats)
    rows = {}
    for name in VARIANTS:
        auto, generic = medians[f"{name}|auto"] * 1e3, medians[f"{name}|generic"] * 1e3
        rows[name] = {"impl": chosen[name], "auto_ms": auto, "generic_ms": generic,
                      "auto / plain auto": auto / (medians["plain|auto"] * 1e3),
                      "generic / plain generic": generic / (medians["plain|generic"] * 1e3)}
    print(f"\nB {batch}, T {steps}, D {features}, H {hidden}, float32, one layer, forward + backward")
    print(f"{'variant':<18} {'auto path':<8} {'auto ms':>9} {'× plain':>8} {'generic ms':>11} {'× plain':>8}")
    for name, row in rows.items():
        print(f"{name:<18} {row['impl']:<8} {row['auto_ms']:>9.1f} {row['auto / plain auto']:>8.2f} "
              f"{row['generic_ms']:>11.1f} {row['generic / plain generic']:>8.2f}")
    report = {"machine": machine, "config": {"B": batch, "T": steps, "D": features, "H": hidden},
              "variants": rows}
    print(f"wrote {write_json('variant_cost.json', report)}")


if __name__ == "__main__":
    main()
