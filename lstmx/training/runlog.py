"""What a training run writes besides checkpoints: ``log.jsonl``, ``loss.png`` and progress on the terminal.

The log holds one JSON record per line. A damaged line (a run killed mid-write) is skipped with a warning
naming the file and the line; resuming from a checkpoint first drops the records written after it, so one
folder never mixes two histories.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, TextIO

from . import checkpoint as ckpt


def read_log(path: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``; damaged lines are skipped with a warning naming the file and line."""
    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                warn(f"{path}: line {number} is damaged ({error.msg}); skipped")
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                warn(f"{path}: line {number} is not a record; skipped")
    return records


class RunLog:
    """Appends records to ``folder/log.jsonl`` and redraws ``folder/loss.png``."""

    def __init__(self, folder: str | Path, warn: Callable[[str], None] | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "log.jsonl"
        self.warn = warn

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def keep_until(self, step: int) -> None:
        """Drop the records after ``step`` (written after the checkpoint a run resumes from), atomically."""
        if not self.path.exists():
            return
        kept = [r for r in read_log(self.path, self.warn) if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        ckpt.atomic_write(self.path, lambda handle: handle.write(text.encode("utf-8")))

    def plot(self) -> Path | None:
        return plot_log(self.path, self.folder / "loss.png", self.warn)


def plot_log(log_path: str | Path, png_path: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """Train and validation loss against step, written headless (matplotlib's Agg) and atomically.

    Returns None, and writes nothing, when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_log(log_path, warn)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        axis.plot(*zip(*train), label="train", color="tab:blue", linewidth=1)
    if val:
        axis.plot(*zip(*val), "o-", label="validation", color="tab:orange")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats / token)")
    axis.set_title("lstmx training")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    try:
        return ckpt.atomic_write(png_path, lambda handle: figure.savefig(handle, format="png"))
    finally:
        plt.close(figure)


class Progress:
    """Progress of a run on one stream (stderr by default): a tqdm bar on a terminal, one plain line per
    logged step elsewhere (a file, a pipe, CI), so no carriage-return bars end up in files."""

    def __init__(self, total: int, initial: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5,
                                file=self.stream)
        self.lines = enabled and self.bar is None

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def logged(self, record: dict[str, Any]) -> None:
        """A training record was logged: the bar's postfix, or a line."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        elif self.lines:
            self.write(f"step {record['step']}/{self.total}: train loss {record['train_loss']:.4f}, "
                       f"lr {record['lr']:.3g}, {record['tokens_per_s']:,.0f} tokens/s")

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
