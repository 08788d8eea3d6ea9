"""Command line: ``lstmx train``, ``sample``, ``export``, ``tune`` and ``check``; it parses, the library runs.

The flags of ``lstmx train`` are generated from the fields of :class:`lstmx.options.DataConfig`,
:class:`lstmx.options.ModelConfig` and :class:`lstmx.training.loop.TrainConfig`: one set of defaults, one line of help
each, and every value range-checked with a one-line error naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from .backend import BACKEND_NAMES, BackendError
from .dispatch import registry
from .dispatch.tuning import CACHE_VARIABLE
from .options import (NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, DataConfig, ModelConfig, OptionError, Range, Spec,
                      check_value, spec_of)
from .training.distributed import ENGINES, DistributedError, SingleProcess, communicator
from .training.run_folder import check_run_folder
from .training.workflow import implementations, run_train, say

ABORT_GRACE_SECONDS = 1.0  # how long a failing rank lets the launcher pass its message on before MPI_Abort
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
    from .training.loop import TrainConfig

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

    tune = commands.add_parser("tune", help="time the layer implementations for your sizes here; \"auto\" then "
                                            "runs the fastest",
                               description="Time one LSTM layer's training step (forward + backward) on every "
                                           "implementation \"auto\" may pick for these sizes on this machine, "
                                           "taking turns, and record the fastest in the tuning cache "
                                           f"(${CACHE_VARIABLE}, else ~/.cache/lstmx/tune.json), which \"auto\" "
                                           "reads for the same call on the same device and lstmx version.")
    tune.add_argument("--backend", default="numpy", choices=BACKEND_NAMES, help="array backend (default: numpy)")
    tune.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="(default: float32)")
    tune.add_argument("--batch-size", type=flag_type("--batch-size", POSITIVE_INT, int), required=True,
                      help="sequences per batch, as the model will run; an integer ≥ 1")
    tune.add_argument("--hidden-size", type=flag_type("--hidden-size", POSITIVE_INT, int), required=True,
                      help="LSTM units per direction; an integer ≥ 1")
    tune.add_argument("--input-size", type=flag_type("--input-size", POSITIVE_INT, int), default=None,
                      help="features per step of the timed layer; an integer ≥ 1 (default: the hidden size)")
    tune.add_argument("--proj-size", type=flag_type("--proj-size", NON_NEGATIVE_INT, int), default=0,
                      help="the LSTMP cell's projection; an integer ≥ 0, below --hidden-size (default: 0, none)")
    tune.add_argument("--cell-option", action="append", default=[], choices=registry.EVERY_OPTION,
                      help="a cell option the model uses (repeatable)")
    tune.add_argument("--lengths", action="store_true", help="the model runs batches with lengths (step masks)")
    tune.add_argument("--seq-len", type=flag_type("--seq-len", POSITIVE_INT, int), default=50,
                      help="time steps per timed call; an integer ≥ 1 (default: 50)")
    tune.add_argument("--repeats", type=flag_type("--repeats", POSITIVE_INT, int), default=5,
                      help="timed calls per implementation, taking turns; an integer ≥ 1 (default: 5)")

    check = commands.add_parser("check", help="gradient check (float64), every layer implementation against the "
                                              "generic one, and NumPy-vs-CuPy parity on this machine",
                                description="Prove on this machine that the gradients are exact (float64 finite "
                                            "differences), that every implementation agrees with the generic path, "
                                            "and that NumPy and CuPy agree; exits 1 when a row fails.")
    check.add_argument("--tolerance", type=flag_type("--tolerance", Range(0, 1, low_inclusive=False), float),
                       default=1e-6, help="largest relative gradient error that passes; a number in (0, 1] (default: 1e-06)")
    return parser


# --- lstmx sample, export, tune, check ---------------------------------------------------------------------------

def run_sample(args: argparse.Namespace) -> int:
    from .training.checkpoint import CheckpointError, load_model
    from .nn.sample import generate, samples

    model, vocab = load_model(args.checkpoint, args.backend)
    if vocab is None or not hasattr(model, "vocab_size"):
        raise CheckpointError(f"{args.checkpoint} holds no language model with a vocabulary; nothing to sample")
    options = dict(temperature=args.temperature, top_k=args.top_k, greedy=args.greedy, seed=args.seed)
    joiner = vocab.separator if args.prime and not args.prime.endswith((" ", "\n")) else ""
    with implementations(args.impl):
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
    from .training.checkpoint import load_model
    from .interop.onnx import export

    if not Path(args.checkpoint).is_file():
        raise OptionError(f"CHECKPOINT {args.checkpoint} does not exist")
    check_run_folder(Path(args.output).parent, "OUTPUT's folder")
    model, _ = load_model(args.checkpoint)
    path = export(model.eval(), args.output, with_state=args.with_state, with_lengths=args.with_lengths)
    say(f"wrote {path} ({type(model).__name__}, {model.num_parameters():,} parameters)")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from .backend import get_backend
    from .dispatch.tuning import tune
    from .nn.layers.cell import acting_options

    if args.proj_size >= args.hidden_size:
        raise OptionError(f"--proj-size must be below --hidden-size ({args.hidden_size}), got {args.proj_size} "
                          "(0: no projection)")
    options = acting_options(args.cell_option)  # a step's cost does not depend on the values
    result = tune(get_backend(args.backend), np.dtype(args.dtype), args.batch_size, args.hidden_size,
                  features=args.input_size, steps=args.seq_len, proj_size=args.proj_size, options=options,
                  masked=args.lengths, repeats=args.repeats)
    key = result.key
    say(f"{key.device}, {key.backend} {key.dtype}, {key.cell}" + (f" with {', '.join(key.options)}" if key.options
                                                                  else "")
        + f", batch {key.batch}, hidden {key.hidden}{', lengths' if key.masked else ''}: ms per training step of "
        f"T {args.seq_len}")
    for name, ms in sorted(result.ms.items(), key=lambda item: item[1]):
        say(f"  {name:<16} {ms:9.2f}" + ("   fastest" if name == result.impl else ""))
    say(f"\"auto\" now runs {result.impl} for this call here (recorded in {result.path})")
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
    handlers = {"train": run_train, "sample": run_sample, "export": run_export, "tune": run_tune, "check": run_check}
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
