"""``lstmx check`` and moving models and optimizer state between backends."""

from __future__ import annotations

import os

import numpy as np
import pytest

import lstmx.check as check_module
from lstmx import LanguageModel
from lstmx.cli import main
from lstmx.gradcheck import GradCheckRow
from lstmx.optim import Adam

from .helpers import host


def test_check_command_passes_and_prints_a_table(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "gradients (float64)" in out and "pass" in out and "FAIL" not in out
    assert out.strip().splitlines()[-1].endswith("0 failed")


def test_check_command_fails_loudly(monkeypatch, capsys):
    monkeypatch.setattr(check_module, "check_language_model",
                        lambda backend: [GradCheckRow("lstm.weight_l0", 0.3, 1e-2, 10)])
    assert main(["check"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_parity_between_two_cpu_backends():
    result = check_module.parity_check("numpy", "array_api_strict")
    assert result.passed, result


def test_check_compares_the_compiled_kernels_with_plain_numpy(monkeypatch, capsys):
    pytest.importorskip("numba")
    monkeypatch.setenv("LSTMX_DISABLE_NUMBA", "0")
    result = check_module.compiled_kernel_check()
    assert result.passed and 0 < result.error < 1e-5, result  # different tanh code, same math
    assert os.environ["LSTMX_DISABLE_NUMBA"] == "0"  # the setting it toggled is put back
    assert main(["check"]) == 0
    assert "numba kernels vs numpy (float32)" in capsys.readouterr().out


def test_model_and_optimizer_move_between_backends(backend):
    model = LanguageModel(7, 3, 4, 2, seed=0)
    optimizer = Adam(model, lr=0.01)
    tokens = np.random.default_rng(0).integers(0, 7, (5, 2))
    first = model.loss(model.backend.asarray(tokens), model.backend.asarray(tokens))
    optimizer.step(first.grads)
    reference = model.state_dict()

    model.to(backend)
    optimizer.to(model.backend)
    assert model.backend.name == backend.name
    for name, value in reference.items():
        np.testing.assert_array_equal(host(model.params[name]), value)
    second = model.loss(backend.asarray(tokens), backend.asarray(tokens))
    optimizer.step(second.grads)  # optimizer state now lives on the new backend too

    model.to("numpy")
    optimizer.to(model.backend)
    assert model.backend.name == "numpy"
    assert all(isinstance(p, np.ndarray) for p in model.params.values())
