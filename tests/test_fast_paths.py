"""Every layer implementation in the registry against the generic Array API path it stands in for.

The list comes from :data:`lstmx.dispatch.registry.LAYER_IMPLS`: a new implementation is tested here without a line
added. Each runs on the backends it supports among those the ``backend`` fixture provides; one that cannot
import here (no Numba, no CuPy) is skipped with the reason.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmx
from lstmx.dispatch import registry
from lstmx.dispatch.contract import contract_breaches, protocols_for
from lstmx.backend import is_cupy, to_numpy
from lstmx.kernels.host.buffers import BufferPool
from lstmx.nn.layers import lstm_layer as generic
from lstmx.nn.layers.embedding import scatter_add_rows_generic
from lstmx.validate import lengths_to_mask

from .test_gradients import assert_rows_pass, lstm_layer_rows

NUMPY = lstmx.get_backend("numpy")
FAST_IMPLS = [pytest.param(impl, id=impl.name) for impl in registry.LAYER_IMPLS if impl.name != "generic"]


TF32_TOLERANCE = 2e-2  # what TF32's 10-bit mantissa products leave of a float32 layer's agreement


def runnable(impl, backend, dtype=np.float64, masked=False):
    """The implementation's module, or a skip saying why it cannot run on ``backend`` here (under the first
    model precision it runs under: "tf32" for the TF32 tiled kernels)."""
    reason = impl.refuses(registry.Call(backend, dtype, masked, precision=impl.precisions[0]))
    if reason is not None:
        pytest.skip(f"{impl.name}: {reason}")
    return impl.load()


def at_its_precision(backend, impl):
    """``backend`` with the operand format of the first precision ``impl`` runs under (bfloat16 operands for a
    path that runs precision="bf16" only), as a model of that precision hands it to its layers."""
    from lstmx.dispatch.precision import operand_format

    return backend._replace(operands=operand_format(impl.precisions[0]))


def random_layer(backend, steps, batch, features, hidden, dtype, seed=0):
    dtype = backend.dtype(np.dtype(dtype).name)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((steps, batch, features)), 0.5 * rng.standard_normal((features + hidden, 4 * hidden)),
              0.3 * rng.standard_normal(4 * hidden), rng.standard_normal((batch, hidden)), rng.standard_normal((batch, hidden))]
    grads = [rng.standard_normal((steps, batch, hidden)), rng.standard_normal((batch, hidden)),
             rng.standard_normal((batch, hidden))]
    return [backend.asarray(a, dtype=dtype) for a in arrays], [backend.asarray(g, dtype=dtype) for g in grads]


def forward_and_backward(module, backend, arrays, grads, step_mask=None):
    x, weight, bias, h0, c0 = arrays
    dy, dh, dc = grads
    y, (h, c), cache = module.lstm_layer_forward(backend, x, weight, bias, h0, c0, step_mask)
    dx, (dh0, dc0), dweight, dbias = module.lstm_layer_backward(backend, dy, dh, dc, weight, cache)
    return {"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, "dweight": dweight, "dbias": dbias}


def assert_matches_generic(module, backend, arrays, grads, tolerance, step_mask=None):
    fast = forward_and_backward(module, backend, arrays, grads, step_mask)
    reference = forward_and_backward(generic, backend, arrays, grads, step_mask)
    for name, value in fast.items():
        assert value.dtype == arrays[0].dtype, name
        np.testing.assert_allclose(to_numpy(value), to_numpy(reference[name]), rtol=tolerance, atol=tolerance,
                                   err_msg=name)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (1, 1, 2, 3), (3, 0, 2, 3), (4, 2, 5, 1), (3, 17, 9, 33)])
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fast_layer_matches_generic(backend, impl, shape, dtype, tolerance):
    module = runnable(impl, backend, dtype)
    tolerance = tolerance if "float32" in impl.precisions else TF32_TOLERANCE
    backend = at_its_precision(backend, impl)
    arrays, grads = random_layer(backend, *shape, dtype)
    assert_matches_generic(module, backend, arrays, grads, tolerance)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fast_layer_matches_generic_with_step_masks(backend, impl, dtype, tolerance):
    module = runnable(impl, backend, dtype, masked=True)
    tolerance = tolerance if "float32" in impl.precisions else TF32_TOLERANCE
    backend = at_its_precision(backend, impl)
    arrays, grads = random_layer(backend, 6, 5, 3, 7, dtype)
    step_mask = lengths_to_mask(backend, [6, 3, 1, 0, 5], 6, 5, arrays[0].dtype)
    assert_matches_generic(module, backend, arrays, grads, tolerance, step_mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_numba_paths_compiled_time_loop_writes_the_bits_of_its_python_loop(dtype, monkeypatch):
    """The Numba path runs each direction's whole time loop compiled, calling NumPy's own BLAS GEMM; where that
    entry is not found it loops in Python around ``np.matmul``. Same library, same kernels: the same bits, also
    for a weight and a dh_last that are not row-major."""
    pytest.importorskip("numba")
    from lstmx.kernels.host import blas, numba_layer

    if blas.gemm(np.dtype(dtype).name) is None:
        pytest.skip("NumPy's BLAS has no C GEMM entry known here: the loops run in Python")
    arrays, grads = random_layer(NUMPY, 7, 3, 4, 5, dtype, seed=2)
    arrays[1], grads[1] = np.asfortranarray(arrays[1]), np.asfortranarray(grads[1])
    compiled = forward_and_backward(numba_layer, NUMPY, arrays, grads)
    monkeypatch.setattr(numba_layer, "_compiled_gemm", lambda *args: None)
    looped = forward_and_backward(numba_layer, NUMPY, arrays, grads)
    for name, value in compiled.items():
        np.testing.assert_array_equal(value, looped[name], err_msg=name)
    assert_matches_generic(numba_layer, NUMPY, arrays, grads, 1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_fast_layer_gradients_match_finite_differences(backend, impl):
    module = runnable(impl, backend)
    assert_rows_pass(lstm_layer_rows(backend, steps=5, batch=3, features=4, hidden=5, layer=module))
    if impl.step_masks:
        assert_rows_pass(lstm_layer_rows(backend, steps=5, batch=4, lengths=[5, 2, 1, 0], layer=module))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_layer_leaves_its_inputs_and_cache_reusable(backend, impl, dtype):
    module = runnable(impl, backend, dtype)
    # Large enough that host buffers come from the pool (its min_bytes is 64 KiB).
    arrays, grads = random_layer(backend, 20, 16, 32, 64, dtype)
    x, weight, bias, h0, c0 = arrays
    dy, dh, dc = grads
    originals = [to_numpy(a).copy() for a in (*arrays, *grads)]
    y, (h, c), cache = module.lstm_layer_forward(backend, x, weight, bias, h0, c0)
    outputs = [to_numpy(a).copy() for a in (y, h, c)]
    first = module.lstm_layer_backward(backend, dy, dh, dc, weight, cache)
    module.lstm_layer_forward(backend, 2 * x, weight, bias, h0, c0)  # must not reuse the live cache's buffers
    second = module.lstm_layer_backward(backend, dy, dh, dc, weight, cache)
    for a, b in zip((first[0], *first[1], *first[2:]), (second[0], *second[1], *second[2:])):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    for before, after in zip(originals + outputs, (*arrays, *grads, y, h, c)):
        np.testing.assert_array_equal(before, to_numpy(after))


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_fast_layer_keeps_nan_and_inf(backend, impl):
    """Fast-math must not assume finite values: a NaN input reaches the output for the loss check to see."""
    module = runnable(impl, backend, np.float32)
    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal((3, 2, 3)), rng.standard_normal((7, 16))
    x[1, 0, 2] = np.nan
    weight[0, 0] = np.inf
    arrays = [backend.asarray(a, dtype=np.float32) for a in (x, weight, np.zeros(16), np.zeros((2, 4)), np.zeros((2, 4)))]
    y = to_numpy(module.lstm_layer_forward(backend, *arrays)[0])
    assert np.isnan(y[1:, 0]).all() and not np.isnan(y[0, 1]).any()


@pytest.mark.parametrize("impl", [pytest.param(impl, id=impl.name) for impl in registry.LAYER_IMPLS
                                  if impl.backends == ("cupy",) and "float32" in impl.precisions])
def test_cuda_paths_run_sequences_longer_than_cudnns_limit(backend, impl):
    """T = 70,000 steps (cuDNN refuses more than 65,535), with lengths, on the GPU: each CUDA path as the
    stepwise one (itself checked against the generic path above), float32."""
    if not is_cupy(backend):
        pytest.skip("a CUDA path")
    module = runnable(impl, backend, np.float32, masked=True)
    arrays, grads = random_layer(backend, 70_000, 2, 3, 8, np.float32)
    step_mask = lengths_to_mask(backend, [70_000, 66_000], 70_000, 2, arrays[0].dtype)
    fast = forward_and_backward(module, backend, arrays, grads, step_mask)
    stepwise = forward_and_backward(registry.layer_impl("cupy-stepwise").load(), backend, arrays, grads, step_mask)
    for name, value in fast.items():
        np.testing.assert_allclose(to_numpy(value), to_numpy(stepwise[name]), rtol=1e-3, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_fast_layer_refuses_other_shapes_and_dtypes_without_crashing(backend, impl):
    """A cache from a layer of another hidden size or batch must be refused before any kernel runs."""
    module = runnable(impl, backend, np.float32)
    arrays, _ = random_layer(backend, 4, 3, 5, 6, np.float32)
    _, _, cache = module.lstm_layer_forward(backend, *arrays)
    for steps, batch, features, hidden in [(4, 3, 5, 8), (4, 2, 5, 6), (5, 3, 5, 6), (4, 3, 4, 6)]:
        other, grads = random_layer(backend, steps, batch, features, hidden, np.float32)
        with pytest.raises(generic.LayerInputError, match="has shape"):
            module.lstm_layer_backward(backend, *grads, other[1], cache)
    x, weight, bias, h0, c0 = arrays
    with pytest.raises(generic.LayerInputError, match="bias has shape"):
        module.lstm_layer_forward(backend, x, weight, bias[:-1], h0, c0)
    wide = backend.xp.astype(weight, backend.xp.float64)  # a kernel must never read float64 bytes as float32
    with pytest.raises(generic.LayerInputError, match="weight has dtype float64, expected float32"):
        module.lstm_layer_forward(backend, x, wide, bias, h0, c0)
    with pytest.raises(generic.LayerInputError, match=r"empty sequence \(T = 0 time steps\)"):
        module.lstm_layer_forward(backend, x[:0, ...], weight, bias, h0, c0)
    _, grads = random_layer(backend, 4, 3, 5, 6, np.float64)
    with pytest.raises(generic.LayerInputError, match="dy has dtype float64"):
        module.lstm_layer_backward(backend, *grads, weight, cache)


def test_registry_chooses_by_backend_dtype_and_mask(monkeypatch):
    monkeypatch.delenv(registry.ENVIRONMENT_VARIABLE, raising=False)
    strict = lstmx.get_backend("array_api_strict")
    numba_here = registry.layer_impl("numba").refuses(registry.Call(NUMPY, np.float32, False)) is None
    assert registry.choose_layer_impl(NUMPY, np.float32, False).name == ("numba" if numba_here else "numpy")
    assert registry.choose_layer_impl(NUMPY, np.float64, False).name == ("numba" if numba_here else "numpy")
    assert registry.choose_layer_impl(NUMPY, np.float32, True).name == "generic"
    assert registry.choose_layer_impl(strict, strict.xp.float32, False).name == "generic"
    monkeypatch.setenv(registry.ENVIRONMENT_VARIABLE, "numpy")  # the environment variable: a default only
    assert registry.choose_layer_impl(NUMPY, np.float32, False).name == "numpy"
    assert registry.choose_layer_impl(NUMPY, np.float32, True).name == "generic"  # where it applies
    with registry.use_layer_impl("generic"):  # a context overrides the environment
        assert registry.choose_layer_impl(NUMPY, np.float32, False).name == "generic"
        assert registry.choose_layer_impl(NUMPY, np.float32, False, "numpy").name == "numpy"  # the argument wins
    with pytest.raises(registry.LayerImplError, match="takes no step mask.*can: generic"):
        registry.choose_layer_impl(NUMPY, np.float32, True, "numpy")
    with pytest.raises(registry.LayerImplError, match="runs on numpy, not array_api_strict"):
        registry.choose_layer_impl(strict, strict.xp.float32, False, "numpy")
    with pytest.raises(registry.LayerImplError, match="impl must be one of auto, cupy-tiled, cupy-tiled-tf32, cupy-tiled-bf16, cupy-tiled-fp16, cupy-persistent, cupy-graph, cupy-stepwise, numba, numpy, generic"):
        registry.choose_layer_impl(NUMPY, np.float32, False, "fast")
    monkeypatch.setenv(registry.ENVIRONMENT_VARIABLE, "nonsense")
    with pytest.raises(registry.LayerImplError, match="LSTMX_LAYER_IMPL must be one of"):
        registry.choose_layer_impl(NUMPY, np.float32, False)


def test_cache_records_the_implementation_and_backward_uses_it(monkeypatch):
    """Backward runs the implementation the cache names, whatever is requested by then."""
    monkeypatch.delenv(registry.ENVIRONMENT_VARIABLE, raising=False)
    model = lstmx.LSTM(3, 4, 2, backend="numpy", dtype="float64", seed=0)
    x = model.backend.asarray(np.random.default_rng(0).standard_normal((5, 2, 3)))
    reference = model.backward(*_forward_dy(model, x, "generic"))
    y, _, cache = model.forward(x, impl="numpy")
    assert cache.impl == "numpy"
    with registry.use_layer_impl("generic"):
        ours = model.backward(model.backend.xp.ones_like(y), cache)
    np.testing.assert_allclose(ours[2]["weight_l0"], reference[2]["weight_l0"], rtol=1e-12)
    calls = []
    numpy_module = registry.layer_impl("numpy").load()
    monkeypatch.setattr(numpy_module, "lstm_layer_backward",
                        lambda *args: calls.append(1) or generic.lstm_layer_backward(*args[:5], _as_generic(args[5])))
    y, _, cache = model.forward(x, impl="numpy")
    with registry.use_layer_impl("generic"):
        model.backward(model.backend.xp.ones_like(y), cache)
    assert len(calls) == 2  # one per layer, through the name in the cache


def _forward_dy(model, x, impl):
    y, _, cache = model.forward(x, impl=impl)
    return model.backend.xp.ones_like(y), cache


def _as_generic(cache):
    """A generic cache with the same content as a host-buffer cache (for the spy above)."""
    features = cache.dims()[2]
    return generic.LSTMLayerCache(cache.x, cache.inputs_and_h_prev[:-1, :, features:], cache.cells[:-1], cache.gates,
                                  cache.tanh_c, None)


@pytest.mark.parametrize("name", ["numpy-add-at", "cupy-scatter-add"])
def test_native_scatter_add_matches_generic(backend, name):
    impl = next(i for i in registry.SCATTER_IMPLS if i.name == name)
    if backend.name not in impl.backends:
        pytest.skip(f"{name} runs on {impl.backends}")
    native = impl.function(registry.Call(backend, rows=7))
    rng = np.random.default_rng(0)
    rows, values = backend.asarray(rng.integers(0, 7, 50)), backend.asarray(rng.standard_normal((50, 3)))
    np.testing.assert_allclose(to_numpy(native(backend, rows, values, 7)),
                               to_numpy(scatter_add_rows_generic(backend, rows, values, 7)), rtol=1e-12)


def test_scatter_add_choice_by_table_size():
    strict = lstmx.get_backend("array_api_strict")
    assert registry.choose_scatter_add(NUMPY, registry.ONE_HOT_MAX_ROWS)[0] == "one-hot"
    assert registry.choose_scatter_add(NUMPY, registry.ONE_HOT_MAX_ROWS + 1)[0] == "numpy-add-at"
    assert registry.choose_scatter_add(strict, 10**6)[0] == "one-hot"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(1, 6), batch=st.integers(0, 4), features=st.integers(1, 5), hidden=st.integers(1, 40),
       seed=st.integers(0, 2**16), lengths_seed=st.one_of(st.none(), st.integers(0, 2**16)))
def test_fast_layers_match_generic_on_any_shape(backend, steps, batch, features, hidden, seed, lengths_seed):
    arrays, grads = random_layer(backend, steps, batch, features, hidden, np.float64, seed)
    step_mask = None
    if lengths_seed is not None:
        lengths = np.random.default_rng(lengths_seed).integers(0, steps + 1, batch)
        step_mask = lengths_to_mask(backend, lengths, steps, batch, arrays[0].dtype)
    for impl in registry.available_layer_impls(backend, np.float64, step_mask is not None):
        if impl.name != "generic":
            assert_matches_generic(impl.load(), backend, arrays, grads, 1e-12, step_mask)


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


def test_buffer_pool_never_hands_one_array_to_two_threads_while_others_return_theirs():
    """Threads take and give back arrays at once: an array is never held by two threads at the same time."""
    import threading

    pool = BufferPool(per_shape=4, min_bytes=0)
    start, failures, reused = threading.Barrier(8), [], []
    seen = set()

    def work(identity):
        start.wait()
        for round_ in range(200):
            array = pool.empty((16,), np.float32)
            array[...] = identity  # another holder would overwrite this before the check below
            reused.append(array.ctypes.data in seen)
            seen.add(array.ctypes.data)
            if not np.all(array == identity):
                failures.append((identity, round_))
            del array  # given back: the pool may hand it to another thread now

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert any(reused)  # arrays did come back to the pool and were handed out again


def test_size_limited_paths_at_their_limit_and_one_past_it(backend):
    """An implementation that runs only some sizes runs at its limit, is refused one past it (by name: a clear
    error; under "auto": the next implementation takes over), and its own entry point refuses it too."""
    limited = [impl for impl in registry.LAYER_IMPLS if impl.size_limited]
    for impl in limited:
        module = runnable(impl, backend, np.float32)
        precision = impl.precisions[0]  # the TF32 tiled kernels run under precision="tf32" only
        limit = impl.largest_hidden(backend, np.float32, 2, precision=precision)
        assert 0 < limit < 4096, (impl.name, limit)
        assert impl.refuses(registry.Call(backend, np.float32, False, (2, limit), precision=precision)) is None
        arrays, grads = random_layer(backend, 3, 2, 3, limit, np.float32)
        arrays[1] = arrays[1] * float(2.0 / np.sqrt(limit))  # pre-activations O(1), as initialised weights give
        assert_matches_generic(module, backend, arrays, grads, 2e-5 if precision != "tf32" else TF32_TOLERANCE)
        past = impl.refuses(registry.Call(backend, np.float32, False, (2, limit + 1), precision=precision))
        assert past is not None
        with pytest.raises(registry.LayerImplError, match=f"{impl.name}' cannot run this call"):
            registry.choose_layer_impl(backend, np.float32, False, impl.name, (2, limit + 1), precision=precision)
        assert registry.choose_layer_impl(backend, np.float32, False, None, (2, limit + 1),
                                          precision=precision).name != impl.name
        arrays, _ = random_layer(backend, 2, 2, 3, limit + 1, np.float32)
        with pytest.raises(ValueError, match="use the stepwise path"):
            module.lstm_layer_forward(backend, *arrays)


def test_auto_picks_a_path_only_within_its_dtypes_and_hidden_limit():
    """"auto" weighs a path's auto dtypes and hidden-size limit before whether it can run the call at all."""
    tiled, limit = registry.layer_impl("cupy-tiled"), registry.CUPY_TILED_AUTO_MAX_HIDDEN
    assert tiled.auto_max_hidden == limit
    for dtype in (np.float32, np.float64):
        largest = limit[np.dtype(dtype).name]
        call = registry.Call(NUMPY, dtype, sizes=(32, largest))
        assert tiled.auto_takes(call) and not tiled.auto_takes(call._replace(sizes=(32, largest + 1)))
        assert tiled.auto_takes(call._replace(sizes=None))  # no sizes given: the limit cannot apply
    assert not registry.layer_impl("cupy-persistent").auto_takes(registry.Call(NUMPY, np.float64, sizes=(32, 8)))
    generic = registry.layer_impl("generic")
    assert generic.auto_max_hidden is None and generic.auto_takes(registry.Call(NUMPY, np.float64, sizes=(32, 10**6)))
    assert registry.layer_impl("numba").auto_takes(registry.Call(NUMPY, np.float64, sizes=(32, 8)))


def test_auto_on_cupy_runs_the_paths_measured_fastest(backend, monkeypatch):
    """On CuPy, "auto" runs the tiled kernels up to their hidden limit, the graph path above it (also for masked
    batches), and the fused loss and updates."""
    if backend.name != "cupy":
        pytest.skip("auto's CuPy choices")
    from lstmx.training.optim import Adam

    for variable in (registry.ENVIRONMENT_VARIABLE, registry.LOSS_ENVIRONMENT_VARIABLE,
                     registry.UPDATE_ENVIRONMENT_VARIABLE):
        monkeypatch.delenv(variable, raising=False)

    for dtype in (np.float32, np.float64):
        choose = functools.partial(registry.choose_layer_impl, backend, dtype)
        largest = registry.CUPY_TILED_AUTO_MAX_HIDDEN[np.dtype(dtype).name]
        assert choose(False, None, (32, largest)).name == choose(True, None, (32, largest)).name == "cupy-tiled"
        assert choose(False, None, (32, largest + 1)).name == choose(True, None, (128, 1024)).name == "cupy-graph"
    assert registry.choose_loss(backend)[0] == "cupy-fused"
    assert registry.choose_update(backend, Adam)[0] == registry.choose_clipping(backend)[0] == "cupy-fused"


def test_persistent_path_refuses_a_grid_that_cannot_be_resident_at_once(backend):
    """CuPy would shrink a cooperative grid that does not fit (and the kernel would compute garbage): the
    path refuses such a batch instead (under "auto" another path takes it)."""
    impl = registry.layer_impl("cupy-persistent")
    module = runnable(impl, backend, np.float32)
    hidden = 128
    resident = module._resident_blocks("float32", hidden, backend.device.id, module.cuda_sources.PERSISTENT_KERNELS)
    fits = module.ROWS * (resident // ((hidden + 31) // 32))
    assert impl.refuses(registry.Call(backend, np.float32, False, (fits, hidden))) is None
    assert "co-resident" in impl.refuses(registry.Call(backend, np.float32, False, (fits + module.ROWS, hidden)))
    arrays, grads = random_layer(backend, 2, fits, 3, hidden, np.float32)
    arrays[1] = arrays[1] * float(2.0 / np.sqrt(hidden))  # pre-activations O(1), as initialised weights give
    assert_matches_generic(module, backend, arrays, grads, 2e-5)


@pytest.mark.parametrize("impl", [pytest.param(impl, id=impl.name) for impl in registry.LAYER_IMPLS])
def test_a_cache_from_another_model_or_older_parameters_is_refused(backend, impl):
    """Through the public models, with every implementation: a cache of another model (another hidden size, or
    the same shapes), one made before the parameters changed, or no cache at all, is a clear error."""
    runnable(impl, backend, np.float32)
    from lstmx.nn.models import LanguageModel
    from lstmx.training.optim import SGD
    from lstmx.validate import CacheMismatchError

    precision = impl.precisions[0]  # the TF32 tiled kernels run under precision="tf32" only
    x = backend.asarray(np.random.default_rng(0).standard_normal((4, 3, 5)), dtype=backend.xp.float32)
    model = lstmx.LSTM(5, 6, 2, backend=backend, seed=0, precision=precision)
    y, _, cache = model.forward(x, impl=impl.name)
    dy = backend.xp.ones_like(y)
    for other in (lstmx.LSTM(5, 8, 2, backend=backend, seed=0, precision=precision),
                  lstmx.LSTM(5, 6, 2, backend=backend, seed=0, precision=precision)):
        with pytest.raises(CacheMismatchError, match="not made by this model's forward"):
            other.backward(backend.xp.ones((4, 3, other.hidden_size), dtype=backend.xp.float32), cache)
    with pytest.raises(TypeError, match="cache must be the StackCache returned by this model's forward"):
        model.backward(dy, cache.layers[0])
    _, _, grads = model.backward(dy, cache)
    SGD(model, lr=0.1).step(grads)
    with pytest.raises(CacheMismatchError, match="the parameters changed since"):
        model.backward(dy, cache)
    language = LanguageModel(7, 5, 6, 2, backend=backend, seed=0, precision=precision)
    tokens = backend.asarray(np.zeros((4, 3), dtype=np.int64))
    logits, _, lm_cache = language.forward(tokens, impl=impl.name)
    with pytest.raises(CacheMismatchError):
        LanguageModel(7, 5, 6, 2, backend=backend, seed=0, precision=precision).backward(logits, lm_cache)


# --- the loss and its gradient (registry.LOSS_IMPLS) ---------------------------------------------------------

@pytest.mark.parametrize("dtype,tolerance", [("float32", 2e-6), ("float64", 1e-12)])
def test_every_loss_implementation_matches_the_generic_one(backend, dtype, tolerance):
    """The list comes from the registry: each loss fast path here, through ``LanguageModel.loss`` with lengths
    and ignored targets, against the generic one: the loss and every gradient."""
    fast = [name for name in registry.available_loss_impls(backend) if name != "generic"]
    if not fast:
        pytest.skip(f"no loss fast path runs on {backend.name} here")
    model = lstmx.LanguageModel(11, 4, 6, backend=backend, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    inputs = backend.asarray(rng.integers(0, 11, size=(5, 3)))
    targets_host = rng.integers(0, 11, size=(5, 3))
    targets_host[0, 1] = -100
    targets, lengths = backend.asarray(targets_host), backend.asarray(np.array([5, 2, 4]))
    reference = model.loss(inputs, targets, lengths=lengths, loss_impl="generic")
    for name in fast:
        result = model.loss(inputs, targets, lengths=lengths, loss_impl=name)
        np.testing.assert_allclose(to_numpy(result.loss), to_numpy(reference.loss), rtol=tolerance, atol=tolerance)
        for key, value in reference.grads.items():
            np.testing.assert_allclose(to_numpy(result.grads[key]), to_numpy(value), rtol=tolerance, atol=tolerance,
                                       err_msg=f"{name} {key}")


def test_loss_implementation_choice(backend, monkeypatch):
    monkeypatch.delenv(registry.LOSS_ENVIRONMENT_VARIABLE, raising=False)
    assert registry.choose_loss(backend, "generic")[0] == "generic"
    with pytest.raises(registry.LossImplError, match="impl must be one of auto, cupy-fused, generic; got 'fast'"):
        registry.choose_loss(backend, "fast")
    if backend.name != "cupy":
        with pytest.raises(registry.LossImplError, match=f"'cupy-fused' cannot run here: it runs on cupy, not {backend.name}"):
            registry.choose_loss(backend, "cupy-fused")
        with registry.use_loss_impl("cupy-fused"), pytest.raises(registry.LossImplError):
            registry.choose_loss(backend)
        monkeypatch.setenv(registry.LOSS_ENVIRONMENT_VARIABLE, "cupy-fused")  # a default: falls back here
        assert registry.choose_loss(backend)[0] == "generic"
    monkeypatch.setenv(registry.LOSS_ENVIRONMENT_VARIABLE, "nonsense")
    with pytest.raises(registry.LossImplError, match="LSTMX_LOSS_IMPL must be one of"):
        registry.choose_loss(backend)


def test_graph_path_on_the_gpu_captures_once_per_shape_with_the_cublas_cupy_uses(backend):
    """On CuPy: the ctypes GEMMs call the libcublas CuPy loaded (of the runtime's CUDA major version); the first
    call of a shape captures, the next replays on the same buffer set (no new set), both matching the generic path;
    release_graphs frees the sets and workspaces no cache holds. The emulator tests the rest (leases, eviction)."""
    impl = registry.layer_impl("cupy-graph")
    module = runnable(impl, backend)
    import cupy

    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    assert os.path.basename(module._cublas_path()).startswith(f"libcublas.so.{major}")
    module.release_graphs()
    arrays, grads = random_layer(backend, 7, 3, 5, 33, np.float64)
    for _ in range(2):
        assert_matches_generic(module, backend, arrays, grads, 1e-12)
    assert len(module._SETS) == 1 and len(module._WORKSPACES) == 1
    module.release_graphs()
    assert not module._SETS and not module._WORKSPACES


EVERY_IMPL = [pytest.param(impl, id=impl.name) for impl in registry.LAYER_IMPLS]


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4, 1]], ids=["full-length", "lengths"])
def test_bidirectional_stacks_match_the_generic_path(backend, impl, dtype, tolerance, lengths):
    """Two bidirectional layers through each implementation that takes the call give the generic path's outputs,
    final states and every gradient: the stack runs the reverse direction through the same implementation."""
    runnable(impl, backend, dtype, lengths is not None)
    precision = impl.precisions[0]  # the TF32 tiled kernels run under precision="tf32" only
    tolerance = tolerance if precision != "tf32" else TF32_TOLERANCE
    model = lstmx.LSTM(3, 5, 2, bidirectional=True, backend=backend, dtype=np.dtype(dtype).name, seed=8,
                       precision=precision)
    rng = np.random.default_rng(8)
    x = backend.asarray(rng.standard_normal((5, 4, 3)), dtype=model.dtype)
    h0, c0 = (backend.asarray(rng.standard_normal((4, 4, 5)), dtype=model.dtype) for _ in range(2))
    dy = backend.asarray(rng.standard_normal((5, 4, 10)), dtype=model.dtype)
    dh, dc = (backend.asarray(rng.standard_normal((4, 4, 5)), dtype=model.dtype) for _ in range(2))
    results = []
    for name in (impl.name, "generic"):
        y, (h, c), cache = model.forward(x, (h0, c0), lengths, impl=name)
        assert cache.impl == name
        dx, (dh0, dc0), grads = model.backward(dy, cache, (dh, dc))
        results.append({"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, **grads})
    for key, reference in results[1].items():
        expected = to_numpy(reference).astype(np.float64)
        error = np.max(np.abs(to_numpy(results[0][key]) - expected)) / max(np.max(np.abs(expected)), 1e-30)
        assert error < tolerance, f"{impl.name} {key}: relative error {error:.2e}"


@pytest.mark.parametrize("impl", EVERY_IMPL)
def test_an_implementation_refuses_a_cell_it_does_not_run(backend, impl):
    """Asked for by name, a path that does not run the projected cell raises naming why and who can; none falls
    back by itself. Those that run it say so in the registry and run it."""
    dtype = "float64" if impl.dtypes is None or "float64" in impl.dtypes else impl.dtypes[0]
    here = impl.backends is None or backend.name in impl.backends
    precision = impl.precisions[0] if here else "float32"  # the TF32 tiled kernels: float32 under "tf32" only
    model = lstmx.LSTM(3, 4, proj_size=2, backend=backend, dtype=dtype, precision=precision)
    x = backend.asarray(np.ones((2, 1, 3)), dtype=model.dtype)
    call = registry.Call(backend, model.dtype, False, (1, 4), "lstmp", precision=precision)
    if "lstmp" in impl.cells:
        if impl.refuses(call) is None:
            assert model.forward(x, impl=impl.name)[2].impl == impl.name
        return
    reason = impl.refuses(call)
    if here:
        assert reason == "runs the lstm cell, not lstmp (proj_size)"
    with pytest.raises(registry.LayerImplError, match=re.escape(f"'{impl.name}' cannot run this call: it {reason}")):
        model.forward(x, impl=impl.name)
    assert model.forward(x)[2].impl in [i.name for i in registry.LAYER_IMPLS if "lstmp" in i.cells]


@pytest.mark.parametrize("impl", EVERY_IMPL)
def test_each_implementation_keeps_the_kernel_contract_of_what_it_declares(impl):
    """Its module has each function the contract asks of the cells and cell options its record declares, with
    the contract's parameters (Impl.load refuses one that does not)."""
    try:
        module = importlib.import_module(impl.module)
    except ImportError as error:
        pytest.skip(f"{impl.name}: {error}")
    assert contract_breaches(module, protocols_for(impl.cells, impl.cell_options, impl.paired_directions)) == []


def test_a_module_that_lacks_what_its_record_declares_is_refused_when_loaded():
    """A record claiming the projected cell for a module without lstmp_layer_forward, or a module whose function
    takes other parameters, is refused in one line naming what is missing, before any model runs it."""
    claims_lstmp = registry.layer_impl("numpy")._replace(cells=("lstm", "lstmp"))
    with pytest.raises(registry.LayerImplError, match="numpy .* breaks the kernel contract: lstmp_layer_forward is "
                                                      "missing .ProjectedLayerKernel.; lstmp_layer_backward is missing"):
        claims_lstmp.load()
    odd = types.ModuleType("odd")
    odd.lstm_layer_forward = lambda backend, x, weight, bias, h0, c0, mask=None: None
    odd.lstm_layer_backward = lambda backend, dy, dh_last, dc_last, weight, cache: None
    assert contract_breaches(odd, protocols_for(("lstm",), ())) == [
        "lstm_layer_forward(backend, x, weight, bias, h0, c0, mask) should take "
        "(backend, x, weight, bias, h0, c0, step_mask)"]
