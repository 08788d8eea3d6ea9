"""Time the tiled CuPy path (``impl="cupy-tiled"``, or ``cupy-tiled-tf32`` with ``--precision tf32``) for several
tile shapes per size, GPU only, and print which
shape the path chooses by itself, so its chooser (``lstmx.kernels.cupy.tiling.choose_tile_shape``) can be checked
against measurements.

    python bench/tune_tiled.py                       # the gpu_vs_cpu sizes the path runs
    python bench/tune_tiled.py --configs 64,100,512,512 --repeats 9
    python bench/tune_tiled.py --precision tf32      # the TF32 (tensor-core) kernels and their shapes

Prints ms per training step (forward + backward, float32, median of --repeats after a warm-up) and the
stepwise path beside it (at the same precision); writes bench/results/tune_tiled[_tf32].json.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser, sizes, write_json  # noqa: E402

import lstmx  # noqa: E402
from lstmx.dispatch import registry  # noqa: E402
from lstmx.cli import flag_type  # noqa: E402
from lstmx.kernels.cupy import tiling  # noqa: E402
from lstmx.options import POSITIVE_INT  # noqa: E402

CONFIGS = [(16, 200, 128, 128), (64, 100, 256, 256), (64, 100, 512, 512), (64, 100, 768, 768)]


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--configs", nargs="+", type=sizes, help="B,T,D,H sizes (default: a built-in list)")
    parser.add_argument("--repeats", type=flag_type("--repeats", POSITIVE_INT, int), default=7,
                        help="timed steps per shape (after a warm-up)")
    parser.add_argument("--precision", choices=("float32", "tf32"), default="float32")
    args = parser.parse_args()
    mma = args.precision == "tf32"
    impl = "cupy-tiled-tf32" if mma else "cupy-tiled"
    configs = args.configs or CONFIGS
    try:
        backend = lstmx.get_backend("cupy")
    except lstmx.BackendError as error:
        parser.exit(2, f"{parser.prog}: error: needs a GPU: {error}\n")
    import cupy

    tiled, module = registry.layer_impl("cupy-tiled").load(), registry.layer_impl(impl).load()
    attributes = cupy.cuda.Device().attributes
    results = []
    for batch, steps, features, hidden in configs:
        model = lstmx.LSTM(features, hidden, backend="cupy", seed=0, precision=args.precision)
        rng = np.random.default_rng(0)
        x = backend.asarray(rng.standard_normal((steps, batch, features)), dtype=model.dtype)
        dy = backend.asarray(rng.standard_normal((steps, batch, hidden)), dtype=model.dtype)

        def time_step(impl: str) -> float:
            times = []
            for _ in range(args.repeats + 1):
                cupy.cuda.Stream.null.synchronize()
                start = time.perf_counter()
                _, _, cache = model.forward(x, impl=impl)
                model.backward(dy, cache)
                cupy.cuda.Stream.null.synchronize()
                times.append(time.perf_counter() - start)
            return 1e3 * float(np.median(times[1:]))

        chosen = tiling.choose_tile_shape(batch, hidden, 4, attributes["MaxSharedMemoryPerBlockOptin"],
                                          attributes["MultiProcessorCount"], mma)
        stepwise = time_step("cupy-stepwise")
        print(f"B,T,D,H = {batch},{steps},{features},{hidden}: stepwise {stepwise:.2f} ms; chosen shape {chosen}")
        row = {"config": [batch, steps, features, hidden], "stepwise_ms": stepwise, "chosen": chosen, "shapes": []}
        limit = attributes["MaxSharedMemoryPerBlockOptin"]
        for units, rows, splits in itertools.product((1, 2, 4, 8, 16, 32), (4, 8, 16, 32, 64), (4, 8, 16, 32)):
            candidate = tiling.fitted_shape(units, rows, splits, hidden, 4, limit, mma)
            if candidate is None:
                continue
            with tiled.use_tile_shape(candidate):  # the shape both tiled paths launch within the block
                if module.refuses_size(batch, hidden, np.float32) is not None:
                    continue
                ms = time_step(impl)
            mark = " (chosen)" if candidate == chosen else ""
            print(f"  units {units:2d} rows {rows:2d} splits {splits:2d}: {ms:7.2f} ms{mark}")
            row["shapes"].append({"shape": list(candidate), "ms": ms})
        if chosen is not None:
            row["chosen_ms"] = time_step(impl)
            print(f"  chosen {chosen}: {row['chosen_ms']:.2f} ms")
        results.append(row)
    write_json("tune_tiled_tf32.json" if mma else "tune_tiled.json", {"precision": args.precision, "results": results})


if __name__ == "__main__":
    main()
