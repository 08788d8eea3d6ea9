"""The command line's doors: every flag range-checked in one line, resumes that keep a run whole, output
folders that never mix two runs, and nothing on disk lost or left behind (killed saves, damaged logs, Ctrl-C)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest

from lstmx.training import checkpoint as ckpt
from lstmx.backend import BackendError, get_backend
from lstmx.cli import _field_type, build_parser, main
from lstmx.options import DataConfig, ModelConfig, Range, spec_of
from lstmx.training.runlog import read_log
from lstmx.training.loop import TrainConfig

from .test_checkpoint import TEXT, small_trainer

TINY = ["--batch-size", "4", "--seq-len", "16", "--hidden-size", "12", "--embedding-size", "6", "--sample-length", "5"]


def outside(allowed: Range) -> list[str]:
    """Values just outside ``allowed``, and one that is not a number."""
    values = ["abc", "nan"]
    if allowed.low is not None:
        values.append(str(allowed.low - 1 if allowed.low_inclusive else allowed.low))
    if allowed.high is not None:
        values.append(str(allowed.high + 1 if allowed.high_inclusive else allowed.high))
    if allowed.integer:
        values.append("2.5")
    return values


NUMERIC_FLAGS = [
    pytest.param(f"--{field.name.replace('_', '-')}", value, id=f"{field.name}={value}")
    for config in (DataConfig, ModelConfig, TrainConfig) for field in dataclasses.fields(config)
    if spec_of(field).range is not None for value in outside(spec_of(field).range)
]


@pytest.mark.parametrize("flag,value", NUMERIC_FLAGS)
def test_every_numeric_flag_refuses_values_outside_its_range_in_one_line(flag, value, capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path / "run"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lstmx train: error: argument " + flag + ": must be "), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["sample", "x.npz", "--length", "-1"], "argument --length: must be an integer ≥ 0, got -1"),
    (["sample", "x.npz", "--temperature", "0"], "argument --temperature: must be a number > 0, got 0"),
    (["sample", "x.npz", "--top-k", "0"], "argument --top-k: must be an integer ≥ 1, got 0"),
    (["check", "--tolerance", "0"], r"argument --tolerance: must be a number in (0, 1], got 0"),
    (["train", "--epochs", "-2"], "argument --epochs: must be a number > 0, got -2"),
    (["train", "--optimizer", "lion"], "argument --optimizer: invalid choice: 'lion'"),
    (["train", "--impl", "fast"], "argument --impl: invalid choice: 'fast'"),
    (["train", "--steps", "5", "--epochs", "1"], "--steps and --epochs exclude each other"),
])
def test_other_flags_refuse_nonsense_in_one_line(argv, message, capsys, tmp_path):
    monkey_out = ["--out", str(tmp_path / "run")] if argv[0] == "train" else []
    assert main(argv + monkey_out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_help_shows_every_option_with_its_default_and_range(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for config in (DataConfig, ModelConfig, TrainConfig):
        for field in dataclasses.fields(config):
            flag, spec = "--" + field.name.replace("_", "-"), spec_of(field)
            assert flag in text and " ".join(spec.help.split()) in text, flag
            if spec.range is not None:
                assert f"{spec.range.describe()}" in text, flag
    assert "(default: 64)" in text  # seq_len: the CLI's default is TrainConfig's
    assert TrainConfig().seq_len == 64


def run_tiny(tmp_path, *extra, steps="4"):
    text = tmp_path / "corpus.txt"
    if not text.exists():
        text.write_text(TEXT, encoding="utf-8")
    return main(["train", str(text), "--steps", steps, "--eval-every", "2", "--no-progress", *TINY, *extra])


def test_an_existing_run_folder_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_tiny(tmp_path, "--out", str(out)) == 0
    first_log = (out / "log.jsonl").read_text()
    capsys.readouterr()
    assert run_tiny(tmp_path, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--resume" in err and "--overwrite" in err
    assert (out / "log.jsonl").read_text() == first_log  # nothing touched
    (out / "notes.txt").write_text("mine")
    assert run_tiny(tmp_path, "--out", str(out), "--overwrite", steps="2") == 0
    steps = [r["step"] for r in read_log(out / "log.jsonl")]
    assert steps == sorted(steps) and max(steps) == 2  # a fresh history, not appended to the old one
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes only a run's own files
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("")
    assert run_tiny(tmp_path, "--out", str(other), "--resume", str(out / "last.npz"), steps="3") == 2
    assert "is not the folder of --resume" in capsys.readouterr().err


def test_resume_refuses_conflicting_flags_and_states_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_tiny(tmp_path, "--out", str(out)) == 0
    capsys.readouterr()
    resume = ["--resume", str(out / "last.npz"), "--out", str(out)]
    for flag, value in [("--hidden-size", "24"), ("--batch-size", "8"), ("--optimizer", "sgd"), ("--seq-len", "8"),
                        ("--level", "word"), ("--validation", "0.3"), ("--clip-norm", "1.5")]:
        assert main(["train", str(tmp_path / "corpus.txt"), *resume, flag, value, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {value} conflicts with the checkpoint" in err, err
    # the same value as the checkpoint is no conflict; --lr and --steps may change, and the change is stated
    assert main(["train", str(tmp_path / "corpus.txt"), *resume, "--hidden-size", "12", "--lr", "0.0005",
                 "--steps", "6", "--no-progress", "--sample-length", "0"]) == 0
    err = capsys.readouterr().err
    assert "resuming with --lr 0.0005 (the checkpoint had 0.002)" in err
    saved = ckpt.load(out / "last.npz").meta
    assert saved["train_config"]["lr"] == 0.0005 and saved["progress"]["step"] == 6
    records = read_log(out / "log.jsonl")
    assert [r["lr"] for r in records if "lr" in r and r["step"] > 4] == [0.0005]


def test_resume_drops_log_records_written_after_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert run_tiny(tmp_path, "--out", str(out), "--log-every", "1") == 0
    with open(out / "log.jsonl", "a") as handle:  # a run that went on past its checkpoint and died
        handle.write(json.dumps({"step": 5, "train_loss": 9.9}) + "\n" + '{"step": 6, "train_lo')
    assert run_tiny(tmp_path, "--out", str(out), "--resume", str(out / "last.npz"), steps="6") == 0
    steps = [r["step"] for r in read_log(out / "log.jsonl") if "train_loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6] and 9.9 not in [r.get("train_loss") for r in read_log(out / "log.jsonl")]


def test_a_damaged_log_line_is_skipped_with_a_warning_naming_the_file(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_lo\n[1, 2]\n{"step": 3, "train_loss": 1.5}\n')
    warnings = []
    records = read_log(log, warnings.append)
    assert [r["step"] for r in records] == [1, 3]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"{log}: line 2 is damaged") and warnings[1] == f"{log}: line 3 is not a record; skipped"


def test_a_killed_save_leaves_no_temporary_file_behind_after_the_next_save(tmp_path):
    trainer, _ = small_trainer(tmp_path)
    target = tmp_path / "last.npz"
    for name in (".last.npz.abc123.tmp", ".last.npz.zz.tmp"):  # what killed saves leave
        (tmp_path / name).write_bytes(b"x" * 1000)
    (tmp_path / ".other.npz.keep.tmp").write_bytes(b"y")  # another target's: not ours to remove
    trainer.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.npz.keep.tmp", "last.npz"]
    assert ckpt.load(target).meta["progress"]["step"] == 0


def test_ctrl_c_saves_the_finished_step_and_stops(tmp_path):
    trainer, _ = small_trainer(tmp_path, steps=50, eval_every=100)
    real_step = trainer.train_step

    def step_then_interrupt():
        real_step()
        if trainer.step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends, in the middle of the run

    trainer.train_step = step_then_interrupt
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN where the suite runs in the background
    with pytest.raises(KeyboardInterrupt, match="interrupted after step 7"):
        trainer.run()
    saved = ckpt.load(tmp_path / "last.npz").meta
    assert saved["progress"]["step"] == 7
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_progress_off_a_terminal_is_plain_lines_on_stderr(tmp_path, capsys):
    assert main(["train", str(_corpus(tmp_path)), "--out", str(tmp_path / "run"), "--steps", "4", "--log-every", "2",
                 "--eval-every", "4", *TINY]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and captured.out == ""
    assert "step 2/4: train loss" in captured.err and "step 4/4: train loss" in captured.err
    assert "--- sample ---" in captured.err


def _corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def non_default(field: dataclasses.Field) -> str:
    """A valid command-line value for ``field`` other than its default."""
    spec, default = spec_of(field), field.default
    allowed = spec.allowed()
    if allowed is not None:
        return next(str(v) for v in allowed if v != default)
    if spec.range is not None and spec.range.integer:
        return str((default or 1) + 1)
    if spec.range is not None and spec.range.high is not None:
        return str(((default or 0) + spec.range.high) / 2)
    return str((default or 0.25) * 2)


SETTABLE = [pytest.param(config, field, id=field.name)
            for config in (DataConfig, ModelConfig, TrainConfig) for field in dataclasses.fields(config)]


@pytest.mark.parametrize("config,field", SETTABLE)
def test_every_flag_reaches_its_setting(config, field, tmp_path, monkeypatch):
    """Each generated flag sets its own field (and no other) of the run the CLI builds."""
    from lstmx.training.loop import Trainer

    built = {}

    def capture(self):
        built.update(train=self.config, data=self.data, model=self.model)
        return []

    monkeypatch.setattr(Trainer, "run", capture)
    flag = "--" + field.name.replace("_", "-")
    argv = ["train", str(_corpus(tmp_path)), "--out", str(tmp_path / "run"), "--no-progress"]
    argv += [flag] if _is_bool(field) else [flag, non_default(field)]
    implied = NEEDS.get(field.name, [])  # flags that have an effect only beside others (refused alone)
    argv += implied
    if field.name == "precision":  # tf32 runs on CuPy only (elsewhere refused: tests/test_precision.py)
        argv += ["--backend", "cupy", "--impl", "cupy-stepwise"]
        try:
            get_backend("cupy")
        except BackendError as error:
            pytest.skip(f"--precision tf32 needs CuPy with a GPU: {error}")
    assert main(argv) == 0
    model = built["model"]
    if field.name == "precision":
        assert model.precision == non_default(field)
    values = {"train": dataclasses.asdict(built["train"]), "data": dataclasses.asdict(built["data"]),
              "model": {f.name: {**model.config(), "dtype": model.dtype_name}[f.name]
                        for f in dataclasses.fields(ModelConfig)}}
    group = {DataConfig: "data", ModelConfig: "model", TrainConfig: "train"}[config]
    expected = True if _is_bool(field) else _field_type(field)(non_default(field))
    assert values[group][field.name] == expected
    others = {k: v for k, v in values[group].items() if k != field.name and _flag_of(k) not in implied}
    assert others == {k: v for k, v in dataclasses.asdict(config()).items() if k in others}


NEEDS = {"unk": ["--level", "word"], "min_count": ["--level", "word", "--unk"],
         "tie_weights": ["--embedding-size", "256"],  # = the default hidden size
         "momentum": ["--optimizer", "sgd"], "warmup_steps": ["--schedule", "cosine"],
         "min_lr": ["--schedule", "cosine"]}


def _flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_bool(field: dataclasses.Field) -> bool:
    return str(field.type) == "bool"
