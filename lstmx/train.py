"""Training loop for language models: truncated BPTT, validation, logging, plots, checkpoints and resume."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import checkpoint as ckpt
from .backend import to_numpy
from .data import CharVocab, Split, StreamBatches, vocab_from_config
from .models import LanguageModel
from .optim import clip_grad_norm, clip_grad_value, make_optimizer, make_schedule
from .sample import sample

LN2 = math.log(2.0)


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or Inf."""


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of a run (saved in every checkpoint so a resumed run continues the same recipe)."""

    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 100
    optimizer: str = "adam"
    lr: float = 2e-3
    weight_decay: float | None = None  # None: the optimizer's own default (AdamW 1e-2, others 0)
    momentum: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0
    clip_norm: float | None = 5.0
    clip_value: float | None = None
    eval_every: int = 200
    eval_max_windows: int | None = None
    log_every: int = 10
    sample_length: int = 200
    sample_temperature: float = 0.8
    seed: int = 0


def _optimizer_options(config: TrainConfig) -> dict[str, Any]:
    name = config.optimizer.lower()
    options: dict[str, Any] = {} if config.weight_decay is None else {"weight_decay": config.weight_decay}
    if name in ("sgd", "rmsprop") and config.momentum:
        options["momentum"] = config.momentum
    return options


class Trainer:
    """Trains a :class:`LanguageModel` on token ids, writing ``log.jsonl``, ``loss.png`` and checkpoints to ``out_dir``.

    Each step takes the next window of the training streams, computes loss and gradients, clips them and updates
    the parameters; the final state is carried into the next window (no gradient flows back across windows)
    and reset to zero at each epoch.
    """

    def __init__(self, model: LanguageModel, vocab: CharVocab, split: Split, config: TrainConfig,
                 out_dir: str | Path, *, progress: bool = True, echo: Callable[[str], None] | None = None) -> None:
        self.model, self.vocab, self.config = model, vocab, config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.echo = echo or (lambda line: print(line, file=sys.stderr))
        self.train_batches = StreamBatches(model.backend, split.train, config.batch_size, config.seq_len)
        self.val_batches = (StreamBatches(model.backend, split.validation, config.batch_size, config.seq_len)
                            if len(split.validation) >= 2 * config.batch_size else None)
        schedule = make_schedule(config.schedule, config.lr, config.steps, config.warmup_steps, min_lr=config.min_lr)
        self.optimizer = make_optimizer(config.optimizer, model, schedule, **_optimizer_options(config))
        self.step = 0
        self.window_index = 0
        self.epoch = 0
        self.state: Any = None

    # --- one step, and evaluation ---------------------------------------------------------------------------

    def train_step(self) -> float:
        window = self.train_batches.window(self.window_index)
        output = self.model.loss(window.inputs, window.targets, self.state, check_input=False)
        grads = output.grads
        if self.config.clip_value is not None:
            grads = clip_grad_value(self.model.backend, grads, self.config.clip_value)
        norm = None
        if self.config.clip_norm is not None:
            grads, norm = clip_grad_norm(self.model.backend, grads, self.config.clip_norm)
        loss = float(to_numpy(output.loss))  # one host sync per training step, after the whole BPTT
        if not math.isfinite(loss):
            raise TrainingDivergedError(f"training loss became {loss} at step {self.step + 1}")
        if norm is not None and not math.isfinite(float(to_numpy(norm))):
            raise TrainingDivergedError(f"the gradient norm became {float(to_numpy(norm))} at step {self.step + 1}")
        self.optimizer.step(grads)
        self.step += 1
        self.state = output.state
        self.window_index += 1
        if self.window_index == len(self.train_batches):
            self.window_index, self.epoch, self.state = 0, self.epoch + 1, None
        return loss

    def evaluate(self, batches: StreamBatches | None = None) -> dict[str, float]:
        """Loss per token (nats), perplexity and bits per token on ``batches`` (default: the validation
        streams), in eval mode (no dropout), the state carried across windows as in training."""
        if batches is None:
            batches = self.val_batches
        if batches is None:
            return {}
        self.model.eval()
        total, count, state = 0.0, 0, None
        limit = self.config.eval_max_windows or len(batches)
        try:
            for index in range(min(limit, len(batches))):
                window = batches.window(index)
                output = self.model.loss(window.inputs, window.targets, state, grads=False, check_input=False)
                tokens = int(np.prod(window.targets.shape))
                total += float(to_numpy(output.loss)) * tokens
                count += tokens
                state = output.state
        finally:
            self.model.train()
        loss = total / count
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_bpc": loss / LN2}

    # --- the run --------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Train until ``config.steps``; returns the log records written during this call."""
        records: list[dict[str, Any]] = []
        bar = _progress_bar(self.config.steps, self.step) if self.progress else None
        tokens_per_step = self.config.batch_size * self.config.seq_len
        window_loss, window_start, window_steps = 0.0, time.perf_counter(), 0
        try:
            while self.step < self.config.steps:
                try:
                    loss = self.train_step()
                except TrainingDivergedError as error:
                    last = self.out_dir / "last.npz"
                    kept = f"; the last good checkpoint is {last}" if last.exists() else "; no checkpoint was written yet"
                    raise TrainingDivergedError(f"{error}{kept}") from None
                window_loss, window_steps = window_loss + loss, window_steps + 1
                if bar is not None:
                    bar.update(1)
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.step, "epoch": self.epoch, "train_loss": window_loss / window_steps,
                              "lr": self.optimizer.schedule(self.step - 1),
                              "tokens_per_s": tokens_per_step * window_steps / max(elapsed, 1e-9)}
                    records.append(self._log(record))
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    window_loss, window_start, window_steps = 0.0, time.perf_counter(), 0
                if self.step % self.config.eval_every == 0 or self.step == self.config.steps:
                    records.append(self._checkpoint_and_report(bar))
                    window_start = time.perf_counter()  # tokens/s measures training only
        finally:
            if bar is not None:
                bar.close()
        return records

    def _checkpoint_and_report(self, bar: Any) -> dict[str, Any]:
        record = self._log({"step": self.step, "epoch": self.epoch, **self.evaluate()})
        self.save(self.out_dir / "last.npz")
        plot_log(self.out_dir / "log.jsonl", self.out_dir / "loss.png")
        text = sample(self.model, self.vocab, length=self.config.sample_length,
                      temperature=self.config.sample_temperature, seed=self.step)
        message = f"step {self.step}"
        if "val_loss" in record:
            message += f": val loss {record['val_loss']:.4f} nats/token, ppl {record['val_ppl']:.2f}, {record['val_bpc']:.3f} bits/token"
        lines = [message, "--- sample ---", text, "--------------"]
        for line in lines:
            (bar.write if bar is not None else self.echo)(line)
        return record

    def _log(self, record: dict[str, Any]) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    # --- checkpoints ------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Everything needed to continue this run exactly: model, optimizer, position, carried state, RNGs."""
        optimizer_meta, optimizer_arrays = self.optimizer.state_dict()
        meta = {
            "model": ckpt.model_meta(self.model),
            "vocab": self.vocab.to_config(),
            "optimizer": optimizer_meta,
            "train_config": dataclasses.asdict(self.config),
            "progress": {"step": self.step, "epoch": self.epoch, "window_index": self.window_index},
            "rng": {"dropout": self.model.dropout_rng.bit_generator.state},
        }
        arrays = {f"params/{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optimizer/{k}": v for k, v in optimizer_arrays.items()})
        if self.state is not None:
            arrays["state/h"], arrays["state/c"] = to_numpy(self.state[0]), to_numpy(self.state[1])
        return ckpt.save(path, meta, arrays)

    @classmethod
    def resume(cls, source: str | Path | ckpt.Checkpoint, split: Split, out_dir: str | Path, *,
               backend: Any = "numpy", steps: int | None = None, **options: Any) -> "Trainer":
        """Rebuild a trainer from a checkpoint written by :meth:`save` (a path, or one already loaded);
        ``steps`` may extend the run."""
        checkpoint = source if isinstance(source, ckpt.Checkpoint) else ckpt.load(source)
        meta = checkpoint.meta
        for key in ("train_config", "progress", "optimizer", "vocab", "rng"):
            if key not in meta:
                raise ckpt.CheckpointError(f"a model-only checkpoint (no {key!r}) cannot resume training")
        config = TrainConfig(**meta["train_config"])
        if steps is not None:
            config.steps = steps
        model = ckpt.model_from_checkpoint(checkpoint, backend)
        trainer = cls(model, vocab_from_config(meta["vocab"]), split, config, out_dir, **options)
        trainer.optimizer.load_state_dict(meta["optimizer"], checkpoint.group("optimizer"))
        progress = meta["progress"]
        trainer.step, trainer.epoch, trainer.window_index = progress["step"], progress["epoch"], progress["window_index"]
        model.dropout_rng.bit_generator.state = meta["rng"]["dropout"]
        carried = checkpoint.group("state")
        if carried:
            trainer.state = (model.backend.asarray(carried["h"], dtype=model.dtype),
                             model.backend.asarray(carried["c"], dtype=model.dtype))
        return trainer


def _progress_bar(total: int, initial: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_log(log_path: str | Path, png_path: str | Path) -> Path | None:
    """Train and validation loss against step, written headless (matplotlib's Agg) and atomically.

    Returns None, and writes nothing, when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_log(log_path)
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
