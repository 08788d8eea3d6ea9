"""Every public entry point fed bad input: a clear exception type and message, and no file changed on disk."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmx
from lstmx import LSTM, LanguageModel, MixedBackendError
from lstmx.training import checkpoint as ckpt
from lstmx.training.data import CharVocab, VocabularyError
from lstmx.nn.sample import sample

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODEL = LSTM(3, 4, 2, seed=0)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=5))
def test_any_wrong_shape_names_the_expected_shape(shape):
    x = np.ones(shape, dtype=np.float32)
    if len(shape) == 3 and shape[2] == 3:
        MODEL.forward(x)  # the one valid layout
        return
    with pytest.raises(ValueError, match=r"x must have .*\(\*, \*, 3\)"):
        MODEL.forward(x)


@SETTINGS
@given(dtype=st.sampled_from(["int8", "int16", "int32", "int64", "uint8", "bool", "float64", "float16"]))
def test_any_wrong_dtype_is_a_type_error(dtype):
    with pytest.raises(TypeError, match="x (must be a floating-point array|has dtype)"):
        MODEL.forward(np.ones((2, 1, 3), dtype=dtype))


@SETTINGS
@given(t=st.integers(0, 2), b=st.integers(0, 1), f=st.integers(0, 2), bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_or_inf_anywhere_is_found(t, b, f, bad):
    x = np.ones((3, 2, 3), dtype=np.float32)
    x[t, b, f] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        MODEL.forward(x, check_finite=True)
    h = np.zeros((2, 2, 4), dtype=np.float32)
    h[b, b, f] = bad
    with pytest.raises(ValueError, match="state contains NaN or Inf"):
        MODEL.forward(np.ones((3, 2, 3), dtype=np.float32), (h, np.zeros_like(h)), check_finite=True)


def test_mixed_backends_everywhere():
    import array_api_strict as strict

    numpy_model = LSTM(3, 4)
    strict_model = LSTM(3, 4, backend="array_api_strict")
    x_np = np.ones((2, 1, 3), dtype=np.float32)
    x_strict = strict.asarray(x_np)
    with pytest.raises(MixedBackendError, match="x is a numpy array but the model lives on array_api_strict"):
        strict_model.forward(x_np)
    with pytest.raises(MixedBackendError, match="x is a array_api_strict array"):
        numpy_model.forward(x_strict)
    zeros = strict.zeros((1, 1, 4), dtype=strict.float32)
    with pytest.raises(MixedBackendError, match="state h is a array_api_strict array"):
        numpy_model.forward(x_np, (zeros, zeros))
    y, _, cache = numpy_model.forward(x_np)
    with pytest.raises(MixedBackendError, match="dy is a array_api_strict array"):
        numpy_model.backward(strict.asarray(np.asarray(y)), cache)
    lm = LanguageModel(5, 2, 3)
    with pytest.raises(MixedBackendError, match="tokens is a array_api_strict array"):
        lm.forward(strict.asarray(np.zeros((2, 1), dtype=np.int64)))


@SETTINGS
@given(text=st.text(min_size=1, max_size=20))
def test_unknown_characters_are_named(text):
    vocab = CharVocab(list("abc"))
    unknown = [ch for ch in text if ch not in "abc"]
    if not unknown:
        assert vocab.decode(vocab.encode(text)) == text
        return
    with pytest.raises(VocabularyError, match=re.escape(repr(unknown[0]))):
        vocab.encode(text)


def test_empty_inputs():
    with pytest.raises(VocabularyError, match="empty text"):
        CharVocab.from_text("")
    with pytest.raises(ValueError, match="empty sequence"):
        LanguageModel(3, 2, 2).forward(np.zeros((0, 1), dtype=np.int64))
    vocab = CharVocab(list("ab"))
    assert sample(LanguageModel(2, 2, 2), vocab, "a", 0) == ""
    with pytest.raises(ValueError, match="vocabulary has 2 entries but the model expects 3"):
        sample(LanguageModel(3, 2, 2), vocab, "a", 5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.npz"
    model = LanguageModel(6, 3, 4, 2, seed=0)
    ckpt.save_model(path, model, CharVocab(list("abcdef")))
    return path.read_bytes(), ckpt.load(path)


@SETTINGS
@given(cut=st.floats(0.0, 0.999))
def test_truncated_checkpoints_are_refused(tmp_path, saved, cut):
    data, _ = saved
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ckpt.CheckpointError, match="cut.npz"):
        ckpt.load_model(path)
    assert path.read_bytes() == data[: int(len(data) * cut)]


@SETTINGS
@given(position=st.floats(0.0, 0.9999), mask=st.integers(1, 255))
def test_a_flipped_byte_never_loads_different_data(tmp_path, saved, position, mask):
    """Any single corrupted byte is either refused or (in an unused zip field) harmless: never silent damage."""
    data, original = saved
    flipped = bytearray(data)
    flipped[int(len(data) * position)] ^= mask
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(flipped))
    try:
        loaded = ckpt.load(path)
    except ckpt.CheckpointError:
        assert path.read_bytes() == bytes(flipped)
        return
    assert loaded.meta == original.meta
    assert loaded.arrays.keys() == original.arrays.keys()
    for name, value in original.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], value)


def test_foreign_files(tmp_path):
    np.save(tmp_path / "plain.npy", np.ones(3))
    for name, content in [("json.npz", b'{"format": "lstmx-checkpoint"}'), ("empty.npz", b"")]:
        (tmp_path / name).write_bytes(content)
    for name in ("plain.npy", "json.npz", "empty.npz"):
        with pytest.raises(ckpt.CheckpointError, match=name):
            ckpt.load(tmp_path / name)
    arrays_only = tmp_path / "other.npz"
    np.savez(arrays_only, **{ckpt.META_KEY: np.frombuffer(b'{"format": "other"}', np.uint8)})
    with pytest.raises(ckpt.CheckpointError, match="not an lstmx checkpoint"):
        ckpt.load(arrays_only)
    newer = tmp_path / "newer.npz"
    np.savez(newer, **{ckpt.META_KEY: np.frombuffer(b'{"format": "lstmx-checkpoint", "version": 99}', np.uint8)})
    with pytest.raises(ckpt.CheckpointError, match="version 99"):
        ckpt.load(newer)


def test_failed_saves_change_nothing(tmp_path):
    model = LanguageModel(4, 2, 3)
    existing = tmp_path / "keep.npz"
    ckpt.save_model(existing, model)
    before = existing.read_bytes()
    with pytest.raises(TypeError, match="dtype object"):
        ckpt.save(existing, {}, {"bad": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="not JSON serializable"):
        ckpt.save(existing, {"not json": object()}, {})
    assert existing.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]


def test_bad_parameters_on_load():
    model = LSTM(3, 4)
    state = model.state_dict()
    with pytest.raises(KeyError, match=r"missing \['bias_l0'\]"):
        model.load_state_dict({"weight_l0": state["weight_l0"]})
    with pytest.raises(ValueError, match="must be finite"):
        model.load_state_dict({**state, "bias_l0": np.full(16, np.nan)})
    with pytest.raises(ValueError, match=r"'weight_l0' has shape \(3, 16\), expected \(7, 16\)"):
        model.load_state_dict({**state, "weight_l0": np.ones((3, 16))})


def test_unknown_backend_and_bad_backend_object():
    with pytest.raises(lstmx.BackendError, match="unknown backend 'jax'"):
        LSTM(3, 4, backend="jax")
    with pytest.raises(lstmx.BackendError, match="backend must be a name"):
        LSTM(3, 4, backend=42)
