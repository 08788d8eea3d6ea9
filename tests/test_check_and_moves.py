"""``lstmx check`` and moving models and optimizer state between backends."""

from __future__ import annotations

import numpy as np

import lstmx
import lstmx.check as check_module
from lstmx import LanguageModel
from lstmx.cli import main
from lstmx.gradcheck import GradCheckRow
from lstmx.training.optim import Adam

from .helpers import host


def test_check_command_passes_and_prints_a_table(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "gradients (float64)" in out and "pass" in out and "FAIL" not in out
    for row in ("gradients bidirectional LSTM (float64)", "gradients LSTMP (proj_size) (float64)",
                "gradients bidirectional LSTMP (float64)", "numpy vs generic (bidirectional)"):
        assert row in out
    assert out.strip().splitlines()[-1].endswith("0 failed")


def test_check_command_fails_loudly(monkeypatch, capsys):
    monkeypatch.setattr(check_module, "check_language_model",
                        lambda backend: [GradCheckRow("lstm.weight_l0", 0.3, 1e-2, 10)])
    assert main(["check"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_parity_between_two_cpu_backends():
    result = check_module.parity_check("numpy", "array_api_strict")
    assert result.passed, result


def test_check_compares_every_implementation_with_the_generic_path(monkeypatch, capsys):
    monkeypatch.setenv("LSTMX_LAYER_IMPL", "numpy")
    results = list(check_module.implementation_checks("numpy"))
    names = [r.check for r in results]
    assert "numpy vs generic (float32)" in names
    assert all(r.passed and 0 < r.error < 1e-5 for r in results), results  # another summation order, same math
    assert all(lstmx.dispatch.registry.layer_impl(name.split()[0]).name for name in names)
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "layer implementation on numpy by default: float32: numpy" in out  # the environment's default, named


def test_model_and_optimizer_move_between_backends(backend):
    model = LanguageModel(7, 3, 4, 2, seed=0)
    optimizer = Adam(model, lr=0.01)
    tokens = np.random.default_rng(0).integers(0, 7, (5, 2))
    first = model.loss(model.backend.asarray(tokens), model.backend.asarray(tokens))
    optimizer.step(first.grads)
    reference = model.state_dict()

    moments = {name: {slot: host(v) for slot, v in slots.items()} for name, slots in optimizer.state.items()}
    model.to(backend)
    optimizer.to(model.backend)
    assert model.backend.name == backend.name
    for name, value in reference.items():
        np.testing.assert_array_equal(host(model.params[name]), value)
    for name, slots in optimizer.state.items():  # the moved state: the same values, on the new backend
        for slot, value in slots.items():
            assert lstmx.backend_of(value).name == backend.name, (name, slot)
            np.testing.assert_array_equal(host(value), moments[name][slot])
    assert optimizer.step_count == 1
    second = model.loss(backend.asarray(tokens), backend.asarray(tokens))
    optimizer.step(second.grads)  # optimizer state now lives on the new backend too

    model.to("numpy")
    optimizer.to(model.backend)
    assert model.backend.name == "numpy"
    assert all(isinstance(p, np.ndarray) for p in model.params.values())


def test_each_check_row_changes_one_implementation_and_runs_generic_paths_for_the_rest(monkeypatch):
    """Where "auto" runs fast paths (the fused loss on CuPy), the reference and every layer row still pin the loss
    to the generic path, and the loss rows the layer: a row compares one implementation, not whatever auto picks."""
    compute, calls = check_module._loss_state_and_grads, []

    def recording(backend_name, seed, lengths, impl=None, loss_impl=None, **options):
        calls.append((impl, loss_impl))
        loss_impl = "generic" if loss_impl == "cupy-fused" else loss_impl  # the stand-in for the fused loss
        return compute(backend_name, seed, lengths, impl=impl, loss_impl=loss_impl, **options)

    monkeypatch.setattr(check_module, "_loss_state_and_grads", recording)
    monkeypatch.setattr(lstmx.dispatch.registry, "available_loss_impls", lambda backend: ["generic", "cupy-fused"])
    results = list(check_module.implementation_checks("numpy"))
    assert all(impl is not None and loss_impl is not None for impl, loss_impl in calls), calls
    assert ("generic", "generic") in calls and ("generic", "cupy-fused") in calls
    assert {impl for impl, loss_impl in calls if loss_impl == "generic"} >= {"generic", "numpy"}
    assert any(r.check == "loss cupy-fused vs generic (float32)" for r in results)


def test_an_implementation_that_raises_fails_its_own_row_and_the_rest_still_run(monkeypatch, capsys):
    """A path whose first run on a new GPU raises costs its row (error named), not the table."""
    compute = check_module._loss_state_and_grads

    def breaking(backend_name, seed, lengths, impl=None, **options):
        if impl == "numpy":
            raise RuntimeError("the kernel could not launch\nsecond line")
        return compute(backend_name, seed, lengths, impl=impl, **options)

    monkeypatch.setattr(check_module, "_loss_state_and_grads", breaking)
    assert main(["check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    [broken] = [line for line in lines if line.startswith("numpy vs generic (float32)")]
    assert "inf" in broken and "FAIL" in broken and broken.endswith("raised RuntimeError: the kernel could not launch")
    assert any(line.startswith("numba vs generic (float32)") and "pass" in line for line in lines)  # went on
    assert lines[-1].endswith("1 failed")


def test_update_and_clipping_checks_compare_each_fast_path_and_report_one_that_raises(monkeypatch):
    """The update and clipping rows (they run on a GPU, where fast paths exist): a stand-in fast path that is the
    generic one agrees exactly; one that raises for one optimizer fails that row alone."""
    import lstmx.training.optim as optim

    make, clip = optim.make_optimizer, optim.clip_grad_norm

    def make_optimizer(name, model, lr, impl=None, **options):
        if impl == "stand-in" and name == "adam":
            raise RuntimeError("no Adam kernel here")
        return make(name, model, lr, impl="generic" if impl == "stand-in" else impl, **options)

    monkeypatch.setattr(optim, "make_optimizer", make_optimizer)
    monkeypatch.setattr(optim, "clip_grad_norm", lambda backend, grads, limit, impl=None: clip(backend, grads, limit))
    monkeypatch.setattr(lstmx.dispatch.registry, "available_update_impls", lambda backend, optimizer: ["generic", "stand-in"])
    monkeypatch.setattr(lstmx.dispatch.registry, "available_clipping_impls", lambda backend: ["generic", "stand-in"])
    rows = {row.check: row for row in check_module.update_checks("numpy")}
    assert set(rows) == {f"update stand-in vs generic ({name}, float32)" for name in optim.OPTIMIZERS} | {
        "clipping stand-in vs generic (float32)"}
    failed = [row for row in rows.values() if not row.passed]
    assert [row.check for row in failed] == ["update stand-in vs generic (adam, float32)"]
    assert failed[0].detail == "raised RuntimeError: no Adam kernel here"
    assert all(row.error == 0 for row in rows.values() if row.passed)
