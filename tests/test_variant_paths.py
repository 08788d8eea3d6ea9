"""Every fast path that declares cell options or the projected cell in the registry, against the generic path,
option by option, with and without a projection.

The list comes from :data:`lstmx.dispatch.registry.LAYER_IMPLS` (each implementation's ``cell_options`` and
``cells``): a path that starts taking an option or the LSTMP cell is tested here without a line added. For each
option (and all together; for LSTMP also none) the fast path's forward and backward equal the generic ones
(float64 to 1e-12, float32 to 2e-5) in training (the masks held fixed) and in evaluation, on hypothesis-drawn
shapes with B = 1 and T = 1 among them; either backward consumes the other's cache; and the finite-difference
check passes through the fast path.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmx
from lstmx.dispatch import registry
from lstmx.gradcheck import compare, finite_difference
from lstmx.nn.layers import lstm_layer as generic

from .helpers import host, weighted_sum
from .test_gradients import assert_rows_pass

# The clip lies away from every pre-activation of these seeded draws: within float32 rounding of ±C a value can
# land on either side in two paths, and the clipped gradient with it.
SETTINGS = {"peepholes": dict(peepholes=True), "input_forget": dict(input_forget=True),
            "cell_clip": dict(cell_clip=0.8), "layer_norm": dict(layer_norm=True), "zoneout": dict(zoneout=(0.3, 0.5)),
            "recurrent_dropout": dict(recurrent_dropout=0.4)}
PROJECTION = 2  # proj_size of the LSTMP cases (hidden size 4)


def _options_taken(impl, proj):
    """The cell options ``impl`` takes on the plain (``proj`` 0) or the projected cell."""
    return impl.cell_options if impl.options_cells is None or ("lstmp" if proj else "lstm") in impl.options_cells \
        else ()


CASES = [pytest.param(impl, option, proj, id=f"{impl.name}-{option}" + (f"-proj{proj}" if proj else ""))
         for impl in registry.LAYER_IMPLS if impl.name != "generic"
         for proj in ((0, PROJECTION) if "lstmp" in impl.cells else (0,))
         for option in ((*_options_taken(impl, proj), "all") if _options_taken(impl, proj) else ())
         + (("plain",) if proj else ())]
ALL = [c for c in CASES if c.values[1] in ("all", "plain")]  # every option a path takes, or the plain LSTMP


def _options(impl, option):
    if option == "plain":
        return {}
    if option != "all":
        return SETTINGS[option]
    return {k: v for name in impl.cell_options for k, v in SETTINGS[name].items()}


def _model(backend, impl, option, dtype, proj=0, seed=0, layers=2, **shape):
    model = lstmx.LSTM(shape.get("features", 3), shape.get("hidden", 4), layers, backend=backend, dtype=dtype,
                       seed=seed, proj_size=proj, **_options(impl, option))
    rng = np.random.default_rng(seed)
    # peepholes and layer-norm gains away from their initial values; weights large enough that clipping bites
    model.load_state_dict({k: rng.standard_normal(v.shape) * (1.5 if "weight" in k else 1.0)
                           for k, v in model.state_dict().items()})
    return model


def _run(model, impl_name, x, dy):
    model.dropout_rng = np.random.default_rng(7)  # the same zoneout and recurrent-dropout masks for both paths
    y, (h, c), cache = model.forward(x, impl=impl_name)
    dx, (dh0, dc0), grads = model.backward(dy, cache)
    return {"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, **grads}, cache


def _assert_close(fast, reference, tolerance):
    for name, value in reference.items():
        expected, got = host(value), host(fast[name])
        scale = max(1.0, float(np.max(np.abs(expected))))
        assert np.max(np.abs(got - expected)) / scale < tolerance, name


def _runnable(impl, backend, dtype, option, proj):
    reason = impl.refuses(registry.Call(backend, dtype, False, None, "lstmp" if proj else "lstm",
                                        _options_names(impl, option)))
    if reason is not None:
        pytest.skip(f"{impl.name}: {reason}")


def _options_names(impl, option):
    return tuple(impl.cell_options) if option == "all" else () if option == "plain" else (option,)


@pytest.mark.parametrize("impl,option,proj", CASES)
@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_a_fast_path_computes_each_option_as_the_generic_path(backend, impl, option, proj, dtype, tolerance,
                                                              training):
    _runnable(impl, backend, dtype, option, proj)
    model = _model(backend, impl, option, dtype, proj)
    if not training:
        model.eval()
    rng = np.random.default_rng(1)
    x = backend.asarray(rng.standard_normal((6, 3, 3)), dtype=model.dtype)
    dy = backend.asarray(rng.standard_normal((6, 3, proj or 4)), dtype=model.dtype)
    fast, cache = _run(model, impl.name, x, dy)
    reference, _ = _run(model, "generic", x, dy)
    assert cache.impl == impl.name
    _assert_close(fast, reference, tolerance)


@pytest.mark.parametrize("impl,option,proj", ALL)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(1, 5), batch=st.integers(1, 4), features=st.integers(1, 4), hidden=st.integers(2, 5),
       data=st.data())
def test_a_fast_path_with_every_option_matches_on_drawn_shapes(backend, impl, option, proj, steps, batch, features,
                                                               hidden, data):
    _runnable(impl, backend, "float64", option, proj)
    proj = data.draw(st.integers(1, hidden - 1)) if proj else 0
    model = _model(backend, impl, option, "float64", proj, layers=1, features=features, hidden=hidden)
    rng = np.random.default_rng(steps * 100 + batch * 10 + hidden)
    x = backend.asarray(rng.standard_normal((steps, batch, features)), dtype=model.dtype)
    dy = backend.asarray(rng.standard_normal((steps, batch, proj or hidden)), dtype=model.dtype)
    fast, _ = _run(model, impl.name, x, dy)
    reference, _ = _run(model, "generic", x, dy)
    _assert_close(fast, reference, 1e-12)


@pytest.mark.parametrize("impl,option,proj", ALL)
def test_either_backward_consumes_the_other_paths_cache(backend, impl, option, proj):
    _runnable(impl, backend, "float64", option, proj)
    model = _model(backend, impl, option, "float64", proj, layers=1)
    kernel, options = impl.load(), model.stack.cell.options
    width = proj or 4
    rng = np.random.default_rng(3)
    x = backend.asarray(rng.standard_normal((5, 2, 3)))
    h0, c0 = backend.asarray(rng.standard_normal((2, width))), backend.asarray(rng.standard_normal((2, 4)))
    dy, dh, dc = (backend.asarray(rng.standard_normal(s)) for s in [(5, 2, width), (2, width), (2, 4)])
    params = model.stack.layer_params(model.params)[0][0]
    extra = generic.ExtraParams(**dict(zip(model.stack.cell.parameter_suffixes[2:], params[2:])))
    masks = [(rng.random((2, width)) > 0.4) / 0.6, (rng.random((5, 2, 4)) < 0.3) * 1.0,
             (rng.random((5, 2, width)) < 0.5) * 1.0]  # drawn for every case: the same draws follow them
    taken = [options.recurrent_dropout, options.zoneout[0], options.zoneout[1]]  # the masks a model would draw
    noise = None if option == "plain" else generic.LayerNoise(
        *(backend.asarray(mask) if drawn else None for mask, drawn in zip(masks, taken)))

    def forward(module):  # the plain LSTMP through the projected cell's own functions, as the stack runs it
        if option == "plain":
            return module.lstmp_layer_forward(backend, x, params[0], params[1], extra.projection, h0, c0)[2]
        return module.lstm_variant_layer_forward(backend, x, params[0], params[1], extra, options, h0, c0, None,
                                                 noise)[2]

    def backward(module, cache):
        if option == "plain":
            *grads, dprojection = module.lstmp_layer_backward(backend, dy, dh, dc, params[0], extra.projection, cache)
            return (*grads, (dprojection,))
        return module.lstm_variant_layer_backward(backend, dy, dh, dc, params[0], extra, options, cache)

    results = []
    for forward_module, backward_module in ((kernel, generic), (generic, kernel)):
        cache = forward(forward_module)
        if forward_module is generic and impl.backward_own_cache:  # refused in one line, as the registry says
            with pytest.raises(generic.LayerInputError, match="takes the cache of its own forward"):
                backward(backward_module, cache)
            backward_module = generic
        results.append(backward(backward_module, cache))
    (dx_a, state_a, dw_a, db_a, extra_a), (dx_b, state_b, dw_b, db_b, extra_b) = results
    for a, b in [(dx_a, dx_b), (*state_a, *state_b)[0::2], (*state_a, *state_b)[1::2], (dw_a, dw_b), (db_a, db_b),
                 *[(p, q) for p, q in zip(extra_a, extra_b) if p is not None]]:
        np.testing.assert_allclose(host(a), host(b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl,option,proj", ALL)
def test_gradients_through_a_fast_path_match_finite_differences(backend, impl, option, proj):
    _runnable(impl, backend, "float64", option, proj)
    model = _model(backend, impl, option, "float64", proj, seed=2)
    options = _options(impl, option)
    rng = np.random.default_rng(2)
    inputs = {**model.state_dict(), "x": rng.standard_normal((4, 2, 3))}
    weights = [rng.standard_normal((4, 2, proj or 4))]

    def run(values):
        model.params = {name: backend.asarray(values[name]) for name in model.params}
        model.dropout_rng = np.random.default_rng(9)
        y, _, cache = model.forward(backend.asarray(values["x"]), impl=impl.name)
        return (y,), cache

    _, cache = run(inputs)
    dx, _, grads = model.backward(backend.asarray(weights[0]), cache)
    eps = 1e-6 if "cell_clip" in options else 1e-5 if "layer_norm" in options else 1e-4
    numeric = finite_difference(lambda values: weighted_sum(backend, run(values)[0], weights), inputs, eps=eps)
    assert_rows_pass(compare({**grads, "x": dx}, numeric))


def test_auto_gives_a_path_only_the_options_and_cells_it_is_trusted_with():
    """"auto" gives a path the cell options and cells its kernels have passed the CuPy suite with on a GPU: the
    stepwise path every option and the LSTMP cell; the persistent path the pointwise options but the LSTMP cell
    by name only (its speed there not yet measured); the Numba path every option and cell."""
    stepwise, persistent, numba = (registry.layer_impl(name) for name in ("cupy-stepwise", "cupy-persistent",
                                                                           "numba"))
    call = registry.Call(lstmx.get_backend("numpy"), "float32", sizes=(8, 64))
    assert stepwise.auto_takes(call._replace(options=("layer_norm",))) and stepwise.auto_takes(call._replace(
        cell="lstmp"))
    assert persistent.auto_takes(call._replace(options=("zoneout",)))
    assert "lstmp" in persistent.cells and not persistent.auto_takes(call._replace(cell="lstmp"))
    assert numba.auto_takes(call._replace(options=numba.cell_options)) and numba.auto_takes(call._replace(
        cell="lstmp"))


@pytest.mark.parametrize("impl", [pytest.param(i, id=i.name) for i in registry.LAYER_IMPLS
                                  if "lstmp" in i.cells and _options_taken(i, PROJECTION)])
def test_a_variant_backward_refuses_a_cache_of_another_cell(backend, impl):
    """Every backward reading the generic cache passes one door (check_layer_backward): a projected layer's cache
    without the projection, or a plain cell's cache given cell options, is refused in one line."""
    _runnable(impl, backend, "float64", "plain", PROJECTION)
    kernel, rng = impl.load(), np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((3, 2, 3)))
    weight, bias = backend.asarray(rng.standard_normal((3 + 2, 16))), backend.asarray(np.zeros(16))
    projection = backend.asarray(rng.standard_normal((4, 2)))
    state = backend.asarray(np.zeros((2, 2))), backend.asarray(np.zeros((2, 4)))
    _, _, cache = generic.lstmp_layer_forward(backend, x, weight, bias, projection, *state)
    dy = backend.asarray(np.ones((3, 2, 2)))
    with pytest.raises(generic.LayerInputError, match="the cache was made by a layer with another projection"):
        kernel.lstm_variant_layer_backward(backend, dy, state[0], state[1], weight, generic.ExtraParams(),
                                           generic.PLAIN, cache)
    options = generic.CellOptions(input_forget=True)
    with pytest.raises(generic.LayerInputError, match="the cache was made with other cell options"):
        kernel.lstm_variant_layer_backward(backend, dy, state[0], state[1], weight,
                                           generic.ExtraParams(projection), options, cache)
