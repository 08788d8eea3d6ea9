"""Backend-specific fast paths against the generic Array API path they stand in for."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmx
from lstmx.layers import lstm as generic
from lstmx.layers import lstm_numpy
from lstmx.layers.embedding import scatter_add_rows_generic
from lstmx.layers.scatter_native import scatter_add_rows_native
from lstmx.lstm import layer_backward_for, layer_forward_for

NUMPY = lstmx.get_backend("numpy")


def random_layer(steps, batch, features, hidden, dtype, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((steps, batch, features)), 0.5 * rng.standard_normal((features + hidden, 4 * hidden)),
              0.3 * rng.standard_normal(4 * hidden), rng.standard_normal((batch, hidden)), rng.standard_normal((batch, hidden))]
    grads = [rng.standard_normal((steps, batch, hidden)), rng.standard_normal((batch, hidden)),
             rng.standard_normal((batch, hidden))]
    return [a.astype(dtype) for a in arrays], [g.astype(dtype) for g in grads]


@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (1, 1, 2, 3), (3, 0, 2, 3), (4, 2, 5, 1)])
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_numpy_lstm_layer_matches_generic(shape, dtype, tolerance):
    (x, weight, bias, h0, c0), (dy, dh, dc) = random_layer(*shape, dtype)
    results = []
    for module in (generic, lstm_numpy):
        y, (h, c), cache = module.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
        dx, (dh0, dc0), dweight, dbias = module.lstm_layer_backward(NUMPY, dy, dh, dc, weight, cache)
        results.append([y, h, c, dx, dh0, dc0, dweight, dbias])
        assert all(r.dtype == dtype for r in results[-1])
    for name, fast, reference in zip("y h c dx dh0 dc0 dweight dbias".split(), results[1], results[0]):
        np.testing.assert_allclose(fast, reference, rtol=tolerance, atol=tolerance, err_msg=name)


def test_numpy_fast_path_leaves_its_inputs_and_cache_reusable():
    (x, weight, bias, h0, c0), (dy, dh, dc) = random_layer(5, 2, 3, 4, np.float64)
    originals = [a.copy() for a in (x, weight, bias, h0, c0, dy, dh, dc)]
    _, _, cache = lstm_numpy.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    first = lstm_numpy.lstm_layer_backward(NUMPY, dy, dh, dc, weight, cache)
    second = lstm_numpy.lstm_layer_backward(NUMPY, dy, dh, dc, weight, cache)
    np.testing.assert_array_equal(first[2], second[2])
    for before, after in zip(originals, (x, weight, bias, h0, c0, dy, dh, dc)):
        np.testing.assert_array_equal(before, after)


def test_dispatch_picks_fast_path_only_where_it_applies():
    strict = lstmx.get_backend("array_api_strict")
    assert layer_forward_for(NUMPY, None) is lstm_numpy.lstm_layer_forward
    assert layer_forward_for(NUMPY, np.ones((2, 1, 1))) is generic.lstm_layer_forward
    assert layer_forward_for(strict, None) is generic.lstm_layer_forward
    (x, weight, bias, h0, c0), _ = random_layer(2, 1, 2, 3, np.float64)
    _, _, cache = lstm_numpy.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    assert layer_backward_for(cache) is lstm_numpy.lstm_layer_backward
    with pytest.raises(ValueError, match="no step mask"):
        lstm_numpy.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0, np.ones((2, 1, 1)))


def test_numpy_scatter_add_matches_generic():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 7, 50)
    values = rng.standard_normal((50, 3))
    np.testing.assert_allclose(scatter_add_rows_native(NUMPY, rows, values, 7),
                               scatter_add_rows_generic(NUMPY, rows, values, 7), rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 6), batch=st.integers(0, 4), features=st.integers(1, 5), hidden=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_numpy_lstm_layer_matches_generic_on_any_shape(steps, batch, features, hidden, seed):
    (x, weight, bias, h0, c0), (dy, dh, dc) = random_layer(steps, batch, features, hidden, np.float64, seed)
    fast = lstm_numpy.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    reference = generic.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    np.testing.assert_allclose(fast[0], reference[0], rtol=1e-12, atol=1e-12)
    fast_grads = lstm_numpy.lstm_layer_backward(NUMPY, dy, dh, dc, weight, fast[2])
    reference_grads = generic.lstm_layer_backward(NUMPY, dy, dh, dc, weight, reference[2])
    for ours, theirs in zip((fast_grads[0], *fast_grads[1], *fast_grads[2:]),
                            (reference_grads[0], *reference_grads[1], *reference_grads[2:])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_scatter_add_dispatch_by_table_size():
    from lstmx.layers.embedding import ONE_HOT_MAX_ROWS, scatter_add_rows

    assert scatter_add_rows(NUMPY, ONE_HOT_MAX_ROWS) is scatter_add_rows_generic
    assert scatter_add_rows(NUMPY, ONE_HOT_MAX_ROWS + 1) is scatter_add_rows_native
    assert scatter_add_rows(lstmx.get_backend("array_api_strict"), 10**6) is scatter_add_rows_generic
