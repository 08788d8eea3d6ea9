"""The README's language-model recipe (``lstmx train`` on its default corpus) at each precision, compared at the
same step: validation loss and time per step.

    python bench/precision_lm.py                                 # float32, bf16, fp16: 1000 steps, generic path
    python bench/precision_lm.py --precisions float32,bf16 --steps 300 --backend numpy --impl generic

Every run is a ``lstmx train`` process of its own in a temporary folder (removed after), with the same seed and
flags but ``--precision``; ``--impl generic`` by default so that the precisions differ in their products only
(the fast paths run float32 alone). Time per step is the median of the run log's tokens/s. Writes
bench/results/precision_lm.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser, machine_report, write_json  # noqa: E402

from lstmx.cli import flag_type  # noqa: E402
from lstmx.dispatch.precision import PRECISIONS  # noqa: E402
from lstmx.options import POSITIVE_INT  # noqa: E402


def precision_list(text: str) -> list[str]:
    """argparse ``type=`` for ``--precisions``: names of precisions joined by commas."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    if not chosen or any(part not in PRECISIONS for part in chosen):
        raise argparse.ArgumentTypeError(f"must be precisions ({', '.join(PRECISIONS)}) joined by commas, "
                                         f"got {text!r}")
    return chosen


def one_run(precision: str, args, folder: Path) -> dict:
    out = folder / precision
    command = [sys.executable, "-m", "lstmx", "train", "--precision", precision, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--hidden-size",
               str(args.hidden_size), "--backend", args.backend, "--impl", args.impl, "--out", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last = [entry for entry in log if "val_loss" in entry][-1]
    speeds = [entry["tokens_per_s"] for entry in log if "tokens_per_s" in entry]
    ms_per_step = 1000 * args.batch_size * args.seq_len / statistics.median(speeds) if speeds else None
    return {"run": f"--precision {precision}", "precision": precision, "step": last["step"],
            "val_loss": last["val_loss"], "val_ppl": last["val_ppl"], "ms_per_step": ms_per_step}


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--precisions", type=precision_list,
                        default=["float32", "bf16", "fp16"], help="comma-separated precisions (float32, tf32, bf16, fp16)")
    parser.add_argument("--steps", type=flag_type("--steps", POSITIVE_INT, int), default=1000)
    parser.add_argument("--batch-size", type=flag_type("--batch-size", POSITIVE_INT, int), default=32)
    parser.add_argument("--seq-len", type=flag_type("--seq-len", POSITIVE_INT, int), default=64)
    parser.add_argument("--hidden-size", type=flag_type("--hidden-size", POSITIVE_INT, int), default=256)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "torch", "array_api_strict"])
    parser.add_argument("--impl", default="generic", help="the layer implementation (default: generic)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lstmx-precision-") as folder:
        runs = [one_run(precision, args, Path(folder)) for precision in args.precisions]
    reference = runs[0]
    for row in runs:
        row["val_loss_vs_first"] = row["val_loss"] / reference["val_loss"]
        speed = (f"{row['ms_per_step']:.1f} ms/step" if row["ms_per_step"] else "no speed logged")
        print(f"{row['run']}: step {row['step']} val loss {row['val_loss']:.4f} "
              f"({row['val_loss_vs_first']:.4f}x {reference['precision']}), {speed}")
    how = (f"`lstmx train --steps {args.steps} --batch-size {args.batch_size} --seq-len {args.seq_len} "
           f"--hidden-size {args.hidden_size} --backend {args.backend} --impl {args.impl}` on the default corpus, "
           f"once per `--precision`, the same seed; validation at the last step.")
    path = write_json("precision_lm.json", {
        "what": f"the language-model recipe at each precision ({', '.join(args.precisions)})",
        "machine": machine_report(), "how": how, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
