"""The AWD-LSTM regularisers: DropConnect on W_h (weight_drop), locked dropout, embedding dropout and tied
weights: exact gradients with their masks held fixed, on every implementation that runs the stack, and each
option tested to change what it should."""

from __future__ import annotations

import numpy as np
import pytest

import lstmx
from lstmx.dispatch import registry
from lstmx.gradcheck import compare, finite_difference

from .helpers import host, weighted_sum
from .test_gradients import assert_rows_pass


@pytest.mark.parametrize("options", [dict(weight_drop=0.5), dict(weight_drop=0.3, locked_dropout=True, dropout=0.4,
                                                                   bidirectional=True)],
                         ids=["weight-drop", "weight-drop-locked-bidirectional"])
def test_lstm_regularisers_have_exact_gradients_on_every_implementation(backend, options):
    rng = np.random.default_rng(4)
    model = lstmx.LSTM(2, 3, 2, backend=backend, dtype="float64", seed=4, **options)
    dirs = model.stack.directions
    inputs = {**model.state_dict(), "x": rng.standard_normal((4, 2, 2))}
    weights = [rng.standard_normal((4, 2, 3 * dirs))]
    for impl in registry.available_layer_impls(backend, model.dtype, False, (2, 3)):
        def run(values):
            model.params = {name: backend.asarray(values[name]) for name in model.params}
            model.dropout_rng = np.random.default_rng(9)  # the same masks at every evaluation
            y, _, cache = model.forward(backend.asarray(values["x"]), impl=impl.name)
            return (y,), cache

        _, cache = run(inputs)
        assert cache.weight_masks is not None and cache.impl == impl.name
        dx, _, grads = model.backward(backend.asarray(weights[0]), cache)
        numeric = finite_difference(lambda values: weighted_sum(backend, run(values)[0], weights), inputs)
        assert_rows_pass(compare({**grads, "x": dx}, numeric))


def test_language_model_regularisers_have_exact_gradients(backend):
    rng = np.random.default_rng(5)
    model = lstmx.LanguageModel(7, 3, 5, 2, dropout=0.3, proj_size=3, weight_drop=0.4, locked_dropout=True,
                                embedding_dropout=0.3, tie_weights=True, backend=backend, dtype="float64", seed=5)
    assert "head.weight" not in model.params
    tokens, targets = backend.asarray(rng.integers(0, 7, (4, 3))), backend.asarray(rng.integers(0, 7, (4, 3)))

    def run(values, grads):
        model.params = {name: backend.asarray(values[name]) for name in model.params}
        model.dropout_rng = np.random.default_rng(2)
        return model.loss(tokens, targets, grads=grads)

    host_params = model.state_dict()
    output = run(host_params, True)
    numeric = finite_difference(lambda values: float(host(run(values, False).loss)), host_params)
    assert_rows_pass(compare(output.grads, numeric))


def test_weight_drop_masks_the_recurrent_rows_only_in_training_and_anew_each_forward():
    model = lstmx.LSTM(4, 50, weight_drop=0.4, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((3, 2, 4))
    _, _, first = model.forward(x)
    _, _, second = model.forward(x)
    mask = host(first.weight_masks[0][0])
    assert mask.shape == (50, 200)  # W_h's rows only: the input rows are never dropped
    assert abs(np.mean(mask == 0) - 0.4) < 0.02 and np.allclose(np.unique(mask[mask != 0]), 1 / 0.6)
    assert not np.array_equal(mask, host(second.weight_masks[0][0]))  # one mask per forward
    model.eval()
    assert model.forward(x)[2].weight_masks is None
    np.testing.assert_allclose(model.forward(x)[0], lstmx.LSTM(4, 50, dtype="float64", seed=0).forward(x)[0])


def test_locked_dropout_keeps_one_mask_over_time():
    model = lstmx.LanguageModel(5, 3, 4, 2, dropout=0.5, locked_dropout=True, seed=1)
    for mask in model.draw_dropout_masks(20, 6):
        assert mask.shape == (1, 6, 4)  # broadcast over the 20 steps
    loose = lstmx.LanguageModel(5, 3, 4, 2, dropout=0.5, seed=1).draw_dropout_masks(20, 6)
    assert all(m.shape == (20, 6, 4) for m in loose)


def test_embedding_dropout_drops_whole_tokens_and_tied_weights_share_one_matrix():
    """A training forward equals an evaluation forward of the table with whole rows zeroed and the rest scaled by
    1/(1 − p); the tied head is the embedding's transpose (wrong: a mask per position, no scaling, a head of its
    own)."""
    model = lstmx.LanguageModel(40, 6, 6, embedding_dropout=0.5, tie_weights=True, seed=2, dtype="float64")
    tokens = np.tile(np.arange(40)[:, None], (1, 2))
    logits, _, cache = model.forward(tokens)
    mask = host(cache.embedding_mask)
    assert mask.shape == (40, 1) and 0 < np.mean(mask == 0) < 1 and set(np.unique(mask)) == {0.0, 2.0}
    table = host(model.params["embedding.weight"])
    np.testing.assert_array_equal(host(model._head_weight()), table.T)  # tied: one matrix
    # the head of the training forward reads the unmasked table (only the embedding lookup is dropped)
    vectors_model = lstmx.LanguageModel(40, 6, 6, seed=2, dtype="float64").eval()
    vectors_model.load_state_dict({**{k: host(v) for k, v in model.params.items()}, "head.weight": table.T,
                                   "embedding.weight": table})
    masked_lookup, _, _ = vectors_model.stack.forward(vectors_model, vectors_model.backend.asarray(
        (table * mask)[tokens]), None, None, (), None)
    expected = masked_lookup @ table.T + host(model.params["head.bias"])
    np.testing.assert_allclose(logits, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="tie_weights needs embedding_size = the LSTM's output size"):
        lstmx.LanguageModel(10, 3, 5, tie_weights=True)


def test_the_awd_switch_sets_the_regularisers_and_flags_reach_the_model(tmp_path):
    from lstmx.training.checkpoint import load_model
    from lstmx.cli import main

    from .test_checkpoint import TEXT

    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    base = ["train", str(text), "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--hidden-size", "6",
            "--embedding-size", "4", "--no-progress", "--sample-length", "0"]
    assert main(base + ["--awd", "--proj-size", "4", "--out", str(tmp_path / "a")]) == 0
    model, _ = load_model(tmp_path / "a" / "last.npz")
    assert (model.weight_drop, model.embedding_dropout, model.locked_dropout, model.tie_weights) == (0.5, 0.1, True,
                                                                                                       True)
    assert model.dropout == 0.4
    assert main(base + ["--awd", "--weight-drop", "0.2", "--proj-size", "4", "--out", str(tmp_path / "b")]) == 0
    assert load_model(tmp_path / "b" / "last.npz")[0].weight_drop == 0.2  # a flag given beats the switch


@pytest.mark.parametrize("impl", ["generic", "numba"])
def test_the_same_seed_trains_to_bitwise_the_same_weights_with_every_random_regulariser(tmp_path, impl):
    """Two training runs from one seed draw the same dropout, zoneout, recurrent-dropout, weight-drop and
    embedding-dropout masks (a seeded host generator each) and end with bitwise equal weights, on the same
    machine and path; a third run from another seed does not."""
    from lstmx.training.data import CharVocab, split_ids
    from lstmx.training.loop import TrainConfig, Trainer

    if registry.layer_impl(impl).refuses(registry.Call(lstmx.get_backend("numpy"), np.float32, False)) is not None:
        pytest.skip(f"{impl} does not run here")
    text = "the quick brown fox jumps over the lazy dog. " * 30
    vocab = CharVocab.from_text(text)
    split = split_ids(vocab.encode(text), 0.2)

    def trained(seed, folder):
        model = lstmx.LanguageModel(len(vocab), 8, 16, 2, dropout=0.3, zoneout=(0.2, 0.1), recurrent_dropout=0.2,
                                    weight_drop=0.3, embedding_dropout=0.1, seed=seed)
        config = TrainConfig(steps=5, batch_size=4, seq_len=8, eval_every=10**6, log_every=10**6, sample_length=0,
                             seed=seed)
        with lstmx.use_layer_impl(impl):
            Trainer(model, vocab, split, config, tmp_path / folder, progress=False, echo=lambda _: None).run()
        return model.state_dict()

    first, second, other = trained(0, "a"), trained(0, "b"), trained(1, "c")
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value, err_msg=name)
    assert any(not np.array_equal(other[name], value) for name, value in first.items())
