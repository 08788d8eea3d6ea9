"""The data and sampling modules' doors and edge cases, exactly: each message, each boundary, each default (the
tests that kill what the mutation session found alive in lstmx.training.data and lstmx.nn.sample)."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lstmx import LanguageModel
from lstmx.training.data import (CharVocab, StreamBatches, VocabularyError, WordVocab, default_corpus, split_ids,
                                 text_fingerprint, vocab_from_config, windows_per_epoch)
from lstmx.backend import get_backend
from lstmx.options import OptionError
from lstmx.nn.sample import generate, next_token_distribution, sample

NUMPY = get_backend("numpy")


def test_vocabulary_doors_say_exactly_what_is_wrong():
    assert len(CharVocab(["a"])) == 1  # one symbol is a vocabulary
    with pytest.raises(VocabularyError, match=r"^a vocabulary needs at least one symbol \(is the text empty\?\)$"):
        CharVocab([])
    with pytest.raises(VocabularyError, match="^vocabulary symbols must be unique$"):
        CharVocab(["a", "a"])
    with pytest.raises(VocabularyError, match="^cannot build a vocabulary from empty text$"):
        CharVocab.from_text("")
    with pytest.raises(VocabularyError, match="^cannot build a vocabulary from text with no words$"):
        WordVocab.from_text("   ")
    with pytest.raises(VocabularyError, match="the unknown-word token '<unk>' must be one of the symbols"):
        WordVocab(["a"], unk="<unk>")
    with pytest.raises(VocabularyError, match="^unknown vocabulary level 'bytes'$"):
        vocab_from_config({"level": "bytes", "symbols": ["a"]})
    assert all(isinstance(s, str) for s in WordVocab.from_text("a b a").symbols)  # no unk: nothing appended


def test_encode_and_decode_keep_their_types_and_shapes():
    vocab = CharVocab.from_text("abc")
    ids = vocab.encode("cab")
    assert ids.dtype == np.int64 and list(ids) == [2, 0, 1]
    assert vocab.decode(np.array([[0, 1], [2, 0]])) == "abca"  # any shape, read in order
    words = WordVocab.from_text("a b\nc")
    assert words.decode(words.encode("a b\nc")) == "a b\nc"
    assert words.decode(words.encode("a\n b")) == "a\nb" and words.decode(words.encode("a \nb")) == "a\nb"
    assert words.decode(np.array([[words.index["a"]], [words.index["\n"]], [words.index["b"]]])) == "a\nb"


@pytest.mark.parametrize("validation,test", [(1.0, 0.0), (1.5, 0.0), (0.0, 1.0), (0.0, 1.5), (0.5, 0.5)])
def test_split_fractions_are_refused_at_each_bound(validation, test):
    with pytest.raises(ValueError, match=r"^validation and test fractions must be in \[0, 1\) and sum to less than 1"):
        split_ids(np.arange(100), validation, test)


def test_windows_and_streams_at_their_bounds():
    assert windows_per_epoch(21, 2, 1) == 9  # streams of 10 tokens: 9 targets each, one step per window
    assert windows_per_epoch(21, 2, 3) == 3
    batches = StreamBatches(NUMPY, np.arange(4, dtype=np.int32), 2, 1)  # streams of exactly 2 tokens, T = 1
    assert batches.streams.dtype == np.int64 and len(batches) == 1
    for batch, steps in ((0, 5), (2, 0)):
        with pytest.raises(ValueError, match="^batch_size and steps must be at least 1$"):
            StreamBatches(NUMPY, np.arange(10), batch, steps)
    with pytest.raises(ValueError, match="3 tokens are too few for 2 streams: each needs at least 2 tokens"):
        StreamBatches(NUMPY, np.arange(3), 2, 1)


def test_a_text_fingerprint_is_the_first_32_hex_digits_of_its_utf8_sha256():
    text = "día"
    assert text_fingerprint(text) == "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def test_the_default_corpus_is_the_ascii_standard_library_less_tests_and_idlelib():
    corpus = default_corpus(300_000)
    assert len(corpus) == 300_000 and corpus.isascii()
    root = Path(sysconfig.get_paths()["stdlib"])
    first = [p for p in sorted(root.rglob("*.py")) if not {"test", "tests", "idlelib", "lib2to3"} & set(
        p.relative_to(root).parts)][:2]
    texts = [p.read_text(encoding="ascii") for p in first]
    assert corpus.startswith(texts[0] + texts[1][:100])  # files joined with nothing between them, in path order
    excluded = [root / "test" / "test_grammar.py", root / "idlelib" / "editor.py", root / "lib2to3" / "main.py"]
    for path in excluded:
        if path.exists():
            assert path.read_text(encoding="utf-8", errors="replace")[200:400] not in corpus


def test_the_default_corpus_says_where_it_looked_when_it_finds_nothing(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    with pytest.raises(RuntimeError, match=rf"no Python source found under {tmp_path} \(Python "
                                           rf"{sys.version.split()[0]}\)"):
        default_corpus(100)


def test_next_token_distribution_is_float64_and_keeps_exactly_top_k():
    logits = np.array([0.1, 2.0, -1.0, 1.5, 0.7], dtype=np.float32)
    p = next_token_distribution(logits, 1.0, 2)
    assert p.dtype == np.float64 and np.count_nonzero(p) == 2 and p[1] > p[3] > 0
    np.testing.assert_allclose(p[[1, 3]], np.exp([2.0, 1.5]) / np.exp([2.0, 1.5]).sum(), rtol=1e-6)
    full = next_token_distribution(logits, 2.0, 5)  # top_k = V: every token stays
    np.testing.assert_allclose(full, np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(), rtol=1e-6)


def test_sampling_doors_and_defaults():
    vocab = CharVocab.from_text("abcd")
    model = LanguageModel(4, 3, 4, seed=0)
    with pytest.raises(OptionError, match="length must be an integer ≥ 0"):
        sample(model, vocab, "a", -1)
    with pytest.raises(OptionError, match="num_samples must be an integer ≥ 1"):
        list(generate(model, vocab, "a", 3, num_samples=0))
    with pytest.raises(ValueError, match="^vocabulary has 3 entries but the model expects 4$"):
        sample(model, CharVocab.from_text("abc"), "a", 3)
    text = sample(model, vocab, "a")
    assert len(text) == 200 and text == sample(model, vocab, "a", 200, temperature=1.0, seed=0)


def test_the_default_corpus_takes_exactly_the_ascii_sources_outside_the_skipped_folders(tmp_path, monkeypatch):
    """On a made-up standard library: every skipped folder left out, a non-ASCII file left out (not a stop), the
    files joined in path order with nothing between them, cut at max_chars."""
    files = {"a_first.py": "A" * 5, "b/test/t.py": "T", "b/tests/t.py": "U", "c/idlelib/i.py": "I",
             "d/lib2to3/l.py": "L", "e/site-packages/s.py": "S", "f/dist-packages/d.py": "D",
             "g/__pycache__/p.py": "P", "h_accents.py": "é", "i_last.py": "Z" * 5, "j/ok.py": "K" * 5}
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    assert default_corpus(100) == "AAAAAZZZZZKKKKK"
    assert default_corpus(7) == "AAAAAZZ"
    assert default_corpus(6) == "AAAAAZ"  # one file is not enough: the running total starts at 0
    assert default_corpus(5) == "AAAAA"


def test_generation_carries_the_state_from_token_to_token_and_leaves_the_mode_as_it_found_it():
    """The sampler's tokens are those of a reference loop written here: the prime read once, then each drawn
    token fed with the state the last step left; the prime defaults to a newline when the vocabulary has one
    (else its first symbol); a model in training mode is back in training mode afterwards."""
    vocab = CharVocab.from_text("ab\ncd")
    model = LanguageModel(len(vocab), 3, 5, seed=3, dtype="float64")
    drawn = sample(model, vocab, "", 12, temperature=1.3, top_k=3, seed=4)
    assert model.training  # put back

    rng = np.random.default_rng(4)
    model.eval()
    logits, state = model.infer(np.array([[vocab.index["\n"]]]))
    expected = []
    for _ in range(12):
        p = next_token_distribution(np.asarray(logits[-1, 0]), 1.3, 3)
        token = int(rng.choice(p.size, p=p))
        expected.append(token)
        logits, state = model.infer(np.array([[token]]), state)
    model.train()
    assert drawn == vocab.decode(expected)
    no_newline = CharVocab.from_text("xyz")
    other = LanguageModel(3, 3, 5, seed=3, dtype="float64")
    assert sample(other, no_newline, "", 8, greedy=True) == sample(other, no_newline, "x", 8, greedy=True)
    words = WordVocab.from_text("b\na")
    assert words.decode(np.array([words.index["\n"], words.index["b"]])) == "\nb"  # a leading newline, no space
    assert list(generate(model, vocab, "a", 2, greedy=True, num_samples=2))[0][0] == \
        list(generate(model, vocab, "a", 2, greedy=True))[0][0]


def test_generate_checks_its_arguments_and_has_samples_defaults(monkeypatch):
    vocab = CharVocab(["a", "\n", "b"])  # the newline is not the first symbol here
    model = LanguageModel(3, 3, 4, seed=0)
    primes = []
    real = CharVocab.encode
    monkeypatch.setattr(CharVocab, "encode", lambda self, text: primes.append(text) or real(self, text))
    steps = list(generate(model, vocab))
    assert len(steps) == 200 and primes == ["\n"]  # defaults: 200 tokens after a newline
    assert [s[0] for s in steps] == [s[0] for s in generate(model, vocab, "\n", 200, temperature=1.0, seed=0)]
    no_newline = CharVocab(["y", "x"])
    list(generate(LanguageModel(2, 3, 4, seed=0), no_newline, "", 1))
    assert primes[-1] == "y"  # the first symbol
    with pytest.raises(OptionError, match="top_k must be an integer ≥ 1"):
        list(generate(model, vocab, "a", 2, top_k=0))
    assert len(list(generate(model, vocab, "a", 2, greedy=True, temperature=0.0))) == 2  # greedy needs none


def test_top_k_keeps_the_k_largest_of_many():
    logits = np.random.default_rng(3).standard_normal(1000)  # enough that a partition is not a full sort
    p = next_token_distribution(logits, 1.0, 3)
    assert set(np.flatnonzero(p)) == set(np.argsort(logits)[-3:])
