"""Shared bench helpers: flags that refuse bad values in one line, the text to train on, BLAS/thread report,
medians and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from lstmx.cli import Parser

RESULTS = Path(__file__).parent / "results"
SIZE_NAMES = "B,T,D,H"  # batch, time steps, input features, hidden units


def bench_parser(script: str, doc: str | None) -> Parser:
    """A bench script's parser, as ``lstmx``'s: a bad flag or value is one line naming the flag and what it takes."""
    return Parser(prog=f"bench/{Path(script).name}", description=(doc or "").splitlines()[0])


def sizes(text: str) -> tuple[int, int, int, int]:
    """argparse ``type=`` for one ``B,T,D,H`` entry: four integers ≥ 1 joined by commas."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"each entry must be {SIZE_NAMES}: four integers ≥ 1 joined by commas, "
                                         f"got {text!r}")
    return values  # type: ignore[return-value]


def text_file(text: str) -> Path:
    """argparse ``type=``: a readable file (its UTF-8 is checked where it is read)."""
    path = Path(text)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"must be a readable text file, got {text!r}")
    return path


def english_text(max_chars: int = 1_100_000) -> tuple[str, str]:
    """About 1 MB of public-domain English: the King James Bible from Debian's ``bible-kjv`` package when the
    ``bible`` program is installed (verse numbers removed); otherwise Python's own stdlib source."""
    if shutil.which("bible"):
        raw = subprocess.run(["bible", "-l1000", "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
        text = re.sub(r"^ +\d+ ", "", raw, flags=re.MULTILINE)[:max_chars]
        return text, "King James Bible (Debian bible-kjv), first ~1.1 MB"
    from lstmx.training.data import default_corpus

    return default_corpus(max_chars), "Python stdlib source (install Debian's bible-kjv for the English text)"


def _processor_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; the platform's word elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_report() -> dict[str, Any]:
    """CPU, thread count and which BLAS kernel NumPy runs (threadpoolctl), for the tables' header."""
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "processor": _processor_name(), "cpu_count": os.cpu_count(),
                              "machine": platform.machine(),
                              "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
                              "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")}
    try:
        import numpy  # noqa: F401  (loads the BLAS threadpoolctl inspects)
        from threadpoolctl import threadpool_info

        report["blas"] = [{k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                          for info in threadpool_info() if info.get("user_api") == "blas"]
    except ImportError:
        report["blas"] = "threadpoolctl not installed"
    gpu = _gpu_name()
    if gpu is not None:
        report["gpu"] = gpu
    return report


def _gpu_name() -> str | None:
    """The first CUDA device's name, with the driver and CuPy versions, where CuPy sees one (else None)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            return None
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        driver = cupy.cuda.runtime.driverGetVersion()
    except Exception:  # noqa: BLE001 (no CuPy, no driver, no device: a CPU machine)
        return None
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"{name} (CUDA driver {driver // 1000}.{driver % 1000 // 10}, CuPy {cupy.__version__})"


def turn_taking_medians(runs: dict[str, tuple[Callable[[], Any], Callable[[], None]]], repeats: int, rounds: int = 3,
                        pause: float = 0.5, warmed: bool = False) -> dict[str, float]:
    """Median seconds per call for each ``name: (run, sync)``, the runs taking turns.

    After one warm-up call each (none when the caller ``warmed`` them), every round gives each run
    ``repeats / rounds`` timed calls in turn, with a pause before each turn (the previous run's idle BLAS/OpenMP
    threads spin for a while). Drift in the machine's speed then reaches every column alike instead of whichever
    ran last.
    """
    if not warmed:
        for run, sync in runs.values():
            run()
            sync()
    per_round = max(1, -(-repeats // rounds))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (run, sync) in runs.items():
            time.sleep(pause)
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """``RESULTS/name``, written whole or not at all (a temporary file renamed over it)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    partial = path.with_name(f".{name}.partial")
    partial.write_text(json.dumps(payload, indent=2))
    os.replace(partial, path)
    return path
