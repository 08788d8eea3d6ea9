"""Command line: ``lstmx train``, ``lstmx sample`` and ``lstmx check``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .backend import BACKEND_NAMES, BackendError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lstmx", description="Train and sample LSTM language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a language model on a text file (default: Python's own stdlib source)")
    train.add_argument("text", nargs="?", help="UTF-8 text file; omitted: the embedded default corpus")
    train.add_argument("--backend", default="numpy", choices=BACKEND_NAMES)
    train.add_argument("--level", default="char", choices=("char", "word"))
    train.add_argument("--unk", action="store_true", help="word level: map words seen fewer than --min-count times to <unk>")
    train.add_argument("--min-count", type=int, default=1)
    train.add_argument("--max-chars", type=int, default=1_000_000, help="use at most this many characters of the text")
    train.add_argument("--validation", type=float, default=0.1, help="fraction of the text held out for validation")
    train.add_argument("--test", type=float, default=0.0, help="fraction held out for a final test evaluation")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000; on --resume: the saved total)")
    train.add_argument("--epochs", type=float, default=None, help="train for this many passes instead of --steps")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--seq-len", type=int, default=64, help="truncated-BPTT window T")
    train.add_argument("--embedding-size", type=int, default=64)
    train.add_argument("--hidden-size", type=int, default=256)
    train.add_argument("--num-layers", type=int, default=1)
    train.add_argument("--dropout", type=float, default=0.0)
    train.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    train.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "rmsprop"))
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--weight-decay", type=float, default=None, help="default: the optimizer's own (AdamW 1e-2, others 0)")
    train.add_argument("--momentum", type=float, default=0.0, help="SGD/RMSprop momentum")
    train.add_argument("--schedule", default="constant", choices=("constant", "step", "exponential", "cosine"))
    train.add_argument("--warmup-steps", type=int, default=0)
    train.add_argument("--clip-norm", type=float, default=5.0, help="global-norm gradient clip (0: off)")
    train.add_argument("--clip-value", type=float, default=None, help="element-wise gradient clip")
    train.add_argument("--eval-every", type=int, default=200)
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--sample-length", type=int, default=200)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default="runs/default", help="folder for log.jsonl, loss.png and last.npz")
    train.add_argument("--resume", default=None, help="checkpoint to continue from (written by a previous run)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    sample = commands.add_parser("sample", help="generate text from a checkpoint")
    sample.add_argument("checkpoint")
    sample.add_argument("--prime", default="", help="text the model reads before generating")
    sample.add_argument("--length", type=int, default=300)
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--greedy", action="store_true")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--backend", default="numpy", choices=BACKEND_NAMES)

    check = commands.add_parser("check", help="gradient check (float64) and NumPy-vs-CuPy parity on this machine")
    check.add_argument("--tolerance", type=float, default=1e-6)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from . import LanguageModel
    from .checkpoint import load as load_checkpoint
    from .data import CharVocab, WordVocab, default_corpus, split_ids, vocab_from_config
    from .train import TrainConfig, Trainer

    if args.text is None:
        text, source = default_corpus(args.max_chars), "the Python standard library's source (embedded default corpus)"
    else:
        path = Path(args.text)
        if not path.is_file():
            raise FileNotFoundError(f"text file {path} does not exist")
        text, source = path.read_text(encoding="utf-8")[: args.max_chars], str(path)
    if not text.strip():
        raise ValueError(f"the text from {source} is empty")

    resumed = load_checkpoint(args.resume) if args.resume else None
    if resumed is not None:
        if not isinstance(resumed.meta.get("vocab"), dict):
            raise ValueError(f"{args.resume} holds no vocabulary; it cannot resume training")
        vocab = vocab_from_config(resumed.meta["vocab"])
    elif args.level == "char":
        vocab = CharVocab.from_text(text)
    else:
        vocab = WordVocab.from_text(text, args.min_count, "<unk>" if args.unk else None)
    split = split_ids(vocab.encode(text), args.validation, args.test)
    print(f"lstmx: {len(text):,} characters from {source}; {len(vocab)} {vocab.level} tokens; "
          f"{len(split.train):,} train / {len(split.validation):,} validation tokens", file=sys.stderr)

    steps = _steps(args, len(split.train))
    progress = not args.no_progress
    if resumed is not None:
        trainer = Trainer.resume(resumed, split, args.out, backend=args.backend, steps=steps, progress=progress)
    else:
        config = TrainConfig(steps=steps or 1000, batch_size=args.batch_size, seq_len=args.seq_len,
                             optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                             momentum=args.momentum, schedule=args.schedule, warmup_steps=args.warmup_steps,
                             clip_norm=args.clip_norm or None, clip_value=args.clip_value, eval_every=args.eval_every,
                             log_every=args.log_every, sample_length=args.sample_length, seed=args.seed)
        model = LanguageModel(len(vocab), args.embedding_size, args.hidden_size, args.num_layers, args.dropout,
                              backend=args.backend, dtype=args.dtype, seed=args.seed)
        trainer = Trainer(model, vocab, split, config, args.out, progress=progress)
    print(f"lstmx: {trainer.model.num_parameters():,} parameters on {trainer.model.backend.name}; "
          f"training to step {trainer.config.steps} (from step {trainer.step}); writing to {args.out}", file=sys.stderr)
    records = trainer.run()
    first = next((r["train_loss"] for r in records if "train_loss" in r), None)
    last = next((r["train_loss"] for r in reversed(records) if "train_loss" in r), None)
    if first is not None:
        print(f"lstmx: train loss {first:.3f} → {last:.3f} nats/token; checkpoint {Path(args.out) / 'last.npz'}; "
              f"curve {Path(args.out) / 'loss.png'}", file=sys.stderr)
    if len(split.test):
        _report_test(trainer, split.test)
    return 0


def _steps(args: argparse.Namespace, train_tokens: int) -> int | None:
    from .data import windows_per_epoch

    if args.epochs is None:
        return args.steps
    return max(1, int(round(args.epochs * windows_per_epoch(train_tokens, args.batch_size, args.seq_len))))


def _report_test(trainer, test_ids) -> None:
    from .data import StreamBatches

    config = trainer.config
    result = trainer.evaluate(StreamBatches(trainer.model.backend, test_ids, config.batch_size, config.seq_len))
    print(f"lstmx: test loss {result['val_loss']:.4f} nats/token, ppl {result['val_ppl']:.2f}", file=sys.stderr)


def run_sample(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_model
    from .sample import sample

    model, vocab = load_model(args.checkpoint, args.backend)
    if vocab is None or not hasattr(model, "vocab_size"):
        raise CheckpointError(f"{args.checkpoint} holds no language model with a vocabulary; nothing to sample")
    text = sample(model, vocab, args.prime, args.length, temperature=args.temperature, top_k=args.top_k,
                  greedy=args.greedy, seed=args.seed)
    joiner = vocab.separator if args.prime and text and not args.prime.endswith((" ", "\n")) else ""
    sys.stdout.write(args.prime + joiner + text + "\n")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from .check import run_checks

    return run_checks(tolerance=args.tolerance)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "sample": run_sample, "check": run_check}
    try:
        return handlers[args.command](args)
    except (BackendError, FileNotFoundError, ValueError, TypeError, KeyError, FloatingPointError) as error:
        print(f"lstmx {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lstmx {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
