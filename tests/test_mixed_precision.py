"""``precision="bf16"`` and ``"fp16"``: 16-bit operands of every matrix product, float32 sums, state and weights;
under "fp16" a trainer scales the loss.

The rounding is checked against the bit-level definition of round-to-nearest-even (bfloat16) and NumPy's
float16 cast; a layer's forward against a reference written here with that rounding; the gradients against
PyTorch's autograd in ``test_torch_reference.py`` (tests-torch). Fast paths refuse the precisions (they multiply
in float32), but for those that declare one.
"""

from __future__ import annotations

import numpy as np
import pytest

import lstmx
from lstmx.backend import round_to_bfloat16, round_to_float16, to_numpy
from lstmx.dispatch import registry

from .helpers import host


def bfloat16_by_bits(values: np.ndarray) -> np.ndarray:
    """float32 → nearest bfloat16 (ties to even) → float32, on the bits: add half an ulp of bfloat16 less one,
    plus the kept part's last bit, then cut the 16 low bits."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def float16_by_numpy(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32).astype(np.float16).astype(np.float32)


ROUNDING = {"bf16": bfloat16_by_bits, "fp16": float16_by_numpy}


def relative_error(ours, reference) -> float:
    ours, reference = host(ours), np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def test_rounding_to_float16_is_numpys_cast(backend):
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(20_000) * np.exp(rng.uniform(-22, 12, 20_000))).astype(np.float32)
    bits = values.view(np.uint32).copy()
    bits[:2_000] = (bits[:2_000] & 0xFFFFE000) | 0x1000  # exact ties of half precision's 11 bits
    values = np.concatenate([bits.view(np.float32), np.float32([65504, 65519.9, 65520, 7e4, -65520, 2**-24,
                                                                2**-25, 3 * 2**-26, 2**-14, -0.0, 0.0])])
    rounded = host(round_to_float16(backend.xp, backend.asarray(values)))
    np.testing.assert_array_equal(rounded, float16_by_numpy(values))
    assert np.count_nonzero(rounded != values) > 19_000


def test_rounding_to_bfloat16_is_round_to_nearest_even(backend):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(20_000) * np.exp(rng.uniform(-40, 40, 20_000))).astype(np.float32)
    bits = values.view(np.uint32).copy()
    bits[:2_000] = (bits[:2_000] & 0xFFFF0000) | 0x8000  # exact ties: half an ulp of bfloat16 above a bfloat16
    bits[2_000:2_010] = 0  # zeros stay zeros
    values = bits.view(np.float32)
    rounded = host(round_to_bfloat16(backend.asarray(values)))
    np.testing.assert_array_equal(rounded, bfloat16_by_bits(values))
    assert np.count_nonzero(rounded != values) > 19_000  # it did round
    np.testing.assert_array_equal(host(round_to_bfloat16(backend.asarray(rounded.astype(np.float32)))), rounded)


def _reference_forward(params: dict, x: np.ndarray, hidden: int, proj: int, r=bfloat16_by_bits) -> np.ndarray:
    """One layer's y, every product's operands rounded by ``r`` and summed in float64."""
    weight, bias = params["weight_l0"], params["bias_l0"]
    features = x.shape[-1]
    h = np.zeros((x.shape[1], proj or hidden), np.float32)
    c = np.zeros((x.shape[1], hidden), np.float64)
    ys = []
    for x_t in x:
        z = (r(x_t).astype(np.float64) @ r(weight[:features]) + r(h).astype(np.float64) @ r(weight[features:])
             + bias)
        i, f, o = (1 / (1 + np.exp(-z[:, k * hidden:(k + 1) * hidden])) for k in (0, 1, 3))
        c = f * c + i * np.tanh(z[:, 2 * hidden:3 * hidden])
        h64 = o * np.tanh(c)
        if proj:
            h64 = r(h64.astype(np.float32)).astype(np.float64) @ r(params["projection_l0"])
        h = h64.astype(np.float32)
        ys.append(h64)
    return np.stack(ys)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("proj", [0, 5])
def test_a_16_bit_layer_rounds_every_forward_operand(backend, proj, precision):
    """Float32 sums against float64 ones stay near 1e-7; leaving any one operand in float32 moves y by ~1e-3, as
    float32 products do. A seed whose run meets an operand whose float32 and float64 values lie either side of a
    bfloat16 midpoint rounds it one bfloat16 ulp apart and ends ~1e-4 away: the median over seeds is compared."""
    errors = {precision: [], "float32": []}
    for seed in range(9):
        x = np.random.default_rng(seed).standard_normal((8, 3, 6)).astype(np.float32)
        for each in errors:
            model = lstmx.LSTM(6, 16, proj_size=proj, backend=backend, seed=seed, precision=each)
            reference = _reference_forward(model.state_dict(), x, 16, proj, ROUNDING[precision])
            errors[each].append(relative_error(model.forward(backend.asarray(x))[0], reference))
    assert np.median(errors[precision]) < 1e-5, errors[precision]
    assert np.median(errors["float32"]) > (5e-4 if precision == "bf16" else 6e-5), errors["float32"]


@pytest.mark.parametrize("reduced", ["bf16", "fp16"])
def test_16_bit_gradients_stay_within_their_rounding_of_the_float32_ones(backend, reduced):
    tokens = np.random.default_rng(2).integers(0, 30, (21, 4))
    losses, grads = {}, {}
    for precision in ("float32", reduced):
        model = lstmx.LanguageModel(30, 8, 24, 2, proj_size=12, backend=backend, seed=0, precision=precision)
        out = model.loss(backend.asarray(tokens[:-1]), backend.asarray(tokens[1:]))
        losses[precision], grads[precision] = float(out.loss), {k: host(v) for k, v in out.grads.items()}
    assert abs(losses[reduced] - losses["float32"]) < 1e-2 * losses["float32"]
    for name, exact in grads["float32"].items():
        error = relative_error(grads[reduced][name], exact)
        assert 1e-6 < error < 5e-2, f"{name}: {error:.1e}"


@pytest.mark.parametrize("precision,taking", [("bf16", ["cupy-tiled-bf16", "generic"]),
                                                 ("fp16", ["cupy-tiled-fp16", "generic"])])
def test_only_the_paths_that_round_alike_run_a_16_bit_precision(backend, precision, taking):
    model = lstmx.LanguageModel(30, 8, 24, backend=backend, precision=precision)
    assert [impl.name for impl in registry.LAYER_IMPLS if precision in impl.precisions] == taking
    chosen = registry.choose_layer_impl(model.backend, model.dtype, False, None, (4, 24), "lstm", (), precision)
    assert chosen.name == "generic"  # "auto" here; on CuPy too (the tiled bf16 kernels are asked for by name)
    assert registry.choose_generation(model)[0] == "generic"
    for impl in registry.available_layer_impls(model.backend, model.dtype, False):
        if impl.name != "generic":
            with pytest.raises(registry.LayerImplError, match=f"runs under precision='float32' or 'tf32', not "
                                                              f"'{precision}'"):
                registry.choose_layer_impl(model.backend, model.dtype, False, impl.name, (4, 24), "lstm", (),
                                           precision)


def test_a_bf16_model_keeps_its_precision_when_moved_and_samples(backend):
    from lstmx.training.data import CharVocab

    vocab = CharVocab.from_text("abcdefghij klmnop")
    model = lstmx.LanguageModel(len(vocab), 8, 24, precision="bf16").to(backend)
    assert model.precision == "bf16" and model.backend.operands == "bf16" and model.backend.name == backend.name
    model.precision = "float32"
    assert model.backend.operands == "float32"
    model.precision = "bf16"
    text = lstmx.sample(model, vocab, "ab", 30, seed=4)
    assert len(text) == 30 and text == lstmx.sample(model, vocab, "ab", 30, seed=4)
    tokens = backend.asarray(np.zeros((5, 2), dtype=np.int64))
    rounded = host(model.infer(tokens)[0])
    model.precision = "float32"
    assert 1e-4 < relative_error(host(model.infer(tokens)[0]), rounded) < 5e-2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lstmx_train_runs_16_bit_precisions_on_the_generic_path_and_refuses_a_fast_one(tmp_path, capsys, precision):
    from lstmx.cli import main

    out = tmp_path / "run"
    assert main(["train", "--precision", precision, "--steps", "2", "--batch-size", "2", "--seq-len", "8",
                 "--hidden-size", "16", "--out", str(out)]) == 0
    assert "layers generic, loss generic, update and clipping generic" in capsys.readouterr().err
    assert (out / "last.npz").exists()
    refused = tmp_path / "refused"
    assert main(["train", "--precision", precision, "--impl", "numba", "--steps", "2", "--out", str(refused)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "numba" in err[0] and f"not '{precision}'" in err[0], err
    assert not refused.exists()


# --- fp16: the loss scale ---------------------------------------------------------------------------------------

def test_half_precision_gradients_need_the_loss_scale():
    """4,096 target tokens: a logit's gradient is at most 1/4096, deeper ones far smaller, and half precision
    holds nothing below 2**-24: unscaled, the gradients lose ~1e-2 to the rounding; scaled by 2**16 and divided
    back, ~1e-3 (what 11-bit operands leave)."""
    tokens = np.random.default_rng(0).integers(0, 60, (65, 64))
    grads = {}
    for precision, scale in (("float32", None), ("fp16", None), ("fp16", 2.0 ** 16)):
        model = lstmx.LanguageModel(60, 16, 64, 2, seed=0, precision=precision)
        out = model.loss(tokens[:-1], tokens[1:], grad_scale=None if scale is None else np.asarray(scale, np.float32))
        grads[precision, scale] = {k: host(v) / (scale or 1) for k, v in out.grads.items()}
    exact = grads["float32", None]

    def worst(key):
        return max(relative_error(grads[key][name], value) for name, value in exact.items())

    assert worst(("fp16", 2.0 ** 16)) < 2e-3 < 4e-3 < worst(("fp16", None))


def _fp16_trainer(tmp_path, optimizer="sgd", **options):
    from lstmx.training.data import CharVocab, split_ids
    from lstmx.training.loop import TrainConfig, Trainer

    from .test_checkpoint import TEXT

    vocab = CharVocab.from_text(TEXT)
    split = split_ids(vocab.encode(TEXT), 0.1, 0.0)
    config = TrainConfig(precision="fp16", steps=4, batch_size=4, seq_len=8, optimizer=optimizer, lr=0.5,
                         clip_norm=None, **options)
    model = lstmx.LanguageModel(len(vocab), 8, 16, seed=1, precision="fp16")
    return Trainer(model, vocab, split, config, tmp_path / "run", progress=False, echo=lambda line: None)


def test_a_trainer_under_fp16_takes_the_true_gradient_step(tmp_path):
    """One SGD step under fp16 moves the parameters by lr times the true (unscaled) gradient: within half
    precision's rounding of the float32 step, not 2**16 times it."""
    trainer = _fp16_trainer(tmp_path)
    before = trainer.model.state_dict()
    window = trainer.train_batches.window(0)
    reference = lstmx.LanguageModel(trainer.model.vocab_size, 8, 16, seed=1)
    exact = reference.loss(window.inputs, window.targets).grads
    trainer.train_step()
    after = trainer.model.state_dict()
    for name, grad in exact.items():
        moved = (before[name] - after[name]) / 0.5
        assert relative_error(moved, host(grad)) < 1e-2, name
    assert trainer.loss_scale.to_host() == {"scale": 2.0 ** 16, "good_steps": 1}


def test_a_step_whose_scaled_gradients_overflow_is_undone_and_halves_the_scale(tmp_path):
    from lstmx.training.loss_scale import LossScale

    trainer = _fp16_trainer(tmp_path, optimizer="adam")
    trainer.train_step()  # Adam has moments now: an undone step must restore them too
    backend = trainer.model.backend
    trainer.loss_scale = LossScale.start(backend, 2.0 ** 100, 7)  # dL/dlogits · 2**100 is infinite in fp16
    params = trainer.model.state_dict()
    moments = {name: {slot: host(v) for slot, v in slots.items()} for name, slots in trainer.optimizer.state.items()}
    trainer.train_step()
    for name, value in trainer.model.state_dict().items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)
    for name, slots in trainer.optimizer.state.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(host(value), moments[name][slot], err_msg=f"{name}/{slot}")
    assert trainer.loss_scale.to_host() == {"scale": 2.0 ** 99, "good_steps": 0}
    assert trainer.step == 2  # the step counts (the schedule moves on), as the note says
    trainer.loss_scale = LossScale.start(backend)
    trainer.train_step()
    assert any(not np.array_equal(value, params[name]) for name, value in trainer.model.state_dict().items())


def test_the_scale_doubles_after_its_interval_without_an_overflow_and_survives_a_resume(tmp_path, monkeypatch):
    from lstmx.training import loss_scale
    from lstmx.training.loop import Trainer

    monkeypatch.setattr(loss_scale, "GROWTH_INTERVAL", 3)
    trainer = _fp16_trainer(tmp_path)
    seen = []
    for _ in range(4):
        trainer.train_step()
        seen.append(trainer.loss_scale.to_host())
    assert seen == [{"scale": 2.0 ** 16, "good_steps": 1}, {"scale": 2.0 ** 16, "good_steps": 2},
                    {"scale": 2.0 ** 17, "good_steps": 0}, {"scale": 2.0 ** 17, "good_steps": 1}]
    path = trainer.save(tmp_path / "fp16.npz")
    resumed = Trainer.resume(path, _fp16_split(), tmp_path / "again", progress=False, echo=lambda line: None)
    assert resumed.loss_scale.to_host() == {"scale": 2.0 ** 17, "good_steps": 1}


def _fp16_split():
    from lstmx.training.data import CharVocab, split_ids

    from .test_checkpoint import TEXT

    return split_ids(CharVocab.from_text(TEXT).encode(TEXT), 0.1, 0.0)
