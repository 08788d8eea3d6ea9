"""``precision="bf16"``: bfloat16 operands of every matrix product, float32 sums, state and weights.

The rounding is checked against the bit-level definition of round-to-nearest-even; a layer's forward against a
reference written here with that bit-level rounding; the gradients against PyTorch's autograd in
``test_torch_reference.py`` (tests-torch). Fast paths refuse the precision (they multiply in float32).
"""

from __future__ import annotations

import numpy as np
import pytest

import lstmx
from lstmx.backend import round_to_bfloat16, to_numpy
from lstmx.dispatch import registry

from .helpers import host


def bfloat16_by_bits(values: np.ndarray) -> np.ndarray:
    """float32 → nearest bfloat16 (ties to even) → float32, on the bits: add half an ulp of bfloat16 less one,
    plus the kept part's last bit, then cut the 16 low bits."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def relative_error(ours, reference) -> float:
    ours, reference = host(ours), np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


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


def _reference_forward(params: dict, x: np.ndarray, hidden: int, proj: int) -> np.ndarray:
    """One layer's y, every product's operands rounded by the bits and summed in float64."""
    r = bfloat16_by_bits
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


@pytest.mark.parametrize("proj", [0, 5])
def test_a_bf16_layer_rounds_every_forward_operand(backend, proj):
    """Float32 sums against float64 ones stay near 1e-7; leaving any one operand in float32 moves y by ~1e-3, as
    float32 products do. A seed whose run meets an operand whose float32 and float64 values lie either side of a
    bfloat16 midpoint rounds it one bfloat16 ulp apart and ends ~1e-4 away: the median over seeds is compared."""
    errors = {"bf16": [], "float32": []}
    for seed in range(9):
        x = np.random.default_rng(seed).standard_normal((8, 3, 6)).astype(np.float32)
        for precision in errors:
            model = lstmx.LSTM(6, 16, proj_size=proj, backend=backend, seed=seed, precision=precision)
            reference = _reference_forward(model.state_dict(), x, 16, proj)
            errors[precision].append(relative_error(model.forward(backend.asarray(x))[0], reference))
    assert np.median(errors["bf16"]) < 1e-5, errors["bf16"]
    assert np.median(errors["float32"]) > 5e-4, errors["float32"]


def test_bf16_gradients_stay_within_bfloat16_of_the_float32_ones(backend):
    tokens = np.random.default_rng(2).integers(0, 30, (21, 4))
    losses, grads = {}, {}
    for precision in ("float32", "bf16"):
        model = lstmx.LanguageModel(30, 8, 24, 2, proj_size=12, backend=backend, seed=0, precision=precision)
        out = model.loss(backend.asarray(tokens[:-1]), backend.asarray(tokens[1:]))
        losses[precision], grads[precision] = float(out.loss), {k: host(v) for k, v in out.grads.items()}
    assert abs(losses["bf16"] - losses["float32"]) < 1e-2 * losses["float32"]
    for name, exact in grads["float32"].items():
        error = relative_error(grads["bf16"][name], exact)
        assert 1e-5 < error < 5e-2, f"{name}: {error:.1e}"


def test_only_the_generic_paths_run_bf16(backend):
    model = lstmx.LanguageModel(30, 8, 24, backend=backend, precision="bf16")
    taking = [impl.name for impl in registry.LAYER_IMPLS if "bf16" in impl.precisions]
    assert taking == ["generic"]
    chosen = registry.choose_layer_impl(model.backend, model.dtype, False, None, (4, 24), "lstm", (), "bf16")
    assert chosen.name == "generic"
    assert registry.choose_generation(model)[0] == "generic"
    for impl in registry.available_layer_impls(model.backend, model.dtype, False):
        if impl.name != "generic":
            with pytest.raises(registry.LayerImplError, match="runs under precision='float32' or 'tf32', not 'bf16'"):
                registry.choose_layer_impl(model.backend, model.dtype, False, impl.name, (4, 24), "lstm", (), "bf16")


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


def test_lstmx_train_runs_bf16_on_the_generic_path_and_refuses_a_fast_one(tmp_path, capsys):
    from lstmx.cli import main

    out = tmp_path / "run"
    assert main(["train", "--precision", "bf16", "--steps", "2", "--batch-size", "2", "--seq-len", "8",
                 "--hidden-size", "16", "--out", str(out)]) == 0
    assert "layers generic, loss generic, update and clipping generic" in capsys.readouterr().err
    assert (out / "last.npz").exists()
    refused = tmp_path / "refused"
    assert main(["train", "--precision", "bf16", "--impl", "numba", "--steps", "2", "--out", str(refused)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "numba" in err[0] and "not 'bf16'" in err[0], err
    assert not refused.exists()
