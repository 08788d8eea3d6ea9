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

from ..backend import is_host, to_numpy
from ..dispatch.plan import resolve_plan
from ..dispatch.precision import PRECISIONS
from ..nn.models import LanguageModel
from ..nn.sample import sample
from ..options import (NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, DataConfig, Range, check_config,
                       option)
from . import checkpoint as ckpt
from .data import CharVocab, Split, StreamBatches, vocab_from_config
from .distributed import SingleProcess, agree, fingerprint, flatten, shard, unflatten
from .loss_scale import LossScale, copies, kept, unscaled
from .optim import OPTIMIZERS, SCHEDULES, clip_grad_norm, clip_grad_value, make_optimizer, make_schedule
from .runlog import Progress, RunLog

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
    accumulate: int = option(1, "micro-batches per step: the batch's streams split into this many parts run one "
                                "after another (less memory, the same gradient)", POSITIVE_INT, on_resume="override")
    precision: str = option("float32", "precision of the matrix products: float32; tf32 (TensorFloat-32 tensor "
                            "cores; CuPy float32 only; ~1e-3 relative error in the products); bf16 (mixed "
                            "precision: bfloat16 operands, float32 sums, state and weights); or fp16 (the same "
                            "with half precision, the loss scaled dynamically)", choices=PRECISIONS,
                            on_resume="override")


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
                 data: DataConfig | None = None, comm: Any = None) -> None:
        check_config(config)
        if model.precision != config.precision:
            raise ValueError(f"the model's precision {model.precision!r} differs from config.precision "
                             f"{config.precision!r}; build the model with precision={config.precision!r}")
        self.model, self.vocab, self.config, self.data = model, vocab, config, data
        self.comm = comm or SingleProcess()
        self.lead = self.comm.rank == 0  # the rank that writes logs, plots, checkpoints and samples
        self.out_dir = Path(out_dir)
        self.progress = progress and self.lead
        self.echo = (echo or (lambda line: print(line, file=sys.stderr, flush=True))) if self.lead else (lambda line: None)
        self.log = RunLog(self.out_dir, warn=lambda message: self.echo(f"lstmx: warning: {message}"))
        self.train_batches = StreamBatches(model.backend, split.train, config.batch_size, config.seq_len)
        self.val_batches = (StreamBatches(model.backend, split.validation, config.batch_size, config.seq_len)
                            if len(split.validation) >= 2 * config.batch_size else None)
        schedule = make_schedule(config.schedule, config.lr, config.steps, config.warmup_steps, min_lr=config.min_lr)
        self.optimizer = make_optimizer(config.optimizer, model, schedule, **_optimizer_options(config))
        self.read_every = 1 if is_host(model.backend) else config.log_every
        self.shards = self._micro_batches(config.batch_size)
        # every choice resolved once, here, for the largest micro-batch, and passed down at each step (lstmx.dispatch.plan)
        self.plan = resolve_plan(model, type(self.optimizer), max(b - a for a, b in self.shards),
                                 update=self.optimizer.impl)
        if self.comm.size > 1:
            self._join_ranks(split)
        self.step = 0
        self.window_index = 0
        self.epoch = 0
        self.state: Any = None
        # precision="fp16" scales the loss (lstmx.training.loss_scale); None: no scaling
        self.loss_scale = LossScale.start(model.backend) if config.precision == "fp16" else None
        self.text_fingerprint: str | None = None  # lstmx.training.data.text_fingerprint of the training text, when known
        self._pending: list[tuple[int, Any, Any]] = []  # (step, loss, norm) not yet read back from the device
        self._losses: list[float] = []  # read back, not yet logged

    # --- how the batch is shared: ranks, then micro-batches ------------------------------------------------------

    def _micro_batches(self, batch: int) -> list[tuple[int, int]]:
        """``[start, stop)`` stream ranges of this rank's micro-batches within the global batch."""
        ranks, accumulate = self.comm.size, self.config.accumulate
        if batch < ranks * accumulate:
            raise ValueError(f"batch_size {batch} cannot be shared by {ranks} rank(s) × {accumulate} micro-batch(es): "
                             "each needs at least one stream")
        start, stop = shard(batch, ranks, self.comm.rank)
        return [(start + a, start + b) for a, b in (shard(stop - start, accumulate, k) for k in range(accumulate))]

    def _join_ranks(self, split: Split) -> None:
        """Refuse ranks that would train different things, then start every rank from rank 0's parameters."""
        agree(self.comm, {"training configuration": dataclasses.asdict(self.config),
                          "data configuration": None if self.data is None else dataclasses.asdict(self.data),
                          "model": ckpt.model_meta(self.model), "backend": self.model.backend.name,
                          "vocabulary": fingerprint(self.vocab.to_config()),
                          "data size": [len(split.train), len(split.validation), len(split.test)],
                          "training tokens": fingerprint(np.asarray(split.train)),
                          "validation tokens": fingerprint(np.asarray(split.validation))})
        self.model.load_state_dict(self.comm.broadcast_object(self.model.state_dict() if self.lead else None))

    def _shared(self) -> bool:
        return self.comm.size > 1 or len(self.shards) > 1

    # --- one step, and evaluation ---------------------------------------------------------------------------

    def _loss_and_grads(self, window: Any, grad_scale: Any = None) -> tuple[Any, dict[str, Any], list[Any]]:
        """The window's mean loss per token and its gradient over the global batch (times ``grad_scale`` when
        given), and the carried state of each micro-batch. Each part's gradient is weighted by its share of the
        tokens and one all-reduce sums them over the ranks (a training window has no ignored targets: a part of b
        streams holds T·b tokens)."""
        model, backend = self.model, self.model.backend
        if not self._shared():
            output = model.loss(window.inputs, window.targets, None if self.state is None else self.state[0],
                                check_input=False, impl=self.plan.layer, loss_impl=self.plan.loss,
                                grad_scale=grad_scale)
            return output.loss, output.grads, [output.state]
        masks = model.draw_dropout_masks(window.inputs.shape[0], self.config.batch_size)
        loss, grads, states = None, None, []
        for k, (start, stop) in enumerate(self.shards):
            output = model.loss(window.inputs[:, start:stop], window.targets[:, start:stop],
                                None if self.state is None else self.state[k], check_input=False,
                                dropout_masks=[m if m is None else m[:, start:stop, :] for m in masks],
                                impl=self.plan.layer, loss_impl=self.plan.loss, grad_scale=grad_scale)
            weight = (stop - start) / self.config.batch_size
            part = {name: g * weight for name, g in output.grads.items()}
            grads = part if grads is None else {name: grads[name] + g for name, g in part.items()}
            loss = output.loss * weight if loss is None else loss + output.loss * weight
            states.append(output.state)
        if self.comm.size > 1:
            names = list(grads)
            parts = [*(grads[n] for n in names), backend.xp.reshape(loss, (1,))]
            *reduced, loss = unflatten(backend, self.comm.allreduce(backend, flatten(backend, parts)), parts)
            grads, loss = dict(zip(names, reduced)), backend.xp.reshape(loss, ())
        return loss, grads, states

    def train_step(self) -> None:
        """One optimizer step. Its loss is kept on the device until :meth:`read_losses`."""
        window = self.train_batches.window(self.window_index)
        scaling, finite = self.loss_scale, None
        if scaling is None:
            loss, grads, states = self._loss_and_grads(window)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is what the scale is there to catch
                loss, grads, states = self._loss_and_grads(window, scaling.scale)
            # back to the true gradients; zeros where the scaled ones overflowed
            grads, finite = unscaled(self.model.backend, grads, scaling)
        if self.config.clip_value is not None:
            grads = clip_grad_value(self.model.backend, grads, self.config.clip_value)
        norm = None
        if self.config.clip_norm is not None:
            grads, norm = clip_grad_norm(self.model.backend, grads, self.config.clip_norm, impl=self.plan.update)
        self._pending.append((self.step + 1, loss, norm))
        if self.read_every == 1:
            self.read_losses()  # on the host a read costs nothing, and a bad step stops before its update
        if finite is None:
            self.optimizer.step(grads)
        else:
            self._step_kept_if(finite, grads)
            self.loss_scale = scaling.after(self.model.backend, finite)
        self.step += 1
        self.state = states
        self.window_index += 1
        if self.window_index == len(self.train_batches):
            self.window_index, self.epoch, self.state = 0, self.epoch + 1, None

    def _step_kept_if(self, finite: Any, grads: dict[str, Any]) -> None:
        """The optimizer's step, kept where ``finite`` (a 0-d bool on the device) and undone elsewhere: the
        parameters and the optimizer's state as they were before it."""
        backend, optimizer = self.model.backend, self.optimizer
        params = copies(backend, self.model.params)
        state = {name: copies(backend, slots) for name, slots in optimizer.state.items()}
        optimizer.step(grads)
        self.model.params.update(kept(backend, finite, self.model.params, params))
        optimizer.state = {name: kept(backend, finite, slots, state[name]) for name, slots in optimizer.state.items()}

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
        start, stop = shard(batches.batch_size, self.comm.size, self.comm.rank)  # this rank's streams
        try:
            for index in range(min(limit, len(batches))):
                window = batches.window(index)
                output = self.model.loss(window.inputs[:, start:stop], window.targets[:, start:stop], state,
                                         grads=False, check_input=False, impl=self.plan.layer)
                tokens = int(np.prod(window.targets.shape))  # every rank's: the loss below is weighted by its share
                part = output.loss * (tokens * (stop - start) / batches.batch_size)
                total = part if total is None else total + part
                count += tokens
                state = output.state
        finally:
            self.model.train()
        if self.comm.size > 1:
            total = self.comm.allreduce(self.model.backend, self.model.backend.xp.reshape(total, (1,)))
        loss = float(np.sum(to_numpy(total))) / count  # one read for the whole evaluation
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
                        records.append(self._append(record))
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

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.log.append(record) if self.lead else record

    def _checkpoint_and_report(self, progress: Progress) -> dict[str, Any]:
        record = self._append({"step": self.step, "epoch": self.epoch, **self.evaluate()})
        if self.comm.size > 1:  # the ranks' parameters must still be one model
            agree(self.comm, {"parameters": fingerprint(np.concatenate(
                [np.ravel(v) for v in self.model.state_dict().values()]))})
        self.save(self.out_dir / "last.npz")
        if not self.lead:
            return record
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
            if progress.bar is not None:
                progress.write(line)  # above the bar, not through it
            else:
                self.echo(line)
        return record

    # --- checkpoints ------------------------------------------------------------------------------------------

    def global_state(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The carried state of the whole global batch on the host, (L, B, H) each; on rank 0 only (other ranks
        get None). Collective: every rank must call it."""
        if self.state is None:
            return None
        h = np.concatenate([to_numpy(part[0]) for part in self.state], axis=1)
        c = np.concatenate([to_numpy(part[1]) for part in self.state], axis=1)
        gathered = self.comm.gather_object((h, c))
        if not self.lead:
            return None
        return np.concatenate([g[0] for g in gathered], axis=1), np.concatenate([g[1] for g in gathered], axis=1)

    def load_global_state(self, h: np.ndarray, c: np.ndarray) -> None:
        """Take this rank's micro-batches' slices of a global carried state (L, B, H)."""
        backend, dtype = self.model.backend, self.model.dtype
        self.state = [(backend.asarray(h[:, a:b], dtype=dtype), backend.asarray(c[:, a:b], dtype=dtype))
                      for a, b in self.shards]

    def save(self, path: str | Path) -> Path:
        """Everything needed to continue this run exactly: model, optimizer, position, carried state, RNGs.
        Collective under several ranks (the state is gathered); rank 0 writes."""
        carried = self.global_state()
        if not self.lead:
            return Path(path)
        optimizer_meta, optimizer_arrays = self.optimizer.state_dict()
        meta = {
            "model": ckpt.model_meta(self.model),
            "vocab": self.vocab.to_config(),
            "optimizer": optimizer_meta,
            "train_config": dataclasses.asdict(self.config),
            "world_size": self.comm.size,
            "data_config": None if self.data is None else dataclasses.asdict(self.data),
            "progress": {"step": self.step, "epoch": self.epoch, "window_index": self.window_index},
            "rng": {"dropout": self.model.dropout_rng.bit_generator.state},
            "text_fingerprint": self.text_fingerprint,
        }
        if self.loss_scale is not None:
            meta["loss_scale"] = self.loss_scale.to_host()
        arrays = {f"params/{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optimizer/{k}": v for k, v in optimizer_arrays.items()})
        if carried is not None:
            arrays["state/h"], arrays["state/c"] = carried
        return ckpt.save(path, meta, arrays)

    @classmethod
    def resume(cls, source: str | Path | ckpt.Checkpoint, split: Split, out_dir: str | Path, *,
               backend: Any = "numpy", steps: int | None = None, overrides: dict[str, Any] | None = None,
               model: Any = None, **options: Any) -> "Trainer":
        """Rebuild a trainer from a checkpoint written by :meth:`save` (a path, or one already loaded).

        ``steps`` may extend the run; ``overrides`` may change the fields of :class:`TrainConfig` marked
        ``on_resume="override"`` (the learning rate, evaluation and logging intervals, samples). Records in
        ``out_dir/log.jsonl`` after the checkpoint's step are dropped. ``model``: the checkpoint's model already
        rebuilt (:func:`lstmx.training.checkpoint.model_from_checkpoint`), else it is rebuilt here on ``backend``.
        """
        checkpoint = source if isinstance(source, ckpt.Checkpoint) else ckpt.load(source)
        meta = checkpoint.meta
        for key in ("train_config", "progress", "optimizer", "vocab", "rng"):
            if key not in meta:
                raise ckpt.CheckpointError(f"a model-only checkpoint (no {key!r}) cannot resume training")
        config = TrainConfig(**meta["train_config"])  # fields added since the checkpoint take their defaults
        changes = dict(overrides or {})
        if steps is not None:
            changes["steps"] = steps
        refused = [name for name in changes if not resumable(name)]
        if refused:
            raise ValueError(f"{', '.join(refused)} cannot change when resuming; start a new run instead")
        config = dataclasses.replace(config, **changes)
        model = model if model is not None else ckpt.model_from_checkpoint(checkpoint, backend)
        model.precision = config.precision
        data = DataConfig(**meta["data_config"]) if meta.get("data_config") else None
        trainer = cls(model, vocab_from_config(meta["vocab"]), split, config, out_dir, data=data, **options)
        trainer.optimizer.load_state_dict(meta["optimizer"], checkpoint.group("optimizer"))
        progress = meta["progress"]
        trainer.step, trainer.epoch, trainer.window_index = progress["step"], progress["epoch"], progress["window_index"]
        model.dropout_rng.bit_generator.state = meta["rng"]["dropout"]
        trainer.text_fingerprint = meta.get("text_fingerprint")
        if trainer.loss_scale is not None and meta.get("loss_scale"):
            trainer.loss_scale = LossScale.start(model.backend, **meta["loss_scale"])
        carried = checkpoint.group("state")
        if carried:
            trainer.load_global_state(carried["h"], carried["c"])
        if trainer.lead:
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
