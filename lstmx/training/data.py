"""Text → token ids: character and word vocabularies, splits, and truncated-BPTT batches.

Batches follow the usual language-model layout: the token stream is cut into B parallel streams (one per batch
row), and each epoch walks them in windows of T steps, so the hidden state at the end of one window is the
right starting state for the next (carried over without gradient by the trainer).
"""

from __future__ import annotations

import hashlib

import re
import sys
import sysconfig
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from ..backend import Backend


class VocabularyError(ValueError):
    """Text that the vocabulary cannot encode, or a vocabulary that cannot be built."""


class CharVocab:
    """One token per character."""

    level = "char"
    separator = ""  # what joins decoded tokens (and a prime to generated text)

    def __init__(self, symbols: Sequence[str]) -> None:
        if len(symbols) == 0:
            raise VocabularyError("a vocabulary needs at least one symbol (is the text empty?)")
        if len(set(symbols)) != len(symbols):
            raise VocabularyError("vocabulary symbols must be unique")
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        if not text:
            raise VocabularyError("cannot build a vocabulary from empty text")
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.symbols)

    def tokenize(self, text: str) -> list[str]:
        return list(text)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64); a character outside the vocabulary is an error naming it and where it is."""
        tokens = self.tokenize(text)
        try:
            return np.fromiter((self.index[t] for t in tokens), dtype=np.int64, count=len(tokens))
        except KeyError as error:
            position = tokens.index(error.args[0])
            raise VocabularyError(
                f"{error.args[0]!r} (at position {position}) is not in the vocabulary of {len(self)} {self.level}s"
            ) from None

    def decode(self, ids: Any) -> str:
        return "".join(self.symbols[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_config(self) -> dict[str, Any]:
        return {"level": self.level, "symbols": self.symbols}


WORD_PATTERN = re.compile(r"\w+|[^\w\s]|\n")


class WordVocab(CharVocab):
    """One token per word, punctuation mark or newline; rare or unseen words map to ``unk`` when it is set."""

    level = "word"
    separator = " "

    def __init__(self, symbols: Sequence[str], unk: str | None = None) -> None:
        super().__init__(symbols)
        if unk is not None and unk not in self.index:
            raise VocabularyError(f"the unknown-word token {unk!r} must be one of the symbols")
        self.unk = unk

    @classmethod
    def from_text(cls, text: str, min_count: int = 1, unk: str | None = None) -> "WordVocab":
        words = WORD_PATTERN.findall(text)
        if not words:
            raise VocabularyError("cannot build a vocabulary from text with no words")
        kinds, counts = np.unique(np.asarray(words, dtype=object), return_counts=True)
        kept = sorted(str(w) for w, n in zip(kinds, counts) if n >= min_count)
        if unk is not None and unk not in kept:
            kept.append(unk)
        return cls(kept, unk)

    def tokenize(self, text: str) -> list[str]:
        words = WORD_PATTERN.findall(text)
        if self.unk is None:
            return words
        return [w if w in self.index else self.unk for w in words]

    def decode(self, ids: Any) -> str:
        text = " ".join(self.symbols[int(i)] for i in np.asarray(ids).reshape(-1))
        return text.replace(" \n ", "\n").replace(" \n", "\n").replace("\n ", "\n")

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "unk": self.unk}


def vocab_from_config(config: dict[str, Any]) -> CharVocab:
    if config.get("level") == "char":
        return CharVocab(config["symbols"])
    if config.get("level") == "word":
        return WordVocab(config["symbols"], config.get("unk"))
    raise VocabularyError(f"unknown vocabulary level {config.get('level')!r}")


class Split(NamedTuple):
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_ids(ids: np.ndarray, validation: float = 0.1, test: float = 0.0) -> Split:
    """Contiguous train / validation / test parts, in that order, by fraction of the tokens."""
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError("validation and test fractions must be in [0, 1) and sum to less than 1")
    n = len(ids)
    n_test = int(round(n * test))
    n_val = int(round(n * validation))
    n_train = n - n_val - n_test
    return Split(ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :])


class Window(NamedTuple):
    inputs: Any  # (T, B) token ids on the backend
    targets: Any  # (T, B) the next token of each input


def windows_per_epoch(tokens: int, batch_size: int, steps: int) -> int:
    """Windows of at most ``steps`` that cover ``tokens`` split into ``batch_size`` streams once."""
    stream_length = tokens // batch_size
    return -(-(stream_length - 1) // steps)


class StreamBatches:
    """B parallel streams of one token sequence, walked in windows of at most T steps.

    The sequence is cut into B equal contiguous streams (the last ``len % B`` tokens are dropped). Each epoch
    yields windows over every stream position once: ``ceil((L − 1) / T)`` windows, the last one possibly
    shorter, so every token of a stream but its first is a target exactly once per epoch.
    """

    def __init__(self, backend: Backend, ids: np.ndarray, batch_size: int, steps: int) -> None:
        if batch_size < 1 or steps < 1:
            raise ValueError("batch_size and steps must be at least 1")
        length = len(ids) // batch_size
        if length < 2:
            raise ValueError(
                f"{len(ids)} tokens are too few for {batch_size} streams: each needs at least 2 tokens"
            )
        self.batch_size, self.steps, self.stream_length = batch_size, steps, length
        streams = np.asarray(ids[: length * batch_size], dtype=np.int64).reshape(batch_size, length)
        self.streams = backend.asarray(np.ascontiguousarray(streams.T))  # (L, B): time-major like the model

    def __len__(self) -> int:
        return windows_per_epoch(self.stream_length * self.batch_size, self.batch_size, self.steps)

    def window(self, index: int) -> Window:
        start = index * self.steps
        stop = min(start + self.steps, self.stream_length - 1)
        return Window(self.streams[start:stop, :], self.streams[start + 1 : stop + 1, :])

    def __iter__(self) -> Iterator[Window]:
        return (self.window(k) for k in range(len(self)))


def text_fingerprint(text: str) -> str:
    """A short SHA-256 of a training text (its UTF-8 bytes): what a checkpoint keeps to tell its text from another."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def default_corpus(max_chars: int = 2_000_000) -> str:
    """The Python standard library's own source (ASCII ``.py`` files, sorted by path), up to ``max_chars``.

    Present on every machine with Python, no download. Tests, idlelib, site-packages and non-ASCII files are
    left out so the vocabulary stays near the ~100 printable ASCII characters.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
    pieces, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="ascii")
        except (UnicodeDecodeError, OSError):
            continue
        pieces.append(text)
        total += len(text)
        if total >= max_chars:
            break
    corpus = "".join(pieces)[:max_chars]
    if not corpus:
        raise RuntimeError(f"no Python source found under {root} (Python {sys.version.split()[0]})")
    return corpus
