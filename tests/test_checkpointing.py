"""Checkpointing over time (checkpoint_every = K) gives the plain backward's gradients exactly, and the inference
forward (infer) gives the forward's outputs while keeping nothing."""

from __future__ import annotations

import numpy as np
import pytest

import lstmx
from lstmx.dispatch import registry

from .helpers import host


def outputs_and_grads(model, x, lengths, impl, state=None, dy=None, dstate=None):
    y, (h, c), cache = model.forward(x, state, lengths, impl=impl)
    dx, (dh0, dc0), grads = model.backward(dy, cache, dstate)
    return {"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, **grads}


@pytest.mark.parametrize("every", [1, 3, 4, 12], ids=lambda k: f"K{k}")  # 12 steps: K that divides T and K that does not
@pytest.mark.parametrize("options", [dict(), dict(bidirectional=True, proj_size=2), dict(bidirectional=True)],
                         ids=["plain", "bidirectional-projected", "bidirectional"])
@pytest.mark.parametrize("lengths", [None, [12, 7, 1]], ids=["full", "lengths"])
def test_checkpointed_gradients_equal_the_plain_ones(backend, every, options, lengths):
    """float64, every implementation that takes the stack here: outputs, final state and every gradient equal to
    1e-12 (the same arithmetic, segment by segment)."""
    rng = np.random.default_rng(3)
    plain = lstmx.LSTM(3, 4, 2, dropout=0.3, backend=backend, dtype="float64", seed=5, **options)
    checkpointed = lstmx.LSTM(3, 4, 2, dropout=0.3, backend=backend, dtype="float64", seed=5,
                              checkpoint_every=every, **options)
    x = backend.asarray(rng.standard_normal((12, 3, 3)))
    dirs, width = plain.stack.directions, plain.stack.cell.output_size
    state = (backend.asarray(rng.standard_normal((2 * dirs, 3, width))),
             backend.asarray(rng.standard_normal((2 * dirs, 3, 4))))
    dy = backend.asarray(rng.standard_normal((12, 3, dirs * width)))
    dstate = (backend.asarray(rng.standard_normal((2 * dirs, 3, width))),
              backend.asarray(rng.standard_normal((2 * dirs, 3, 4))))
    impls = registry.available_layer_impls(backend, plain.dtype, lengths is not None, (3, 4), plain.stack.cell.kind)
    for impl in impls:
        plain.dropout_rng = np.random.default_rng(1)
        checkpointed.dropout_rng = np.random.default_rng(1)  # the same dropout masks
        expected = outputs_and_grads(plain, x, lengths, impl.name, state, dy, dstate)
        got = outputs_and_grads(checkpointed, x, lengths, impl.name, state, dy, dstate)
        for name, value in expected.items():
            reference = host(value)
            error = np.max(np.abs(host(got[name]) - reference)) / max(np.max(np.abs(reference)), 1e-300)
            assert error < 1e-12, f"{impl.name} {name}: {error:.1e}"


def test_a_checkpointed_cache_keeps_only_segment_starts():
    model = lstmx.LSTM(2, 3, checkpoint_every=5, dtype="float64")
    _, _, cache = model.forward(np.ones((12, 2, 2)))
    segments = cache.layers[0][0]
    assert segments.length == 5 and len(segments.starts) == 3  # steps 0, 5, 10
    assert cache.layer_inputs is not None
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        lstmx.LSTM(2, 3, checkpoint_every=0)


@pytest.mark.parametrize("options", [dict(), dict(bidirectional=True, proj_size=2, batch_first=True)])
def test_infer_gives_the_forwards_outputs(backend, options):
    model = lstmx.LSTM(3, 4, 2, dropout=0.5, backend=backend, dtype="float64", seed=2, **options).eval()
    x = backend.asarray(np.random.default_rng(0).standard_normal((3, 150, 3) if options else (150, 3, 3)))
    y, (h, c), _ = model.forward(x, lengths=[150, 90, 1])
    y2, (h2, c2) = model.infer(x, lengths=[150, 90, 1])
    for a, b in ((y, y2), (h, h2), (c, c2)):
        np.testing.assert_allclose(host(b), host(a), rtol=1e-12, atol=1e-14)


def test_a_language_models_evaluation_and_sampling_keep_no_cache(monkeypatch):
    """loss(grads=False) in eval mode and sample run the inference forward; their results are the forward's."""
    from lstmx.nn import stack
    from lstmx.training.data import CharVocab
    from lstmx.nn.sample import sample

    model = lstmx.LanguageModel(9, 3, 5, 2, seed=1, dtype="float64").eval()
    tokens = np.random.default_rng(1).integers(0, 9, (30, 2))
    full = model.loss(tokens[:-1], tokens[1:])  # with gradients: the caching forward
    calls = []
    real = stack.stack_forward
    monkeypatch.setattr("lstmx.nn.models.stack_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    quick = model.loss(tokens[:-1], tokens[1:], grads=False)
    assert not calls
    np.testing.assert_allclose(float(quick.loss), float(full.loss), rtol=1e-12)
    vocab = CharVocab.from_text("abcdefghi")
    assert len(sample(model, vocab, "abc", 10, seed=0)) == 10 and not calls


def test_checkpoint_every_reaches_the_model_from_the_command_line(tmp_path):
    from lstmx.training.checkpoint import load_model
    from lstmx.cli import main

    from .test_checkpoint import TEXT

    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["train", str(text), "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--hidden-size", "8",
                 "--embedding-size", "4", "--checkpoint-every", "5", "--out", str(tmp_path / "r"), "--no-progress",
                 "--sample-length", "0"]) == 0
    assert load_model(tmp_path / "r" / "last.npz")[0].checkpoint_every == 5
