"""Training loop for language models: truncated BPTT, validation, logging, plots, checkpoints and resume."""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import checkpoint as ckpt
from .backend import is_host, to_numpy
from .data import CharVocab, Split, StreamBatches, vocab_from_config
from .models import LanguageModel
from .optim import OPTIMIZERS, SCHEDULES, clip_grad_norm, clip_grad_value, make_optimizer, make_schedule
from .options import (NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, DataConfig, Range, check_config,
                      option)
from .runlog import Progress, RunLog
from .sample import sample

LN2 = math.log(2.0)


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or Inf."""


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of a run (saved in every checkpoint so a resumed run continues the same recipe).

    Each field declares its default, help and allowed range once (:mod:`lstmx.options`): the trainer checks
    them, and ``lstmx train`` turns them into its flags. ``on_resume="override"`` marks the fields a resumed
    run may change; the others must match the checkpoint.
    """

    steps: int = option(1000, "optimizer steps in total (on --resume: the saved total unless given)", POSITIVE_INT,
                        on_resume="override")
    batch_size: int = option(32, "parallel streams B per step", POSITIVE_INT)
    seq_len: int = option(64, "truncated-BPTT window T (time steps per optimizer step)", POSITIVE_INT)
    optimizer: str = option("adam", "update rule", choices=lambda: tuple(OPTIMIZERS))
    lr: float = option(2e-3, "peak learning rate", POSITIVE, on_resume="override")
    weight_decay: float | None = option(None, "weight decay (default: the optimizer's own: AdamW 1e-2, others 0)",
                                        NON_NEGATIVE, optional=True)
    momentum: float = option(0.0, "SGD/RMSprop momentum", Range(0, 1, high_inclusive=False))
    schedule: str = option("constant", "learning-rate schedule", choices=lambda: SCHEDULES)
    warmup_steps: int = option(0, "cosine schedule: linear warm-up steps", NON_NEGATIVE_INT)
    min_lr: float = option(0.0, "cosine schedule: final learning rate", NON_NEGATIVE)
    clip_norm: float | None = option(5.0, "clip the global gradient norm to this (none: off)", POSITIVE, optional=True)
    clip_value: float | None = option(None, "clip every gradient entry to [-v, v] (default: off)", POSITIVE,
                                      optional=True)
    eval_every: int = option(200, "steps between validation, checkpoint and sample", POSITIVE_INT,
                             on_resume="override")
    eval_max_windows: int | None = option(None, "validate on at most this many windows (default: all)",
                                          POSITIVE_INT, optional=True, on_resume="override")
    log_every: int = option(10, "steps between log records (and loss read-backs on a GPU)", POSITIVE_INT,
                            on_resume="override")
    sample_length: int = option(200, "tokens sampled at each evaluation (0: none)", NON_NEGATIVE_INT,
                                on_resume="override")
    sample_temperature: float = option(0.8, "temperature of those samples", POSITIVE, on_resume="override")
    seed: int = option(0, "seed of the weights and of dropout", NON_NEGATIVE_INT)


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

    The loss stays on the device between log records: on the host (NumPy) it is read every step, on a GPU every
    ``log_every`` steps, so a training step never waits for the GPU. A non-finite loss or gradient norm stops
    training at the read that sees it (on the host: before that step's update); a checkpoint is only written
    after a read that found every loss finite. Ctrl-C during :meth:`run` finishes the step under way, writes a
    checkpoint of it and raises :class:`KeyboardInterrupt`.
    """

    def __init__(self, model: LanguageModel, vocab: CharVocab, split: Split, config: TrainConfig,
                 out_dir: str | Path, *, progress: bool = True, echo: Callable[[str], None] | None = None,
                 data: DataConfig | None = None) -> None:
        check_config(config)
        self.model, self.vocab, self.config, self.data = model, vocab, config, data
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.log = RunLog(self.out_dir, warn=lambda message: self.echo(f"lstmx: warning: {message}"))
        self.train_batches = StreamBatches(model.backend, split.train, config.batch_size, config.seq_len)
        self.val_batches = (StreamBatches(model.backend, split.validation, config.batch_size, config.seq_len)
                            if len(split.validation) >= 2 * config.batch_size else None)
        schedule = make_schedule(config.schedule, config.lr, config.steps, config.warmup_steps, min_lr=config.min_lr)
        self.optimizer = make_optimizer(config.optimizer, model, schedule, **_optimizer_options(config))
        self.read_every = 1 if is_host(model.backend) else config.log_every
        self.step = 0
        self.window_index = 0
        self.epoch = 0
        self.state: Any = None
        self._pending: list[tuple[int, Any, Any]] = []  # (step, loss, norm) not yet read back from the device
        self._losses: list[float] = []  # read back, not yet logged

    # --- one step, and evaluation ---------------------------------------------------------------------------

    def train_step(self) -> None:
        """One optimizer step. Its loss is kept on the device until :meth:`read_losses`."""
        window = self.train_batches.window(self.window_index)
        output = self.model.loss(window.inputs, window.targets, self.state, check_input=False)
        grads = output.grads
        if self.config.clip_value is not None:
            grads = clip_grad_value(self.model.backend, grads, self.config.clip_value)
        norm = None
        if self.config.clip_norm is not None:
            grads, norm = clip_grad_norm(self.model.backend, grads, self.config.clip_norm)
        self._pending.append((self.step + 1, output.loss, norm))
        if self.read_every == 1:
            self.read_losses()  # on the host a read costs nothing, and a bad step stops before its update
        self.optimizer.step(grads)
        self.step += 1
        self.state = output.state
        self.window_index += 1
        if self.window_index == len(self.train_batches):
            self.window_index, self.epoch, self.state = 0, self.epoch + 1, None

    def read_losses(self) -> None:
        """Read the pending losses back to the host (one sync); raise if one of them, or a norm, is not finite."""
        pending, self._pending = self._pending, []
        for step, loss, norm in pending:
            value = float(to_numpy(loss))
            if not math.isfinite(value):
                raise TrainingDivergedError(f"training loss became {value} at step {step}")
            if norm is not None and not math.isfinite(norm_value := float(to_numpy(norm))):
                raise TrainingDivergedError(f"the gradient norm became {norm_value} at step {step}")
            self._losses.append(value)

    def take_losses(self) -> list[float]:
        """The losses read back since the last call (reading the pending ones first)."""
        self.read_losses()
        losses, self._losses = self._losses, []
        return losses

    def evaluate(self, batches: StreamBatches | None = None) -> dict[str, float]:
        """Loss per token (nats), perplexity and bits per token on ``batches`` (default: the validation
        streams), in eval mode (no dropout), the state carried across windows as in training."""
        if batches is None:
            batches = self.val_batches
        if batches is None:
            return {}
        self.model.eval()
        total, count, state = None, 0, None
        limit = self.config.eval_max_windows or len(batches)
        try:
            for index in range(min(limit, len(batches))):
                window = batches.window(index)
                output = self.model.loss(window.inputs, window.targets, state, grads=False, check_input=False)
                tokens = int(np.prod(window.targets.shape))
                total = output.loss * tokens if total is None else total + output.loss * tokens
                count += tokens
                state = output.state
        finally:
            self.model.train()
        loss = float(to_numpy(total)) / count  # one read for the whole evaluation
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_bpc": loss / LN2}

    # --- the run --------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Train until ``config.steps``; returns the log records written during this call."""
        records: list[dict[str, Any]] = []
        progress = Progress(self.config.steps, self.step, self.progress)
        tokens_per_step = self.config.batch_size * self.config.seq_len
        window_start = time.perf_counter()
        try:
            with _interrupt_after_step() as interrupted:
                while self.step < self.config.steps:
                    try:
                        self.train_step()
                        last = self.step == self.config.steps
                        logging = self.step % self.config.log_every == 0 or last
                        evaluating = self.step % self.config.eval_every == 0 or last
                        if evaluating or interrupted() or self.step % self.read_every == 0:
                            self.read_losses()  # before a checkpoint: never save a run whose loss went bad
                    except TrainingDivergedError as error:
                        raise TrainingDivergedError(f"{error}{self._last_good()}") from None
                    progress.step()
                    if logging:
                        try:
                            losses = self.take_losses()
                        except TrainingDivergedError as error:
                            raise TrainingDivergedError(f"{error}{self._last_good()}") from None
                        elapsed = time.perf_counter() - window_start
                        record = {"step": self.step, "epoch": self.epoch, "train_loss": sum(losses) / len(losses),
                                  "lr": self.optimizer.schedule(self.step - 1),
                                  "tokens_per_s": tokens_per_step * len(losses) / max(elapsed, 1e-9)}
                        records.append(self.log.append(record))
                        progress.logged(record)
                        window_start = time.perf_counter()
                    if evaluating:
                        records.append(self._checkpoint_and_report(progress))
                        window_start = time.perf_counter()  # tokens/s measures training only
                    if interrupted():
                        self.save(self.out_dir / "last.npz")
                        raise KeyboardInterrupt(f"interrupted after step {self.step}; checkpoint {self.out_dir / 'last.npz'}")
        finally:
            progress.close()
        return records

    def _last_good(self) -> str:
        last = self.out_dir / "last.npz"
        return f"; the last good checkpoint is {last}" if last.exists() else "; no checkpoint was written yet"

    def _checkpoint_and_report(self, progress: Progress) -> dict[str, Any]:
        record = self.log.append({"step": self.step, "epoch": self.epoch, **self.evaluate()})
        self.save(self.out_dir / "last.npz")
        self.log.plot()
        message = f"step {self.step}"
        if "val_loss" in record:
            message += f": val loss {record['val_loss']:.4f} nats/token, ppl {record['val_ppl']:.2f}, {record['val_bpc']:.3f} bits/token"
        lines = [message]
        if self.config.sample_length:
            text = sample(self.model, self.vocab, length=self.config.sample_length,
                          temperature=self.config.sample_temperature, seed=self.step)
            lines += ["--- sample ---", text, "--------------"]
        for line in lines:
            progress.write(line) if progress.bar is not None else self.echo(line)
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
            "data_config": None if self.data is None else dataclasses.asdict(self.data),
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
               backend: Any = "numpy", steps: int | None = None, overrides: dict[str, Any] | None = None,
               **options: Any) -> "Trainer":
        """Rebuild a trainer from a checkpoint written by :meth:`save` (a path, or one already loaded).

        ``steps`` may extend the run; ``overrides`` may change the fields of :class:`TrainConfig` marked
        ``on_resume="override"`` (the learning rate, evaluation and logging intervals, samples). Records in
        ``out_dir/log.jsonl`` after the checkpoint's step are dropped.
        """
        checkpoint = source if isinstance(source, ckpt.Checkpoint) else ckpt.load(source)
        meta = checkpoint.meta
        for key in ("train_config", "progress", "optimizer", "vocab", "rng"):
            if key not in meta:
                raise ckpt.CheckpointError(f"a model-only checkpoint (no {key!r}) cannot resume training")
        config = TrainConfig(**meta["train_config"])
        changes = dict(overrides or {})
        if steps is not None:
            changes["steps"] = steps
        refused = [name for name in changes if not resumable(name)]
        if refused:
            raise ValueError(f"{', '.join(refused)} cannot change when resuming; start a new run instead")
        config = dataclasses.replace(config, **changes)
        model = ckpt.model_from_checkpoint(checkpoint, backend)
        data = DataConfig(**meta["data_config"]) if meta.get("data_config") else None
        trainer = cls(model, vocab_from_config(meta["vocab"]), split, config, out_dir, data=data, **options)
        trainer.optimizer.load_state_dict(meta["optimizer"], checkpoint.group("optimizer"))
        progress = meta["progress"]
        trainer.step, trainer.epoch, trainer.window_index = progress["step"], progress["epoch"], progress["window_index"]
        model.dropout_rng.bit_generator.state = meta["rng"]["dropout"]
        carried = checkpoint.group("state")
        if carried:
            trainer.state = (model.backend.asarray(carried["h"], dtype=model.dtype),
                             model.backend.asarray(carried["c"], dtype=model.dtype))
        trainer.log.keep_until(trainer.step)
        return trainer


def resumable(name: str) -> bool:
    """Whether a resumed run may change the :class:`TrainConfig` field ``name``."""
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}.get(name)
    return field is not None and field.metadata["spec"].on_resume == "override"


class _interrupt_after_step:
    """Within the block, Ctrl-C (SIGINT) only raises a flag that the loop checks after each step; a second
    Ctrl-C interrupts at once. Outside the main thread (no signal handlers there) it does nothing."""

    def __enter__(self) -> Callable[[], bool]:
        self.flag = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return lambda: self.flag

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
