"""``precision="tf32"``: TensorFloat-32 GEMMs on CuPy, refused where it cannot apply, restored after each call."""

from __future__ import annotations

import numpy as np
import pytest

import lstmx
from lstmx.backend import is_cupy, to_numpy
from lstmx.cli import main
from lstmx.training.loop import TrainConfig, Trainer

from .test_checkpoint import TEXT


def test_precision_is_checked_at_the_door(backend):
    for model in (lambda **k: lstmx.LSTM(3, 4, backend=backend, **k),
                  lambda **k: lstmx.LanguageModel(7, 3, 4, backend=backend, **k)):
        with pytest.raises(ValueError, match="precision must be one of float32, tf32, bf16, fp16; got 'fp8'"):
            model(precision="fp8")
        for half in ("bf16", "fp16"):
            with pytest.raises(ValueError, match=f"precision='{half}' needs dtype float32"):
                model(precision=half, dtype="float64")
        with pytest.raises(ValueError, match="precision='tf32' needs backend='cupy' and dtype float32"):
            model(precision="tf32", dtype="float64")
        if not is_cupy(backend):
            with pytest.raises(ValueError, match=f"got backend '{backend.name}'"):
                model(precision="tf32")
        assert model().precision == "float32"
    lstm = lstmx.LSTM(3, 4, backend=backend)
    with pytest.raises(ValueError, match="precision must be one of"):
        lstm.precision = "half"
    assert lstm.precision == "float32"


def test_a_trainer_refuses_a_model_of_another_precision(tmp_path):
    from lstmx.training.data import CharVocab, split_ids

    vocab = CharVocab.from_text(TEXT)
    split = split_ids(vocab.encode(TEXT), 0.1, 0.0)
    model = lstmx.LanguageModel(len(vocab), 4, 8)
    with pytest.raises(ValueError, match="model's precision 'float32' differs from config.precision 'tf32'"):
        Trainer(model, vocab, split, TrainConfig(precision="tf32", steps=1, batch_size=2, seq_len=4), tmp_path)


def test_cli_refuses_tf32_off_cupy_before_reading_any_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--precision", "tf32", "--out", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lstmx train: error: --precision: precision='tf32' needs backend='cupy' and dtype float32 "
                   "(TensorFloat-32 is a CUDA tensor-core mode); got backend 'numpy', dtype float32"]
    assert not out.exists()


@pytest.mark.parametrize("impl", lstmx.dispatch.registry.TF32_RECURRENCE_IMPLS)
def test_tf32_changes_the_products_within_its_precision_and_restores_the_math_mode(backend, impl):
    if not is_cupy(backend):
        pytest.skip("TensorFloat-32 exists on CuPy only (refused elsewhere: test_precision_is_checked_at_the_door)")
    import cupy
    from cupy_backends.cuda.libs import cublas

    handle = cupy.cuda.device.get_cublas_handle()
    before = cublas.getMathMode(handle)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((20, 16, 128)), dtype=backend.xp.float32)
    outputs = {}
    for precision in ("float32", "tf32"):  # the TF32 tiled kernels against the float32 ones
        ran = "cupy-tiled" if (impl, precision) == ("cupy-tiled-tf32", "float32") else impl
        model = lstmx.LSTM(128, 256, backend=backend, seed=0, precision=precision)
        y, _, cache = model.forward(x, impl=ran)
        dx, _, grads = model.backward(backend.xp.ones_like(y), cache)
        outputs[precision] = [to_numpy(a).astype(np.float64) for a in (y, dx, grads["weight_l0"])]
        assert cublas.getMathMode(handle) == before  # restored after every call
    for full, reduced in zip(outputs["float32"], outputs["tf32"]):
        scale = np.max(np.abs(full))
        difference = np.max(np.abs(full - reduced)) / scale
        assert 1e-6 < difference < 2e-2, difference  # TF32 ran (not bit-equal to float32), and only TF32's error

    moved = lstmx.LSTM(3, 4, backend=backend, precision="tf32").to("numpy")
    assert moved.precision == "float32"


@pytest.mark.parametrize("steps,batch,features,hidden,masked", [(5, 1, 3, 33, True), (3, 17, 8, 64, False),
                                                                 (4, 40, 16, 200, True), (2, 64, 8, 512, False)])
def test_tf32_tiled_kernels_stay_within_tf32_error_of_float32(backend, steps, batch, features, hidden, masked):
    """The tiled path's tensor-core variant on the GPU, B = 1, H not a multiple of 8 or 32, lengths, and the
    row-3 size: within TF32's error of the float32 generic path, and not equal to it."""
    if not is_cupy(backend):
        pytest.skip("TensorFloat-32 exists on CuPy only")
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((steps, batch, features)), dtype=backend.xp.float32)
    lengths = rng.integers(1, steps + 1, size=batch).tolist() if masked else None
    outputs = {}
    for precision, impl in (("float32", "generic"), ("tf32", "cupy-tiled-tf32")):
        model = lstmx.LSTM(features, hidden, backend=backend, seed=0, precision=precision)
        y, (h, c), cache = model.forward(x, lengths=lengths, impl=impl)
        dx, (dh0, dc0), grads = model.backward(backend.xp.ones_like(y), cache)
        outputs[precision] = [to_numpy(a).astype(np.float64) for a in (y, h, c, dx, dh0, dc0, grads["weight_l0"])]
    differences = [np.max(np.abs(f - r)) / np.max(np.abs(f)) for f, r in zip(outputs["float32"], outputs["tf32"])]
    assert max(differences) < 2e-2 and max(differences) > 1e-6, differences


def test_tf32_tiled_kernels_at_their_size_limit_and_one_past_it(backend):
    """The TF32 variant has tile shapes of its own (multiples of the MMA tile), so a size limit of its own: it
    runs at that limit and is refused one past it, by name in one line."""
    if not is_cupy(backend):
        pytest.skip("TensorFloat-32 exists on CuPy only")
    from lstmx.dispatch import registry

    impl = registry.layer_impl("cupy-tiled-tf32")
    limit = impl.largest_hidden(backend, np.float32, 2, precision="tf32")
    assert 0 < limit < 4096
    assert impl.refuses(registry.Call(backend, np.float32, False, (2, limit + 1), precision="tf32")) is not None
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((3, 2, 3)), dtype=backend.xp.float32)
    results = {}
    for precision, impl_name in (("float32", "generic"), ("tf32", "cupy-tiled-tf32")):
        model = lstmx.LSTM(3, limit, backend=backend, seed=0, precision=precision)
        y, _, cache = model.forward(x, impl=impl_name)
        dx, _, grads = model.backward(backend.xp.ones_like(y), cache)
        results[precision] = [to_numpy(a).astype(np.float64) for a in (y, dx, grads["weight_l0"])]
    for full, reduced in zip(results["float32"], results["tf32"]):
        assert np.max(np.abs(full - reduced)) / np.max(np.abs(full)) < 2e-2
    past = lstmx.LSTM(3, limit + 1, backend=backend, seed=0, precision="tf32")
    with pytest.raises(registry.LayerImplError, match="'cupy-tiled-tf32' cannot run this call"):
        past.forward(x, impl="cupy-tiled-tf32")
