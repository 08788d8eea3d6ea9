"""Optimizer updates against hand-computed values, clipping and learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lstmx
from lstmx import LSTM
from lstmx.dispatch import registry
from lstmx.training.optim import (OPTIMIZERS, SGD, Adam, AdamW, RMSprop, clip_grad_norm, clip_grad_value, exponential_decay,
                                  make_optimizer, make_schedule, step_decay, warmup_cosine)

from .helpers import host


class OneParam:
    """A stand-in model with one parameter vector, so updates can be computed by hand."""

    def __init__(self, backend, values):
        self.backend = backend
        self.params = {"w": backend.asarray(np.asarray(values, dtype=np.float64))}


def run(optimizer, backend, grads):
    for g in grads:
        optimizer.step({"w": backend.asarray(np.asarray(g, dtype=np.float64))})
    return host(optimizer.model.params["w"])


def test_sgd_plain_and_weight_decay(backend):
    model = OneParam(backend, [1.0, -2.0])
    out = run(SGD(model, lr=0.1, weight_decay=0.5), backend, [[1.0, 1.0]])
    # g' = g + 0.5 w = [1.5, 0.0]; w - 0.1 g'
    np.testing.assert_allclose(out, [0.85, -2.0])


def test_sgd_momentum_and_nesterov(backend):
    heavy = run(SGD(OneParam(backend, [0.0]), lr=0.1, momentum=0.9), backend, [[1.0], [1.0]])
    # buffers 1, 1.9 → w = -0.1 - 0.19
    np.testing.assert_allclose(heavy, [-0.29])
    nesterov = run(SGD(OneParam(backend, [0.0]), lr=0.1, momentum=0.9, nesterov=True), backend, [[1.0], [1.0]])
    # steps g + 0.9·buf: 1.9 then 1 + 0.9·1.9 = 2.71
    np.testing.assert_allclose(nesterov, [-0.19 - 0.271])


def test_adam_two_steps_by_hand(backend):
    out = run(Adam(OneParam(backend, [1.0]), lr=0.01), backend, [[0.5], [-1.0]])
    w, m, v = 1.0, 0.0, 0.0
    for t, g in enumerate([0.5, -1.0], start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= 0.01 * (m / (1 - 0.9**t)) / (math.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(out, [w], rtol=1e-12)


def test_adam_first_step_is_lr_times_sign(backend):
    out = run(Adam(OneParam(backend, [0.0, 0.0]), lr=0.1), backend, [[3.0, -0.001]])
    np.testing.assert_allclose(out, [-0.1, 0.1], rtol=1e-4)


def test_adamw_decay_is_decoupled(backend):
    out = run(AdamW(OneParam(backend, [2.0]), lr=0.1, weight_decay=0.5), backend, [[0.0]])
    # zero gradient: Adam's step is 0, decay multiplies by 1 − lr·wd
    np.testing.assert_allclose(out, [2.0 * (1 - 0.05)])
    coupled = run(Adam(OneParam(backend, [2.0]), lr=0.1, weight_decay=0.5), backend, [[0.0]])
    np.testing.assert_allclose(coupled, [1.9], rtol=1e-6)  # L2: g = 1.0 → first Adam step is lr·sign


def test_rmsprop_by_hand(backend):
    out = run(RMSprop(OneParam(backend, [1.0]), lr=0.01, alpha=0.9), backend, [[2.0], [1.0]])
    w, v = 1.0, 0.0
    for g in (2.0, 1.0):
        v = 0.9 * v + 0.1 * g * g
        w -= 0.01 * g / (math.sqrt(v) + 1e-8)
    np.testing.assert_allclose(out, [w], rtol=1e-12)


def test_global_norm_clipping(backend):
    grads = {"a": backend.asarray(np.array([3.0, 0.0])), "b": backend.asarray(np.array([[4.0]]))}
    clipped, norm = clip_grad_norm(backend, grads, 1.0)
    assert float(host(norm)) == pytest.approx(5.0)
    np.testing.assert_allclose(host(clipped["a"]), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(host(clipped["b"]), [[0.8]], rtol=1e-6)
    untouched, _ = clip_grad_norm(backend, grads, 10.0)
    np.testing.assert_allclose(host(untouched["a"]), [3.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_clipping_implementation_matches_the_generic_one(backend, dtype):
    """The list comes from the registry: each update family's clipping that runs here, against the generic one,
    clipped and not, over more tensors than one fused launch takes."""
    fast = [impl for impl in registry.available_clipping_impls(backend) if impl != "generic"]
    if not fast:
        pytest.skip(f"no clipping fast path runs on {backend.name} here")
    tolerance = 1e-6 if dtype == "float32" else 1e-12
    rng = np.random.default_rng(0)
    shapes = [(96, 16), (320, 1024), (1024,), (0,), (256, 96), (96,)] + [(3, 5)] * 5
    grads = {f"g{i}": backend.asarray(rng.standard_normal(s), dtype=getattr(backend.xp, dtype)) for i, s in enumerate(shapes)}
    for impl in fast:
        for max_norm in (1.0, 1e9):
            clipped, norm = clip_grad_norm(backend, grads, max_norm, impl=impl)
            expected, expected_norm = clip_grad_norm(backend, grads, max_norm, impl="generic")
            np.testing.assert_allclose(host(norm), host(expected_norm), rtol=tolerance)
            for key, value in expected.items():
                np.testing.assert_allclose(host(clipped[key]), host(value), rtol=tolerance, atol=tolerance,
                                           err_msg=f"{impl} {key}")


def test_the_trainer_clips_with_its_optimizers_implementation(monkeypatch, tmp_path):
    from lstmx.training.data import CharVocab, split_ids
    from lstmx.training.loop import TrainConfig, Trainer

    asked = []
    choose = registry.choose_clipping
    monkeypatch.setattr(registry, "choose_clipping", lambda backend, impl=None: asked.append(impl) or choose(backend, impl))
    text = "abcabcabd" * 20
    vocab = CharVocab.from_text(text)
    model = lstmx.LanguageModel(len(vocab), 4, 8)
    trainer = Trainer(model, vocab, split_ids(vocab.encode(text), 0.1, 0.0),
                      TrainConfig(steps=2, batch_size=2, seq_len=4, clip_norm=1.0), tmp_path)
    trainer.train_step()
    assert asked == [trainer.optimizer.impl] == ["generic"]
    with pytest.raises(registry.UpdateImplError, match="'cupy-fused' cannot clip gradients here: it runs on cupy"):
        clip_grad_norm(model.backend, {"w": np.ones(3)}, 1.0, impl="cupy-fused")


def test_value_clipping(backend):
    clipped = clip_grad_value(backend, {"a": backend.asarray(np.array([-3.0, 0.5, 2.0]))}, 1.0)
    np.testing.assert_array_equal(host(clipped["a"]), [-1.0, 0.5, 1.0])


def test_schedules():
    assert [step_decay(1.0, 2, 0.5)(s) for s in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert exponential_decay(2.0, 0.5)(3) == pytest.approx(0.25)
    cosine = warmup_cosine(1.0, total_steps=10, warmup_steps=2, min_lr=0.1)
    assert [cosine(0), cosine(1)] == [0.5, 1.0]
    assert cosine(2) == pytest.approx(1.0)
    assert cosine(6) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(10) == pytest.approx(0.1) and cosine(50) == pytest.approx(0.1)
    assert make_schedule("constant", 0.3, 10)(7) == 0.3
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", 0.1, 10)


def test_scheduled_lr_is_used(backend):
    optimizer = SGD(OneParam(backend, [0.0]), lr=step_decay(1.0, 1, 0.5))
    out = run(optimizer, backend, [[1.0], [1.0], [1.0]])
    np.testing.assert_allclose(out, [-(1.0 + 0.5 + 0.25)])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_state_round_trip(backend, name):
    options = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    first = make_optimizer(name, LSTM(2, 3, backend=backend, dtype="float64", seed=0), 0.01, **options)
    second = make_optimizer(name, LSTM(2, 3, backend=backend, dtype="float64", seed=0), 0.01, **options)
    grads = {k: backend.asarray(np.full(tuple(p.shape), 0.3)) for k, p in first.model.params.items()}
    first.step(grads)
    second.load_state_dict(*first.state_dict())
    second.model.load_state_dict(first.model.state_dict())
    first.step(grads)
    second.step(grads)
    for key in first.model.params:
        np.testing.assert_array_equal(host(first.model.params[key]), host(second.model.params[key]))


def test_optimizer_errors():
    model = LSTM(2, 3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lion", model, 0.1)
    with pytest.raises(ValueError, match="lr must be a number > 0, got 0"):
        Adam(model, lr=0.0)
    with pytest.raises(KeyError, match="grads must have exactly the parameters. names: missing"):
        Adam(model).step({})
    meta, arrays = Adam(model).state_dict()
    with pytest.raises(ValueError, match="optimizer state is for 'Adam', not SGD"):
        SGD(model).load_state_dict(meta, arrays)


@pytest.mark.parametrize("call,message", [
    (lambda b, g: clip_grad_norm(b, g, -1.0), "max_norm must be a number > 0, got -1"),
    (lambda b, g: clip_grad_norm(b, g, 0.0), "max_norm must be a number > 0, got 0"),
    (lambda b, g: clip_grad_norm(b, g, float("nan")), "max_norm must be a number > 0, got nan"),
    (lambda b, g: clip_grad_value(b, g, -0.5), "clip must be a number > 0, got -0.5"),
    (lambda b, g: Adam(LSTM(2, 3), betas=(0.9, 1.0)), r"beta2 must be a number in \[0, 1\), got 1"),
    (lambda b, g: Adam(LSTM(2, 3), eps=-1e-8), "eps must be a number > 0"),
    (lambda b, g: AdamW(LSTM(2, 3), weight_decay=-0.1), "weight_decay must be a number ≥ 0, got -0.1"),
    (lambda b, g: SGD(LSTM(2, 3), momentum=1.5), r"momentum must be a number in \[0, 1\), got 1.5"),
    (lambda b, g: RMSprop(LSTM(2, 3), alpha=-0.1), r"alpha must be a number in \[0, 1\)"),
    (lambda b, g: make_schedule("step", 0.1, 10, step_size=0), "step_size must be an integer ≥ 1, got 0"),
    (lambda b, g: make_schedule("exponential", 0.1, 10, gamma=-1.0), "gamma must be a number > 0, got -1"),
    (lambda b, g: make_schedule("cosine", 0.1, 10, warmup_steps=-2), "warmup_steps must be an integer ≥ 0, got -2"),
    (lambda b, g: make_schedule("constant", -0.1, 10), "lr must be a number > 0, got -0.1"),
])
def test_nonsense_arguments_are_refused_naming_them(call, message):
    """Values that would silently do something else (a negative clip flips the gradients' sign) are refused."""
    backend = lstmx.get_backend("numpy")
    grads = {"w": np.ones(3)}
    with pytest.raises(ValueError, match=message):
        call(backend, grads)


UPDATE_CASES = [("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}), ("sgd", {}),
                ("adam", {"weight_decay": 0.1}), ("adamw", {}), ("rmsprop", {"momentum": 0.5})]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,options", UPDATE_CASES, ids=[f"{n}{o}" for n, o in UPDATE_CASES])
def test_every_update_implementation_matches_the_generic_one(backend, name, options, dtype):
    """The list comes from the registry: each update fast path that runs this optimizer here, four steps
    against the generic update, parameters and state."""
    fast = [impl for impl in registry.available_update_impls(backend, OPTIMIZERS[name]) if impl != "generic"]
    if not fast:
        pytest.skip(f"no update fast path runs {name} on {backend.name} here")
    tolerance = 2e-6 if dtype == "float32" else 1e-12
    rng = np.random.default_rng(0)
    grads = [{k: rng.standard_normal(p.shape) for k, p in LSTM(3, 5).params.items()} for _ in range(4)]
    for impl in fast:
        models = [LSTM(3, 5, backend=backend, dtype=dtype, seed=0) for _ in range(2)]
        runs = [make_optimizer(name, models[0], 0.01, impl=impl, **options),
                make_optimizer(name, models[1], 0.01, impl="generic", **options)]
        assert runs[0].impl == impl and runs[1].impl == "generic"
        for step in grads:
            for optimizer, model in zip(runs, models):
                optimizer.step({k: backend.asarray(g, dtype=model.dtype) for k, g in step.items()})
        for key in models[0].params:
            np.testing.assert_allclose(host(models[0].params[key]), host(models[1].params[key]), rtol=tolerance,
                                       atol=tolerance, err_msg=f"{impl} {key}")
            for slot, value in runs[1].state[key].items():
                np.testing.assert_allclose(host(runs[0].state[key][slot]), host(value), rtol=tolerance, atol=tolerance)


class Plain(SGD):
    """A user's optimizer: a subclass no fast path names, so only the generic step runs it."""

    def update(self, xp, param, grad, state, lr):
        return param - lr * xp.sign(grad)


def test_a_users_optimizer_runs_on_the_generic_step(backend):
    model = OneParam(backend, [1.0, -2.0])
    optimizer = Plain(model, lr=0.5)
    assert optimizer.impl == "generic"
    np.testing.assert_allclose(run(optimizer, backend, [[3.0, -0.1]]), [0.5, -1.5])
    if backend.name == "cupy":
        assert "has no Plain update (it has SGD, Adam, AdamW, RMSprop)" in str(
            pytest.raises(registry.UpdateImplError, Plain, model, impl="cupy-fused").value)


def test_update_implementation_choice(backend, monkeypatch):
    """Argument and context are binding, the environment variable a default; errors name the choices."""
    monkeypatch.delenv(registry.UPDATE_ENVIRONMENT_VARIABLE, raising=False)
    model = LSTM(3, 4, backend=backend)
    assert Adam(model).impl == registry.choose_update(backend, Adam)[0]
    assert Adam(model, impl="generic").impl == "generic"
    with pytest.raises(registry.UpdateImplError, match="impl must be one of auto, cupy-fused, generic; got 'fast'"):
        Adam(model, impl="fast")
    with pytest.raises(registry.UpdateImplError, match="'cupy-fused' cannot run Plain here: it "):
        Plain(model, impl="cupy-fused")
    if backend.name != "cupy":
        with pytest.raises(registry.UpdateImplError, match=f"runs on cupy, not {backend.name}"):
            Adam(model, impl="cupy-fused")
        with registry.use_update_impl("cupy-fused"), pytest.raises(registry.UpdateImplError):
            Adam(model)
    monkeypatch.setenv(registry.UPDATE_ENVIRONMENT_VARIABLE, "cupy-fused")  # a default: falls back where it cannot run
    assert Plain(model).impl == "generic"
    monkeypatch.setenv(registry.UPDATE_ENVIRONMENT_VARIABLE, "nonsense")
    with pytest.raises(registry.UpdateImplError, match="LSTMX_UPDATE_IMPL must be one of"):
        Adam(model)


def test_optimizer_refuses_gradients_that_do_not_fit_in_one_line():
    """An extra key, a shape that would only broadcast, another dtype or another backend is refused naming the
    parameter, before any parameter changes."""
    import array_api_strict

    from lstmx import LSTM
    from lstmx.training.optim import SGD, Adam

    model = LSTM(2, 3, dtype="float32")
    before = model.state_dict()
    optimizer = Adam(model, lr=1e-2)
    good = {name: np.zeros(p.shape, dtype=np.float32) for name, p in model.params.items()}
    cases = [({**good, "extra": np.zeros(1, np.float32)}, KeyError, "unexpected \\['extra'\\]"),
             ({k: v for k, v in good.items() if k != "bias_l0"}, KeyError, "missing \\['bias_l0'\\]"),
             ({**good, "bias_l0": np.float32(1.0) * np.ones((), np.float32)}, ValueError,
              r"grads\['bias_l0'\] has shape \(\), expected the parameter's \(12,\)"),
             ({**good, "weight_l0": good["weight_l0"].astype(np.float64)}, TypeError,
              r"grads\['weight_l0'\] has dtype float64, expected the parameter's float32"),
             ({**good, "bias_l0": array_api_strict.zeros((12,), dtype=array_api_strict.float32)}, Exception,
              r"grads\['bias_l0'\] is a array_api_strict array but the model lives on numpy")]
    for grads, error, message in cases:
        with pytest.raises(error, match=message):
            optimizer.step(grads)
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
    assert optimizer.step_count == 0
    for bad in (float("nan"), -1.0, 0.0):
        with pytest.raises(ValueError, match="learning-rate schedule gave"):
            SGD(model, lr=lambda step, bad=bad: bad).step(good)


def test_state_dict_is_a_copy_and_load_state_dict_copies_in():
    from lstmx import LSTM

    model = LSTM(2, 3, dtype="float64")
    state = model.state_dict()
    state["bias_l0"][:] = 7.0
    assert not np.any(model.params["bias_l0"] == 7.0)
    mine = {name: value.copy() for name, value in state.items()}
    model.load_state_dict(mine)
    mine["bias_l0"][:] = -1.0
    assert np.all(model.params["bias_l0"] == 7.0)


def test_integer_sizes_of_numpy_type_are_plain_ints_and_save(tmp_path):
    from lstmx import LSTM, LanguageModel
    from lstmx.training.checkpoint import load_model, save_model

    model = LSTM(np.int64(3), np.int32(4), np.int64(2), proj_size=np.int64(2))
    assert all(type(getattr(model, name)) is int for name in ("input_size", "hidden_size", "num_layers", "proj_size"))
    save_model(tmp_path / "m.npz", model)
    assert load_model(tmp_path / "m.npz")[0].hidden_size == 4
    assert type(LanguageModel(np.int64(5), np.int64(3), np.int64(4)).vocab_size) is int


def test_dropout_that_cannot_act_is_said_once():
    from lstmx import LSTM, LanguageModel

    with pytest.warns(UserWarning, match="dropout=0.5 has no effect with num_layers=1"):
        LSTM(2, 3, dropout=0.5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LSTM(2, 3, 2, dropout=0.5)
        LanguageModel(5, 3, 4, dropout=0.5)  # a language model's dropout also acts on the LSTM's output
