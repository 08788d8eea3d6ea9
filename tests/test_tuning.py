"""``lstmx tune`` and the tuning cache "auto" reads: measured choices for the user's sizes on the user's device.

The conftest points ``LSTMX_TUNE_CACHE`` at an empty folder for the whole suite, so no machine's own cache ever
reaches another test; each test here gives its own.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import lstmx
from lstmx.cli import main
from lstmx.dispatch import registry, tuning

NUMPY = lstmx.get_backend("numpy")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "tuning" / "tune.json"
    monkeypatch.setenv(tuning.CACHE_VARIABLE, str(path))
    monkeypatch.delenv(registry.ENVIRONMENT_VARIABLE, raising=False)
    return path


def forward_impl(batch=3, hidden=4, dtype="float32", **options):
    model = lstmx.LSTM(2, hidden, dtype=dtype, **options)
    return model.forward(np.ones((2, batch, 2), dtype=dtype))[2].impl


def key(batch=3, hidden=4, dtype="float32", cell="lstm", options=(), masked=False):
    return tuning.key_for(NUMPY, np.dtype(dtype), masked, (batch, hidden), cell, options)


def test_lstmx_tune_times_every_path_auto_may_pick_and_records_the_fastest(cache, capsys):
    assert main(["tune", "--batch-size", "2", "--hidden-size", "4", "--seq-len", "3", "--repeats", "1"]) == 0
    [entry] = json.loads(cache.read_text())["entries"]
    expected = [i.name for i in registry.available_layer_impls(NUMPY, np.float32, False, (2, 4))
                if i.auto_takes(registry.Call(NUMPY, np.float32))]
    assert sorted(entry["ms"]) == sorted(expected) and entry["impl"] == min(entry["ms"], key=entry["ms"].get)
    assert entry["key"] == key(2, 4).as_json() and entry["lstmx"] == lstmx.__version__
    err = capsys.readouterr().err
    assert f'"auto" now runs {entry["impl"]} for this call here (recorded in {cache})' in err
    assert not list(cache.parent.glob(".*.partial"))  # written whole


def test_auto_runs_the_tuned_choice_for_exactly_that_call_and_a_request_still_wins(cache, monkeypatch):
    assert forward_impl() == "numba"  # the registry's thresholds
    tuning.record(key(), "numpy", {"numpy": 1.0, "numba": 2.0})
    assert forward_impl() == "numpy"
    assert forward_impl(batch=5) == "numba"  # a size not tuned: the thresholds
    assert forward_impl(dtype="float64") == "numba" and forward_impl(proj_size=2) == "numba"  # neither tuned
    assert lstmx.LSTM(2, 4).forward(np.ones((2, 3, 2), np.float32), impl="generic")[2].impl == "generic"
    monkeypatch.setenv(registry.ENVIRONMENT_VARIABLE, "generic")
    assert forward_impl() == "generic"  # the environment's default is a request too


def test_entries_of_another_device_or_version_and_unknown_paths_are_ignored(cache, monkeypatch):
    tuning.record(key()._replace(device="GPU Imaginary 9000"), "numpy", {"numpy": 1.0})
    tuning.record(key(batch=5), "no-such-path", {"no-such-path": 1.0})
    assert forward_impl() == "numba" and forward_impl(batch=5) == "numba"
    tuning.record(key(), "numpy", {"numpy": 1.0})
    monkeypatch.setattr(tuning, "_version", lambda: "9.9.9")
    monkeypatch.setattr(tuning, "_LOADED", {})  # another lstmx version, in a process of its own, reads the cache
    assert forward_impl() == "numba"


def test_records_keep_each_others_entries_and_replace_their_own(cache):
    tuning.record(key(), "numpy", {"numpy": 1.0})
    tuning.record(key(batch=5), "generic", {"generic": 1.0})
    tuning.record(key(), "generic", {"generic": 0.5})
    entries = json.loads(cache.read_text())["entries"]
    assert sorted((e["key"]["batch"], e["impl"]) for e in entries) == [(3, "generic"), (5, "generic")]


def test_an_unreadable_cache_warns_once_and_auto_keeps_its_thresholds(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="the tuning cache .* cannot be read"):
        assert forward_impl() == "numba"
    tuning.record(key(), "numpy", {"numpy": 1.0})  # a new tuning run replaces it
    assert forward_impl() == "numpy"


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0", "--hidden-size", "4"], "argument --batch-size: must be an integer ≥ 1, got 0"),
    (["--batch-size", "2", "--hidden-size", "4", "--proj-size", "4"],
     "--proj-size must be below --hidden-size (4), got 4"),
    (["--batch-size", "2", "--hidden-size", "4", "--cell-option", "wings"], "argument --cell-option: invalid choice"),
    (["--batch-size", "2"], "the following arguments are required: --hidden-size"),
])
def test_lstmx_tune_refuses_bad_flags_in_one_line_before_timing(cache, capsys, argv, message):
    assert main(["tune", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not cache.exists()


def test_lstmx_tune_times_the_projected_cell_with_options_and_lengths(cache):
    assert main(["tune", "--batch-size", "2", "--hidden-size", "4", "--proj-size", "2", "--cell-option",
                 "layer_norm", "--lengths", "--seq-len", "3", "--repeats", "1"]) == 0
    [entry] = json.loads(cache.read_text())["entries"]
    assert entry["key"] == key(2, 4, cell="lstmp", options=("layer_norm",), masked=True).as_json()
    assert sorted(entry["ms"]) == ["generic"]  # the only path taking step masks on NumPy


def test_a_trainer_says_when_its_layers_run_what_lstmx_tune_measured(cache, tmp_path):
    """The plan a trainer prints names a tuned layer choice as such (and a threshold choice without it)."""
    from lstmx.training.data import CharVocab, split_ids
    from lstmx.training.loop import TrainConfig, Trainer

    text = "abcab " * 40
    vocab = CharVocab.from_text(text)
    split = split_ids(vocab.encode(text), 0.2)

    def plan():
        model = lstmx.LanguageModel(len(vocab), 4, 8, 1, seed=0)
        config = TrainConfig(steps=1, batch_size=3, seq_len=4, eval_every=10, log_every=10, sample_length=0)
        return Trainer(model, vocab, split, config, tmp_path / "run", progress=False, echo=lambda _: None).plan

    assert plan().layer == "numba" and "lstmx tune" not in plan().describe()
    tuning.record(key(batch=3, hidden=8), "numpy", {"numpy": 1.0})
    assert plan().layer == "numpy" and plan().describe().startswith("layers numpy (measured by lstmx tune),")
