"""Data-parallel training: tokens/s for 1 and N ranks, and the check that N ranks train what one process trains.

Runs ``lstmx train`` once in a single process and once under ``mpiexec -n N --distributed mpi`` with the same
recipe, then prints each run's training throughput (median tokens/s over its log records, the first left out)
and the largest difference between the two runs' per-step losses and final checkpoints (parameters, optimizer
state, carried state).

    python bench/ranks.py                                   # NumPy, 1 and 2 ranks, the README recipe at H = 256
    python bench/ranks.py --backend cupy --dtype float64    # 2 ranks sharing one GPU (a correctness run)
    python bench/ranks.py --threads 1                       # one BLAS thread per rank

For CPU timings unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in that command only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser, machine_report, write_json  # noqa: E402

from lstmx.training import checkpoint as ckpt  # noqa: E402
from lstmx.backend import BACKEND_NAMES, BackendError, get_backend  # noqa: E402
from lstmx.cli import flag_type  # noqa: E402
from lstmx.training.data import default_corpus  # noqa: E402
from lstmx.options import NON_NEGATIVE_INT, POSITIVE_INT  # noqa: E402
from lstmx.training.runlog import read_log  # noqa: E402


TWO_OR_MORE = POSITIVE_INT._replace(low=2)


def train(folder: Path, text: Path, ranks: int, args: argparse.Namespace) -> Path:
    out = folder / f"ranks{ranks}"
    command = [sys.executable, "-m", "lstmx.cli", "train", str(text), "--out", str(out), "--backend", args.backend,
               "--dtype", args.dtype, "--steps", str(args.steps), "--batch-size", str(args.batch),
               "--seq-len", str(args.seq_len), "--hidden-size", str(args.hidden), "--log-every", "10",
               "--eval-every", str(args.steps), "--sample-length", "0", "--no-progress"]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
        if mpiexec is None:
            raise SystemExit("bench/ranks.py: error: mpiexec not found: pip install 'lstmx[mpi]'")
        command = [mpiexec, "-n", str(ranks), *command, "--distributed", "mpi"]
    environment = dict(os.environ)
    if args.threads:
        environment.update(OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
                           NUMBA_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"bench/ranks.py: error: the {ranks}-process run failed (exit {done.returncode}): {last}")
    return out


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--ranks", type=flag_type("--ranks", TWO_OR_MORE, int), default=2,
                        help="processes of the data-parallel run (compared with one process)")
    parser.add_argument("--backend", default="numpy", choices=BACKEND_NAMES)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    for flag, default in (("--steps", 100), ("--batch", 32), ("--seq-len", 100), ("--hidden", 256)):
        parser.add_argument(flag, type=flag_type(flag, POSITIVE_INT, int), default=default)
    parser.add_argument("--threads", type=flag_type("--threads", NON_NEGATIVE_INT, int), default=0,
                        help="BLAS threads per process (0: the library's default)")
    args = parser.parse_args()
    try:
        get_backend(args.backend)
    except BackendError as error:
        parser.error(f"argument --backend: {error}")
    print(f"machine: {machine_report()}")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        text = folder / "corpus.txt"
        text.write_text(default_corpus(300_000), encoding="utf-8")
        runs = {n: train(folder, text, n, args) for n in (1, args.ranks)}
        rows = {}
        for n, out in runs.items():
            records = [r for r in read_log(out / "log.jsonl") if "tokens_per_s" in r]
            rows[n] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in records[1:] or records),
                       "losses": [r["train_loss"] for r in records]}
        one, many = ckpt.load(runs[1] / "last.npz").arrays, ckpt.load(runs[args.ranks] / "last.npz").arrays
        weight_gap = max(float(np.max(np.abs(one[k].astype(np.float64) - many[k]))) / max(1e-30, float(np.max(np.abs(one[k]))))
                         for k in one if one[k].size)
        loss_gap = max(abs(a - b) / abs(a) for a, b in zip(rows[1]["losses"], rows[args.ranks]["losses"]))
    print(f"\n{'ranks':>5} {'tokens/s':>12}")
    for n, row in rows.items():
        print(f"{n:>5} {row['tokens_per_s']:>12,.0f}")
    print(f"\n{args.ranks} ranks against 1 process ({args.dtype}, {args.steps} steps): largest relative difference of "
          f"a logged loss {loss_gap:.2e}, of a checkpoint tensor {weight_gap:.2e}")
    write_json("ranks.json", {"args": vars(args), "rows": rows, "loss_gap": loss_gap, "weight_gap": weight_gap})


if __name__ == "__main__":
    main()
