"""Checkpoints: round trip, atomic writes, resume equivalence, and clear errors for bad files."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from lstmx import LanguageModel, LSTM
from lstmx.training import checkpoint as ckpt
from lstmx.training.data import CharVocab, split_ids
from lstmx.training.loop import TrainConfig, Trainer

from .helpers import host

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "pack my box with five dozen liquor jugs.\n" * 30)


def small_trainer(tmp_path, backend="numpy", steps=6, **config):
    vocab = CharVocab.from_text(TEXT)
    split = split_ids(vocab.encode(TEXT), 0.2)
    model = LanguageModel(len(vocab), 8, 16, 2, dropout=0.2, backend=backend, seed=0)
    options = {"steps": steps, "batch_size": 4, "seq_len": 8, "eval_every": 3, "log_every": 1, "sample_length": 10}
    options.update(config)
    trainer = Trainer(model, vocab, split, TrainConfig(**options), tmp_path, progress=False, echo=lambda _: None)
    return trainer, split


def test_model_round_trip(tmp_path, backend):
    model = LanguageModel(12, 4, 5, 2, backend=backend, seed=3)
    vocab = CharVocab(list("abcdefghijkl"))
    path = ckpt.save_model(tmp_path / "m.npz", model, vocab)
    loaded, loaded_vocab = ckpt.load_model(path, backend)
    assert loaded_vocab.symbols == vocab.symbols
    assert loaded.config() == model.config()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(host(loaded.params[name]), value)
    with np.load(path, allow_pickle=False) as archive:  # readable without pickle
        assert "params/lstm.weight_l1" in archive.files


def test_lstm_round_trip_across_backends(tmp_path, backend):
    model = LSTM(3, 4, 2, backend="numpy", seed=1)
    path = ckpt.save_model(tmp_path / "lstm.npz", model)
    loaded, vocab = ckpt.load_model(path, backend)
    assert vocab is None and loaded.backend.name == backend.name
    np.testing.assert_array_equal(host(loaded.params["weight_l1"]), model.state_dict()["weight_l1"])


def test_resume_gives_the_same_losses(tmp_path):
    """On NumPy, k steps + save + load + k steps equals 2k uninterrupted steps, loss for loss."""
    straight, _ = small_trainer(tmp_path / "straight", steps=8)
    straight_losses = [r["train_loss"] for r in straight.run() if "train_loss" in r]

    first, split = small_trainer(tmp_path / "first", steps=4)
    first_losses = [r["train_loss"] for r in first.run() if "train_loss" in r]
    resumed = Trainer.resume(tmp_path / "first" / "last.npz", split, tmp_path / "second", steps=8,
                             progress=False, echo=lambda _: None)
    assert resumed.step == 4 and resumed.state is not None
    second_losses = [r["train_loss"] for r in resumed.run() if "train_loss" in r]
    assert first_losses + second_losses == straight_losses
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(host(resumed.model.params[name]), value)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer, _ = small_trainer(tmp_path)
    path = trainer.save(tmp_path / "last.npz")
    before = path.read_bytes()

    def broken_savez(handle, **arrays):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz"]  # no temporary file left behind


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    trainer, _ = small_trainer(tmp_path, steps=10)
    trainer.config.steps = 3
    trainer.run()
    good = (tmp_path / "last.npz").read_bytes()
    trainer.config.steps = 10
    trainer.model.params["head.bias"] = trainer.model.params["head.bias"] * np.nan
    with pytest.raises(FloatingPointError, match=r"training loss became nan at step 4; the last good checkpoint is"):
        trainer.run()
    assert (tmp_path / "last.npz").read_bytes() == good


def test_corrupt_truncated_and_foreign_files(tmp_path):
    trainer, _ = small_trainer(tmp_path)
    good = trainer.save(tmp_path / "good.npz").read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated.npz is not a readable lstmx checkpoint"):
        ckpt.load(truncated)

    corrupt = tmp_path / "corrupt.npz"
    flipped = bytearray(good)
    middle = len(flipped) // 2
    flipped[middle : middle + 64] = bytes(b ^ 0xFF for b in flipped[middle : middle + 64])
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ckpt.CheckpointError, match="corrupt.npz"):
        ckpt.load(corrupt)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(ckpt.CheckpointError, match="not an lstmx checkpoint"):
        ckpt.load(foreign)

    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ckpt.CheckpointError, match="notes.npz"):
        ckpt.load(text)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load(tmp_path / "missing.npz")

    for path in (truncated, corrupt, foreign, text):
        before = path.read_bytes()
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load_model(path)
        assert path.read_bytes() == before


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **{ckpt.META_KEY: np.frombuffer(b'{"format": "lstmx-checkpoint", "version": 1}', np.uint8),
                      "params/x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ckpt.CheckpointError, match="pickled.npz"):
        ckpt.load(path)


def test_checkpoint_with_wrong_shapes(tmp_path):
    model = LanguageModel(5, 3, 4, seed=0)
    path = ckpt.save_model(tmp_path / "m.npz", model)
    checkpoint = ckpt.load(path)
    checkpoint.arrays["params/head.bias"] = np.ones(7, dtype=np.float32)
    ckpt.save(tmp_path / "bad.npz", checkpoint.meta, checkpoint.arrays)
    with pytest.raises(ckpt.CheckpointError, match=r"'head.bias' has shape \(7,\), expected \(5,\)"):
        ckpt.load_model(tmp_path / "bad.npz")


def test_model_only_checkpoint_cannot_resume(tmp_path):
    model = LanguageModel(5, 3, 4, seed=0)
    path = ckpt.save_model(tmp_path / "m.npz", model, CharVocab(list("abcde")))
    with pytest.raises(ckpt.CheckpointError, match="model-only checkpoint"):
        Trainer.resume(path, None, tmp_path)


def test_zip_members_are_checked(tmp_path):
    """The archive's CRCs catch bit flips inside an array."""
    model = LanguageModel(5, 3, 4, seed=0)
    path = ckpt.save_model(tmp_path / "m.npz", model)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("params/head.weight.npy")
    data = bytearray(path.read_bytes())
    offset = info.header_offset + 30 + len(info.filename) + 200
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.load(path)


def test_nan_gradient_with_finite_loss_stops_before_the_update(tmp_path):
    trainer, _ = small_trainer(tmp_path, steps=5)
    trainer.run()
    before = trainer.model.state_dict()
    real_loss = trainer.model.loss

    def poisoned(*args, **kwargs):
        output = real_loss(*args, **kwargs)
        grads = dict(output.grads)
        grads["head.bias"] = grads["head.bias"] * np.nan
        return output._replace(grads=grads)

    trainer.model.loss = poisoned
    trainer.config.steps = 8
    with pytest.raises(FloatingPointError, match="gradient norm became nan at step 6"):
        trainer.run()
    for name, value in before.items():
        np.testing.assert_array_equal(host(trainer.model.params[name]), value)


def test_a_renamed_member_is_refused(tmp_path):
    """Zip's CRCs cover each member's bytes, not its name: the manifest in the JSON catches a changed name."""
    path = ckpt.save_model(tmp_path / "m.npz", LanguageModel(5, 3, 4, seed=0))
    renamed = tmp_path / "renamed.npz"
    renamed.write_bytes(path.read_bytes().replace(b"params/head.bias.npy", b"params/head.bia$.npy"))
    with pytest.raises(ckpt.CheckpointError, match="manifest.*missing \\['params/head.bias'\\].*unexpected \\['params/head.bia\\$'\\]"):
        ckpt.load(renamed)


def test_a_version_1_checkpoint_without_manifest_still_loads(tmp_path):
    model = LanguageModel(5, 3, 4, seed=0)
    checkpoint = ckpt.load(ckpt.save_model(tmp_path / "m.npz", model))
    meta = {**checkpoint.meta, "version": 1}
    path = tmp_path / "v1.npz"
    np.savez(path, **{ckpt.META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)}, **checkpoint.arrays)
    loaded, _ = ckpt.load_model(path)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)


def test_checkpoints_of_format_version_2_still_load_and_compute_what_they_did():
    """Files written by the version before bidirectional and projected layers (format 2, kept in tests/data)
    load through the reader for the old format and give the outputs that version computed."""
    from pathlib import Path

    from lstmx.training.checkpoint import load, load_model

    data = Path(__file__).parent / "data"
    expected = np.load(data / "v2_outputs.npz")
    model, vocab = load_model(data / "language_model_v2.npz")
    assert load(data / "language_model_v2.npz").meta["version"] == 2 and model.proj_size == 0
    assert vocab is not None and len(vocab) == model.vocab_size
    logits, _, _ = model.forward(np.array([[0, 1], [2, 3], [4, 5]]))
    # float32 through the compiled path: its last bit depends on how the compiler rounds, not on the file
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-6, atol=1e-7)
    lstm, _ = load_model(data / "lstm_v2.npz")
    assert not lstm.bidirectional and not lstm.batch_first and lstm.dtype_name == "float64"
    y, _, _ = lstm.forward(np.ones((3, 2, 3)), impl="numpy")  # the path that version's "auto" ran in float64
    np.testing.assert_array_equal(y, expected["y"])
    np.testing.assert_allclose(lstm.forward(np.ones((3, 2, 3)))[0], expected["y"], rtol=1e-13, atol=1e-15)


def test_a_bidirectional_projected_model_round_trips_through_a_checkpoint(tmp_path):
    from lstmx import LSTM
    from lstmx.training.checkpoint import load, load_model, save_model

    model = LSTM(3, 5, 2, bidirectional=True, proj_size=2, batch_first=True, dtype="float64", seed=1)
    save_model(tmp_path / "m.npz", model)
    assert load(tmp_path / "m.npz").meta["version"] == 3
    again, _ = load_model(tmp_path / "m.npz")
    assert (again.bidirectional, again.proj_size, again.batch_first) == (True, 2, True)
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    np.testing.assert_array_equal(again.forward(x)[0], model.forward(x)[0])
