"""One LSTM training step (forward over T steps + full BPTT with weight gradients, float32 or --dtype float64), side
by side:
lstmx on NumPy and on CuPy, one column per layer implementation the registry has for that backend here
(``lstmx-numpy:numba``, ``lstmx-numpy:numpy``, ``lstmx-cupy:cupy``, ...), and PyTorch on CPU and cuDNN (fp32
and TF32) when importable, in one run; on CuPy also ``lstmx-cupy:tf32`` (the registry's choice with
``precision="tf32"``) beside cuDNN TF32, and ``lstmx-cupy:<impl>:tf32`` for each path whose recurrence runs
in TF32 then (``registry.TF32_RECURRENCE_IMPLS``: the tiled kernels' tensor-core variant, the graph's and the
stepwise path's cuBLAS GEMMs).

    python bench/gpu_vs_cpu.py                       # every configuration, every available column
    python bench/gpu_vs_cpu.py --configs 64,100,256,256 --repeats 5
    python bench/gpu_vs_cpu.py --no-cpu              # GPU columns only (large rows are slow on a CPU)
    python bench/gpu_vs_cpu.py --generic             # also the generic Array API path's columns
    python bench/gpu_vs_cpu.py --skip-impl cupy-tiled    # without one path's columns (it failed on this GPU)
    python bench/gpu_vs_cpu.py --dtype float64 --no-cpu   # float64 (no TF32 columns); writes gpu_vs_cpu_float64.*
    python bench/gpu_vs_cpu.py --bidirectional --configs 64,100,256,256   # both directions, against PyTorch's own
    python bench/gpu_vs_cpu.py --proj-size 128 --configs 32,100,256,512   # the LSTMP cell, against PyTorch's proj_size
    python bench/gpu_vs_cpu.py --half --no-cpu     # also the 16-bit columns: lstmx's cupy-tiled-bf16/-fp16 under
                                                   # precision="bf16"/"fp16" beside cuDNN fp16 and bf16

Columns absent on this machine (no GPU, no torch, no numba) are marked "-", a column whose first step raised
"FAIL" (its error is printed and kept in the JSON; the other columns go on). Times are medians over --repeats
after a warm-up; the columns take turns in --rounds rounds, so drift in the machine's speed reaches them all
alike. Writes bench/results/gpu_vs_cpu.json and a bar chart bench/results/gpu_vs_cpu.png. For CPU timings
unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in that command only; the header reports which BLAS kernel ran.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, bench_parser, machine_report, sizes, turn_taking_medians, write_json  # noqa: E402

import lstmx  # noqa: E402
from lstmx.dispatch import registry  # noqa: E402
from lstmx.cli import flag_type  # noqa: E402
from lstmx.options import NON_NEGATIVE_INT, POSITIVE_INT  # noqa: E402

CUDNN = {"float32": "cudnn-fp32", "float64": "cudnn-fp64"}  # PyTorch's cuDNN column at each dtype
HALVES = {"fp16": "float16", "bf16": "bfloat16"}  # --half: each 16-bit precision, and PyTorch's dtype for it
CONFIGS = [(16, 200, 128, 128), (64, 100, 256, 256), (64, 100, 512, 512), (128, 100, 1024, 1024), (256, 50, 1024, 1024)]


def lstmx_step(backend_name: str, impl: str, batch: int, steps: int, features: int, hidden: int,
               precision: str = "float32", dtype: str = "float32",
               bidirectional: bool = False, proj_size: int = 0) -> tuple[Callable, Callable, Callable] | None:
    """The column's (step, sync, peak memory) functions; None where the implementation refuses this size or
    cell (at this precision: the TF32 tiled kernels have their own tile shapes)."""
    model = lstmx.LSTM(features, hidden, backend=backend_name, seed=0, precision=precision, dtype=dtype,
                       bidirectional=bidirectional, proj_size=proj_size)
    backend = model.backend
    call = registry.Call(backend, model.dtype, False, (batch, hidden), model.stack.cell.kind, (), precision)
    if impl != registry.AUTO and registry.layer_impl(impl).refuses(call) is not None:
        return None
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((steps, batch, features)), dtype=model.dtype)
    dy = backend.asarray(rng.standard_normal((steps, batch, model.output_size)), dtype=model.dtype)

    def step():
        _, _, cache = model.forward(x, impl=impl)
        model.backward(dy, cache)

    if backend_name == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()

        def peak() -> int:
            """This column's footprint, as torch's max_memory_allocated counts it: the bytes CuPy's pool holds
            after one step from empty, less what other columns hold, plus this column's inputs and weights."""
            cupy.cuda.Stream.null.synchronize()
            from lstmx.kernels.cupy.graph import release_graphs

            release_graphs()  # the graph path's buffers count as this step's (captured again), not as others'
            pool.free_all_blocks()
            others = pool.used_bytes()
            step()
            cupy.cuda.Stream.null.synchronize()
            own = x.nbytes + dy.nbytes + sum(p.nbytes for p in model.params.values())
            return pool.total_bytes() - others + own

        return step, cupy.cuda.Stream.null.synchronize, peak
    return step, lambda: None, lambda: None


def torch_step(device: str, tf32: bool, dtype: str, batch: int, steps: int, features: int, hidden: int,
               bidirectional: bool = False, proj_size: int = 0):
    import torch

    torch.manual_seed(0)
    kind = getattr(torch, dtype)
    lstm = torch.nn.LSTM(features, hidden, bidirectional=bidirectional, proj_size=proj_size).to(device, kind)
    x = torch.randn(steps, batch, features, device=device, dtype=kind, requires_grad=True)  # dx too, as lstmx's
    dy = torch.randn(steps, batch, (2 if bidirectional else 1) * (proj_size or hidden), device=device, dtype=kind)
    peak = [0]

    def step():
        # The columns take turns, so this column's settings are made on every call, and its peak memory
        # measured within its own steps.
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        lstm.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = lstm(x)
        y.backward(dy)
        if device == "cuda":
            peak[0] = max(peak[0], torch.cuda.max_memory_allocated())

    if device == "cuda":
        return step, torch.cuda.synchronize, lambda: peak[0]
    return step, lambda: None, lambda: None


def available(args) -> dict[str, Callable]:
    columns: dict[str, Callable] = {}
    layer = {"bidirectional": args.bidirectional, "proj_size": args.proj_size}
    for backend_name in ("numpy", "cupy"):
        if backend_name == "numpy" and args.no_cpu:
            continue
        try:
            backend = lstmx.get_backend(backend_name)
        except lstmx.BackendError as error:
            print(f"lstmx-{backend_name} absent: {error}")
            continue
        default = registry.choose_layer_impl(backend, getattr(np, args.dtype), False).name
        impls = [i.name for i in registry.available_layer_impls(backend, getattr(np, args.dtype))
                 if (args.generic or i.name != "generic" or i.name == default) and i.name not in args.skip_impl]
        print(f"lstmx on {backend_name}: columns for {', '.join(impls)} (the registry's choice per row: gpu/cudnn)")
        for name in impls:
            columns[f"lstmx-{backend_name}:{name}"] = functools.partial(lstmx_step, backend_name, name,
                                                                         dtype=args.dtype, **layer)
        if backend_name == "cupy" and args.dtype == "float32":  # the registry's choice with TF32, beside cuDNN's
            columns["lstmx-cupy:tf32"] = functools.partial(lstmx_step, backend_name, registry.AUTO, precision="tf32",
                                                           **layer)
            tf32_impls = registry.available_layer_impls(backend, np.float32, precision="tf32")
            for name in registry.TF32_RECURRENCE_IMPLS:  # each with TF32 in its recurrence too
                if name in (i.name for i in tf32_impls) and name not in args.skip_impl:
                    columns[f"lstmx-cupy:{name}:tf32"] = functools.partial(lstmx_step, backend_name, name,
                                                                            precision="tf32", **layer)
            for half in HALVES if args.half else ():  # the paths of each 16-bit precision (not the generic one)
                for impl in registry.available_layer_impls(backend, np.float32, precision=half):
                    if impl.name != "generic" and impl.name not in args.skip_impl:
                        columns[f"lstmx-cupy:{impl.name}:{half}"] = functools.partial(
                            lstmx_step, backend_name, impl.name, precision=half, **layer)
    try:
        import torch

        if not args.no_cpu:
            columns["torch-cpu"] = functools.partial(torch_step, "cpu", False, args.dtype, **layer)
        if torch.cuda.is_available():
            columns[CUDNN[args.dtype]] = functools.partial(torch_step, "cuda", False, args.dtype, **layer)
            if args.dtype == "float32":
                columns["cudnn-tf32"] = functools.partial(torch_step, "cuda", True, args.dtype, **layer)
                for half, kind in HALVES.items() if args.half else ():  # PyTorch's LSTM in that dtype (.half())
                    columns[f"cudnn-{half}"] = functools.partial(torch_step, "cuda", False, kind, **layer)
        else:
            print("cuDNN columns absent: torch sees no CUDA device")
    except ImportError:
        print("PyTorch columns absent: torch is not installed")
    return columns


def working_columns(columns: dict[str, Callable], config: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The columns that build and run one step at this size, and the others with their error in one line: an
    opt-in path failing on its first GPU run costs its own column, not the rest of the table."""
    made, failed = {}, {}
    for name, make in columns.items():
        try:
            column = make(*config)
            if column is None:
                continue  # the implementation refuses this size
            step, sync, _ = column
            step()
            sync()
        except Exception as error:  # noqa: BLE001 (reported in the table and the JSON)
            failed[name] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            print(f"  {config} {name}: FAILED {failed[name]}", flush=True)
            continue
        made[name] = column
    return made, failed


def default_column(backend_name: str, batch: int, hidden: int, dtype: str, cell: str = "lstm") -> str | None:
    """The column of the implementation the registry picks for this size and cell on ``backend_name`` (None:
    absent)."""
    try:
        backend = lstmx.get_backend(backend_name)
    except lstmx.BackendError:
        return None
    chosen = registry.choose_layer_impl(backend, getattr(np, dtype), False, None, (batch, hidden), cell)
    return f"lstmx-{backend_name}:{chosen.name}"


def draw_bars(results: list[dict[str, Any]], names: list[str], dtype: str, bidirectional: bool = False,
              proj_size: int = 0, name: str | None = None) -> Path | None:
    """Grouped bars, one group per configuration, one colour per column, log scale in ms."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(min(14, max(7, 0.25 * len(results) * max(1, len(names)))) + 3, 4.5),
                                dpi=110)  # + 3 inches for the legend beside the axes
    width = 0.8 / max(1, len(names))
    for k, column in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(results))]
        values = [e["columns"].get(column, {}).get("ms", float("nan")) for e in results]
        axis.bar(xs, values, width, label=column)
    axis.set_xticks(range(len(results)))
    axis.set_xticklabels([",".join(str(v) for v in e["config"].values()) for e in results])
    axis.set_xlabel("B, T, D, H")
    axis.set_ylabel("ms per training step (log)")
    axis.set_yscale("log")
    axis.set_title(f"One {'bidirectional ' if bidirectional else ''}{f'LSTMP (P {proj_size})' if proj_size else 'LSTM'} "
                   f"training step (forward + BPTT), {dtype}")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    figure.tight_layout()
    path = RESULTS / f"{name or output_name(dtype, bidirectional, proj_size)}.png"
    RESULTS.mkdir(exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")  # whole or not at all, as write_json
    figure.savefig(partial, format="png")
    plt.close(figure)
    partial.replace(path)
    return path


def output_name(dtype: str, bidirectional: bool = False, proj_size: int = 0, half: bool = False) -> str:
    """The JSON's and the PNG's name (without suffix) for a run in ``dtype`` (both directions, a projection, the
    16-bit columns)."""
    return (("gpu_vs_cpu" if dtype == "float32" else f"gpu_vs_cpu_{dtype}") + ("_bidirectional" if bidirectional else "")
            + (f"_proj{proj_size}" if proj_size else "") + ("_half" if half else ""))


def training_flops(config: tuple[int, ...], directions: int, proj_size: int = 0) -> float:
    """The multiply-adds (×2) of one layer's training step: the forward's products over all steps (x W_x and
    h W_h, 2·T·B·(D + R)·4H, and with a projection h W_hr, 2·T·B·H·P) and the backward's two as large (dx and
    dh, dW), per direction; R is P with a projection, else H."""
    batch, steps, features, hidden = config
    recurrent = proj_size or hidden
    return 3 * 2.0 * steps * batch * ((features + recurrent) * 4 * hidden + hidden * proj_size) * directions


def cpu_gemm_rate(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """This machine's large-GEMM rate (GFLOP/s) through NumPy's BLAS, measured now: the limit a CPU step can
    approach."""
    import time

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    a @ b  # warm-up: threads started, pages touched
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / float(np.median(times)) / 1e9


def ratio(rows: dict[str, Any], top: str | None, bottom: str | None) -> float | None:
    a, b = rows.get(top), rows.get(bottom)
    return None if a is None or b is None else a["ms"] / b["ms"]


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--configs", nargs="+", type=sizes, help="B,T,D,H entries (default: the five standard rows)")
    parser.add_argument("--repeats", type=flag_type("--repeats", POSITIVE_INT, int), default=6,
                        help="timed steps per column (split over the rounds)")
    parser.add_argument("--rounds", type=flag_type("--rounds", POSITIVE_INT, int), default=3,
                        help="turns each column takes")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU columns")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="the layers' dtype (float64: no TF32 columns, cuDNN in float64)")
    parser.add_argument("--generic", action="store_true", help="also time the generic Array API path")
    parser.add_argument("--bidirectional", action="store_true",
                        help="both directions per layer (lstmx and PyTorch); writes gpu_vs_cpu*_bidirectional.*")
    parser.add_argument("--proj-size", type=flag_type("--proj-size", NON_NEGATIVE_INT, int), default=0,
                        help="the LSTMP cell with this projection (below every row's H; 0: none); writes "
                             "gpu_vs_cpu*_proj<P>.*")
    parser.add_argument("--half", action="store_true",
                        help="also the 16-bit columns (float32 only): lstmx's paths under precision='bf16' and "
                             "'fp16', cuDNN in float16 and bfloat16")
    parser.add_argument("--skip-impl", action="append", default=[], choices=registry.NAMES, metavar="IMPL",
                        help="leave out this layer implementation's columns (repeatable; e.g. one that failed its "
                             "first GPU run)")
    args = parser.parse_args()
    if args.skip_impl:
        print(f"left out: the columns of {', '.join(args.skip_impl)}")
    configs = args.configs or CONFIGS
    if args.proj_size and any(args.proj_size >= config[3] for config in configs):
        parser.error(f"--proj-size must be below every row's H ({min(c[3] for c in configs)}), got {args.proj_size}")
    machine = machine_report()
    try:
        import torch

        machine["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if not args.no_cpu:
        machine["cpu_gemm_gflops"] = cpu_gemm_rate(args.dtype)
    print(f"machine: {machine}")
    columns = available(args)
    results = []
    for config in configs:
        batch, steps, _, _ = config
        made, failed = working_columns(columns, config)
        medians = turn_taking_medians({name: (step, sync) for name, (step, sync, _) in made.items()},
                                      args.repeats, args.rounds, warmed=True)  # working_columns ran a step each
        row: dict[str, Any] = {}
        flops = training_flops(config, 2 if args.bidirectional else 1, args.proj_size)
        for name, seconds in medians.items():
            peak = made[name][2]()
            row[name] = {"ms": 1e3 * seconds, "tokens_per_s": batch * steps / seconds,
                         "peak_gpu_mb": None if peak is None else peak / 2**20, "gflops": flops / seconds / 1e9}
            if "cpu_gemm_gflops" in machine and (name.startswith("lstmx-numpy") or name == "torch-cpu"):
                row[name]["fraction_of_cpu_gemm"] = row[name]["gflops"] / machine["cpu_gemm_gflops"]
            print(f"  {config} {name:<17} {1e3 * seconds:9.2f} ms", flush=True)
        del made
        cell = "lstmp" if args.proj_size else "lstm"
        gpu = default_column("cupy", batch, config[3], args.dtype, cell)
        cpu = default_column("numpy", batch, config[3], args.dtype, cell)
        results.append({"config": dict(zip("BTDH", config)), "columns": row, "failed": failed,
                        "ratios": {"lstmx-gpu/cudnn": ratio(row, gpu, CUDNN[args.dtype]),
                                   "lstmx-tf32/cudnn-tf32": ratio(row, "lstmx-cupy:tf32", "cudnn-tf32"),
                                   **{f"lstmx-{half}/cudnn-{half}": ratio(row, f"lstmx-cupy:cupy-tiled-{half}:{half}",
                                                                          f"cudnn-{half}") for half in HALVES},
                                   "lstmx-cpu/torch-cpu": ratio(row, cpu, "torch-cpu"),
                                   "gpu speed-up (lstmx cpu/gpu)": ratio(row, cpu, gpu)}})
    names = list(columns)
    widths = {n: max(15, len(n) + 3) for n in names}
    header = f"{'B':>4} {'T':>4} {'D':>5} {'H':>5} | " + " ".join(f"{n + ' ms':>{widths[n]}}" for n in names)
    header += (" | gpu/cudnn  tf32/tf32  cpu/torch  gpu-speedup   (lstmx: the implementation the registry picks "
               "per row)")
    print("\n" + header)
    for entry in results:
        c, row, r = entry["config"], entry["columns"], entry["ratios"]
        cells = " ".join(f"{row[n]['ms']:>{widths[n]}.2f}" if n in row
                         else f"{'FAIL' if n in entry['failed'] else '-':>{widths[n]}}" for n in names)
        fmt = lambda v: f"{v:>9.2f}" if v is not None else f"{'-':>9}"  # noqa: E731
        print(f"{c['B']:>4} {c['T']:>4} {c['D']:>5} {c['H']:>5} | {cells} | {fmt(r['lstmx-gpu/cudnn'])}  "
              f"{fmt(r['lstmx-tf32/cudnn-tf32'])}  "
              f"{fmt(r['lstmx-cpu/torch-cpu'])}  {fmt(r['gpu speed-up (lstmx cpu/gpu)'])}")
    fastest = []
    for entry in results:
        ours = {n: v["ms"] for n, v in entry["columns"].items() if n.startswith("lstmx-cupy:")
                and not n.endswith((":tf32", ":bf16", ":fp16"))}
        if ours and CUDNN[args.dtype] in entry["columns"]:
            best = min(ours, key=ours.get)
            fastest.append(f"  B,T,D,H = {','.join(map(str, entry['config'].values()))}: {best} {ours[best]:.2f} ms = "
                           f"{ours[best] / entry['columns'][CUDNN[args.dtype]]['ms']:.2f}× {CUDNN[args.dtype]}")
    if fastest:
        print(f"\nfastest lstmx-cupy {args.dtype} column per row (which implementation would earn \"auto\" there):")
        print("\n".join(fastest))
    if "cpu_gemm_gflops" in machine:
        print(f"\nGFLOP/s of the CPU columns, and their fraction of this machine's large-GEMM rate "
              f"({machine['cpu_gemm_gflops']:.1f} GFLOP/s, {args.dtype}, measured in this run):")
        for entry in results:
            cpu_columns = {n: v for n, v in entry["columns"].items() if "fraction_of_cpu_gemm" in v}
            print(f"  {','.join(map(str, entry['config'].values()))}: " + "; ".join(
                f"{n} {v['gflops']:.1f} ({100 * v['fraction_of_cpu_gemm']:.0f} %)" for n, v in cpu_columns.items()))
    print("\ntokens/s: " + "; ".join(
        f"{tuple(e['config'].values())}: " + ", ".join(f"{n} {e['columns'][n]['tokens_per_s']:,.0f}" for n in e["columns"])
        for e in results))
    peaks = {f"{tuple(e['config'].values())} {n}": v["peak_gpu_mb"] for e in results for n, v in e["columns"].items()
             if v["peak_gpu_mb"] is not None}
    if peaks:
        print("peak GPU memory (MiB): " + "; ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    half_ratios = [f"lstmx-{half}/cudnn-{half}" for half in HALVES if any(e["ratios"][f"lstmx-{half}/cudnn-{half}"]
                                                                        is not None for e in results)]
    if half_ratios:
        print("\n16-bit: " + "; ".join(f"{','.join(map(str, e['config'].values()))}: " + ", ".join(
            f"{key} {e['ratios'][key]:.2f}" for key in half_ratios if e["ratios"][key] is not None) for e in results))
    report = {"machine": machine, "dtype": args.dtype, "bidirectional": args.bidirectional,
              "proj_size": args.proj_size, "half": args.half, "results": results}
    name = output_name(args.dtype, args.bidirectional, args.proj_size, args.half)
    print(f"wrote {write_json(name + '.json', report)}")
    png = draw_bars(results, names, args.dtype, args.bidirectional, args.proj_size, name)
    if png is not None:
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
