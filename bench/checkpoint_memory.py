"""Peak memory and time of one LSTM training step (forward + full BPTT) on a long sequence, plain against
checkpointed over time (``LSTM(checkpoint_every=K)``), on NumPy, in one run (the two take turns).

    python bench/checkpoint_memory.py                          # T = 10,000, B = 32, D = H = 256, K = 100
    python bench/checkpoint_memory.py --steps 2000 --every 50 --repeats 3

Memory is the peak of Python's allocation tracer (``tracemalloc``, which sees NumPy's buffers) during the step,
less the input, dL/dy, the output and dx that both variants hold alike: what the forward keeps for its backward
and the backward's working memory. The host buffer pool is emptied before each measured step, so neither
variant reuses the other's memory. Writes bench/results/checkpoint_memory.json.
"""

from __future__ import annotations

import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser, machine_report, write_json  # noqa: E402

import lstmx  # noqa: E402
from lstmx.cli import flag_type  # noqa: E402
from lstmx.kernels.host.buffers import HOST_BUFFERS  # noqa: E402
from lstmx.options import POSITIVE_INT  # noqa: E402


def one_step(model: lstmx.LSTM, x: np.ndarray, dy: np.ndarray) -> tuple[float, float]:
    """(seconds, peak MiB beyond the arrays both variants hold) of one forward + backward."""
    HOST_BUFFERS.clear()
    tracemalloc.start()
    start = time.perf_counter()
    y, _, cache = model.forward(x)
    dx, _, _ = model.backward(dy, cache)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    shared = y.nbytes + dx.nbytes  # x and dy were allocated before tracing started
    del cache
    return seconds, (peak - shared) / 2**20


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--steps", type=flag_type("--steps", POSITIVE_INT, int), default=10_000, help="T")
    parser.add_argument("--batch", type=flag_type("--batch", POSITIVE_INT, int), default=32, help="B")
    parser.add_argument("--hidden", type=flag_type("--hidden", POSITIVE_INT, int), default=256, help="D = H")
    parser.add_argument("--every", type=flag_type("--every", POSITIVE_INT, int), default=100,
                        help="K of the checkpointed column")
    parser.add_argument("--repeats", type=flag_type("--repeats", POSITIVE_INT, int), default=2,
                        help="timed steps per column, taking turns")
    args = parser.parse_args()
    machine = machine_report()
    print(f"machine: {machine}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.steps, args.batch, args.hidden)).astype(np.float32)
    dy = rng.standard_normal((args.steps, args.batch, args.hidden)).astype(np.float32)
    models = {"plain": lstmx.LSTM(args.hidden, args.hidden, seed=0),
              f"checkpoint_every={args.every}": lstmx.LSTM(args.hidden, args.hidden, seed=0,
                                                           checkpoint_every=args.every)}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            runs[name].append(one_step(model, x, dy))
            print(f"  {name}: {runs[name][-1][0]:.2f} s, peak {runs[name][-1][1]:,.0f} MiB", flush=True)
    rows = {name: {"seconds": statistics.median(s for s, _ in values), "peak_mib": max(m for _, m in values)}
            for name, values in runs.items()}
    plain, checkpointed = rows["plain"], rows[f"checkpoint_every={args.every}"]
    print(f"\nT {args.steps}, B {args.batch}, D = H {args.hidden}, float32, impl {models['plain'].forward(x[:1])[2].impl}")
    print(f"{'column':<24} {'s/step':>8} {'peak MiB':>10}")
    for name, row in rows.items():
        print(f"{name:<24} {row['seconds']:>8.2f} {row['peak_mib']:>10,.0f}")
    ratios = {"memory plain / checkpointed": plain["peak_mib"] / checkpointed["peak_mib"],
              "time checkpointed / plain": checkpointed["seconds"] / plain["seconds"]}
    print("; ".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    report = {"machine": machine, "config": {"T": args.steps, "B": args.batch, "H": args.hidden, "K": args.every},
              "rows": rows, "ratios": ratios}
    print(f"wrote {write_json('checkpoint_memory.json', report)}")


if __name__ == "__main__":
    main()
