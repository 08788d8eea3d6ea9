"""Vocabularies, splits and truncated-BPTT batching."""

from __future__ import annotations

import numpy as np
import pytest

from lstmx.training.data import CharVocab, StreamBatches, VocabularyError, WordVocab, default_corpus, split_ids, vocab_from_config

from .helpers import host


def test_char_round_trip_and_unknown_character():
    vocab = CharVocab.from_text("hello world\n")
    assert len(vocab) == 9
    assert vocab.decode(vocab.encode("low\n")) == "low\n"
    with pytest.raises(VocabularyError, match=r"'z' \(at position 2\) is not in the vocabulary of 9 chars"):
        vocab.encode("lozw")
    assert vocab_from_config(vocab.to_config()).symbols == vocab.symbols


def test_empty_text_is_refused():
    with pytest.raises(VocabularyError, match="empty text"):
        CharVocab.from_text("")


def test_word_vocab_with_and_without_unk():
    text = "the cat sat.\nthe dog sat.\n"
    strict = WordVocab.from_text(text)
    assert strict.decode(strict.encode("the cat sat.")) == "the cat sat ."
    with pytest.raises(VocabularyError, match="'bird'"):
        strict.encode("the bird")
    lenient = WordVocab.from_text(text, min_count=2, unk="<unk>")
    assert "cat" not in lenient.index
    assert lenient.decode(lenient.encode("the bird sat")) == "the <unk> sat"
    restored = vocab_from_config(lenient.to_config())
    assert restored.unk == "<unk>" and restored.symbols == lenient.symbols


def test_split_is_contiguous_and_complete():
    ids = np.arange(100)
    split = split_ids(ids, 0.1, 0.05)
    assert (len(split.train), len(split.validation), len(split.test)) == (85, 10, 5)
    np.testing.assert_array_equal(np.concatenate(split), ids)
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_ids(ids, 0.6, 0.5)


@pytest.mark.parametrize("batch,steps", [(4, 5), (3, 7), (1, 100)])
def test_batches_cover_every_target_once_per_epoch(backend, batch, steps):
    ids = np.arange(103)
    batches = StreamBatches(backend, ids, batch, steps)
    length = 103 // batch
    targets, inputs = [], []
    for window in batches:
        assert tuple(window.inputs.shape) == tuple(window.targets.shape)
        assert window.inputs.shape[0] <= steps and window.inputs.shape[1] == batch
        targets.append(host(window.targets))
        inputs.append(host(window.inputs))
        np.testing.assert_array_equal(host(window.targets)[:-1], host(window.inputs)[1:])
    targets = np.concatenate(targets).T  # (B, L - 1): stream by stream
    expected = ids[: length * batch].reshape(batch, length)[:, 1:]
    np.testing.assert_array_equal(targets, expected)
    assert len(np.unique(targets)) == targets.size  # each token a target once
    assert 103 - length * batch < batch  # only the remainder of the split into streams is dropped


def test_too_little_text_for_the_batch():
    with pytest.raises(ValueError, match="too few for 8 streams"):
        StreamBatches(__import__("lstmx").get_backend("numpy"), np.arange(10), 8, 4)


def test_default_corpus_is_real_python_source():
    text = default_corpus(200_000)
    assert len(text) == 200_000
    assert "def " in text and "import " in text
    assert len(set(text)) < 128
