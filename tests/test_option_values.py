"""Every option value that enters the math is tested with an expected value that differs between the right formula
and each plausible wrong one (a swapped argument, a dropped term, a changed constant): dropout's probability and
scaling, the optimizers' hyper-parameters, the loss's normalisation over real tokens, the state carried across
windows and reset at epoch ends, tokenisation round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lstmx import LanguageModel
from lstmx.training.data import CharVocab, WordVocab, split_ids
from lstmx.nn.layers import dropout_mask
from lstmx.training.optim import SGD, Adam, AdamW, RMSprop

from .helpers import host
from .test_optim import OneParam, run


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_dropout_drops_a_fraction_p_and_scales_the_rest_by_one_over_one_minus_p(backend, p):
    """Wrong: keeping p instead of 1 − p (the fraction), scaling by 1/p or not at all (the values)."""
    mask = host(dropout_mask(backend, np.random.default_rng(0), (400, 500), p, backend.xp.float64))
    dropped = np.mean(mask == 0)
    assert abs(dropped - p) < 0.01  # 200,000 draws: the standard error is ~0.001
    np.testing.assert_allclose(np.unique(mask[mask != 0]), [1 / (1 - p)], rtol=1e-15)
    assert abs(mask.mean() - 1) < 0.02  # so E[x · mask] = x


def test_a_language_models_dropout_probability_reaches_its_masks():
    model = LanguageModel(5, 3, 4, 2, dropout=0.25, seed=0)
    masks = model.draw_dropout_masks(300, 40)
    assert len(masks) == 2  # between the layers, and on the LSTM's output
    for mask in masks:
        assert abs(np.mean(mask == 0) - 0.25) < 0.02
        np.testing.assert_allclose(np.unique(mask[mask != 0]), [1 / 0.75], rtol=1e-6)
    assert all(m is None for m in model.eval().draw_dropout_masks(3, 2))


# The hyper-parameters below are far from their defaults and from each other, so swapping two, dropping one or
# using its default changes the result well beyond the tolerance.
GRADS = [[0.5, -2.0], [-1.0, 0.25], [2.0, 1.0]]


def adam_by_hand(w, grads, lr, beta1, beta2, eps, weight_decay, decoupled):
    w, m, v = np.array(w, float), np.zeros(2), np.zeros(2)
    for t, g in enumerate(np.array(grads, float), start=1):
        if decoupled:
            w = w * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * w
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr / (1 - beta1**t) * m / (np.sqrt(v) / math.sqrt(1 - beta2**t) + eps)
    return w


@pytest.mark.parametrize("cls,decoupled", [(Adam, False), (AdamW, True)])
def test_adam_uses_each_of_its_hyperparameters(backend, cls, decoupled):
    options = dict(lr=0.05, betas=(0.5, 0.8), eps=0.3, weight_decay=0.2)
    out = run(cls(OneParam(backend, [1.0, -1.5]), **options), backend, GRADS)
    expected = adam_by_hand([1.0, -1.5], GRADS, 0.05, 0.5, 0.8, 0.3, 0.2, decoupled)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    wrong = [adam_by_hand([1.0, -1.5], GRADS, 0.05, 0.8, 0.5, 0.3, 0.2, decoupled),  # betas swapped
             adam_by_hand([1.0, -1.5], GRADS, 0.05, 0.5, 0.8, 1e-8, 0.2, decoupled),  # eps dropped
             adam_by_hand([1.0, -1.5], GRADS, 0.05, 0.5, 0.8, 0.3, 0.0, decoupled),  # weight decay dropped
             adam_by_hand([1.0, -1.5], GRADS, 0.05, 0.5, 0.8, 0.3, 0.2, not decoupled)]  # the other decay
    assert all(np.max(np.abs(w - expected)) > 1e-4 for w in wrong)


def rmsprop_by_hand(w, grads, lr, alpha, eps, momentum, weight_decay):
    w, v, buf = np.array(w, float), np.zeros(2), np.zeros(2)
    for g in np.array(grads, float):
        g = g + weight_decay * w
        v = alpha * v + (1 - alpha) * g * g
        step = g / (np.sqrt(v) + eps)
        if momentum:
            buf = momentum * buf + step
            step = buf
        w = w - lr * step
    return w


def test_rmsprop_uses_each_of_its_hyperparameters(backend):
    out = run(RMSprop(OneParam(backend, [1.0, -1.5]), lr=0.05, alpha=0.6, eps=0.4, momentum=0.3, weight_decay=0.2),
              backend, GRADS)
    expected = rmsprop_by_hand([1.0, -1.5], GRADS, 0.05, 0.6, 0.4, 0.3, 0.2)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    for wrong in (rmsprop_by_hand([1.0, -1.5], GRADS, 0.05, 0.4, 0.4, 0.3, 0.2),  # 1 − alpha for alpha
                  rmsprop_by_hand([1.0, -1.5], GRADS, 0.05, 0.6, 1e-8, 0.3, 0.2),
                  rmsprop_by_hand([1.0, -1.5], GRADS, 0.05, 0.6, 0.4, 0.0, 0.2),
                  rmsprop_by_hand([1.0, -1.5], GRADS, 0.05, 0.6, 0.4, 0.3, 0.0)):
        assert np.max(np.abs(wrong - expected)) > 1e-4


def sgd_by_hand(w, grads, lr, momentum, nesterov, weight_decay):
    w, buf = np.array(w, float), None
    for g in np.array(grads, float):
        g = g + weight_decay * w
        if momentum:
            buf = g if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        w = w - lr * g
    return w


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_uses_each_of_its_hyperparameters(backend, nesterov):
    out = run(SGD(OneParam(backend, [1.0, -1.5]), lr=0.05, momentum=0.6, nesterov=nesterov, weight_decay=0.2),
              backend, GRADS)
    expected = sgd_by_hand([1.0, -1.5], GRADS, 0.05, 0.6, nesterov, 0.2)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    for wrong in (sgd_by_hand([1.0, -1.5], GRADS, 0.05, 0.4, nesterov, 0.2),
                  sgd_by_hand([1.0, -1.5], GRADS, 0.05, 0.6, not nesterov, 0.2),
                  sgd_by_hand([1.0, -1.5], GRADS, 0.05, 0.6, nesterov, 0.0)):
        assert np.max(np.abs(wrong - expected)) > 1e-4


def test_the_loss_is_the_mean_over_real_tokens_only(backend):
    """Steps past a sequence's length and ignored targets do not count, in the sum or in the count. Wrong: the
    mean over every position, the sum, or a count that includes padding."""
    model = LanguageModel(7, 3, 4, backend=backend, dtype="float64", seed=2)
    rng = np.random.default_rng(2)
    tokens, targets = rng.integers(0, 7, (5, 3)), rng.integers(0, 7, (5, 3))
    targets[1, 0] = -100
    lengths = [5, 2, 4]
    b = model.backend
    logits = host(model.forward(b.asarray(tokens), lengths=lengths)[0])
    log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    real = (np.arange(5)[:, None] < np.array(lengths)[None, :]) & (targets != -100)
    picked = np.take_along_axis(log_probs, np.where(real, targets, 0)[..., None], -1)[..., 0]
    expected = -np.sum(picked * real) / real.sum()
    for impl_loss in (model.loss(b.asarray(tokens), b.asarray(targets), lengths=lengths).loss,
                      model.loss(b.asarray(tokens), b.asarray(targets), lengths=lengths, grads=False).loss):
        np.testing.assert_allclose(float(host(impl_loss)), expected, rtol=1e-12)
    assert abs(-np.sum(picked * real) / real.size - expected) > 1e-3  # the mean over every position differs


def test_the_trainer_carries_the_state_between_windows_and_resets_it_each_epoch(tmp_path, monkeypatch):
    """The state handed to window k is the final state of window k − 1 in the same epoch, and None at the
    first window of every epoch. Wrong: never reset, reset every window, or carry the state of another window."""
    from lstmx.training.loop import TrainConfig, Trainer

    text = "abcdefghij " * 60
    vocab = CharVocab.from_text(text)
    split = split_ids(vocab.encode(text), 0.0)
    config = TrainConfig(steps=9, batch_size=2, seq_len=100, eval_every=10**9, log_every=10**9, sample_length=0)
    model = LanguageModel(len(vocab), 3, 4, seed=0)
    trainer = Trainer(model, vocab, split, config, tmp_path, progress=False)
    windows = len(trainer.train_batches)
    assert 2 <= windows < 9  # the run crosses at least one epoch end
    seen, real_loss = [], LanguageModel.loss

    def recording(self, inputs, targets, state=None, *args, **options):
        output = real_loss(self, inputs, targets, state, *args, **options)
        seen.append((state, output.state))
        return output

    monkeypatch.setattr(LanguageModel, "loss", recording)
    for _ in range(9):
        trainer.train_step()
    for step, (given, _) in enumerate(seen):
        if step % windows == 0:
            assert given is None, f"step {step} starts an epoch: no carried state"
        else:
            assert given is seen[step - 1][1], f"step {step} must carry step {step - 1}'s final state"


@pytest.mark.parametrize("text", ["hello, world\n\nsecond line: tabs\tand  spaces!\n", "a\nb\n c \n\nd"])
def test_character_tokens_round_trip_exactly(text):
    vocab = CharVocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text
    assert len(vocab.encode(text)) == len(text)  # one token per character, none merged or dropped
    again = CharVocab(vocab.symbols)
    np.testing.assert_array_equal(again.encode(text), vocab.encode(text))


def test_word_tokens_round_trip_up_to_spacing_and_unk_counts_exactly():
    text = "the cat sat.\nthe dog sat, then the cat ran!\n"
    vocab = WordVocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == "the cat sat .\nthe dog sat , then the cat ran !\n"
    rare = WordVocab.from_text(text, min_count=2, unk="<unk>")
    assert sorted(rare.symbols) == sorted(["\n", "<unk>", "cat", "sat", "the"])
    ids = rare.encode(text)
    assert int(np.sum(ids == rare.index["<unk>"])) == 6  # ., dog, ",", then, ran, !, and nothing else
    assert rare.decode(rare.encode("the cat")) == "the cat"


def test_log_softmax_shifts_by_each_rows_own_maximum(backend):
    """Adding the maximum instead of subtracting it, or shifting every row by the global maximum, is the same
    mathematics but overflows or underflows: large logits stay finite, and rows far apart stay exact."""
    from lstmx.nn.layers import log_softmax

    logits = backend.asarray(np.array([[[0.0, 1.0, 2.0], [1000.0, 1001.0, 1002.0]],
                                       [[-5.0, 0.0, 5.0], [800.0, 0.0, -800.0]]]))  # (2, 2, 3): any leading axes
    out = host(log_softmax(backend, logits))
    row = np.array([0.0, 1.0, 2.0])
    expected = row - np.log(np.sum(np.exp(row)))
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(out[0, 1], expected, rtol=1e-12)
    assert np.all(np.isfinite(out[1, 0])) and out[1, 1, 0] == 0.0


def test_the_loss_of_one_real_token_is_its_own_nll_and_ignore_index_is_any_value(backend):
    """The count of real tokens is not clamped above 1 (a count of 1 stays 1), and a caller's ignore_index
    reaches the fused and generic entry points alike; the gradient keeps the logits' dtype."""
    from lstmx.nn.layers.loss import cross_entropy_and_gradient, cross_entropy_forward

    logits = backend.asarray(np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]))
    targets = backend.asarray(np.array([0, -1]))
    loss, _ = cross_entropy_forward(backend, logits, targets, ignore_index=-1)
    nll = -(2.0 - np.log(np.exp(2.0) + 1.0 + np.exp(-1.0)))
    np.testing.assert_allclose(float(host(loss)), nll, rtol=1e-12)
    fused_loss, dlogits = cross_entropy_and_gradient(backend, logits, targets, ignore_index=-1)
    np.testing.assert_allclose(float(host(fused_loss)), nll, rtol=1e-12)
    assert dlogits.dtype == logits.dtype and np.all(host(dlogits)[1] == 0.0)


@pytest.mark.parametrize("make,message", [
    (lambda: __import__("lstmx.training.optim", fromlist=["x"]).step_decay(0.0, 10), "lr must be a number > 0"),
    (lambda: __import__("lstmx.training.optim", fromlist=["x"]).step_decay(0.1, 10, 0.0), "gamma must be a number > 0"),
    (lambda: __import__("lstmx.training.optim", fromlist=["x"]).step_decay(0.1, 0), "step_size must be an integer"),
    (lambda: __import__("lstmx.training.optim", fromlist=["x"]).exponential_decay(-1.0, 0.5), "lr must be a number > 0"),
    (lambda: __import__("lstmx.training.optim", fromlist=["x"]).warmup_cosine(0.0, 10), "lr must be a number > 0"),
    (lambda: __import__("lstmx.training.optim", fromlist=["x"]).warmup_cosine(0.1, 0), "total_steps must be an integer"),
    (lambda: __import__("lstmx.training.optim", fromlist=["x"]).warmup_cosine(0.1, 10, -1), "warmup_steps must be"),
    (lambda: __import__("lstmx.training.optim", fromlist=["x"]).warmup_cosine(0.1, 10, 0, -0.1), "min_lr must be"),
])
def test_schedules_refuse_each_bad_argument_by_name(make, message):
    from lstmx.options import OptionError

    with pytest.raises(OptionError, match=message):
        make()


def test_schedule_defaults_and_the_cosine_end():
    from lstmx.training.optim import make_schedule

    step = make_schedule("step", 1.0, 10)  # defaults: gamma 0.5 every 1000 steps
    assert step(999) == 1.0 and step(1000) == 0.5 and step(2000) == 0.25
    cosine = make_schedule("cosine", 1.0, 11, warmup_steps=1)  # min_lr 0 by default; 10 decay steps
    assert cosine(0) == 1.0 and cosine(11) == pytest.approx(0.0) and cosine(6) == pytest.approx(0.5)
    assert make_schedule("exponential", 2.0, 5, gamma=0.5)(2) == 0.5


@pytest.mark.parametrize("name,options,slots", [
    ("sgd", {}, set()), ("sgd", {"momentum": 0.5}, {"momentum"}), ("rmsprop", {}, {"square_avg"}),
    ("rmsprop", {"momentum": 0.5}, {"square_avg", "momentum"}), ("adam", {}, {"exp_avg", "exp_avg_sq"})])
def test_optimizer_state_holds_exactly_its_slots_and_hyperparameters(name, options, slots):
    """The saved state names every hyper-parameter (a resumed run must not fall back to defaults) and no slot an
    optimizer does not use; a missing slot is refused on load."""
    from lstmx import LSTM
    from lstmx.training.optim import make_optimizer

    model = LSTM(2, 3)
    optimizer = make_optimizer(name, model, 0.01, **options)
    meta, arrays = optimizer.state_dict()
    assert {key.split("/")[-1] for key in arrays} == slots
    expected = {"sgd": {"weight_decay", "momentum", "nesterov"}, "rmsprop": {"weight_decay", "alpha", "eps", "momentum"},
                "adam": {"weight_decay", "betas", "eps"}}[name]
    assert set(meta["hyperparameters"]) == expected and meta["type"] == type(optimizer).__name__
    if arrays:
        broken = dict(arrays)
        broken.pop(next(iter(broken)))
        with pytest.raises(ValueError, match="is missing or has the wrong shape"):
            make_optimizer(name, model, 0.01, **options).load_state_dict(meta, broken)
    loaded = make_optimizer(name, model, 0.01, **options)
    loaded.load_state_dict(meta, arrays)
    assert all(v.dtype == model.dtype for slots_ in loaded.state.values() for v in slots_.values())


def test_adamw_default_decay_and_nesterov_needs_momentum():
    from lstmx import LSTM
    from lstmx.training.optim import SGD, AdamW
    from lstmx.options import OptionError

    assert AdamW(LSTM(2, 3)).weight_decay == 0.01 and AdamW(LSTM(2, 3)).eps == 1e-8
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        SGD(LSTM(2, 3), nesterov=True)
    with pytest.raises(OptionError, match="betas must be a pair"):
        __import__("lstmx.training.optim", fromlist=["x"]).Adam(LSTM(2, 3), betas=(0.9,))
    with pytest.raises(OptionError, match="beta1 must"):
        __import__("lstmx.training.optim", fromlist=["x"]).Adam(LSTM(2, 3), betas=(1.0, 0.9))
    with pytest.raises(OptionError, match="eps must be a number > 0"):
        __import__("lstmx.training.optim", fromlist=["x"]).RMSprop(LSTM(2, 3), eps=0.0)


def test_a_first_momentum_step_is_the_gradient_and_clipping_scales_by_the_norm():
    """Heavy-ball momentum's first buffer is the gradient itself (not momentum · 0 + g on a later step's rule),
    and clipping scales by max_norm / (‖g‖ + 1e-6) exactly."""
    from lstmx.backend import get_backend
    from lstmx.training.optim import SGD, clip_grad_norm

    backend = get_backend("numpy")
    model = OneParam(backend, [0.0])
    out = run(SGD(model, lr=1.0, momentum=0.5), backend, [[2.0], [0.0]])
    np.testing.assert_allclose(out, [-2.0 - 1.0])  # buffers 2, then 0.5 · 2 + 0
    grads = {"w": np.array([3.0, 4.0])}
    clipped, norm = clip_grad_norm(backend, grads, 1.0)
    np.testing.assert_allclose(clipped["w"], np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-15)
    assert float(norm) == 5.0


def test_the_remaining_optimizer_doors_exactly():
    """Kills what the mutation session left alive in lstmx.training.optim (each case names the mutant's class)."""
    from lstmx import LSTM
    from lstmx.dispatch import registry
    from lstmx.backend import get_backend
    from lstmx.training.optim import SGD, AdamW, RMSprop, clip_grad_norm, make_optimizer, make_schedule
    from lstmx.options import OptionError

    cosine = make_schedule("cosine", 1.0, 3, warmup_steps=2)  # one decay step: progress 1 at step 3
    assert cosine(3) == pytest.approx(0.0) and cosine(2) == pytest.approx(1.0)
    assert make_schedule("step", 1.0, 10, gamma=0.1, step_size=2)(4) == pytest.approx(0.01)  # gamma reaches it
    with pytest.raises(ValueError, match="^Nesterov momentum needs momentum > 0$"):
        SGD(LSTM(2, 3), nesterov=True)
    with pytest.raises(OptionError, match="momentum must"):
        RMSprop(LSTM(2, 3), momentum=1.5)
    with pytest.raises(ValueError, match=r"^unknown optimizer 'lion'; expected one of sgd, adam, adamw, rmsprop$"):
        make_optimizer("lion", LSTM(2, 3), 0.1)
    for cls in (AdamW, RMSprop):  # the impl argument reaches the registry (cupy-fused does not run on NumPy)
        with pytest.raises(registry.UpdateImplError, match="'cupy-fused' cannot run"):
            cls(LSTM(2, 3), impl="cupy-fused")
    backend = get_backend("numpy")
    clipped, _ = clip_grad_norm(backend, {"w": np.array([3.0, 4.0], dtype=np.float32)}, 1.0)
    assert clipped["w"].dtype == np.float32
    wide = LSTM(2, 3, dtype="float64")
    meta, arrays = make_optimizer("adam", wide, 0.01).state_dict()  # float64 state
    narrow = make_optimizer("adam", LSTM(2, 3, dtype="float32"), 0.01)
    narrow.load_state_dict(meta, arrays)
    assert all(v.dtype == np.float32 for slots in narrow.state.values() for v in slots.values())


def test_an_optimizer_moves_to_its_models_backend_only():
    from lstmx import LSTM
    from lstmx.backend import get_backend
    from lstmx.training.optim import Adam

    model = LSTM(2, 3)
    optimizer = Adam(model, lr=0.01)
    optimizer.step({name: np.ones(p.shape, np.float32) for name, p in model.params.items()})
    strict = get_backend("array_api_strict")
    with pytest.raises(ValueError, match="^move the model to 'array_api_strict' first; it is on 'numpy'$"):
        optimizer.to(strict)
    model.to(strict)
    assert optimizer.to(strict) is optimizer and optimizer.impl == "generic" and callable(optimizer._update)
    moment = optimizer.state["bias_l0"]["exp_avg"]
    assert get_backend(moment).name == "array_api_strict" and float(host(moment)[0]) == pytest.approx(0.1)
    optimizer.step({name: strict.asarray(np.ones(p.shape), dtype=p.dtype) for name, p in model.params.items()})


def test_the_documented_defaults_are_the_defaults():
    """Each public default a caller relies on, by behaviour (PyTorch's learning rates, the schedules' and the
    split's and the sampler's defaults)."""
    from lstmx import LSTM, LanguageModel
    from lstmx.training.data import CharVocab, default_corpus, split_ids
    from lstmx.training.optim import SGD, Adam, AdamW, RMSprop, make_schedule, step_decay, warmup_cosine
    from lstmx.nn.sample import samples

    model = LSTM(2, 3)
    assert [cls(model).lr for cls in (SGD, Adam, AdamW, RMSprop)] == [0.1, 1e-3, 1e-3, 1e-2]
    assert step_decay(1.0, 1)(1) == 0.5
    cosine = warmup_cosine(1.0, 10)
    assert cosine(0) == 1.0 and cosine(10) == pytest.approx(0.0)  # no warm-up, down to 0
    assert cosine(1) == pytest.approx(0.5 * (1 + np.cos(0.1 * np.pi)))  # decaying from the first step
    assert make_schedule("cosine", 1.0, 10)(1) == pytest.approx(0.5 * (1 + np.cos(0.1 * np.pi)))
    assert len(split_ids(np.arange(100)).validation) == 10 and len(split_ids(np.arange(100)).test) == 0
    assert len(default_corpus()) == 2_000_000
    vocab = CharVocab.from_text("abcd")
    assert [len(t) for t in samples(LanguageModel(4, 3, 4, seed=0), vocab, length=3, num_samples=2)] == [3, 3]


def test_a_gradient_of_another_dtype_is_named_by_its_own_dtype():
    from lstmx import LSTM
    from lstmx.training.optim import SGD

    model = LSTM(2, 3)
    grads = {name: np.zeros(p.shape, np.float32) for name, p in model.params.items()}
    grads["bias_l0"] = grads["bias_l0"].astype(np.float16)
    with pytest.raises(TypeError, match=r"grads\['bias_l0'\] has dtype float16, expected the parameter's float32"):
        SGD(model).step(grads)


def test_samples_makes_one_text_of_200_tokens_by_default():
    from lstmx import LanguageModel
    from lstmx.training.data import CharVocab
    from lstmx.nn.sample import samples

    texts = samples(LanguageModel(4, 3, 4, seed=0), CharVocab.from_text("abcd"))
    assert [len(t) for t in texts] == [200]
