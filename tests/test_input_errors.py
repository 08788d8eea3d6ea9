"""Bad input at the public boundary gets an error that names the problem."""

from __future__ import annotations

import numpy as np
import pytest

from lstmx import LSTM, LanguageModel


@pytest.fixture
def model(backend):
    return LSTM(3, 4, 2, backend=backend, seed=0)


def floats(backend, shape, dtype="float32"):
    return backend.asarray(np.ones(shape), dtype=backend.dtype(dtype))


def test_wrong_rank(backend, model):
    with pytest.raises(ValueError, match=r"x must have 3 dimensions \(\*, \*, 3\), got shape \(2, 3\)"):
        model.forward(floats(backend, (2, 3)))


def test_wrong_feature_size(backend, model):
    with pytest.raises(ValueError, match="axis 2 is 5, expected 3"):
        model.forward(floats(backend, (2, 1, 5)))


def test_integer_input(backend, model):
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        model.forward(backend.asarray(np.ones((2, 1, 3), dtype=np.int64)))


def test_mismatched_dtype(backend, model):
    with pytest.raises(TypeError, match="dtype float64 but the model's parameters are float32"):
        model.forward(floats(backend, (2, 1, 3), "float64"))


def test_empty_sequence(backend, model):
    with pytest.raises(ValueError, match="empty sequence"):
        model.forward(floats(backend, (0, 2, 3)))


@pytest.mark.parametrize("lengths,message", [([3, 1], r"shape \(3,\)"), ([4, 0, 1], r"lie in \[0, 2\]"),
                                             ([-1, 1, 1], r"lie in \[0, 2\]"), ([1.5, 1, 1], "integers")])
def test_bad_lengths(backend, model, lengths, message):
    with pytest.raises((ValueError, TypeError), match=message):
        model.forward(floats(backend, (2, 3, 3)), lengths=np.asarray(lengths))


def test_nan_and_inf_when_asked(backend, model):
    for bad in (np.nan, np.inf):
        x = np.ones((2, 1, 3))
        x[1, 0, 2] = bad
        model.forward(backend.asarray(x, dtype=model.dtype))  # unchecked by default
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            model.forward(backend.asarray(x, dtype=model.dtype), check_finite=True)


def test_state_of_wrong_size(backend, model):
    h = floats(backend, (2, 1, 5))
    with pytest.raises(ValueError, match="state h must have shape"):
        model.forward(floats(backend, (2, 1, 3)), (h, h))
    with pytest.raises(TypeError, match="state must be a pair"):
        model.forward(floats(backend, (2, 1, 3)), floats(backend, (2, 1, 4)))


def test_wrong_gradient_shape(backend, model):
    y, _, cache = model.forward(floats(backend, (2, 1, 3)))
    with pytest.raises(ValueError, match="dy must have shape"):
        model.backward(floats(backend, (2, 1, 5)), cache)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        LSTM(3, 0)
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        LSTM(3, 4, dropout=1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        LSTM(3, 4, dtype="int32")


def test_language_model_token_errors(backend):
    model = LanguageModel(5, 3, 4, backend=backend)
    with pytest.raises(ValueError, match=r"ids outside \[0, 5\)"):
        model.forward(backend.asarray(np.array([[0, 5]])))
    with pytest.raises(TypeError, match="integer array of token ids"):
        model.forward(backend.asarray(np.array([[0.0, 1.0]])))
    tokens = backend.asarray(np.array([[0, 1], [2, 3]]))
    with pytest.raises(ValueError, match="targets must have the inputs' shape"):
        model.loss(tokens, backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match="not ignore_index"):
        model.loss(tokens, backend.asarray(np.array([[0, 1], [9, 3]])))
