"""Backend-specific fast paths against the generic Array API path they stand in for."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmx
from lstmx.layers import lstm as generic
from lstmx.layers import lstm_numpy
from lstmx.layers.buffers import BufferPool
from lstmx.layers.embedding import scatter_add_rows_generic
from lstmx.layers.scatter_native import scatter_add_rows_native
from lstmx.lstm import cpu_fast_path, layer_backward_for, layer_forward_for

from .test_gradients import assert_rows_pass, lstm_layer_rows

NUMPY = lstmx.get_backend("numpy")

try:
    from lstmx.layers import lstm_numba
except ImportError:  # Numba is the optional [fast] extra
    lstm_numba = None
needs_numba = pytest.mark.skipif(lstm_numba is None, reason="numba is not installed (pip install 'lstmx[fast]')")
FAST_PATHS = [pytest.param(lstm_numpy, id="numpy"), pytest.param(lstm_numba, id="numba", marks=needs_numba)]


def random_layer(steps, batch, features, hidden, dtype, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((steps, batch, features)), 0.5 * rng.standard_normal((features + hidden, 4 * hidden)),
              0.3 * rng.standard_normal(4 * hidden), rng.standard_normal((batch, hidden)), rng.standard_normal((batch, hidden))]
    grads = [rng.standard_normal((steps, batch, hidden)), rng.standard_normal((batch, hidden)),
             rng.standard_normal((batch, hidden))]
    return [a.astype(dtype) for a in arrays], [g.astype(dtype) for g in grads]


@pytest.mark.parametrize("fast", FAST_PATHS)
@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (1, 1, 2, 3), (3, 0, 2, 3), (4, 2, 5, 1), (3, 17, 9, 33)])
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fast_lstm_layer_matches_generic(fast, shape, dtype, tolerance):
    (x, weight, bias, h0, c0), (dy, dh, dc) = random_layer(*shape, dtype)
    results = []
    for module in (generic, fast):
        y, (h, c), cache = module.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
        dx, (dh0, dc0), dweight, dbias = module.lstm_layer_backward(NUMPY, dy, dh, dc, weight, cache)
        results.append([y, h, c, dx, dh0, dc0, dweight, dbias])
        assert all(r.dtype == dtype for r in results[-1])
    for name, fast, reference in zip("y h c dx dh0 dc0 dweight dbias".split(), results[1], results[0]):
        np.testing.assert_allclose(fast, reference, rtol=tolerance, atol=tolerance, err_msg=name)


@pytest.mark.parametrize("fast", FAST_PATHS)
def test_fast_lstm_layer_gradients_match_finite_differences(fast):
    assert_rows_pass(lstm_layer_rows(NUMPY, steps=5, batch=3, features=4, hidden=5, layer=fast))


@pytest.mark.parametrize("fast", FAST_PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_leaves_its_inputs_and_cache_reusable(fast, dtype):
    # Large enough that the buffers come from the pool (its min_bytes is 64 KiB).
    (x, weight, bias, h0, c0), (dy, dh, dc) = random_layer(20, 16, 32, 64, dtype)
    originals = [a.copy() for a in (x, weight, bias, h0, c0, dy, dh, dc)]
    y, (h, c), cache = fast.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    outputs = [a.copy() for a in (y, h, c)]
    first = fast.lstm_layer_backward(NUMPY, dy, dh, dc, weight, cache)
    fast.lstm_layer_forward(NUMPY, 2 * x, weight, bias, h0, c0)  # must not reuse the live cache's buffers
    second = fast.lstm_layer_backward(NUMPY, dy, dh, dc, weight, cache)
    for a, b in zip((*first[:1], *first[1], *first[2:]), (*second[:1], *second[1], *second[2:])):
        np.testing.assert_array_equal(a, b)
    for before, after in zip(originals + outputs, (x, weight, bias, h0, c0, dy, dh, dc, y, h, c)):
        np.testing.assert_array_equal(before, after)


@needs_numba
def test_compiled_path_keeps_nan_and_inf():
    """Fast-math must not assume finite values: a NaN input reaches the output for the loss check to see."""
    (x, weight, bias, h0, c0), _ = random_layer(3, 2, 3, 4, np.float32)
    x[1, 0, 2] = np.nan
    weight[0, 0] = np.inf
    y, _, _ = lstm_numba.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    assert np.isnan(y[1:, 0]).all() and not np.isnan(y[0, 1]).any()


def test_dispatch_picks_fast_path_only_where_it_applies(monkeypatch):
    strict = lstmx.get_backend("array_api_strict")
    compiled = lstm_numba or lstm_numpy  # float32 goes to the compiled kernels when Numba is installed
    assert layer_forward_for(NUMPY, None, np.float32) is compiled.lstm_layer_forward
    assert layer_forward_for(NUMPY, None, np.float64) is lstm_numpy.lstm_layer_forward
    assert layer_forward_for(NUMPY, np.ones((2, 1, 1)), np.float32) is generic.lstm_layer_forward
    assert layer_forward_for(strict, None, np.float32) is generic.lstm_layer_forward
    monkeypatch.setenv("LSTMX_DISABLE_NUMBA", "1")
    assert cpu_fast_path(np.float32) is lstm_numpy
    monkeypatch.setenv("LSTMX_DISABLE_NUMBA", "0")
    assert cpu_fast_path(np.float32) is compiled
    (x, weight, bias, h0, c0), _ = random_layer(2, 1, 2, 3, np.float64)
    _, _, cache = lstm_numpy.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    assert layer_backward_for(cache) is lstm_numpy.lstm_layer_backward
    with pytest.raises(ValueError, match="no step mask"):
        lstm_numpy.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0, np.ones((2, 1, 1)))


def test_buffer_pool_hands_out_only_arrays_nothing_else_holds():
    pool = BufferPool(per_shape=2, shapes=2, min_bytes=0)
    first = pool.empty((4, 3), np.float32)
    view = first[1:]
    del first
    second = pool.empty((4, 3), np.float32)
    assert second is not view.base  # a view keeps its base in use
    address = second.ctypes.data
    del second
    assert pool.empty((4, 3), np.float32).ctypes.data == address  # released: handed out again
    assert pool.empty((4, 3), np.float64).dtype == np.float64
    held = [pool.empty((4, 3), np.float32) for _ in range(3)]  # beyond per_shape: fresh, unpooled arrays
    assert len({a.ctypes.data for a in held}) == 3
    pool.empty((5,), np.float32)  # a third shape: the least recently used one (float64) is dropped
    assert pool.nbytes() == 2 * (4 * 3 * 4) + 5 * 4
    pool.clear()
    assert pool.nbytes() == 0


def test_numpy_scatter_add_matches_generic():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 7, 50)
    values = rng.standard_normal((50, 3))
    np.testing.assert_allclose(scatter_add_rows_native(NUMPY, rows, values, 7),
                               scatter_add_rows_generic(NUMPY, rows, values, 7), rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 6), batch=st.integers(0, 4), features=st.integers(1, 5), hidden=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_fast_lstm_layers_match_generic_on_any_shape(steps, batch, features, hidden, seed):
    (x, weight, bias, h0, c0), (dy, dh, dc) = random_layer(steps, batch, features, hidden, np.float64, seed)
    for module in (lstm_numpy, lstm_numba) if lstm_numba else (lstm_numpy,):
        assert_fast_matches_generic_float64(module, x, weight, bias, h0, c0, dy, dh, dc)


def assert_fast_matches_generic_float64(module, x, weight, bias, h0, c0, dy, dh, dc):
    fast = module.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    reference = generic.lstm_layer_forward(NUMPY, x, weight, bias, h0, c0)
    np.testing.assert_allclose(fast[0], reference[0], rtol=1e-12, atol=1e-12)
    fast_grads = module.lstm_layer_backward(NUMPY, dy, dh, dc, weight, fast[2])
    reference_grads = generic.lstm_layer_backward(NUMPY, dy, dh, dc, weight, reference[2])
    for ours, theirs in zip((fast_grads[0], *fast_grads[1], *fast_grads[2:]),
                            (reference_grads[0], *reference_grads[1], *reference_grads[2:])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_scatter_add_dispatch_by_table_size():
    from lstmx.layers.embedding import ONE_HOT_MAX_ROWS, scatter_add_rows

    assert scatter_add_rows(NUMPY, ONE_HOT_MAX_ROWS) is scatter_add_rows_generic
    assert scatter_add_rows(NUMPY, ONE_HOT_MAX_ROWS + 1) is scatter_add_rows_native
    assert scatter_add_rows(lstmx.get_backend("array_api_strict"), 10**6) is scatter_add_rows_generic


def test_buffer_pool_never_hands_one_array_to_two_threads():
    import threading

    pool = BufferPool(per_shape=64, min_bytes=0)
    taken, start = [], threading.Barrier(8)

    def take():
        start.wait()
        mine = [pool.empty((16,), np.float32) for _ in range(4)]
        taken.append(mine)  # held until the test ends: every one must be distinct

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    addresses = [array.ctypes.data for mine in taken for array in mine]
    assert len(addresses) == 32 and len(set(addresses)) == 32
