"""The training run behind ``lstmx train``: every door checked, then the run in its locked folder.

:func:`run_train` takes the parsed flags (an ``argparse.Namespace`` from :func:`lstmx.cli.build_parser`, or any
object with those attributes). Every door is checked before anything is written: the flags against each other and
against a resumed checkpoint, the text, the vocabulary, the model, the implementations asked for, the data sizes,
the folder. Then one rank locks the folder (setting an earlier run aside with ``--overwrite``) and the
:class:`~lstmx.training.loop.Trainer` runs; a run that wrote no checkpoint puts the earlier one back.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..dispatch import registry
from ..nn.models import LanguageModel
from ..options import DataConfig, ModelConfig, OptionError
from .checkpoint import load as load_checkpoint
from .checkpoint import model_config, model_from_checkpoint
from .data import (CharVocab, StreamBatches, WordVocab, default_corpus, split_ids, text_fingerprint, vocab_from_config,
                   windows_per_epoch)
from .loop import TrainConfig, Trainer, resumable
from .optim import OPTIMIZERS
from .run_folder import RunFolder, RunFolderError, check_run_folder

DEFAULT_OUT = Path("runs/default")
AWD_SET = {"dropout": 0.4, "locked_dropout": True, "weight_drop": 0.5, "embedding_dropout": 0.1, "tie_weights": True}


def _given(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_train(args: argparse.Namespace) -> int:
    """``lstmx train``: every door checked (flags, text, vocabulary, model, implementations, data sizes, the
    folder) before anything is written; then the run, in its locked folder."""
    given_data, given_model, given_train = (_given(args, c) for c in (DataConfig, ModelConfig, TrainConfig))
    if args.awd:
        given_model = {**AWD_SET, **given_model}
    if args.epochs is not None and "steps" in given_train:
        raise OptionError("--steps and --epochs exclude each other: give one")
    comm = args.comm
    if args.resume and not Path(args.resume).is_file():
        raise OptionError(f"--resume {args.resume}: " + ("is a folder, not a checkpoint file"
                                                         if Path(args.resume).is_dir() else "no such file"))
    out = Path(args.out) if args.out is not None else Path(args.resume).parent if args.resume else DEFAULT_OUT
    check_run_folder(out)
    resumed = load_checkpoint(args.resume) if args.resume else None
    if resumed is not None:
        data, model_config, saved_train = _resumed_configs(resumed, args.resume)
        _refuse_conflicts(given_data, data, "its data")
        data = data or DataConfig(**given_data)  # a checkpoint from before data settings were saved
        _refuse_conflicts(given_model, model_config, "its model")
        _refuse_conflicts({k: v for k, v in given_train.items() if not resumable(k)}, saved_train, "its training recipe")
    else:
        data = DataConfig(**given_data)
        model_config = ModelConfig(**given_model)
        _refuse_ineffective_flags(given_data, data)
        _refuse_ineffective_training_flags(given_train)
        _refuse_flags_without_validation(given_train, data)
    width = model_config.proj_size or model_config.hidden_size
    if model_config.tie_weights and model_config.embedding_size != width:
        raise OptionError(f"--tie-weights needs --embedding-size ({model_config.embedding_size}) equal to the LSTM's "
                          f"output size ({width}: --proj-size, or --hidden-size without one)")
    if model_config.proj_size >= model_config.hidden_size:  # before any data is read
        raise OptionError(f"--proj-size must be below --hidden-size ({model_config.hidden_size}), got "
                          f"{model_config.proj_size} (0: no projection)")
    if given_train.get("precision", "float32") != "float32":  # before any data is read: tf32 needs CuPy, float32
        from ..backend import get_backend
        from ..dispatch.precision import check_precision

        try:
            check_precision(given_train["precision"], get_backend(args.backend), model_config.dtype)
        except ValueError as error:
            raise OptionError(f"--precision: {error}") from None

    text, source = _read_text(args.text, data.max_chars)
    fingerprint = text_fingerprint(text)
    if resumed is not None:
        saved = resumed.meta.get("text_fingerprint")
        if saved is not None and saved != fingerprint and not args.allow_new_text:
            raise OptionError(f"TEXT ({source}) is not the text the checkpoint {args.resume} trained on; give that "
                              "text, or --allow-new-text to fine-tune on this one on purpose")
        vocab = vocab_from_config(resumed.meta["vocab"])
    elif data.level == "char":
        vocab = CharVocab.from_text(text)
    else:
        vocab = WordVocab.from_text(text, data.min_count, "<unk>" if data.unk else None)
        if len(vocab) < 2:
            raise OptionError(f"--min-count {data.min_count} leaves one token ({vocab.symbols[0]!r}) in the vocabulary: "
                              "nothing to predict; lower --min-count")
    split = split_ids(vocab.encode(text), data.validation, data.test)
    saved_config = resumed.meta["train_config"] if resumed else given_train
    batch_size = saved_config.get("batch_size", TrainConfig.batch_size)
    seq_len = saved_config.get("seq_len", TrainConfig.seq_len)
    _check_data_sizes(split, batch_size)
    if args.epochs is not None:
        given_train["steps"] = max(1, int(round(args.epochs * windows_per_epoch(len(split.train), batch_size, seq_len))))

    with implementations(args.impl, args.update_impl, args.loss_impl):
        if resumed is not None:
            model = model_from_checkpoint(resumed, args.backend)
        else:
            config = TrainConfig(**given_train)
            model = LanguageModel(len(vocab), model_config.embedding_size, model_config.hidden_size,
                                  model_config.num_layers, model_config.dropout, proj_size=model_config.proj_size,
                                  checkpoint_every=model_config.checkpoint_every, peepholes=model_config.peepholes,
                                  input_forget=model_config.input_forget, cell_clip=model_config.cell_clip,
                                  layer_norm=model_config.layer_norm, zoneout=model_config.zoneout,
                                  recurrent_dropout=model_config.recurrent_dropout,
                                  weight_drop=model_config.weight_drop, locked_dropout=model_config.locked_dropout,
                                  embedding_dropout=model_config.embedding_dropout,
                                  tie_weights=model_config.tie_weights, backend=args.backend, dtype=model_config.dtype, seed=config.seed,
                                  precision=config.precision)
        _check_implementations(model, batch_size, saved_config.get("optimizer", TrainConfig.optimizer))

        folder = RunFolder(out)
        refusal = None
        if comm.rank == 0:  # one rank looks at (and may set aside) the folder; every rank learns the verdict
            try:
                folder.lock(say=say)
                _prepare_out(folder, args)
            except (OptionError, RunFolderError) as error:
                folder.release()
                refusal = str(error)
        if comm.broadcast_object(refusal) is not None:
            raise OptionError(refusal if comm.rank == 0 else "rank 0 refused --out (its message says why)")
        try:
            return _train_in(folder, args, resumed, model, vocab, split, data, given_train, fingerprint, source)
        finally:
            if comm.rank == 0:
                if not folder.settle():
                    say(f"the new run wrote no checkpoint: the earlier run in {out} is back as it was")
                folder.release()


def _train_in(folder: RunFolder, args: argparse.Namespace, resumed: Any, model: Any, vocab: Any, split: Any,
              data: DataConfig, given_train: dict[str, Any], fingerprint: str, source: str) -> int:
    comm, out = args.comm, folder.path
    tell = say if comm.rank == 0 else (lambda line: None)
    tell(f"{len(split.train) + len(split.validation) + len(split.test):,} tokens from {source}; {len(vocab)} "
         f"{vocab.level} tokens; {len(split.train):,} train / {len(split.validation):,} validation tokens"
         + (f"; {comm.size} ranks ({comm.engine})" if comm.size > 1 else ""))
    progress = not args.no_progress
    if resumed is not None:
        overrides = {k: v for k, v in given_train.items() if resumable(k)}
        for name, value in overrides.items():
            if value != resumed.meta["train_config"].get(name):
                tell(f"resuming with {_flag(name)} {value} (the checkpoint had {resumed.meta['train_config'].get(name)})")
        trainer = Trainer.resume(resumed, split, out, backend=args.backend, overrides=overrides, progress=progress,
                                 comm=comm, model=model)
    else:
        trainer = Trainer(model, vocab, split, TrainConfig(**given_train), out, progress=progress, data=data,
                          comm=comm)
    trainer.text_fingerprint = fingerprint
    tell(f"{trainer.model.num_parameters():,} parameters on {trainer.model.backend.name}; training to step "
         f"{trainer.config.steps} (from step {trainer.step}); writing to {out}")
    tell(f"plan: {trainer.plan.describe()}")
    try:
        records = trainer.run()
    except KeyboardInterrupt as interrupt:
        if interrupt.args:  # the trainer saved the step it finished
            tell(f"{interrupt.args[0]}; continue with --resume {out / 'last.npz'}")
        raise
    if len(split.test):
        _report_test(trainer, split.test)
    train_losses = [r["train_loss"] for r in records if "train_loss" in r]
    if train_losses:
        tell(f"train loss {train_losses[0]:.3f} → {train_losses[-1]:.3f} nats/token; checkpoint {out / 'last.npz'}; "
             f"curve {out / 'loss.png'}")
    return 0


def _read_text(name: str | None, max_chars: int) -> tuple[str, str]:
    """The training text (at most ``max_chars``) and where it came from; one line naming TEXT when unreadable."""
    if name is None:
        return default_corpus(max_chars), "the Python standard library's source (embedded default corpus)"
    path = Path(name)
    if not path.exists():
        raise OptionError(f"TEXT {path} does not exist")
    if not path.is_file():
        raise OptionError(f"TEXT {path} is a folder, not a text file")
    try:
        with path.open(encoding="utf-8") as handle:
            text = handle.read(max_chars)
    except UnicodeDecodeError as error:
        raise OptionError(f"TEXT {path} is not UTF-8 text (byte {error.start} of what was read cannot be "
                          "decoded); a binary file?") from None
    except OSError as error:
        raise OptionError(f"TEXT {path} cannot be read: {error.strerror}") from None
    if not text.strip():
        raise OptionError(f"TEXT {path} is empty (or only whitespace)")
    return text, str(path)


def _refuse_ineffective_flags(given: dict[str, Any], data: DataConfig) -> None:
    """Flags that would change nothing in the configuration chosen are refused, naming why."""
    if data.level == "char":
        for name in ("unk", "min_count"):
            if name in given:
                raise OptionError(f"{_flag(name)} applies to --level word only; at character level every "
                                  "character of the text has its own token")
    elif "min_count" in given and not data.unk:
        raise OptionError("--min-count needs --unk: rare words must map to <unk> (without it every word keeps its "
                          "own token)")


def _refuse_ineffective_training_flags(given: dict[str, Any]) -> None:
    """Training flags that the chosen optimizer or schedule would ignore are refused, naming why."""
    optimizer = given.get("optimizer", TrainConfig.optimizer)
    if "momentum" in given and optimizer not in ("sgd", "rmsprop"):
        raise OptionError(f"--momentum applies to --optimizer sgd or rmsprop; {optimizer} has its own moments "
                          "(its betas)")
    schedule = given.get("schedule", TrainConfig.schedule)
    for name in ("warmup_steps", "min_lr"):
        if name in given and schedule != "cosine":
            raise OptionError(f"{_flag(name)} applies to --schedule cosine only, not {schedule}")
    if "sample_temperature" in given and given.get("sample_length", TrainConfig.sample_length) == 0:
        raise OptionError("--sample-temperature has no effect with --sample-length 0 (no samples are drawn)")


def _refuse_flags_without_validation(given_train: dict[str, Any], data: DataConfig) -> None:
    if data.validation == 0 and "eval_max_windows" in given_train:
        raise OptionError("--eval-max-windows has no effect with --validation 0 (there is nothing to validate on)")


def _check_data_sizes(split: Any, batch_size: int) -> None:
    """The training split fills the batch's streams, and a validation split asked for can validate."""
    if len(split.train) < 2 * batch_size:
        raise OptionError(f"the training split holds {len(split.train)} tokens, too few for --batch-size "
                          f"{batch_size} streams of at least 2 tokens each: give a longer text or a smaller "
                          "--batch-size")
    if 0 < len(split.validation) < 2 * batch_size:
        raise OptionError(f"the validation split holds {len(split.validation)} tokens, too few for --batch-size "
                          f"{batch_size} streams of at least 2 tokens each, so validation would never run: raise "
                          "--validation, lower --batch-size, or give --validation 0 to train without it")


def _check_implementations(model: Any, batch_size: int, optimizer: str) -> None:
    """The layer, loss and update implementations asked for run this model here (before any work starts)."""
    backend = model.backend
    try:
        registry.choose_layer_impl(backend, model.dtype, False, None, (batch_size, model.hidden_size),
                                   model.stack.cell.kind, model.stack.cell.options.names(), model.precision)
        registry.choose_loss(backend)
        registry.choose_update(backend, OPTIMIZERS[optimizer.lower()])
    except registry.ImplError as error:
        raise OptionError(str(error)) from None


def _resumed_configs(checkpoint: Any, path: str) -> tuple[DataConfig, ModelConfig, dict[str, Any]]:
    meta = checkpoint.meta
    if not isinstance(meta.get("vocab"), dict) or "train_config" not in meta:
        raise ValueError(f"{path} holds no training run (a model-only checkpoint?); it cannot resume training")
    described = meta.get("model", {})
    if described.get("class") != "LanguageModel":
        raise ValueError(f"{path} holds a {described.get('class')!r}, not a language model")
    model = ModelConfig(**{k: v for k, v in model_config(meta).items() if k != "vocab_size"}, dtype=described["dtype"])
    data = DataConfig(**meta["data_config"]) if meta.get("data_config") else None
    return data, model, meta["train_config"]


def _refuse_conflicts(given: dict[str, Any], saved: Any, what: str) -> None:
    """A flag given with --resume must agree with the checkpoint (saved: a config, a dict, or None: unknown)."""
    if saved is None:
        return
    values = saved if isinstance(saved, dict) else dataclasses.asdict(saved)
    for name, value in given.items():
        if name in values and values[name] != value:
            raise OptionError(f"{_flag(name)} {value} conflicts with the checkpoint ({values[name]}): a resumed run "
                              f"keeps {what}; leave the flag out, or start a new run")


def _prepare_out(folder: RunFolder, args: argparse.Namespace) -> None:
    """Refuse a locked --out folder that holds another run, unless resuming that run or told to overwrite it
    (the earlier run is then set aside until the new one has checkpointed)."""
    out = folder.path
    entries = folder.entries()
    if not entries:
        return
    if args.resume and Path(args.resume).resolve().parent == out.resolve():
        return
    if args.overwrite:
        folder.set_aside()
        return
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    if args.resume:
        raise OptionError(f"--out {out} is not the folder of --resume {args.resume} and is not empty ({shown}); "
                          f"resume into {Path(args.resume).parent}, or choose an empty --out")
    hint = f"continue it with --resume {out / 'last.npz'}, " if "last.npz" in entries else ""
    raise OptionError(f"--out {out} already holds files ({shown}); {hint}start over with --overwrite, "
                      "or choose another --out")


def implementations(name: str | None, update: str | None = None, loss: str | None = None) -> Any:
    """The context a command runs in: the layer, optimizer update and loss implementations it was asked for."""
    stack = contextlib.ExitStack()
    for chosen, use in ((name, registry.use_layer_impl), (update, registry.use_update_impl),
                        (loss, registry.use_loss_impl)):
        if chosen:
            stack.enter_context(use(chosen))
    return stack


def say(line: str) -> None:
    print(f"lstmx: {line}", file=sys.stderr, flush=True)


def _report_test(trainer: Any, test_ids: Any) -> None:
    config = trainer.config
    result = trainer.evaluate(StreamBatches(trainer.model.backend, test_ids, config.batch_size, config.seq_len))
    if trainer.lead:
        say(f"test loss {result['val_loss']:.4f} nats/token, ppl {result['val_ppl']:.2f}")
