"""Run folders: nothing lost, nothing shared, every file-system door checked before work starts (the real CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lstmx.cli import main
from lstmx.training.run_folder import RunFolder

from .helpers import cupy_runs_here
from .test_cli_doors import run_tiny
from .test_checkpoint import TEXT


# those doors close only where CuPy cannot run (on a GPU machine the run they start is a good one)
WHERE_CUPY_IS_MISSING = pytest.mark.skipif(cupy_runs_here(), reason="CuPy runs here")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".lstmx")}


@pytest.mark.parametrize("extra,message", [
    pytest.param(["--backend", "cupy"], "cupy", marks=WHERE_CUPY_IS_MISSING),
    pytest.param(["--impl", "cupy-graph"], "cannot run this call", marks=WHERE_CUPY_IS_MISSING),
    (["--batch-size", "4000"], "too few for --batch-size 4000"),
    (["--validation", "0.001"], "validation would never run"),
], ids=["no-cupy", "impl-elsewhere", "batch-too-large", "validation-too-small"])
def test_an_overwrite_that_fails_its_doors_leaves_the_old_run_byte_for_byte(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert run_tiny(tmp_path, "--out", str(out)) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert run_tiny(tmp_path, "--out", str(out), "--overwrite", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(out) == before


def test_an_overwrite_whose_run_fails_before_its_first_checkpoint_puts_the_old_run_back(tmp_path, capsys,
                                                                                     monkeypatch):
    from lstmx.training.loop import Trainer

    out = tmp_path / "run"
    assert run_tiny(tmp_path, "--out", str(out)) == 0
    before = snapshot(out)

    def fail_after_a_log_line(self):
        self.log.append({"step": 1, "train_loss": 9.9})  # the new run wrote something, then died
        raise RuntimeError("the new run broke")

    monkeypatch.setattr(Trainer, "run", fail_after_a_log_line)
    with pytest.raises(RuntimeError, match="the new run broke"):
        run_tiny(tmp_path, "--out", str(out), "--overwrite")
    assert snapshot(out) == before
    assert "is back as it was" in capsys.readouterr().err
    assert not (out / ".lstmx-replaced").exists()


def test_an_overwrite_killed_before_its_checkpoint_is_undone_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_tiny(tmp_path, "--out", str(out)) == 0
    before = snapshot(out)
    folder = RunFolder(out)
    folder.lock()
    folder.set_aside()  # as a killed --overwrite leaves it: the old run aside, no new checkpoint
    (out / "log.jsonl").write_text('{"step": 1}\n')
    folder._lock.release()  # the process died: the system dropped its lock
    capsys.readouterr()
    assert run_tiny(tmp_path, "--out", str(out)) == 2  # the old run is back, so the folder is refused as before
    err = capsys.readouterr().err
    assert "put back the run an interrupted --overwrite had set aside" in err and "already holds files" in err
    assert snapshot(out) == before


def test_a_successful_overwrite_replaces_the_old_run(tmp_path):
    out = tmp_path / "run"
    assert run_tiny(tmp_path, "--out", str(out), steps="4") == 0
    assert run_tiny(tmp_path, "--out", str(out), "--overwrite", steps="2") == 0
    assert not (out / ".lstmx-replaced").exists()
    assert '"step": 4' not in (out / "log.jsonl").read_text()


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_process(tmp_path, capsys):
    out = tmp_path / "run"
    holder = RunFolder(out)
    holder.lock()
    try:
        assert run_tiny(tmp_path, "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert f"is in use by another run (process {os.getpid()} on" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.release()
    assert run_tiny(tmp_path, "--out", str(out)) == 0


def test_two_concurrent_resumes_one_runs_the_other_is_refused(tmp_path):
    out = tmp_path / "run"
    assert run_tiny(tmp_path, "--out", str(out), steps="2") == 0
    text = tmp_path / "corpus.txt"
    command = [sys.executable, "-m", "lstmx", "train", str(text), "--resume", str(out / "last.npz"), "--steps",
               "400", "--no-progress", "--eval-every", "1000"]
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".lstmx.owner").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is in use by another run (process" in second.stderr, second.stderr
    finally:
        first.terminate()
        first.wait(timeout=60)


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lstmx.training.run_folder import RunFolder; "
                               f"RunFolder({str(out)!r}).lock(); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert (out / ".lstmx.owner").exists()  # left behind by the killed run
    assert run_tiny(tmp_path, "--out", str(out)) == 0


def test_resume_continues_in_the_checkpoints_folder_and_refuses_another_text(tmp_path, capsys):
    out = tmp_path / "elsewhere" / "run"
    assert run_tiny(tmp_path, "--out", str(out), steps="2") == 0
    capsys.readouterr()
    text = tmp_path / "corpus.txt"
    assert main(["train", str(text), "--resume", str(out / "last.npz"), "--steps", "3", "--no-progress"]) == 0
    assert "writing to " + str(out) in capsys.readouterr().err
    assert not Path("runs/default").exists()
    other = tmp_path / "other.txt"
    other.write_text(TEXT[::-1], encoding="utf-8")  # the same alphabet, another text
    assert main(["train", str(other), "--resume", str(out / "last.npz"), "--steps", "4", "--no-progress"]) == 2
    assert "is not the text the checkpoint" in capsys.readouterr().err
    assert main(["train", str(other), "--resume", str(out / "last.npz"), "--steps", "4", "--no-progress",
                 "--allow-new-text"]) == 0


@pytest.mark.parametrize("case", ["out-is-a-file", "out-under-a-file", "checkpoint-is-a-folder", "log-is-a-folder",
                                  "text-is-a-folder", "text-is-binary", "resume-missing", "resume-is-a-folder"])
def test_file_system_doors_are_one_line_naming_the_path_before_any_step(tmp_path, capsys, case):
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    argv = ["train", str(text), "--steps", "2", "--no-progress", "--out", str(out)]
    if case == "out-is-a-file":
        out.write_text("not a folder")
        expected = f"--out {out} is a file, not a folder"
    elif case == "out-under-a-file":
        (tmp_path / "file").write_text("")
        argv[-1] = str(tmp_path / "file" / "run")
        expected = f"lies under {tmp_path / 'file'}, which is a file"
    elif case in ("checkpoint-is-a-folder", "log-is-a-folder"):
        name = "last.npz" if case == "checkpoint-is-a-folder" else "log.jsonl"
        (out / name).mkdir(parents=True)
        expected = f"{out / name} is a folder"
    elif case == "text-is-a-folder":
        argv[1] = str(tmp_path)
        expected = "is a folder, not a text file"
    elif case == "text-is-binary":
        text.write_bytes(bytes(range(256)) * 8)
        expected = "is not UTF-8 text"
    elif case == "resume-missing":
        argv += ["--resume", str(tmp_path / "none.npz")]
        expected = "no such file"
    else:
        argv += ["--resume", str(tmp_path)]
        expected = "is a folder, not a checkpoint file"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert "step 1" not in err


@pytest.mark.parametrize("extra,message", [
    (["--unk"], "--unk applies to --level word only"),
    (["--min-count", "3"], "--min-count applies to --level word only"),
    (["--level", "word", "--min-count", "3"], "--min-count needs --unk"),
    (["--level", "word", "--unk", "--min-count", "1000000"], "leaves one token"),
    (["--momentum", "0.5"], "--momentum applies to --optimizer sgd or rmsprop"),
    (["--warmup-steps", "5"], "--warmup-steps applies to --schedule cosine only, not constant"),
    (["--min-lr", "0.001", "--schedule", "step"], "--min-lr applies to --schedule cosine only, not step"),
    (["--sample-length", "0", "--sample-temperature", "2"], "--sample-temperature has no effect with --sample-length 0"),
    (["--validation", "0", "--eval-max-windows", "3"], "--eval-max-windows has no effect with --validation 0"),
])
def test_flags_without_effect_are_refused_naming_why(tmp_path, capsys, extra, message):
    assert run_tiny(tmp_path, "--out", str(tmp_path / "run"), *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_warnings_reach_the_terminal_as_one_lstmx_line_each_once(tmp_path, capsys, monkeypatch):
    import warnings

    import numpy as np

    from lstmx.training.loop import Trainer

    def noisy(self):
        for _ in range(3):  # a diverging run overflows at every step
            np.exp(np.float32(1000.0))
        warnings.warn("lstmx: something the user should know", UserWarning)
        return []

    monkeypatch.setattr(Trainer, "run", noisy)
    assert run_tiny(tmp_path, "--out", str(tmp_path / "run")) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lstmx: warning")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("lstmx: warning: overflow encountered") and "RuntimeWarning from" in lines[0]
    assert lines[1] == "lstmx: warning: something the user should know"
