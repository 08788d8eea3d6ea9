"""The bench scripts' doors (and the GPU session script's) and a tiny run of each that runs without a GPU.

A bad flag or value is refused in one line naming the flag and what it takes (as ``lstmx`` refuses its own), before
any work; a tiny run writes its JSON whole. The scripts run in this process (``main()`` with a patched ``argv``),
so that these checks cost seconds, not a Python start-up each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lstmx.dispatch import registry

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(script: str):
    spec = importlib.util.spec_from_file_location(f"bench_{script}", BENCH / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts bench/ on sys.path for its `_common`, as run from a shell
    return module


@pytest.fixture
def run(monkeypatch, tmp_path):
    """``run(script, *args)``: the script's ``main()`` with these arguments, its results written under tmp_path."""
    monkeypatch.syspath_prepend(str(BENCH))

    def run_script(script: str, *args: str) -> None:
        module = load(script)
        for where in (sys.modules["_common"], module):
            if hasattr(where, "RESULTS"):
                monkeypatch.setattr(where, "RESULTS", tmp_path)
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
        module.main()

    return run_script


REFUSED = [
    ("gpu_vs_cpu", ["--configs", "16,200,128"], "argument --configs: each entry must be B,T,D,H: four integers ≥ 1"),
    ("gpu_vs_cpu", ["--configs", "0,2,3,4"], "argument --configs: each entry must be B,T,D,H"),
    ("gpu_vs_cpu", ["--configs", "a,b,c,d"], "argument --configs: each entry must be B,T,D,H"),
    ("gpu_vs_cpu", ["--configs"], "argument --configs: expected at least one argument"),
    ("gpu_vs_cpu", ["--repeats", "0"], "argument --repeats: must be an integer ≥ 1, got 0"),
    ("gpu_vs_cpu", ["--rounds", "-2"], "argument --rounds: must be an integer ≥ 1, got -2"),
    ("gpu_vs_cpu", ["--skip-impl", "cudnn"], "argument --skip-impl: invalid choice: 'cudnn'"),
    ("gpu_vs_cpu", ["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    ("gpu_vs_cpu", ["--proj-size", "-1"], "argument --proj-size: must be an integer ≥ 0, got -1"),
    ("gpu_vs_cpu", ["--proj-size", "5", "--configs", "2,3,4,5"], "--proj-size must be below every row's H (5), got 5"),
    ("tune_tiled", ["--repeats", "1.5"], "argument --repeats: must be an integer ≥ 1, got '1.5'"),
    ("tune_tiled", ["--configs", "1,2"], "argument --configs: each entry must be B,T,D,H"),
    ("tune_tiled", ["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
    ("tune_persistent", ["--rows", "4"], "unrecognized arguments: --rows 4"),
    ("train_vs_torch", ["--steps", "0"], "argument --steps: must be an integer ≥ 1, got 0"),
    ("train_vs_torch", ["--hidden", "-8"], "argument --hidden: must be an integer ≥ 1, got -8"),
    ("train_vs_torch", ["--lr", "nan"], "argument --lr: must be a number > 0, got nan"),
    ("train_vs_torch", ["--seed", "-1"], "argument --seed: must be an integer ≥ 0, got -1"),
    ("train_vs_torch", ["--backend", "jax"], "argument --backend: invalid choice: 'jax'"),
    ("train_vs_torch", ["--impl", "cudnn"], "argument --impl: invalid choice: 'cudnn'"),
    ("train_vs_torch", ["--update-impl", "fast"], "argument --update-impl: invalid choice: 'fast'"),
    ("train_vs_torch", ["--text", "/no/such/file.txt"], "argument --text: must be a readable text file"),
    ("ranks", ["--ranks", "1"], "argument --ranks: must be an integer ≥ 2, got 1"),
    ("ranks", ["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    ("ranks", ["--threads", "-1"], "argument --threads: must be an integer ≥ 0, got -1"),
    ("ranks", ["--batch", "0"], "argument --batch: must be an integer ≥ 1, got 0"),
    ("gpu_sanitize", ["--impl", "numba"], "argument --impl: invalid choice: 'numba'"),
    ("variant_cost", ["--config", "1,2"], "argument --config: each entry must be B,T,D,H"),
    ("variant_cost", ["--repeats", "0"], "argument --repeats: must be an integer ≥ 1, got 0"),
    ("variant_cost", ["--impl", "cudnn"], "argument --impl: invalid choice: 'cudnn'"),
    ("generate_vs_torch", ["--impl", "cupy-fused"], "--backend numpy --impl cupy-fused: generation implementation "
     "'cupy-fused' cannot generate from this model here: it runs on cupy, not numpy"),
    ("generate_vs_torch", ["--backend", "jax"], "argument --backend: invalid choice: 'jax'"),
    ("precision_lm", ["--steps", "0"], "argument --steps: must be an integer ≥ 1, got 0"),
]


@pytest.mark.parametrize("script,args,message", REFUSED, ids=[f"{s}{' '.join(a)}" for s, a, _ in REFUSED])
def test_a_bad_flag_is_refused_in_one_line(run, capsys, script, args, message):
    with pytest.raises(SystemExit) as stop:
        run(script, *args)
    error = capsys.readouterr().err
    assert stop.value.code == 2
    assert error.count("\n") == 1 and error.startswith(f"bench/{script}.py: error: ") and message in error, error


def test_gpu_vs_cpu_leaves_out_the_columns_of_a_skipped_implementation(run, capsys, tmp_path):
    run("gpu_vs_cpu", "--configs", "2,3,4,5", "--repeats", "1", "--rounds", "1", "--skip-impl", "numpy")
    [entry] = json.loads((tmp_path / "gpu_vs_cpu.json").read_text())["results"]
    assert "lstmx-numpy:numpy" not in entry["columns"] and entry["columns"]
    assert "left out: the columns of numpy" in capsys.readouterr().out


def test_a_text_that_is_not_utf8_is_refused_in_one_line(run, capsys, tmp_path):
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(SystemExit):
        run("train_vs_torch", "--text", str(binary))
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"argument --text: {binary} is not UTF-8 text" in error, error


def test_gpu_vs_cpu_runs_a_tiny_row_and_writes_its_table(run, capsys, tmp_path):
    run("gpu_vs_cpu", "--configs", "2,3,4,5", "--repeats", "1", "--rounds", "1")
    [entry] = json.loads((tmp_path / "gpu_vs_cpu.json").read_text())["results"]
    assert entry["config"] == {"B": 2, "T": 3, "D": 4, "H": 5} and not entry["failed"]
    assert "lstmx-numpy:numpy" in entry["columns"] and entry["columns"]["lstmx-numpy:numpy"]["ms"] > 0
    assert not list(tmp_path.glob(".*.partial"))  # written whole: no partial file left behind


def test_gpu_vs_cpu_runs_float64_under_a_name_of_its_own(run, capsys, tmp_path):
    run("gpu_vs_cpu", "--configs", "2,3,4,5", "--repeats", "1", "--rounds", "1", "--dtype", "float64")
    report = json.loads((tmp_path / "gpu_vs_cpu_float64.json").read_text())
    assert report["dtype"] == "float64" and not (tmp_path / "gpu_vs_cpu.json").exists()
    [entry] = report["results"]
    assert entry["columns"]["lstmx-numpy:numpy"]["ms"] > 0 and not any("tf32" in name for name in entry["columns"])
    assert "fp32" not in capsys.readouterr().out.split("\n", 1)[1]  # no float32 column or ratio is claimed


def test_gpu_vs_cpu_runs_the_projected_cell_under_a_name_of_its_own(run, capsys, tmp_path):
    """--proj-size times the LSTMP cell on the paths that run it (the NumPy path refuses it: no column) against
    PyTorch's proj_size, counting the projection's products in the GFLOP/s."""
    run("gpu_vs_cpu", "--configs", "2,3,4,5", "--repeats", "1", "--rounds", "1", "--proj-size", "2")
    report = json.loads((tmp_path / "gpu_vs_cpu_proj2.json").read_text())
    assert report["proj_size"] == 2 and not (tmp_path / "gpu_vs_cpu.json").exists()
    [entry] = report["results"]
    assert "lstmx-numpy:numba" in entry["columns"] and "lstmx-numpy:numpy" not in entry["columns"]
    assert not entry["failed"]
    flops = load("gpu_vs_cpu").training_flops((2, 3, 4, 5), 1, 2)
    assert flops == 3 * 2.0 * 3 * 2 * ((4 + 2) * 4 * 5 + 5 * 2)
    assert "LSTMP with proj_size 2" in "\n".join(load("report").step_table("gpu_vs_cpu_proj2", report))


def test_train_vs_torch_runs_a_few_steps_and_leaves_no_run_folder(run, capsys, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 40, encoding="utf-8")
    run("train_vs_torch", "--text", str(text), "--steps", "3", "--batch", "2", "--seq-len", "5", "--hidden", "8",
        "--embedding", "4", "--skip-torch")
    result = json.loads((tmp_path / "train_vs_torch.json").read_text())
    assert result["args"]["text"] == str(text) and result["results"]["lstmx"]["ms_per_step"] > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["text.txt", "train_vs_torch.json"]
    table = "\n".join(load("report").recipe_table("train_vs_torch", result))  # docs/benchmarks.md renders it
    assert "| lstmx |" in table and "3 steps" in table


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_vs_torch_runs_a_16_bit_recipe_under_a_name_of_its_own(run, capsys, tmp_path, precision):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 40, encoding="utf-8")
    run("train_vs_torch", "--text", str(text), "--steps", "3", "--batch", "2", "--seq-len", "5", "--hidden", "8",
        "--embedding", "4", "--precision", precision)
    result = json.loads((tmp_path / f"train_vs_torch_{precision}.json").read_text())
    assert result["args"]["precision"] == precision and result["results"]["lstmx"]["ms_per_step"] > 0
    table = "\n".join(load("report").recipe_table(f"train_vs_torch_{precision}", result))
    assert f"{precision} (PyTorch: autocast)" in table


def test_the_gpu_session_refuses_an_unknown_step_before_running_any():
    """A misspelt step would otherwise be found out only after the steps before it had spent a GPU call; the smoke
    step tries every CuPy layer path in the registry, and the modules it leaves to CI exist."""
    script = (BENCH / "gpu_session.sh").read_text()
    steps = re.search(r'^STEPS="([^"]+)"', script, re.MULTILINE).group(1).split()
    branches = {step for pattern in re.findall(r"^ {8}([\w|-]+)\)", script, re.MULTILINE)
                for step in pattern.split("|")}  # a branch may serve several steps ("bench|bench-f64")
    assert set(steps) == branches  # every step named has its branch, and every branch is named
    smoked = re.search(r"^ +for impl in ([\w -]+); do", script, re.MULTILINE).group(1).split()
    assert sorted(smoked) == sorted(impl.name for impl in registry.LAYER_IMPLS if impl.backends == ("cupy",))
    cpu_only = re.findall(r"--ignore=(\S+?)[ \"]", re.search(r'^CPU_ONLY="[^"]+"', script, re.MULTILINE).group(0))
    assert cpu_only and all((BENCH.parent / path).is_file() for path in cpu_only)  # the GPU run skips real files
    done = subprocess.run(["bash", str(BENCH / "gpu_session.sh"), "smoke", "tset"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == f"gpu_session.sh: error: unknown step 'tset' (steps: {' '.join(steps)})\n"


@pytest.mark.parametrize("failing", ["cupy-tiled", "cupy-tiled-tf32", "cupy-graph"])
def test_the_gpu_session_leaves_out_a_path_that_failed_its_smoke_run(tmp_path, failing):
    """With python3 and nvidia-smi stand-ins recording each call: the path whose smoke run fails is named in
    SMOKE_FAILED, the tests step deselects its tests, the bench step its columns, and lm-graph is skipped when
    the graph path failed (a hanging kernel would otherwise stall those steps until their timeouts)."""
    tools, calls = tmp_path / "bin", tmp_path / "calls.txt"
    tools.mkdir()
    (tools / "python3").write_text(f'#!/bin/sh\nprintf "%s|" "$@" >>"{calls}"; echo >>"{calls}"\n'
                                   f'case "$*" in *"test_fast_layer_matches_generic and {failing} and not {failing}-") exit 1 ;; esac\n')
    (tools / "nvidia-smi").write_text("#!/bin/sh\necho a stand-in GPU\n")
    for tool in tools.iterdir():
        tool.chmod(0o755)
    environment = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
                   "SMOKE_FAILED": str(tmp_path / "smoke_failed.txt")}
    done = subprocess.run(["bash", "bench/gpu_session.sh", "smoke", "tests", "bench", "bench-f64", "lm-graph"],
                          cwd=BENCH.parent, env=environment, capture_output=True, text=True)
    recorded = calls.read_text().splitlines()
    keyword = failing.removeprefix("cupy-")
    assert (tmp_path / "smoke_failed.txt").read_text() == f"{failing}\n"
    assert f"smoke {failing}: FAILED" in done.stdout and done.returncode == 1
    [tests] = [call for call in recorded if "--ignore=tests/test_cuda_emulated.py|" in call]
    assert f"|-k|cupy and not {keyword}|" in tests
    benches = [call for call in recorded if call.startswith("bench/gpu_vs_cpu.py|")]
    assert [("|--dtype|float32|" in call, "|--dtype|float64|" in call) for call in benches] == [(True, False),
                                                                                               (False, True)]
    assert all(f"|--skip-impl|{failing}|" in call for call in benches)
    graph_runs = [call for call in recorded if "|--impl|cupy-graph|" in call]
    assert (graph_runs == []) == (failing == "cupy-graph")
    assert ("lm-graph: left out (cupy-graph failed the smoke step)" in done.stdout) == (failing == "cupy-graph")


def test_the_gpu_session_runs_the_sanitizer_over_each_listed_path_and_tool(tmp_path):
    """With a compute-sanitizer stand-in: each path:tool pair runs bench/gpu_sanitize.py under that tool (with
    --fused, --cell-options or --proj-size where asked), and the step's line names the sanitizer's error summary and the script's pass count."""
    tools, calls = tmp_path / "bin", tmp_path / "calls.txt"
    tools.mkdir()
    (tools / "compute-sanitizer").write_text(
        f'#!/bin/sh\nprintf "%s|" "$@" >>"{calls}"; echo >>"{calls}"\n'
        'echo "cupy-tiled float32   cupy   1.00e-07   2e-05  pass    worst: loss"\n'
        'echo "========= ERROR SUMMARY: 0 errors"\n')
    (tools / "python3").write_text("#!/bin/sh\nexit 0\n")
    (tools / "nvidia-smi").write_text("#!/bin/sh\necho a stand-in GPU\n")
    for tool in tools.iterdir():
        tool.chmod(0o755)
    environment = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
                   "SMOKE_FAILED": str(tmp_path / "smoke_failed.txt"),
                   "SANITIZE_RUNS": "tiled:racecheck graph+fused:memcheck stepwise+options:racecheck "
                                    "stepwise+options+proj:memcheck tiled-tf32+proj:racecheck"}
    done = subprocess.run(["bash", "bench/gpu_session.sh", "sanitize"], cwd=BENCH.parent, env=environment,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls.read_text().splitlines() == [
        "--tool|racecheck|--error-exitcode|9|--print-limit|20|python3|bench/gpu_sanitize.py|--impl|cupy-tiled|",
        "--tool|memcheck|--error-exitcode|9|--print-limit|20|python3|bench/gpu_sanitize.py|--impl|cupy-graph|--fused|",
        "--tool|racecheck|--error-exitcode|9|--print-limit|20|python3|bench/gpu_sanitize.py|--impl|cupy-stepwise|"
        "--cell-options|",
        "--tool|memcheck|--error-exitcode|9|--print-limit|20|python3|bench/gpu_sanitize.py|--impl|cupy-stepwise|"
        "--cell-options|--proj-size|8|",
        "--tool|racecheck|--error-exitcode|9|--print-limit|20|python3|bench/gpu_sanitize.py|--impl|cupy-tiled-tf32|"
        "--proj-size|8|"]
    assert "sanitize tiled:racecheck: rc 0; ERROR SUMMARY: 0 errors; 1 pass, 0 FAIL" in done.stdout
    assert sorted(path.name for path in (tmp_path / "out").glob("sanitize-*.log")) == [  # one log per run
        "sanitize-graph-fused-memcheck.log", "sanitize-stepwise-options-proj-memcheck.log",
        "sanitize-stepwise-options-racecheck.log", "sanitize-tiled-racecheck.log",
        "sanitize-tiled-tf32-proj-racecheck.log"]


def test_the_memory_and_generation_benchmarks_run_on_a_tiny_problem(run, tmp_path, capsys):
    """bench/checkpoint_memory.py and bench/generate_vs_torch.py run, print their tables and write their JSON;
    docs/benchmarks.md renders the checkpoint run's JSON (bench/report.py)."""
    import json

    run("checkpoint_memory", "--steps", "60", "--batch", "2", "--hidden", "8", "--every", "10", "--repeats", "1")
    report = json.loads((tmp_path / "checkpoint_memory.json").read_text())
    assert set(report["rows"]) == {"plain", "checkpoint_every=10"} and report["ratios"]["memory plain / checkpointed"] > 1
    run("generate_vs_torch", "--tokens", "5", "--samples", "1", "3", "--rounds", "1")
    report = json.loads((tmp_path / "generate_vs_torch.json").read_text())
    assert set(report["samples"]) == {"1", "3"} and report["samples"]["3"]["lstmx"]["tokens_per_s"] > 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "peak MiB" in out


def test_the_variant_cost_benchmark_runs_on_a_tiny_problem(run, tmp_path, capsys):
    """bench/variant_cost.py times every variant on its auto path and on the generic one, and bench/report.py
    renders its JSON."""
    import json

    run("variant_cost", "--config", "2,3,4,4", "--repeats", "1", "--impl", "numpy")  # numpy takes no option
    report = json.loads((tmp_path / "variant_cost.json").read_text())
    assert set(report["variants"]) == {"plain", "peepholes", "input_forget", "cell_clip", "layer_norm", "zoneout",
                                       "recurrent_dropout", "weight_drop", "proj_size", "everything"}
    assert report["variants"]["plain"]["auto / plain auto"] == 1.0
    assert report["variants"]["layer_norm"]["impl"] == "numba"  # the Numba path takes every cell option
    assert report["variants"]["proj_size"]["impl"] == "numba"  # and the projected cell
    assert "× plain" in capsys.readouterr().out
    report_module = load("report")
    assert "`variant_cost`" in "\n".join(report_module.variant_table("variant_cost", report))


def test_the_precision_benchmark_trains_at_each_precision_and_leaves_no_run_folder(run, capsys, tmp_path):
    run("precision_lm", "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--hidden-size", "8")
    result = json.loads((tmp_path / "precision_lm.json").read_text())
    assert [row["precision"] for row in result["runs"]] == ["float32", "bf16", "fp16"]
    assert all(row["step"] == 2 and row["val_loss"] > 0 for row in result["runs"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["precision_lm.json"]
    table = "\n".join(load("report").runs_table("precision_lm", result))
    assert "| `--precision bf16` | 2 |" in table


def test_the_precision_benchmark_refuses_an_unknown_precision(run, capsys):
    with pytest.raises(SystemExit):
        run("precision_lm", "--precisions", "float32,half")
    assert "argument --precisions: must be precisions (float32, tf32, bf16, fp16) joined by commas" in capsys.readouterr().err


def test_gpu_vs_cpu_takes_the_16_bit_columns_under_a_name_of_its_own(run, capsys, tmp_path):
    """--half adds lstmx's 16-bit paths and cuDNN fp16/bf16 where a GPU is (none here: the CPU columns run) and
    writes gpu_vs_cpu_half.json, whose table docs/benchmarks.md renders with the 16-bit ratios."""
    run("gpu_vs_cpu", "--configs", "2,3,4,5", "--repeats", "1", "--rounds", "1", "--half", "--skip-impl", "numpy")
    report = json.loads((tmp_path / "gpu_vs_cpu_half.json").read_text())
    assert report["half"] and not (tmp_path / "gpu_vs_cpu.json").exists()
    [entry] = report["results"]
    assert {"lstmx-bf16/cudnn-bf16", "lstmx-fp16/cudnn-fp16"} <= set(entry["ratios"])
    entry["ratios"]["lstmx-fp16/cudnn-fp16"] = 0.8  # as a GPU run would give it
    table = "\n".join(load("report").step_table("gpu_vs_cpu_half", report))
    assert "with the 16-bit columns" in table and "lstmx fp16 / cuDNN fp16" in table and "| 0.80 |" in table
