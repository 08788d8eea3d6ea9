"""Command line: ``lstmx train``, ``lstmx sample`` and ``lstmx check``.

The flags of ``lstmx train`` are generated from the fields of :class:`lstmx.options.DataConfig`,
:class:`lstmx.options.ModelConfig` and :class:`lstmx.train.TrainConfig`: one set of defaults, one line of help
each, and every value range-checked with a one-line error naming the flag.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from . import registry
from .backend import BACKEND_NAMES, BackendError
from .distributed import ENGINES, DistributedError, SingleProcess, communicator
from .options import (NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, DataConfig, ModelConfig, OptionError, Range, Spec,
                      check_value, spec_of)
from .run_folder import RunFolder, RunFolderError, check_run_folder

ABORT_GRACE_SECONDS = 1.0  # how long a failing rank lets the launcher pass its message on before MPI_Abort
DEFAULT_OUT = Path("runs/default")
AWD_SET = {"dropout": 0.4, "locked_dropout": True, "weight_drop": 0.5, "embedding_dropout": 0.1, "tie_weights": True}
NONE_WORDS = ("none", "off")


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, naming the command and the argument."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _value_type(name: str, spec: Spec, kind: type) -> Callable[[str], Any]:
    """argparse ``type=``: parse, then check the range (``none``/``off`` where the option may be off)."""

    def parse(text: str) -> Any:
        if spec.optional and text.lower() in NONE_WORDS:
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {_describe(spec, kind)}, got {text!r}") from None
        if check_value(name, value, spec) is not None:
            raise argparse.ArgumentTypeError(f"must be {_describe(spec, kind)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _describe(spec: Spec, kind: type) -> str:
    text = spec.range.describe() if spec.range is not None else ("an integer" if kind is int else "a number")
    return text + _or_none(spec)


def _or_none(spec: Spec) -> str:
    return " (or none)" if spec.optional else ""


def _field_type(field: dataclasses.Field) -> type:
    annotation = str(field.type)
    return bool if annotation.startswith("bool") else int if annotation.startswith("int") else \
        float if annotation.startswith("float") else str


def add_config_options(group: argparse._ArgumentGroup, config_class: type) -> None:
    """One flag per field: ``--field-name``, default suppressed (so a given flag is told from a default)."""
    defaults = config_class()
    for field in dataclasses.fields(config_class):
        spec = spec_of(field)
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        kind = _field_type(field)
        if kind is bool:
            group.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=spec.help)
            continue
        shown = "none" if default is None else default
        allowed = spec.allowed()
        if allowed is not None:
            group.add_argument(flag, default=argparse.SUPPRESS, choices=allowed, help=f"{spec.help} (default: {shown})")
        else:
            group.add_argument(flag, type=_value_type(flag, spec, kind), default=argparse.SUPPRESS,
                               metavar=field.name.upper(), help=f"{spec.help}; {_describe(spec, kind)} (default: {shown})")


def flag_type(name: str, range_: Range, kind: type) -> Callable[[str], Any]:
    """argparse ``type=`` for a flag ``name`` whose value is a ``kind`` in ``range_`` (the bench scripts use it too)."""
    return _value_type(name, Spec("", range_), kind)


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig

    from . import __version__

    parser = Parser(prog="lstmx", description="Train and sample LSTM language models.")
    parser.add_argument("--version", action="version", version=f"lstmx {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    impls = (registry.AUTO, *registry.NAMES)

    train = commands.add_parser("train", help="train a language model on a text file (default: Python's own stdlib source)",
                                description="Train a character or word language model on TEXT (default: the Python "
                                            "standard library's source), writing log.jsonl, loss.png and last.npz "
                                            "into --out.")
    train.add_argument("text", nargs="?", help="UTF-8 text file; omitted: the embedded default corpus")
    run = train.add_argument_group("run")
    run.add_argument("--backend", default="numpy", choices=BACKEND_NAMES, help="array backend (default: numpy)")
    run.add_argument("--impl", default=None, choices=impls,
                     help=f"LSTM layer implementation (default: the registry's choice, or ${registry.ENVIRONMENT_VARIABLE})")
    run.add_argument("--update-impl", default=None, choices=(registry.AUTO, *(i.name for i in registry.UPDATE_IMPLS)),
                     help="optimizer update implementation (default: the registry's choice, or "
                          f"${registry.UPDATE_ENVIRONMENT_VARIABLE})")
    run.add_argument("--loss-impl", default=None, choices=(registry.AUTO, *(i.name for i in registry.LOSS_IMPLS)),
                     help="implementation of the loss and its gradient (default: the registry's choice, or "
                          f"${registry.LOSS_ENVIRONMENT_VARIABLE})")
    run.add_argument("--epochs", type=flag_type("--epochs", POSITIVE, float), default=None,
                     help="train for this many passes over the training text instead of --steps; a number > 0")
    run.add_argument("--out", default=None, help="folder for log.jsonl, loss.png and last.npz (default: runs/default, "
                                                  "or the folder of --resume); locked while the run uses it")
    run.add_argument("--resume", default=None, metavar="CHECKPOINT",
                     help="continue the run a checkpoint holds (into its own folder); only --steps/--epochs, --lr, "
                          "--eval-every, --eval-max-windows, --log-every and the sample options may change")
    run.add_argument("--allow-new-text", action="store_true",
                     help="with --resume: train on a TEXT other than the checkpoint's (fine-tuning on purpose)")
    run.add_argument("--overwrite", action="store_true",
                     help="start over in an --out folder that holds a run (it is replaced once the new run has "
                          "written its first checkpoint, and kept when the new run fails before that)")
    run.add_argument("--distributed", default="none", choices=ENGINES,
                     help="data-parallel training across the ranks of an MPI launch (mpiexec -n N ...): mpi for CPU "
                          "processes (or GPUs staged through the host), nccl for one GPU per rank (default: none)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar or step lines")
    run.add_argument("--awd", action="store_true",
                     help="the AWD-LSTM regularisation set: --dropout 0.4 --locked-dropout --weight-drop 0.5 "
                          "--embedding-dropout 0.1 --tie-weights (a flag given explicitly wins)")
    add_config_options(train.add_argument_group("data"), DataConfig)
    add_config_options(train.add_argument_group("model"), ModelConfig)
    add_config_options(train.add_argument_group("training"), TrainConfig)

    sample = commands.add_parser("sample", help="generate text from a checkpoint",
                                 description="Generate text from a language-model checkpoint, written to stdout as "
                                             "it is generated.")
    sample.add_argument("checkpoint")
    sample.add_argument("--prime", default="", help="text the model reads before generating (default: a newline)")
    sample.add_argument("--length", type=flag_type("--length", NON_NEGATIVE_INT, int), default=300,
                        help="tokens to generate; an integer ≥ 0 (default: 300)")
    sample.add_argument("--temperature", type=flag_type("--temperature", POSITIVE, float), default=0.8,
                        help="softmax temperature; a number > 0 (default: 0.8)")
    sample.add_argument("--top-k", type=flag_type("--top-k", POSITIVE_INT, int), default=None,
                        help="sample among the k most likely tokens only; an integer ≥ 1 (default: all)")
    sample.add_argument("--greedy", action="store_true", help="always take the most likely token")
    sample.add_argument("--num-samples", type=flag_type("--num-samples", POSITIVE_INT, int), default=1,
                        help="independent samples, generated as one batch (sample k seeded --seed + k); an integer "
                             "≥ 1 (default: 1, streamed as it is generated)")
    sample.add_argument("--seed", type=flag_type("--seed", NON_NEGATIVE_INT, int), default=0,
                        help="seed of the draws; an integer ≥ 0 (default: 0)")
    sample.add_argument("--backend", default="numpy", choices=BACKEND_NAMES, help="array backend (default: numpy)")
    sample.add_argument("--impl", default=None, choices=impls, help="LSTM layer implementation")

    export = commands.add_parser("export", help="write a checkpoint's model as an ONNX graph",
                                 description="Write the model of a checkpoint as an ONNX graph (one ONNX LSTM node per "
                                             "layer, evaluation mode), runnable by onnxruntime; needs lstmx[onnx].")
    export.add_argument("checkpoint")
    export.add_argument("output", help="the .onnx file to write (atomically)")
    export.add_argument("--with-state", action="store_true", help="the graph also takes h0 and c0")
    export.add_argument("--with-lengths", action="store_true", help="the graph also takes lengths (int32, one per "
                                                                     "sequence)")

    check = commands.add_parser("check", help="gradient check (float64), every layer implementation against the "
                                              "generic one, and NumPy-vs-CuPy parity on this machine",
                                description="Prove on this machine that the gradients are exact (float64 finite "
                                            "differences), that every implementation agrees with the generic path, "
                                            "and that NumPy and CuPy agree; exits 1 when a row fails.")
    check.add_argument("--tolerance", type=flag_type("--tolerance", Range(0, 1, low_inclusive=False), float),
                       default=1e-6, help="largest relative gradient error that passes; a number in (0, 1] (default: 1e-06)")
    return parser


# --- lstmx train ---------------------------------------------------------------------------------------------

def _given(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_train(args: argparse.Namespace) -> int:
    """``lstmx train``: every door checked (flags, text, vocabulary, model, implementations, data sizes, the
    folder) before anything is written; then the run, in its locked folder."""
    from . import LanguageModel
    from .checkpoint import load as load_checkpoint
    from .checkpoint import model_from_checkpoint
    from .data import CharVocab, WordVocab, default_corpus, split_ids, text_fingerprint, vocab_from_config
    from .train import TrainConfig, Trainer, resumable

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
        from .backend import get_backend
        from .precision import check_precision

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
        from .data import windows_per_epoch

        given_train["steps"] = max(1, int(round(args.epochs * windows_per_epoch(len(split.train), batch_size, seq_len))))

    with _implementations(args.impl, args.update_impl, args.loss_impl):
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
                folder.lock(say=_say)
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
                    _say(f"the new run wrote no checkpoint: the earlier run in {out} is back as it was")
                folder.release()


def _train_in(folder: RunFolder, args: argparse.Namespace, resumed: Any, model: Any, vocab: Any, split: Any,
              data: DataConfig, given_train: dict[str, Any], fingerprint: str, source: str) -> int:
    from .train import TrainConfig, Trainer, resumable

    comm, out = args.comm, folder.path
    say = _say if comm.rank == 0 else (lambda line: None)
    say(f"{len(split.train) + len(split.validation) + len(split.test):,} tokens from {source}; {len(vocab)} "
        f"{vocab.level} tokens; {len(split.train):,} train / {len(split.validation):,} validation tokens"
        + (f"; {comm.size} ranks ({comm.engine})" if comm.size > 1 else ""))
    progress = not args.no_progress
    if resumed is not None:
        overrides = {k: v for k, v in given_train.items() if resumable(k)}
        for name, value in overrides.items():
            if value != resumed.meta["train_config"].get(name):
                say(f"resuming with {_flag(name)} {value} (the checkpoint had {resumed.meta['train_config'].get(name)})")
        trainer = Trainer.resume(resumed, split, out, backend=args.backend, overrides=overrides, progress=progress,
                                 comm=comm, model=model)
    else:
        trainer = Trainer(model, vocab, split, TrainConfig(**given_train), out, progress=progress, data=data,
                          comm=comm)
    trainer.text_fingerprint = fingerprint
    say(f"{trainer.model.num_parameters():,} parameters on {trainer.model.backend.name}; training to step "
        f"{trainer.config.steps} (from step {trainer.step}); writing to {out}")
    say(f"plan: {trainer.plan.describe()}")
    try:
        records = trainer.run()
    except KeyboardInterrupt as interrupt:
        if interrupt.args:  # the trainer saved the step it finished
            say(f"{interrupt.args[0]}; continue with --resume {out / 'last.npz'}")
        raise
    if len(split.test):
        _report_test(trainer, split.test)
    train_losses = [r["train_loss"] for r in records if "train_loss" in r]
    if train_losses:
        say(f"train loss {train_losses[0]:.3f} → {train_losses[-1]:.3f} nats/token; checkpoint {out / 'last.npz'}; "
            f"curve {out / 'loss.png'}")
    return 0


def _read_text(name: str | None, max_chars: int) -> tuple[str, str]:
    """The training text (at most ``max_chars``) and where it came from; one line naming TEXT when unreadable."""
    from .data import default_corpus

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
    from .train import TrainConfig

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
    from .optim import OPTIMIZERS

    backend = model.backend
    try:
        registry.choose_layer_impl(backend, model.dtype, False, None, (batch_size, model.hidden_size),
                                   model.stack.cell.kind, model.stack.cell.options.names())
        registry.choose_loss(backend)
        registry.choose_update(backend, OPTIMIZERS[optimizer.lower()])
    except registry.ImplError as error:
        raise OptionError(str(error)) from None


def _resumed_configs(checkpoint: Any, path: str) -> tuple[DataConfig, ModelConfig, dict[str, Any]]:
    from .checkpoint import model_config

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


def _implementations(name: str | None, update: str | None = None, loss: str | None = None) -> Any:
    """The context a command runs in: the layer, optimizer update and loss implementations it was asked for."""
    stack = contextlib.ExitStack()
    for chosen, use in ((name, registry.use_layer_impl), (update, registry.use_update_impl),
                        (loss, registry.use_loss_impl)):
        if chosen:
            stack.enter_context(use(chosen))
    return stack


def _say(line: str) -> None:
    print(f"lstmx: {line}", file=sys.stderr, flush=True)


def _report_test(trainer: Any, test_ids: Any) -> None:
    from .data import StreamBatches

    config = trainer.config
    result = trainer.evaluate(StreamBatches(trainer.model.backend, test_ids, config.batch_size, config.seq_len))
    if trainer.lead:
        _say(f"test loss {result['val_loss']:.4f} nats/token, ppl {result['val_ppl']:.2f}")


# --- lstmx sample, lstmx check ---------------------------------------------------------------------------------

def run_sample(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_model
    from .sample import generate, samples

    model, vocab = load_model(args.checkpoint, args.backend)
    if vocab is None or not hasattr(model, "vocab_size"):
        raise CheckpointError(f"{args.checkpoint} holds no language model with a vocabulary; nothing to sample")
    options = dict(temperature=args.temperature, top_k=args.top_k, greedy=args.greedy, seed=args.seed)
    joiner = vocab.separator if args.prime and not args.prime.endswith((" ", "\n")) else ""
    with _implementations(args.impl):
        if args.num_samples == 1:  # streamed: the text grows on stdout as each token is drawn
            sys.stdout.write(args.prime)
            drawn, written = [], ""
            for (token,) in generate(model, vocab, args.prime, args.length, **options):
                drawn.append(token)
                text = vocab.decode(drawn)  # decoding only ever appends (word level joins tokens by spaces)
                sys.stdout.write((joiner if not written else "") + text[len(written):])
                sys.stdout.flush()
                written = text
            sys.stdout.write("\n")
            return 0
        texts = samples(model, vocab, args.prime, args.length, num_samples=args.num_samples, **options)
    for k, text in enumerate(texts):
        sys.stdout.write(f"--- sample {k + 1} of {len(texts)} (seed {args.seed + k}) ---\n"
                         f"{args.prime}{joiner if text else ''}{text}\n")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .interop.onnx import export

    if not Path(args.checkpoint).is_file():
        raise OptionError(f"CHECKPOINT {args.checkpoint} does not exist")
    check_run_folder(Path(args.output).parent, "OUTPUT's folder")
    model, _ = load_model(args.checkpoint)
    path = export(model.eval(), args.output, with_state=args.with_state, with_lengths=args.with_lengths)
    _say(f"wrote {path} ({type(model).__name__}, {model.num_parameters():,} parameters)")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from .check import run_checks

    return run_checks(tolerance=args.tolerance)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    handlers = {"train": run_train, "sample": run_sample, "export": run_export, "check": run_check}
    args.comm = SingleProcess()
    with warnings.catch_warnings():
        warnings.simplefilter("once")  # a warning repeated every step is said once
        warnings.showwarning = _show_warning
        return _run(handlers, args)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    """A Python warning (lstmx's own, NumPy's overflow on a diverging run, a plotting library's) as one line."""
    text = str(message).splitlines()[0] if str(message) else category.__name__
    origin = "" if text.startswith("lstmx: ") else f" ({category.__name__} from {Path(filename).parent.name}/"\
                                                     f"{Path(filename).name}:{lineno})"
    print(f"lstmx: warning: {text.removeprefix('lstmx: ')}{origin}", file=sys.stderr, flush=True)


def _run(handlers: dict[str, Callable[[argparse.Namespace], int]], args: argparse.Namespace) -> int:
    try:
        if args.command == "train":
            args.comm = communicator(args.distributed)
        return handlers[args.command](args)
    except (BackendError, OSError, ValueError, TypeError, KeyError, FloatingPointError, DistributedError) as error:
        _fail(args, f"lstmx {args.command}: error: {error}", 2)
        return 2
    except KeyboardInterrupt:
        print(f"lstmx {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # an unexpected failure on one rank must not leave the others waiting forever
        if args.comm.size > 1:
            _fail(args, f"lstmx {args.command}: error on rank {args.comm.rank}: {type(error).__name__}: {error}", 1)
        raise


def _fail(args: argparse.Namespace, message: str, code: int) -> None:
    """Print ``message``; under several ranks, stop the whole job (the others may wait in a collective)."""
    comm = args.comm
    print(message if comm.size == 1 else f"[rank {comm.rank}] {message}", file=sys.stderr, flush=True)
    if comm.size > 1:
        # MPI_Abort ends every rank at once, and the launcher may drop output it has not forwarded yet: give it a
        # moment to pass this message (and the other ranks' own) to the user first.
        time.sleep(ABORT_GRACE_SECONDS)
        comm.abort(code)


if __name__ == "__main__":
    sys.exit(main())
