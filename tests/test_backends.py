"""Backend resolution, agreement between backends, and edge-case shapes."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import lstmx
from lstmx import LSTM, BackendError, LanguageModel, MixedBackendError, get_backend

from .helpers import host


def test_backend_names_resolve():
    assert get_backend("numpy").name == "numpy"
    assert get_backend("array_api_strict").name == "array_api_strict"
    with pytest.raises(BackendError, match="unknown backend 'tensorflow'"):
        get_backend("tensorflow")


def test_backend_from_namespace_and_array():
    import array_api_strict

    assert get_backend(array_api_strict).name == "array_api_strict"
    assert get_backend(np.zeros(2)).name == "numpy"
    assert get_backend(np).name == "numpy"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_cupy_without_cupy_says_so():
    with pytest.raises(BackendError, match="needs CuPy, which is not installed"):
        LSTM(2, 3, backend="cupy")


def test_mixed_backends_are_refused():
    import array_api_strict

    model = LSTM(2, 3)  # NumPy
    with pytest.raises(MixedBackendError, match="array_api_strict array but the model lives on numpy"):
        model.forward(array_api_strict.zeros((2, 1, 2), dtype=array_api_strict.float32))
    with pytest.raises(MixedBackendError, match="two backends"):
        lstmx.backend_of(np.zeros(1), array_api_strict.zeros(1))


def test_same_seed_same_weights_everywhere(backend):
    reference = LanguageModel(11, 5, 6, 2, backend="numpy", seed=42).state_dict()
    other = LanguageModel(11, 5, 6, 2, backend=backend, seed=42).state_dict()
    assert reference.keys() == other.keys()
    for name in reference:
        np.testing.assert_array_equal(reference[name], other[name])
    different = LanguageModel(11, 5, 6, 2, backend="numpy", seed=43).state_dict()
    assert not np.array_equal(reference["lstm.weight_l0"], different["lstm.weight_l0"])


def test_float32_outputs_agree_with_a_float64_reference(backend):
    """Every backend's float32 result (its default implementation) against NumPy's generic path in float64,
    so the comparison means something on NumPy too."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 4))
    results = []
    for name, dtype, impl in (("numpy", "float64", "generic"), (backend, "float32", None)):
        for lengths in ([7, 4, 1], None):
            model = LSTM(4, 5, 2, backend=name, dtype=dtype, seed=1)
            b = model.backend
            y, (h, c), cache = model.forward(b.asarray(x, dtype=model.dtype), lengths=lengths, impl=impl)
            dx, _, grads = model.backward(b.xp.ones_like(y), cache)
            results.append([host(y), host(h), host(c), host(dx)] + [host(grads[k]) for k in sorted(grads)])
    results = [results[0] + results[1], results[2] + results[3]]
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_init_is_orthogonal_recurrent_and_forget_bias_one():
    model = LSTM(3, 4, dtype="float64", seed=0)
    weight, bias = host(model.params["weight_l0"]), host(model.params["bias_l0"])
    for gate in range(4):
        block = weight[3:, gate * 4:(gate + 1) * 4]
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-12)
    np.testing.assert_array_equal(bias[4:8], 1.0)
    np.testing.assert_array_equal(np.delete(bias, range(4, 8)), 0.0)


@pytest.mark.parametrize("steps,batch", [(1, 1), (1, 3), (4, 1), (3, 0)])
def test_edge_shapes(backend, steps, batch):
    model = LSTM(2, 3, 2, backend=backend, seed=0)
    x = backend.asarray(np.ones((steps, batch, 2)), dtype=model.dtype)
    y, (h, c), cache = model.forward(x)
    assert tuple(y.shape) == (steps, batch, 3) and tuple(h.shape) == (2, batch, 3)
    dx, (dh0, dc0), grads = model.backward(backend.xp.ones_like(y), cache)
    assert tuple(dx.shape) == (steps, batch, 2) and tuple(dh0.shape) == (2, batch, 3)
    assert {k: tuple(v.shape) for k, v in grads.items()} == {k: tuple(v.shape) for k, v in model.params.items()}
    if batch == 0:
        assert all(np.all(host(g) == 0) for g in grads.values())


def test_lengths_padding_outputs_zero_and_keeps_state(backend):
    rng = np.random.default_rng(3)
    model = LSTM(2, 3, 2, backend=backend, seed=0)
    x = rng.standard_normal((5, 2, 2)).astype(np.float32)
    y, (h, c), _ = model.forward(backend.asarray(x), lengths=[5, 2])
    assert np.all(host(y)[2:, 1] == 0.0)
    y_short, (h_short, c_short), _ = model.forward(backend.asarray(x[:2, 1:]))
    np.testing.assert_allclose(host(h)[:, 1], host(h_short)[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(c)[:, 1], host(c_short)[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(y)[:2, 1], host(y_short)[:, 0], rtol=1e-6, atol=1e-6)


def test_dropout_only_in_training_mode():
    model = LSTM(2, 3, 2, dropout=0.5, seed=0)
    x = np.ones((3, 2, 2), dtype=np.float32)
    _, _, cache = model.forward(x)
    assert cache.dropout_masks[0] is not None
    model.eval()
    first, _, cache = model.forward(x)
    second, _, _ = model.forward(x)
    assert cache.dropout_masks == (None,)
    np.testing.assert_array_equal(first, second)


@pytest.mark.torch
def test_torch_tensors_are_a_named_backend():
    """backend="torch" (or a tensor) runs the generic path on PyTorch tensors on the tensors' device, with the same
    weights as NumPy for the same seed, and refuses tensors of another backend in one line."""
    torch = pytest.importorskip("torch")
    assert get_backend("torch").name == "torch"
    x = torch.zeros((3, 2, 4), dtype=torch.float64)
    assert get_backend(x).name == "torch" and get_backend(x).device == x.device
    model = LSTM(4, 5, 2, bidirectional=True, proj_size=2, backend=x, dtype="float64", seed=4)
    reference = LSTM(4, 5, 2, bidirectional=True, proj_size=2, backend="numpy", dtype="float64", seed=4)
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value)
    inputs = np.random.default_rng(0).standard_normal((3, 2, 4))
    y, (h, c), cache = model.forward(torch.from_numpy(inputs), lengths=[3, 1])
    assert isinstance(y, torch.Tensor) and tuple(h.shape) == (4, 2, 2) and tuple(c.shape) == (4, 2, 5)
    assert cache.impl == "generic"
    y_numpy, _, _ = reference.forward(inputs, lengths=[3, 1])
    np.testing.assert_allclose(host(y), y_numpy, rtol=0, atol=1e-14)
    with pytest.raises(MixedBackendError, match="numpy array but the model lives on torch"):
        model.forward(inputs)
