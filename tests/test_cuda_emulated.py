"""The CUDA kernels of the CuPy paths, run on the CPU by the emulator, against the generic path: no GPU needed.

The emulator (``tests/cuda_emulator.h``) runs every CUDA thread as a fiber, opens a barrier only when every
live thread it spans has reached it, and draws the next thread to run from a seed; arrays sit between marked
NaN margins, shared memory has a guard past its end. The CuPy wrappers of ``lstmx.kernels`` run unchanged on it
through a NumPy stand-in for CuPy and its cuBLAS (``tests/fake_cupy.py``). So these tests catch wrong indexing or arguments, a missing or misplaced
barrier (results go wrong or change with the seed), a barrier some threads skip, and loads or stores out of
bounds. They cannot catch what needs the hardware (memory ordering, occupancy, the GPU's math library, speed):
the CuPy suite on a GPU does that.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lstmx
from lstmx.dispatch import registry
from lstmx.dispatch.contract import contract_breaches, protocols_for
from lstmx.kernels.cupy import cuda_sources, tiling
from lstmx.nn.layers import lstm_layer as generic
from lstmx.nn.layers.lstm_layer import LayerInputError

from . import fake_cupy
from .cuda_emulator import COMPILER
from .fake_cupy import RawKernel, fake_cupy_modules

pytestmark = pytest.mark.skipif(COMPILER is None, reason="the CUDA emulator needs g++")

NUMPY = lstmx.get_backend("numpy")
BENCH = Path(__file__).resolve().parent.parent / "bench"
LAYER_PATHS = ("stepwise", "persistent", "tiled", "graph")
SHAPES = [(3, 5, 4, 33), (1, 1, 2, 8), (4, 9, 3, 64), (2, 2, 5, 40)]  # (T, B, D, H): H not a multiple of 32, B = 1, T = 1


@pytest.fixture
def wrappers(monkeypatch):
    """lstmx's CuPy wrapper modules, bound to the NumPy stand-in whose kernels run on the emulator."""
    return fake_cupy_modules(monkeypatch)


def problem(steps, batch, features, hidden, dtype, seed=0, masked=False):
    rng = np.random.default_rng(seed)
    arrays = dict(x=rng.standard_normal((steps, batch, features)),
                  weight=0.5 * rng.standard_normal((features + hidden, 4 * hidden)),
                  bias=0.3 * rng.standard_normal(4 * hidden), h0=rng.standard_normal((batch, hidden)),
                  c0=rng.standard_normal((batch, hidden)), dy=rng.standard_normal((steps, batch, hidden)),
                  dh_last=rng.standard_normal((batch, hidden)), dc_last=rng.standard_normal((batch, hidden)))
    arrays = {k: v.astype(dtype) for k, v in arrays.items()}
    mask = None
    if masked:  # each row real for a prefix of its steps, at least one
        lengths = rng.integers(1, steps + 1, size=batch)
        mask = (np.arange(steps)[:, None] < lengths[None, :]).astype(dtype)
    return arrays, mask


def forward_and_backward(module, arrays, mask):
    """A layer module's forward then backward (the generic signatures), as a dict of results."""
    a = arrays
    step_mask = None if mask is None else mask[..., None]
    y, (h, c), cache = module.lstm_layer_forward(NUMPY, a["x"], a["weight"], a["bias"], a["h0"], a["c0"], step_mask)
    dx, (dh0, dc0), dweight, dbias = module.lstm_layer_backward(NUMPY, a["dy"], a["dh_last"], a["dc_last"],
                                                                a["weight"], cache)
    return dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, dweight=dweight, dbias=dbias)


def reference(arrays, mask):
    """The generic path in float64."""
    return forward_and_backward(generic, {k: v.astype(np.float64) for k, v in arrays.items()},
                                None if mask is None else mask.astype(np.float64))




def run_path(path, wrappers, arrays, mask, seed=0):
    RawKernel.seed = seed
    try:
        return forward_and_backward(wrappers[path], arrays, mask)
    finally:
        RawKernel.seed = 0


def assert_close(result, expected, tolerance):
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(result[name], dtype=np.float64), value, rtol=tolerance, atol=tolerance,
                                   err_msg=name)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}D{}H{}".format(*s))
@pytest.mark.parametrize("path", LAYER_PATHS)
def test_kernels_match_generic_float64(wrappers, path, shape, masked):
    arrays, mask = problem(*shape, np.float64, masked=masked)
    assert_close(run_path(path, wrappers, arrays, mask), reference(arrays, mask), 1e-12)


@pytest.mark.parametrize("path", LAYER_PATHS)
def test_no_time_steps_are_refused_before_any_kernel(wrappers, path):
    arrays, mask = problem(0, 3, 2, 8, np.float64)
    for module in (wrappers[path], generic):
        with pytest.raises(LayerInputError, match=r"x is an empty sequence \(T = 0 time steps\); a layer needs T >= 1"):
            forward_and_backward(module, arrays, mask)


@pytest.mark.parametrize("path", LAYER_PATHS)
def test_an_empty_batch_launches_no_kernel(wrappers, path):
    """B = 0: every result is empty and no kernel is launched (a GPU refuses a grid of zero blocks; so does the
    stand-in)."""
    arrays, mask = problem(3, 0, 2, 5, np.float64)
    assert_close(run_path(path, wrappers, arrays, mask), reference(arrays, mask), 1e-12)
    with pytest.raises(RuntimeError, match="invalid configuration argument"):
        RawKernel(cuda_sources.source("stepwise", "float64"), "lstm_forward_step_float64")((0,), (256,), ())


def test_a_block_past_the_kernels_launch_bounds_is_refused():
    """The tiled kernels are compiled for at most MAX_THREADS threads per block; a GPU refuses a larger block."""
    name = cuda_sources.kernel_name("lstm_forward_tiled", "float64")
    kernel = RawKernel(cuda_sources.source("tiled", "float64"), name, enable_cooperative_groups=True)
    assert fake_cupy.launch_bound(kernel.code, name) == tiling.MAX_THREADS
    with pytest.raises(RuntimeError, match="too many resources requested for launch"):
        kernel((1,), (8, 4, 32), ())


@pytest.mark.parametrize("path", LAYER_PATHS)
def test_kernels_match_generic_float32(wrappers, path):
    arrays, mask = problem(3, 6, 4, 40, np.float32, masked=True)
    result = run_path(path, wrappers, arrays, mask)
    assert all(v.dtype == np.float32 for v in result.values())
    assert_close(result, reference(arrays, mask), 2e-5)


@pytest.mark.parametrize("path", LAYER_PATHS)
def test_thread_order_does_not_change_results(wrappers, path):
    """The emulator draws the next thread to run from a seed: a race would show as a difference."""
    arrays, mask = problem(3, 6, 3, 40, np.float64, masked=True)
    first, second = (run_path(path, wrappers, arrays, mask, seed) for seed in (1, 2))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def graph_forward(graph, arrays, mask):
    a = arrays
    return graph.lstm_layer_forward(NUMPY, a["x"], a["weight"], a["bias"], a["h0"], a["c0"],
                                    None if mask is None else mask[..., None])


def graph_backward(graph, arrays, cache):
    a = arrays
    return graph.lstm_layer_backward(NUMPY, a["dy"], a["dh_last"], a["dc_last"], a["weight"], cache)


def test_each_live_cache_holds_its_own_buffer_set(wrappers):
    """Three forwards of one shape whose caches all live take three buffer sets (their caches are those sets'
    arrays, nothing copied; the third set captured because the other two are held, never a hand-off to another
    path); the backwards, in any order and twice, give each problem its own results. Once the caches are gone a
    set is lent again."""
    graph = wrappers["graph"]
    problems = [problem(4, 3, 2, 9, np.float64, seed=seed, masked=True) for seed in (1, 2, 3)]
    forwards = [graph_forward(graph, arrays, mask) for arrays, mask in problems]
    sets = list(graph._SETS.values())
    assert len(sets) == 3
    for (_, _, cache), buffer_set in zip(forwards, sets):
        assert cache.lease.buffer_set is buffer_set and cache.gates is buffer_set.buffers.gates
    for (arrays, mask), (y, (h, c), cache) in reversed(list(zip(problems, forwards))):
        for _ in range(2):
            dx, (dh0, dc0), dweight, dbias = graph_backward(graph, arrays, cache)
            assert_close(dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, dweight=dweight, dbias=dbias),
                         reference(arrays, mask), 1e-12)
    assert [(s.forward.launches, s.backward.launches) for s in sets] == [(1, 2)] * 3
    assert len(sets[0].forward.operations) == len(sets[0].backward.operations) == 2 * 4
    del forwards, cache
    arrays, mask = problems[2]
    assert_close(run_path("graph", wrappers, arrays, mask), reference(arrays, mask), 1e-12)
    assert len(graph._SETS) == 3 and sum(s.forward.launches for s in sets) == 4  # a set lent again, no capture


def test_held_sets_are_kept_past_max_sets_and_free_ones_dropped(wrappers, monkeypatch):
    """MAX_SETS bounds the sets kept once free: sets that live caches hold stay (their arrays are those caches'),
    and when they are free again the least recently used go at the next capture."""
    graph = wrappers["graph"]
    monkeypatch.setattr(graph, "MAX_SETS", 2)
    problems = [problem(2, 2, 2, 5, np.float64, seed=seed) for seed in (1, 2, 3)]
    held = [graph_forward(graph, arrays, mask) for arrays, mask in problems]
    assert len(graph._SETS) == 3  # all held: none dropped
    del held
    other, other_mask = problem(3, 2, 2, 5, np.float64)
    assert_close(run_path("graph", wrappers, other, other_mask), reference(other, other_mask), 1e-12)
    assert [name[0][0][0] for name in graph._SETS] == [2, 3]  # two free ones dropped, oldest first


def test_a_replayed_call_launches_no_kernel_of_its_own(wrappers, monkeypatch):
    """After the first call of a shape (the warm-up runs and captures), a training step of T = 6 steps is one graph
    launch per direction: no kernel or GEMM call from Python per time step."""
    graph = wrappers["graph"]
    arrays, mask = problem(6, 3, 2, 9, np.float64, masked=True)
    run_path("graph", wrappers, arrays, mask)
    eager = []
    monkeypatch.setattr(RawKernel, "__call__", lambda self, *args, **options: eager.append(self.name))
    monkeypatch.setattr(graph.shell.Gemm, "__call__", lambda self, *args, **options: eager.append("gemm"))
    [buffer_set] = graph._SETS.values()
    before = buffer_set.forward.launches, buffer_set.backward.launches
    run_path("graph", wrappers, arrays, mask)
    assert eager == [] and (buffer_set.forward.launches, buffer_set.backward.launches) == (before[0] + 1, before[1] + 1)


def test_the_least_recently_used_free_set_is_dropped(wrappers, monkeypatch):
    graph = wrappers["graph"]
    monkeypatch.setattr(graph, "MAX_SETS", 2)
    for steps in (1, 2, 3, 1):  # the first shape's set is dropped by the third, captured again by the fourth
        arrays, mask = problem(steps, 2, 2, 5, np.float64, seed=steps)
        assert_close(run_path("graph", wrappers, arrays, mask), reference(arrays, mask), 1e-12)
    assert [name[0][0][0] for name in graph._SETS] == [3, 1]
    graph.release_graphs()
    assert not graph._SETS


def test_graphs_on_one_stream_share_a_cublas_workspace_and_another_stream_has_its_own(wrappers):
    """Replays on one stream run one after another and may share the captured GEMMs' workspace; graphs on two
    streams may run at once and may not. release_graphs drops the workspaces too (they count in a step's peak
    memory), but a set a live cache holds keeps its own."""
    graph = wrappers["graph"]
    short, longer = problem(2, 2, 2, 5, np.float64), problem(3, 2, 2, 5, np.float64, seed=2)
    for arrays, mask in (short, longer):
        run_path("graph", wrappers, arrays, mask)
    with fake_cupy.Stream(non_blocking=True):
        assert_close(run_path("graph", wrappers, *short), reference(*short), 1e-12)
    sets = list(graph._SETS.values())
    assert sets[0].workspace is sets[1].workspace and sets[2].workspace is not sets[0].workspace
    assert len(graph._WORKSPACES) == 2
    _, _, cache = graph_forward(graph, *short)
    graph.release_graphs()
    assert not graph._SETS and not graph._WORKSPACES
    assert cache.lease.buffer_set.workspace.nbytes == graph.WORKSPACE_BYTES


def test_graph_captures_its_gemms_in_the_math_mode_cupys_cublas_has(wrappers, monkeypatch):
    """A float32 call within ``tf32_gemms`` (what a model's precision="tf32" sets on CuPy's handle) captures on
    a set of its own with that math mode on the capture handle; outside it, the default mode; float64 always the
    default. CuPy's handle is restored after the block."""
    graph, precision = wrappers["graph"], wrappers["precision"]
    cublas, cupys_handle = graph.cublas, graph.cupy.cuda.device.get_cublas_handle()  # the stand-in's, which
    set_mode, captures = cublas.setMathMode, []  # tf32_gemms sets too
    monkeypatch.setattr(cublas, "setMathMode", lambda handle, mode: (
        captures.append(mode) if handle != cupys_handle else None, set_mode(handle, mode)))
    arrays, mask = problem(2, 3, 2, 8, np.float32)
    wide, wide_mask = problem(2, 3, 2, 8, np.float64)
    assert_close(run_path("graph", wrappers, arrays, mask), reference(arrays, mask), 2e-5)
    with precision.tf32_gemms():
        assert cublas.getMathMode(cupys_handle) == precision.TF32_TENSOR_OP_MATH
        assert_close(run_path("graph", wrappers, arrays, mask), reference(arrays, mask), 2e-5)
        assert_close(run_path("graph", wrappers, wide, wide_mask), reference(wide, wide_mask), 1e-12)
    assert cublas.getMathMode(cupys_handle) == graph.DEFAULT_MATH
    assert captures == [graph.DEFAULT_MATH] * 2 + [precision.TF32_TENSOR_OP_MATH] * 2 + [graph.DEFAULT_MATH] * 2
    assert sorted(name[0][3] for name in graph._SETS) == [0, 0, precision.TF32_TENSOR_OP_MATH]


def test_graph_path_makes_no_cupy_cublas_call_while_capturing(wrappers, monkeypatch):
    """The stand-in refuses CuPy's cuBLAS wrappers during a capture, as CuPy does: a capture through them fails."""
    graph = wrappers["graph"]
    through_cupy = lambda dtype: graph.cublas.sgemm if dtype == np.float32 else graph.cublas.dgemm  # noqa: E731
    monkeypatch.setattr(graph, "_cublas_c", lambda: types.SimpleNamespace(gemm=through_cupy,
                                                                          set_workspace=lambda *args: None))
    arrays, mask = problem(2, 2, 2, 5, np.float64)
    with pytest.raises(RuntimeError, match="the CUDA-graph path could not capture its loop here "
                                           r"\(NotImplementedError: calling cuBLAS API during stream capture\); "
                                           "impl='cupy-stepwise' runs the same loop without a graph"):
        run_path("graph", wrappers, arrays, mask)
    assert fake_cupy.Stream.capturing is None  # the failed capture was ended


def test_graph_path_finds_the_cublas_library_this_process_loaded(wrappers, tmp_path):
    """The ctypes GEMMs use the libcublas CuPy loaded (whatever its CUDA major version), read from the process's
    memory map; libcublasLt and look-alike names are not it."""
    find = wrappers["graph"].mapped_library
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f10 r-xp 00000000 08:01 11 /opt/cuda lib/libcublasLt.so.13.1.0\n"
                    "7f10-7f20 rw-p 00000000 00:00 0 \n"
                    "7f20-7f30 r-xp 00000000 08:01 12 /opt/cuda lib/libcublas_fake.so\n"
                    "7f30-7f40 r-xp 00000000 08:01 13 /opt/cuda lib/libcublas.so.13.1.0\n")
    assert find("libcublas", str(maps)) == "/opt/cuda lib/libcublas.so.13.1.0"  # a path with a space is whole
    assert find("libcudnn", str(maps)) is None
    assert find("libcublas", str(tmp_path / "no-such-map")) is None  # then cuda.pathfinder is asked
    assert os.path.basename(find("libc")).startswith("libc.so")  # this process's own C library


TILE_SHAPES = [tiling.TileShape(1, 4, 4, 8, 8), tiling.TileShape(3, 4, 8, 8, 16), tiling.TileShape(8, 12, 4, 64, 512),
               tiling.TileShape(2, 16, 16, 40, 136)]  # one unit per block; units not dividing H; one chunk; rows > B


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("shape", TILE_SHAPES, ids=lambda s: "U{}R{}S{}F{}B{}".format(*s))
def test_tiled_kernels_match_generic_for_every_tile_shape(wrappers, shape, masked):
    arrays, mask = problem(3, 7, 3, 33, np.float64, masked=masked)
    with wrappers["tiled"].use_tile_shape(shape):
        assert_close(run_path("tiled", wrappers, arrays, mask), reference(arrays, mask), 1e-12)


@pytest.mark.parametrize("batch,hidden", [(16, 128), (64, 256), (7, 33), (1, 8)])
def test_shapes_chosen_for_an_h100_compute_the_layer(wrappers, batch, hidden):
    """The shape the path would choose on an H100 (227 KB of shared memory, 132 SMs), forced on the stand-in."""
    shape = tiling.choose_tile_shape(batch, hidden, 8, 232448, 132)
    assert shape is not None and tiling.refuses_shape(shape) is None
    arrays, mask = problem(2, batch, 3, hidden, np.float64, masked=True)
    with h100_sized(wrappers), wrappers["tiled"].use_tile_shape(shape):
        assert_close(run_path("tiled", wrappers, arrays, mask), reference(arrays, mask), 1e-12)


@contextlib.contextmanager
def h100_sized(wrappers):
    """Within the block the stand-in has an H100's 132 SMs and 227 KB of shared memory per block."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fake_cupy, "SHARED_BYTES", 232448)
        patch.setattr(fake_cupy, "SMS", 132)
        attributes = wrappers["shell"]._device_attributes(0)
        patch.setitem(attributes, "MaxSharedMemoryPerBlockOptin", 232448)
        patch.setitem(attributes, "MultiProcessorCount", 132)
        yield


def test_the_tiled_path_chooses_a_shape_that_fits_the_device(wrappers):
    """On the stand-in (8 SMs, 96 KB per block) the path picks its own shape and refuses what cannot fit."""
    tiled = wrappers["tiled"]
    assert tiled.refuses_size(7, 33, np.float64) is None
    assert "no tile shape" in tiled.refuses_size(64, 512, np.float64)
    with pytest.raises(ValueError, match="use the stepwise path"):
        forward_and_backward(tiled, *problem(1, 64, 2, 512, np.float64))


@pytest.mark.parametrize("itemsize,mma", [(4, False), (8, False), (4, True)], ids=["float32", "float64", "tf32"])
def test_chosen_tile_shapes_respect_the_device_limits(itemsize, mma):
    for batch in (1, 3, 16, 64, 200):
        for hidden in (1, 7, 64, 128, 300, 512, 768, 1024):
            for shared_limit, blocks in ((232448, 132), (166912, 108), (49152, 16)):
                shape = tiling.choose_tile_shape(batch, hidden, itemsize, shared_limit, blocks, mma)
                if shape is None:
                    continue
                assert tiling.refuses_shape(shape, mma) is None
                assert np.prod(shape.grid(batch, hidden)) <= blocks
                for kernel in cuda_sources.TILED_KERNELS:
                    assert tiling.shared_bytes(kernel, shape, hidden, itemsize) <= shared_limit


def test_bad_tile_shapes_are_refused(wrappers):
    assert "multiple of 4" in tiling.refuses_shape(tiling.TileShape(1, 6, 4, 8, 8))
    assert "at least 4" in tiling.refuses_shape(tiling.TileShape(1, 4, 2, 8, 8))
    assert "exceeds 512" in tiling.refuses_shape(tiling.TileShape(32, 64, 4, 8, 8))
    assert "multiples of 8" in tiling.refuses_shape(tiling.TileShape(1, 4, 4, 12, 8))
    assert "positive" in tiling.refuses_shape(tiling.TileShape(0, 4, 4, 8, 8))
    with pytest.raises(ValueError, match="tile shape: rows must be a multiple of 4"):
        with wrappers["tiled"].use_tile_shape(tiling.TileShape(1, 6, 4, 8, 8)):
            pass
    assert tiling.refuses_shape(tiling.TileShape(4, 16, 4, 8, 8)) is None
    assert "need units a multiple of 8, got 4" in tiling.refuses_shape(tiling.TileShape(4, 16, 4, 8, 8), mma=True)
    assert "need rows a multiple of 16, got 8" in tiling.refuses_shape(tiling.TileShape(8, 8, 4, 8, 8), mma=True)
    assert "need splits a multiple of 4, got 5" in tiling.refuses_shape(tiling.TileShape(8, 16, 5, 8, 8), mma=True)


OPTIMIZER_CASES = [("sgd", {}), ("sgd", {"momentum": 0.9, "weight_decay": 0.1}),
                   ("sgd", {"momentum": 0.5, "nesterov": True}), ("adam", {}), ("adam", {"weight_decay": 0.1}),
                   ("adamw", {"weight_decay": 0.05}), ("rmsprop", {}),
                   ("rmsprop", {"momentum": 0.9, "weight_decay": 0.1, "alpha": 0.9})]


class Tensors:
    """A stand-in model whose parameters are arrays of the given shapes."""

    def __init__(self, shapes: list[tuple[int, ...]], dtype: Any) -> None:
        rng = np.random.default_rng(1)
        self.backend = NUMPY
        self.params = {f"t{i}": rng.standard_normal(shape).astype(dtype) for i, shape in enumerate(shapes)}


# the LSTM's 3 tensors (one launch); 11 tensors (two launches), an empty one and one over 3 blocks
UPDATE_MODELS = {"lstm": None, "two launches": [(3, 5)] * 6 + [(0,), (9000,), (4, 4), (1,), (2, 3)]}


@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 2e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("name,options", OPTIMIZER_CASES, ids=lambda v: str(v) if isinstance(v, str) else
                         ",".join(f"{k}={w}" for k, w in v.items()) or "defaults")
@pytest.mark.parametrize("case", UPDATE_MODELS)
def test_fused_optimizer_kernels_match_the_generic_updates(wrappers, name, options, dtype, tolerance, case):
    """Four steps of each optimizer with ``lstmx.kernels.cupy.optim``'s step against the generic one."""
    from lstmx.training.optim import make_optimizer

    rng = np.random.default_rng(0)
    shapes = UPDATE_MODELS[case]
    models = [lstmx.LSTM(3, 5, backend="numpy", dtype=np.dtype(dtype).name, seed=0) if shapes is None
              else Tensors(shapes, dtype) for _ in range(2)]
    fused, generic_run = (make_optimizer(name, model, 0.01, **options) for model in models)
    fused._update = wrappers["optim"].UPDATES[type(fused).__name__]
    for _ in range(4):
        grads = {k: rng.standard_normal(p.shape).astype(dtype) for k, p in models[0].params.items()}
        fused.step(grads)
        generic_run.step(grads)
    for key in models[0].params:
        assert models[0].params[key].shape == models[1].params[key].shape
        np.testing.assert_allclose(models[0].params[key], models[1].params[key], rtol=tolerance, atol=tolerance)
        for slot, value in generic_run.state[key].items():
            np.testing.assert_allclose(fused.state[key][slot], value, rtol=tolerance, atol=tolerance)


CLIP_CASES = {"one": [(7,)], "language model": [(96, 16), (20, 64), (64,), (16, 96), (96,)],
              "two launches": [(3, 5)] * 6 + [(0,), (9000,), (4, 4), (1,)],  # 10 tensors, an empty one, 3 blocks
              "large": [(5000,), (7, 900)]}


@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("case", CLIP_CASES)
def test_fused_clipping_matches_the_generic_clipping(wrappers, case, max_norm, dtype, tolerance):
    from lstmx.training.optim import clip_by_global_norm

    rng = np.random.default_rng(0)
    grads = {f"g{i}": rng.standard_normal(shape).astype(dtype) for i, shape in enumerate(CLIP_CASES[case])}
    clipped, norm = wrappers["optim"].clip_by_global_norm(NUMPY, grads, max_norm)
    expected, expected_norm = clip_by_global_norm(NUMPY, grads, max_norm)
    np.testing.assert_allclose(norm, expected_norm, rtol=tolerance)
    assert list(clipped) == list(grads)
    for name, value in expected.items():
        assert clipped[name].dtype == dtype and clipped[name].shape == value.shape
        np.testing.assert_allclose(clipped[name], value, rtol=tolerance, atol=tolerance, err_msg=name)
        if max_norm > 1e5:
            np.testing.assert_array_equal(clipped[name], grads[name])  # a scale of exactly 1


def test_fused_clipping_keeps_a_nan_and_its_sum_does_not_depend_on_thread_order(wrappers):
    from lstmx.training.optim import clip_by_global_norm

    rng = np.random.default_rng(1)
    grads = {"a": rng.standard_normal(9000).astype(np.float32), "b": rng.standard_normal((40, 40)).astype(np.float32)}
    norms = []
    for seed in (1, 2, 3):
        RawKernel.seed = seed
        try:
            norms.append(wrappers["optim"].clip_by_global_norm(NUMPY, grads, 1.0)[1])
        finally:
            RawKernel.seed = 0
    assert norms[0] == norms[1] == norms[2]  # the last block adds the partials in order
    grads["b"][3, 4] = np.nan
    clipped, norm = wrappers["optim"].clip_by_global_norm(NUMPY, grads, 1.0)
    expected, expected_norm = clip_by_global_norm(NUMPY, grads, 1.0)
    assert np.isnan(norm) and np.isnan(expected_norm)
    assert np.all(np.isnan(clipped["a"])) and np.all(np.isnan(expected["a"]))


def test_a_wrong_clipping_kernel_is_caught(wrappers, monkeypatch):
    """A second launch (more than 8 tensors) writing its partial sums over the first launch's."""
    plant(monkeypatch, "optim", "partials[first_block + blockIdx.x] = sum;", "partials[blockIdx.x] = sum;")
    with pytest.raises(AssertionError):
        test_fused_clipping_matches_the_generic_clipping(wrappers, "two launches", 0.5, np.float64, 1e-12)


@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 2e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("dominant", [False, True], ids=["spread", "dominant"])
@pytest.mark.parametrize("rows,classes", [(7, 13), (1, 1), (5, 96), (0, 4), (3, 300)])
def test_fused_cross_entropy_kernel_matches_the_generic_loss(wrappers, rows, classes, dtype, tolerance, dominant):
    from lstmx.nn.layers.loss import cross_entropy_and_gradient

    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((rows, classes))).astype(dtype)
    if dominant:  # exp() of the other classes underflows, and log(0) must not appear
        logits[:, 0] += 40
    targets = rng.integers(0, classes, size=rows)
    targets[::3] = -100  # ignored entries, counted out of the mean
    loss, dlogits = wrappers["loss"].cross_entropy_and_gradient(NUMPY, logits, targets)
    expected_loss, expected_dlogits = cross_entropy_and_gradient(NUMPY, logits, targets)
    assert dlogits.dtype == dtype and np.isfinite(loss)
    np.testing.assert_allclose(loss, expected_loss, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(dlogits, expected_dlogits, rtol=tolerance, atol=tolerance)


def test_fused_cross_entropy_gives_nan_for_a_target_outside_the_vocabulary(wrappers):
    loss, dlogits = wrappers["loss"].cross_entropy_and_gradient(NUMPY, np.zeros((2, 4)), np.array([1, 7]))
    assert np.isnan(loss) and np.all(np.isnan(dlogits[1])) and np.all(np.isfinite(dlogits[0]))


# --- the emulator can fail: bugs planted in a kernel source are caught ---------------------------------------

def plant(monkeypatch, kind: str, old: str, new: str) -> None:
    """For the rest of the test the ``kind`` kernels' source has ``old`` replaced by ``new`` (the wrappers, fresh
    for each test, compile what ``cuda_sources.source`` gives)."""
    real = cuda_sources.source
    assert old in real(kind, "float64"), old

    def planted(asked: str, dtype: str) -> str:
        return real(asked, dtype).replace(old, new, 1) if asked == kind else real(asked, dtype)

    monkeypatch.setattr(cuda_sources, "source", planted)


def test_a_missing_grid_barrier_is_caught(wrappers, monkeypatch):
    plant(monkeypatch, "persistent", "grid.sync();  // h_{t+1}", "// grid.sync() removed; h_{t+1}")
    arrays, mask = problem(4, 6, 3, 40, np.float64)
    results = [run_path("persistent", wrappers, arrays, mask, seed) for seed in (1, 2)]
    expected = reference(arrays, mask)
    wrong = [not np.allclose(r["y"], expected["y"], atol=1e-12) for r in results]
    assert any(wrong) or not np.array_equal(results[0]["y"], results[1]["y"])


@pytest.mark.parametrize("path", ["persistent", "tiled"])
def test_a_grid_barrier_outside_a_cooperative_launch_is_caught(wrappers, path):
    """A persistent kernel made without enable_cooperative_groups: its first grid.sync() stops the launch."""
    wrapper = wrappers[path]
    for kernel in (cuda_sources.PERSISTENT_KERNELS if path == "persistent" else cuda_sources.TILED_KERNELS):
        made = wrapper._kernel(kernel, "float64")
        made.cooperative = False
    arrays, mask = problem(3, 4, 2, 8, np.float64)
    with pytest.raises(RuntimeError, match=r"grid.sync\(\) in a launch that is not cooperative"):
        run_path(path, wrappers, arrays, mask)


def test_a_barrier_skipped_by_some_threads_is_reported(wrappers, monkeypatch):
    plant(monkeypatch, "persistent", "grid.sync();  // h_{t+1}", "if (active) grid.sync();  // h_{t+1}")
    arrays, mask = problem(2, 3, 3, 40, np.float64)  # H = 40: lanes 8-31 of the second block are inactive
    with pytest.raises(RuntimeError, match="divergent barrier"):
        run_path("persistent", wrappers, arrays, mask)


def test_a_store_out_of_bounds_is_caught(wrappers, monkeypatch):
    plant(monkeypatch, "stepwise", "if (n >= count) return;", "if (n > count) return;")
    arrays, mask = problem(2, 3, 3, 8, np.float64)  # 24 threads of a 256-thread block: thread 24 runs past the end
    with pytest.raises(RuntimeError, match="stored outside"):
        run_path("stepwise", wrappers, arrays, mask)


@pytest.mark.parametrize("old,new", [
    ("grid.sync();  // dz_t of every cell", "// no barrier:"),
    ("__syncthreads();  // the chunk is staged before", "// no barrier:"),
    ("__syncthreads();  // the chunk is read before the next", "// no barrier:"),
], ids=["grid barrier", "staging barrier", "chunk barrier"])
def test_a_missing_barrier_in_the_tiled_kernels_is_caught(wrappers, monkeypatch, old, new):
    plant(monkeypatch, "tiled", old, new)
    arrays, mask = problem(3, 7, 3, 33, np.float64)
    with wrappers["tiled"].use_tile_shape(TILE_SHAPES[1]), pytest.raises(AssertionError):
        assert_close(run_path("tiled", wrappers, arrays, mask), reference(arrays, mask), 1e-12)


def test_a_wrong_optimizer_kernel_is_caught(wrappers, monkeypatch):
    plant(monkeypatch, "optim", "(one - beta2) * g * g", "(one - beta2) * g")
    with pytest.raises(AssertionError):
        test_fused_optimizer_kernels_match_the_generic_updates(wrappers, "adam", {}, np.float64, 1e-12, "lstm")


def test_an_update_written_to_the_wrong_entry_is_caught(wrappers, monkeypatch):
    """Each tensor's new values written from the start of the flat buffer, not at its own entries."""
    plant(monkeypatch, "optim", "new_param[e] = p - lr * g;", "new_param[k] = p - lr * g;")
    with pytest.raises(AssertionError):
        test_fused_optimizer_kernels_match_the_generic_updates(wrappers, "sgd", {}, np.float64, 1e-12, "two launches")


def test_a_missing_barrier_in_the_block_reduction_is_caught(wrappers, monkeypatch):
    plant(monkeypatch, "loss", "        }\n        __syncthreads();\n    }\n    return scratch[0];",
          "        }\n    }\n    return scratch[0];")
    with pytest.raises(AssertionError):
        test_fused_cross_entropy_kernel_matches_the_generic_loss(wrappers, 7, 13, np.float64, 1e-12, dominant=False)


def test_a_store_past_the_shared_memory_is_caught(wrappers, monkeypatch):
    """The tiled forward told a chunk of 16 while its launch asks for the shared memory of a chunk of 8: its
    staging runs past the end."""
    real_bytes = tiling.shared_bytes

    def bytes_of_a_narrower_chunk(kernel, tile, hidden, itemsize):
        return real_bytes(kernel, tile._replace(forward_chunk=tile.forward_chunk - 8), hidden, itemsize)

    monkeypatch.setattr(tiling, "shared_bytes", bytes_of_a_narrower_chunk)
    arrays, mask = problem(2, 4, 3, 33, np.float64)
    with wrappers["tiled"].use_tile_shape(tiling.TileShape(4, 8, 4, 16, 32)):
        with pytest.raises(RuntimeError, match="stored past the end of the dynamic shared memory"):
            run_path("tiled", wrappers, arrays, mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_misaligned_vector_access_is_caught(wrappers, monkeypatch, dtype):
    """The staged rows of h moved one element off their 16-byte boundary: the tiled forward's float4 (double2)
    loads from them fault, as they would on a GPU."""
    plant(monkeypatch, "tiled", "h_s = w_s + (long long)k8 * p.units * 4;", "h_s = w_s + (long long)k8 * p.units * 4 + 1;")
    arrays, mask = problem(2, 4, 3, 33, dtype)
    with wrappers["tiled"].use_tile_shape(tiling.TileShape(4, 8, 4, 16, 32)):
        with pytest.raises(RuntimeError, match=r"misaligned address: an access that needs (16|8)-byte alignment .*"
                                               r"\(kernel:\d+\)"):
            run_path("tiled", wrappers, arrays, mask)


def test_arguments_that_do_not_match_the_kernel_signature_are_refused():
    """The emulator reads each kernel's parameters from its source and refuses a launch whose arguments differ
    (a GPU would run it on garbage): a float64 array for a float pointer, a Python or wrongly sized scalar, or
    arrays that overlap against a __restrict__ promise."""
    from .cuda_emulator import compile_kernels

    source = cuda_sources.source("loss", "float32")
    name = cuda_sources.kernel_name("softmax_cross_entropy", "float32")
    kernels = compile_kernels(source, [name])
    good = (np.zeros((2, 3), np.float32), np.zeros(2, np.int64), np.ones((), np.float32), np.zeros(2, np.float32),
            np.zeros((2, 3), np.float32), np.int32(2), np.int32(3), np.int64(-100))
    kernels.launch(name, (1,), (4,), good, shared_mem=16)
    for index, wrong, message in [(0, np.zeros((2, 3)), "logits points to float32; got ndarray float64"),
                                  (2, np.float32(1), "count_of_real points to float32; got float32"),
                                  (5, 2, "rows is int32; got int 2"), (7, np.int32(-100), "ignore_index is int64")]:
        with pytest.raises(TypeError, match=message):
            kernels.launch(name, (1,), (4,), good[:index] + (wrong,) + good[index + 1:], shared_mem=16)
    with pytest.raises(TypeError, match="takes 8 arguments, got 7"):
        kernels.launch(name, (1,), (4,), good[:7], shared_mem=16)
    # __restrict__: an array written through one argument and reached through another is refused (the compiler may
    # reorder such accesses); two that are only read may share memory
    with pytest.raises(ValueError, match="logits and dlogits overlap, but one of them is __restrict__"):
        kernels.launch(name, (1,), (4,), good[:4] + (good[0],) + good[5:], shared_mem=16)
    logits = np.ones((2, 3), np.float32)
    kernels.launch(name, (1,), (4,), (logits, good[1], logits.reshape(-1)[:1].reshape(()), *good[3:]), shared_mem=16)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(1, 3), batch=st.integers(1, 9), hidden=st.integers(1, 40), masked=st.booleans(),
       units=st.sampled_from([1, 2, 3, 5, 8]), groups=st.integers(1, 3), splits=st.sampled_from([4, 5, 8]),
       forward_chunk=st.sampled_from([8, 16, 40]), backward_chunk=st.sampled_from([8, 16, 32, 168]))
def test_tiled_kernels_on_drawn_sizes_and_tile_shapes(wrappers, steps, batch, hidden, masked, units, groups, splits,
                                                     forward_chunk, backward_chunk):
    arrays, mask = problem(steps, batch, 2, hidden, np.float64, masked=masked)
    shape = tiling.TileShape(units, 4 * groups, splits, forward_chunk, backward_chunk)
    with wrappers["tiled"].use_tile_shape(shape):
        assume(wrappers["tiled"].refuses_size(batch, hidden, np.float64) is None)  # the grid fits the stand-in
        assert_close(run_path("tiled", wrappers, arrays, mask), reference(arrays, mask), 1e-12)


def test_a_sequence_longer_than_cudnns_limit_runs_in_one_launch(wrappers):
    """T = 66,000 steps (cuDNN refuses more than 65,535) through the tiled kernels, one launch per pass, with
    lengths: the generic path's outputs and gradients. No kernel ties a grid dimension or a 32-bit index to T
    (the step is a loop counter, offsets are 64-bit); the stepwise and graph paths pass T as an argument."""
    arrays, mask = problem(66_000, 1, 1, 2, np.float64, masked=True)
    assert_close(run_path("tiled", wrappers, arrays, mask), reference(arrays, mask), 1e-10)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["stepwise", "persistent", "graph"]), steps=st.integers(1, 4), batch=st.integers(1, 9),
       features=st.integers(1, 4), hidden=st.integers(1, 40), masked=st.booleans())
def test_layer_paths_on_drawn_sizes(wrappers, path, steps, batch, features, hidden, masked):
    """The other paths (the tiled one above, with its tile shapes) on hypothesis-drawn sizes."""
    arrays, mask = problem(steps, batch, features, hidden, np.float64, masked=masked)
    if path == "persistent":
        assume(wrappers["persistent"].refuses_size(batch, hidden, np.float64) is None)  # the grid fits the stand-in
    assert_close(run_path(path, wrappers, arrays, mask), reference(arrays, mask), 1e-12)


# --- the TF32 variant of the tiled kernels: warp-wide tensor-core MMAs ----------------------------------------

MMA_SHAPES = [tiling.TileShape(8, 16, 4, 8, 16), tiling.TileShape(16, 16, 8, 40, 136),
              tiling.TileShape(8, 32, 8, 16, 32)]  # one warp tile per share; chunks cover everything; rows > B


OPERAND_ROUNDING = ("LSTMX_OPERANDS == 1 ? bf16_round(x) : LSTMX_OPERANDS == 2 ? fp16_round(x) : "
                    "tf32_round(x)")  # what the MMA variants' to_operand returns


def run_tf32(wrappers, arrays, mask, seed=0):
    """The tiled path's TF32 variant (``cupy-tiled-tf32``), in the tiled path's tile shape if one is forced."""
    return run_path("tiled_tf32", wrappers, arrays, mask, seed)


def relative_error(result, expected):
    return {name: np.max(np.abs(np.asarray(result[name], np.float64) - value)) / np.max(np.abs(value))
            for name, value in expected.items()}


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("shape", MMA_SHAPES, ids=lambda s: "U{}R{}S{}F{}B{}".format(*s))
def test_tf32_tiled_kernels_compute_the_layer_within_tf32_error(wrappers, shape, masked):
    arrays, mask = problem(3, 7, 3, 33, np.float32, masked=masked)
    with wrappers["tiled"].use_tile_shape(shape):
        reduced, full = run_tf32(wrappers, arrays, mask), run_path("tiled", wrappers, arrays, mask)
    expected = reference(arrays, mask)
    assert all(v.dtype == np.float32 for v in reduced.values())
    assert max(relative_error(reduced, expected).values()) < 1e-2  # TF32 keeps 10 mantissa bits
    assert max(relative_error(full, expected).values()) < 2e-6
    assert max(relative_error(reduced, full).values()) > 1e-5  # the products really ran in TF32


@pytest.mark.parametrize("shape", MMA_SHAPES[:2], ids=lambda s: "U{}R{}S{}F{}B{}".format(*s))
def test_tf32_kernels_fed_float32_operands_match_float32(wrappers, monkeypatch, shape):
    """Without the rounding to TF32 (the emulator's MMA sums in float32) the tensor-core kernels must give the
    float32 results: every fragment lands where the product needs it."""
    plant(monkeypatch, "tiled", OPERAND_ROUNDING, "x")
    arrays, mask = problem(3, 9, 3, 33, np.float32, masked=True)
    with wrappers["tiled"].use_tile_shape(shape):
        assert_close(run_tf32(wrappers, arrays, mask), reference(arrays, mask), 2e-5)


def test_tf32_kernels_do_not_depend_on_thread_order(wrappers):
    arrays, mask = problem(2, 7, 3, 33, np.float32, masked=True)
    with wrappers["tiled"].use_tile_shape(MMA_SHAPES[1]):
        first, second = (run_tf32(wrappers, arrays, mask, seed) for seed in (1, 2))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_a_misplaced_fragment_is_caught(wrappers, monkeypatch):
    plant(monkeypatch, "tiled", "a[1] = top[8 * stride]; a[2] = top[4];", "a[1] = top[4]; a[2] = top[8 * stride];")
    arrays, mask = problem(2, 7, 3, 33, np.float32)
    with wrappers["tiled"].use_tile_shape(MMA_SHAPES[0]):
        assert max(relative_error(run_tf32(wrappers, arrays, mask), reference(arrays, mask)).values()) > 0.1


def test_tf32_refuses_a_tile_shape_its_warp_tiles_cannot_cover(wrappers):
    arrays, mask = problem(1, 4, 2, 16, np.float32)
    with wrappers["tiled"].use_tile_shape(tiling.TileShape(4, 16, 4, 16, 64)):
        forward_and_backward(wrappers["tiled"], arrays, mask)  # the float32 kernels run it
        with pytest.raises(ValueError, match="the TF32 kernels need units a multiple of 8, got 4; use the stepwise"):
            run_tf32(wrappers, arrays, mask)


@pytest.mark.parametrize("batch,hidden", [(16, 128), (7, 33)])
def test_tf32_shapes_chosen_for_an_h100_compute_the_layer(wrappers, batch, hidden):
    shape = tiling.choose_tile_shape(batch, hidden, 4, 232448, 132, mma=True)
    assert shape is not None and tiling.refuses_shape(shape, mma=True) is None
    arrays, mask = problem(2, batch, 3, hidden, np.float32, masked=True)
    with h100_sized(wrappers), wrappers["tiled"].use_tile_shape(shape):
        result = run_tf32(wrappers, arrays, mask)
    assert max(relative_error(result, reference(arrays, mask)).values()) < 1e-2


@settings(max_examples=12, deadline=None)
@given(steps=st.integers(1, 3), batch=st.integers(1, 20), hidden=st.integers(1, 40), masked=st.booleans(),
       units=st.sampled_from([8, 16]), rows=st.sampled_from([16, 32]), splits=st.sampled_from([4, 8, 12]),
       forward_chunk=st.sampled_from([8, 16, 48]), backward_chunk=st.sampled_from([8, 24, 64, 168]))
def test_tf32_kernels_on_drawn_sizes_and_tile_shapes(steps, batch, hidden, masked, units, rows, splits,
                                                    forward_chunk, backward_chunk):
    """Fed float32 operands (rounding planted out), the TF32 kernels give the float32 layer on any size and
    tile shape they accept: fragments, warp tiles, shares and chunks all line up."""
    arrays, mask = problem(steps, batch, 2, hidden, np.float32, masked=masked)
    shape = tiling.TileShape(units, rows, splits, forward_chunk, backward_chunk)
    assume(tiling.refuses_shape(shape, mma=True) is None)
    with pytest.MonkeyPatch.context() as patch:  # planted before any kernel is made (the wrapper caches them)
        plant(patch, "tiled", OPERAND_ROUNDING, "x")
        modules = fake_cupy_modules(patch)
        with modules["tiled"].use_tile_shape(shape):
            assume(modules["tiled_tf32"].refuses_size(batch, hidden, np.float32) is None)  # the grid fits the stand-in
            result = forward_and_backward(modules["tiled_tf32"], arrays, mask)
    assert_close(result, reference(arrays, mask), 3e-5)


def test_the_tf32_path_chooses_its_own_shape_on_the_device(wrappers):
    """Without a forced shape, the TF32 variant picks one of its own (MMA multiples) that fits the stand-in, and
    refuses what cannot fit, as the float32 variant does."""
    tiled = wrappers["tiled_tf32"]
    arrays, mask = problem(2, 7, 3, 33, np.float32, masked=True)
    assert tiled.refuses_size(7, 33, np.float32) is None
    assert "no tile shape for batch 64 × hidden 512 in tf32" in tiled.refuses_size(64, 512, np.float32)
    assert tiled.refuses_size(7, 33, np.float64) == "runs float32 layers (TF32 products), not float64"
    result = run_tf32(wrappers, arrays, mask)
    assert max(relative_error(result, reference(arrays, mask)).values()) < 1e-2
    assert max(relative_error(result, run_path("tiled", wrappers, arrays, mask)).values()) > 1e-5


@pytest.fixture
def on_numpy(wrappers, monkeypatch):
    """``on_numpy(name)``: the registry's CuPy layer path ``name``, its module bound to the stand-in, made to run
    on the NumPy backend, so that whole models run through it (and through the emulated kernels) here."""
    def allow(name: str) -> str:
        monkeypatch.setattr(registry, "IMPLS", tuple(impl._replace(backends=("numpy",))
                                                     if impl.kind == "layer" and impl.name == name else impl
                                                     for impl in registry.IMPLS))
        return name

    return allow


@pytest.fixture
def launches(monkeypatch):
    """The names of the emulated kernels launched (or captured) during the test, in order."""
    names, launch = [], RawKernel.__call__

    def counted(self, *args, **options):
        names.append(self.name)
        return launch(self, *args, **options)

    monkeypatch.setattr(RawKernel, "__call__", counted)
    return names


def model_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (5, 3)), rng.integers(0, 11, (5, 3))


@pytest.mark.parametrize("path", [f"cupy-{path}" for path in LAYER_PATHS])
def test_a_two_layer_language_model_through_each_cupy_path_matches_generic(on_numpy, launches, path):
    """The whole model (embedding, two layers of different input sizes, head, loss) with each CuPy layer path
    under both layers, on a full batch, with lengths, then on a full batch again (the graph path lends its sets
    again): its loss, final h and c of both layers and every gradient as the generic path's, 1e-12 in float64."""
    model = lstmx.LanguageModel(11, 5, 8, 2, backend="numpy", dtype="float64", seed=3)
    tokens, targets = model_inputs()
    for lengths in (None, [5, 3, 1], None):
        outputs = {impl: model.loss(tokens, targets, lengths=lengths, impl=impl) for impl in ("generic", on_numpy(path))}
        fast, slow = outputs[path], outputs["generic"]
        assert_close({"loss": fast.loss, "h": fast.state[0], "c": fast.state[1], **fast.grads},
                     {"loss": slow.loss, "h": slow.state[0], "c": slow.state[1], **slow.grads}, 1e-12)
    kernels = {"cupy-stepwise": "lstm_forward_step", "cupy-graph": "lstm_forward_step",
               "cupy-persistent": "lstm_forward_persistent", "cupy-tiled": "lstm_forward_tiled"}[path]
    assert any(name.startswith(kernels) for name in launches)  # the path's own kernels ran, emulated


@pytest.mark.parametrize("path", [f"cupy-{path}" for path in LAYER_PATHS])
def test_a_bidirectional_stack_through_each_cupy_path_matches_generic(on_numpy, launches, path):
    """Two bidirectional layers (the second reading both directions' 2H features), batch-first, with and without
    lengths, through each CuPy layer path's emulated kernels: y, the final h and c of every layer and direction,
    and every gradient as the generic path's (1e-12, float64). Each direction is one launch of the path."""
    model = lstmx.LSTM(3, 8, 2, bidirectional=True, batch_first=True, backend="numpy", dtype="float64", seed=6)
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 5, 16))
    dh, dc = rng.standard_normal((4, 3, 8)), rng.standard_normal((4, 3, 8))
    for lengths in (None, [5, 2, 4]):
        results = []
        for impl in ("generic", on_numpy(path)):
            y, (h, c), cache = model.forward(x, lengths=lengths, impl=impl)
            dx, (dh0, dc0), grads = model.backward(dy, cache, (dh, dc))
            results.append({"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, **grads})
        assert_close(results[1], results[0], 1e-12)
    assert sum(name.startswith("lstm_forward") for name in launches) >= 4  # two layers × two directions


def bidirectional_run(model, impl, lengths, seed=6):
    """Forward and backward of ``model`` (2 bidirectional layers, 3 → 8) through ``impl``: every output and
    gradient, and the cache."""
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal((5, 3, 3)), rng.standard_normal((5, 3, 16))
    dh, dc = rng.standard_normal((4, 3, 8)), rng.standard_normal((4, 3, 8))
    y, (h, c), cache = model.forward(x, lengths=lengths, impl=impl)
    dx, (dh0, dc0), grads = model.backward(dy, cache, (dh, dc))
    return {"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, **grads}, cache


def test_the_tf32_tiled_paths_pair_kernels_run_both_directions_in_one_launch(wrappers):
    """cupy-tiled-tf32's pair kernels (float32 only, so called directly here): both directions of a layer within
    TF32's error of each direction run alone through the float32 tiled kernels."""
    a, mask = problem(3, 5, 3, 33, np.float32, masked=True)
    b, _ = problem(3, 5, 3, 33, np.float32, seed=1)
    step_mask = mask[..., None]
    tf32, tiled = wrappers["tiled_tf32"], wrappers["tiled"]
    ys, finals, caches = tf32.lstm_layer_pair_forward(NUMPY, (a["x"], b["x"]), (a["weight"], b["weight"]),
                                                      (a["bias"], b["bias"]), (a["h0"], b["h0"]), (a["c0"], b["c0"]),
                                                      step_mask)
    dxs, dstates, dweights, dbiases = tf32.lstm_layer_pair_backward(
        NUMPY, (a["dy"], b["dy"]), (a["dh_last"], b["dh_last"]), (a["dc_last"], b["dc_last"]),
        (a["weight"], b["weight"]), caches)
    for d, p in enumerate((a, b)):
        alone = forward_and_backward(tiled, p, mask)
        paired = dict(y=ys[d], h=finals[d][0], c=finals[d][1], dx=dxs[d], dh0=dstates[d][0], dc0=dstates[d][1],
                      dweight=dweights[d], dbias=dbiases[d])
        assert max(relative_error(paired, {k: np.asarray(v, np.float64) for k, v in alone.items()}).values()) < 1e-2


@pytest.mark.parametrize("path", ["cupy-persistent", "cupy-tiled"])
def test_both_directions_of_a_layer_run_in_one_launch_on_the_one_launch_paths(on_numpy, monkeypatch, path):
    """Asked for by name, the persistent and tiled paths run both directions of each bidirectional layer in one
    cooperative launch (grid z = 2, each direction on its half of stacked arrays) per pass: two layers are two
    forward and two backward launches, not four each; every output and gradient is the generic path's (1e-12,
    float64), with lengths and without. The cache says so; "auto" pairs them too (they passed the CuPy suite on an H200), the LSTMP cell never."""
    grids = []
    launch = RawKernel.__call__

    def recorded(self, grid, block, args, shared_mem=0):
        grids.append((self.name.rsplit("_", 1)[0], tuple(grid)[2:]))
        return launch(self, grid, block, args, shared_mem)

    monkeypatch.setattr(RawKernel, "__call__", recorded)
    model = lstmx.LSTM(3, 8, 2, bidirectional=True, backend="numpy", dtype="float64", seed=6)
    kind = path.removeprefix("cupy-")
    for lengths in (None, [5, 2, 4]):
        expected, _ = bidirectional_run(model, "generic", lengths)
        grids.clear()
        got, cache = bidirectional_run(model, on_numpy(path), lengths)
        assert_close(got, expected, 1e-12)
        assert cache.paired and cache.impl == path
        assert grids == [(f"lstm_forward_{kind}", (2,))] * 2 + [(f"lstm_backward_{kind}", (2,))] * 2
    impl = registry.layer_impl(path)
    assert impl.paired_directions and impl.auto_paired
    call = registry.Call(NUMPY, np.float64, sizes=(3, 8))
    assert impl.pairs_directions(call, by_name=False)
    assert not impl.pairs_directions(call._replace(cell="lstmp"), by_name=True)


def test_directions_run_one_launch_each_where_both_grids_do_not_fit_at_once(on_numpy):
    """Where the two directions' blocks cannot all be resident at once, or with checkpointing over time, each
    direction is a launch of its own (the cache says which ran); the results are the generic path's either way."""
    persistent = sys.modules["lstmx.kernels.cupy.persistent"]
    batch = 4 * (fake_cupy.SMS * 10 // 2 + 1)  # one direction's grid fits the stand-in, both at once do not
    assert persistent.refuses_size(batch, 8, np.float64) is None
    assert "in both directions" in persistent.refuses_size(batch, 8, np.float64, directions=2)
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((2, batch, 3)), rng.standard_normal((2, batch, 16))
    for model, rows in ((lstmx.LSTM(3, 8, bidirectional=True, backend="numpy", dtype="float64", seed=2), batch),
                        (lstmx.LSTM(3, 8, bidirectional=True, backend="numpy", dtype="float64", seed=2,
                                    checkpoint_every=1), 3)):
        results = []
        for impl in ("generic", on_numpy("cupy-persistent")):
            y, _, cache = model.forward(x[:, :rows], impl=impl)
            dx, _, grads = model.backward(dy[:, :rows], cache)
            results.append({"y": y, "dx": dx, **grads})
        assert not cache.paired
        assert_close(results[1], results[0], 1e-12)


def test_a_backward_of_both_directions_refuses_caches_of_two_forwards(wrappers):
    """The paired backward launches on the stacked arrays of one paired forward: caches of two separate forwards
    are refused in one line before any kernel runs."""
    from lstmx.nn.layers.lstm_layer import LayerInputError

    persistent = wrappers["persistent"]
    a, _ = problem(2, 3, 2, 8, np.float64)
    b, _ = problem(2, 3, 2, 8, np.float64, seed=1)
    caches = [persistent.lstm_layer_forward(NUMPY, p["x"], p["weight"], p["bias"], p["h0"], p["c0"])[2] for p in (a, b)]
    with pytest.raises(LayerInputError, match="takes the caches of one such forward"):
        persistent.lstm_layer_pair_backward(NUMPY, (a["dy"], b["dy"]), (a["dh_last"], b["dh_last"]),
                                            (a["dc_last"], b["dc_last"]), (a["weight"], b["weight"]), tuple(caches))


def test_a_deep_stack_of_one_shape_runs_every_layer_through_the_graph_path(on_numpy):
    """Five layers of one shape in one model: each takes a buffer set of that shape (five, all captured, none
    handed to another path), and the model's loss and gradients are the generic path's."""
    graph = sys.modules["lstmx.kernels.cupy.graph"]
    model = lstmx.LanguageModel(11, 8, 8, 5, backend="numpy", dtype="float64", seed=4)
    tokens, targets = model_inputs(seed=1)
    fast = model.loss(tokens, targets, lengths=[5, 4, 2], impl=on_numpy("cupy-graph"))
    slow = model.loss(tokens, targets, lengths=[5, 4, 2], impl="generic")
    assert_close({"loss": fast.loss, **fast.grads}, {"loss": slow.loss, **slow.grads}, 1e-12)
    assert len(graph._SETS) == 5 and len({name[0] for name in graph._SETS}) == 1
    assert all(s.forward.launches == 1 and s.backward.launches == 1 for s in graph._SETS.values())


def test_the_tf32_tiled_path_is_the_registrys_choice_under_tf32_only(on_numpy, monkeypatch):
    """``cupy-tiled-tf32`` runs under a model precision of "tf32" only, float32 only, by name: the registry
    refuses it otherwise in one line naming those that can, and "auto" never picks it; ``cupy-tiled`` runs
    its float32 kernels at either precision (TF32 permits, it does not demand)."""
    name = on_numpy("cupy-tiled-tf32")
    on_numpy("cupy-tiled")
    assert registry.choose_layer_impl(NUMPY, np.float32, True, name, (3, 33), precision="tf32").name == name
    with pytest.raises(registry.LayerImplError, match="layer implementation 'cupy-tiled-tf32' cannot run this call: "
                                                      "it runs under precision='tf32', not 'float32'; "
                                                      "implementations that can: cupy-tiled, "):
        registry.choose_layer_impl(NUMPY, np.float32, False, name, (3, 33))
    with pytest.raises(registry.LayerImplError, match="it computes float32, not float64"):
        registry.choose_layer_impl(NUMPY, np.float64, False, name, (3, 33), precision="tf32")
    for precision in ("float32", "tf32"):
        assert registry.choose_layer_impl(NUMPY, np.float32, False, None, (3, 33), precision=precision).name != name
        assert registry.choose_layer_impl(NUMPY, np.float32, False, "cupy-tiled", (3, 33),
                                          precision=precision).name == "cupy-tiled"
    assert name in registry.TF32_RECURRENCE_IMPLS and "cupy-tiled" not in registry.TF32_RECURRENCE_IMPLS


def bf16_run(model, impl, lengths, seed):
    rng = np.random.default_rng(seed)
    steps, batch = 4, 5
    x = rng.standard_normal((steps, batch, model.input_size)).astype(np.float32)
    dy = rng.standard_normal((steps, batch, model.output_size)).astype(np.float32)
    y, (h, c), cache = model.forward(x, lengths=lengths, impl=impl)
    dx, (dh0, dc0), grads = model.backward(dy, cache)
    return {"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, **grads}, cache


def norm_errors(result, expected):
    return {name: float(np.linalg.norm(np.asarray(result[name], np.float64) - np.asarray(value, np.float64))
                        / np.linalg.norm(np.asarray(value, np.float64))) for name, value in expected.items()}


HALVES = ["bf16", "fp16"]  # the 16-bit precisions, each with its tiled path (cupy-tiled-bf16, cupy-tiled-fp16)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("bidirectional,lengths", [(False, None), (False, [4, 1, 3, 4, 2]), (True, [4, 1, 3, 4, 2])],
                         ids=["full", "lengths", "bidirectional"])
def test_a_16_bit_tiled_path_computes_what_the_generic_path_computes_at_its_precision(on_numpy, bidirectional,
                                                                                      lengths, half):
    """``cupy-tiled-bf16`` / ``-fp16`` (the TF32 MMA on operands rounded to bfloat16 / half precision) against the
    generic path under that precision, outputs and every gradient, one direction and both in one launch: equal
    but for float32 sums in another order, ~1e-7, and the seed whose run meets an operand either side of a
    midpoint (~1e-4 then): the median over seeds of each seed's worst error. The float32 tiled path is ~1e-3
    (bfloat16) or ~1e-4 (half precision) away, as is the TF32 rounding in place of theirs."""
    name = on_numpy(f"cupy-tiled-{half}")
    on_numpy("cupy-tiled")
    worst = {half: [], "float32": []}
    for seed in range(5):
        model = lstmx.LSTM(3, 33, bidirectional=bidirectional, backend="numpy", seed=seed, precision=half)
        expected, _ = bf16_run(model, "generic", lengths, seed)
        result, cache = bf16_run(model, name, lengths, seed)
        assert cache.impl == name and cache.paired == bidirectional
        worst[half].append(max(norm_errors(result, expected).values()))
        model.precision = "float32"
        full, _ = bf16_run(model, "cupy-tiled", lengths, seed)
        worst["float32"].append(max(norm_errors(full, expected).values()))
    assert np.median(worst[half]) < 1e-5, worst[half]
    assert np.median(worst["float32"]) > (5e-4 if half == "bf16" else 5e-5), worst["float32"]


@pytest.mark.parametrize("half", HALVES)
def test_the_kernels_16_bit_rounding_is_the_rounding_of_numpy_and_of_the_generic_path(half):
    """The tiled kernels' ``bf16_round`` / ``fp16_round`` (taken from the source as compiled) in a kernel of
    their own, over a stride through every float32 bit pattern (NaNs, infinities, subnormals, ties): the bits of
    NumPy's float16 cast, and of the generic path's rounding (:mod:`lstmx.backend`)."""
    import re

    from lstmx.backend import round_to_bfloat16, round_to_float16

    from .cuda_emulator import compile_kernels
    from .test_mixed_precision import bfloat16_by_bits, float16_by_numpy

    function = re.search(rf"__device__ __forceinline__ float {half}_round\(const float x\)\n\{{.*?\n\}}\n",
                         cuda_sources.source("tiled", half), re.S).group(0)
    kernels = compile_kernels(function + 'extern "C" __global__ void round_each(const float* x, float* y, const int n)'
                              f"\n{{ for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = {half}_round(x[i]); }}\n",
                              ["round_each"])
    values = np.arange(0, 2**32, 7919, dtype=np.uint64).astype(np.uint32).view(np.float32)
    rounded = np.empty_like(values)
    kernels.launch("round_each", (1,), (32,), (values, rounded, np.int32(values.size)))
    expected = (bfloat16_by_bits if half == "bf16" else float16_by_numpy)(values)
    finite = np.isfinite(values)
    np.testing.assert_array_equal(rounded.view(np.uint32)[finite], expected.view(np.uint32)[finite])
    assert np.array_equal(np.isnan(rounded), np.isnan(values))
    with np.errstate(over="ignore", invalid="ignore"):
        generic = (round_to_bfloat16(values) if half == "bf16" else round_to_float16(np, values))
    # the generic split's range: normal float32 values (2**-126 and up, and zeros) below 2**112
    small = finite & (np.abs(values) < 2.0 ** 100) & ((np.abs(values) >= 2.0 ** -126) | (values == 0))
    np.testing.assert_array_equal(generic[small], rounded[small])


@pytest.mark.parametrize("half,planted", [("bf16", "tf32_round(x)"), ("fp16", "bf16_round(x)")])
def test_a_16_bit_tiled_path_fails_with_another_rounding_planted(on_numpy, monkeypatch, half, planted):
    """(Half precision's normal range has TF32's 11 significant bits, so the two differ only at ties and past
    its range: bfloat16's rounding is planted there instead.)"""
    plant(monkeypatch, "tiled", OPERAND_ROUNDING, planted)
    with pytest.raises(AssertionError):
        test_a_16_bit_tiled_path_computes_what_the_generic_path_computes_at_its_precision(on_numpy, False, None, half)


@pytest.mark.parametrize("half", HALVES)
def test_the_16_bit_tiled_kernels_do_not_depend_on_thread_order(wrappers, half):
    arrays, mask = problem(2, 7, 3, 33, np.float32, masked=True)
    with wrappers["tiled"].use_tile_shape(MMA_SHAPES[1]):
        first, second = (run_path(f"tiled_{half}", wrappers, arrays, mask, seed) for seed in (1, 2))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.mark.parametrize("half", HALVES)
def test_a_16_bit_tiled_path_runs_at_its_precision_only_and_the_plain_cell_only(on_numpy, half):
    name = on_numpy(f"cupy-tiled-{half}")
    assert registry.choose_layer_impl(NUMPY, np.float32, True, name, (3, 33), precision=half).name == name
    for call, reason in [(dict(dtype=np.float32, precision="float32"), f"runs under precision='{half}', not 'float32'"),
                         (dict(dtype=np.float64, precision=half), "computes float32, not float64"),
                         (dict(dtype=np.float32, precision=half, cell="lstmp"), "runs the lstm cell, not lstmp"),
                         (dict(dtype=np.float32, precision=half, options=("peepholes",)), "takes no peepholes")]:
        dtype = call.pop("dtype")
        with pytest.raises(registry.LayerImplError, match=reason):
            registry.choose_layer_impl(NUMPY, dtype, False, name, (3, 33), **call)
    assert registry.choose_layer_impl(NUMPY, np.float32, False, None, (3, 33), precision=half).name == "generic"


@pytest.mark.parametrize("path", ["cupy-graph", "cupy-tiled"])
def test_sampling_through_a_cupy_path_writes_the_generic_paths_text(on_numpy, path):
    """Generation (the prime, then one step at a time from the carried state, no backward) through the path."""
    from lstmx.training.data import CharVocab
    from lstmx.nn.sample import sample

    vocab = CharVocab.from_text("abcdefgh ij")
    model = lstmx.LanguageModel(len(vocab), 5, 8, 2, backend="numpy", dtype="float64", seed=2)
    texts = {}
    for impl in ("generic", on_numpy(path)):
        with lstmx.use_layer_impl(impl):
            texts[impl] = sample(model, vocab, "abc", 12, temperature=2.0, seed=5)
    assert texts[path] == texts["generic"] and len(texts[path]) == 12


@pytest.fixture
def fused_on_numpy(monkeypatch):
    """The registry's fused CuPy loss and updates (modules bound to the stand-in) made to run on NumPy."""
    monkeypatch.setattr(registry, "IMPLS", tuple(impl._replace(backends=("numpy",)) if impl.name == "cupy-fused"
                                                 else impl for impl in registry.IMPLS))


def sanitize_script():
    """bench/gpu_sanitize.py as a module (what the GPU session runs under compute-sanitizer)."""
    spec = importlib.util.spec_from_file_location("gpu_sanitize", BENCH / "gpu_sanitize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("path", [f"cupy-{path}" for path in LAYER_PATHS])
def test_the_gpu_sanitizer_script_passes_each_path_through_the_emulated_kernels(on_numpy, fused_on_numpy, capsys,
                                                                               path):
    """bench/gpu_sanitize.py (what the GPU session runs under compute-sanitizer) compares each path, and the fused
    loss, clipping and updates, with the generic ones; here on the stand-in, every line passes."""
    script = sanitize_script()
    results = script.check(NUMPY, on_numpy(path), fused=True)
    assert len(results) == 2 * 3 and all(result.passed for result in results), results  # 2 dtypes × 3 comparisons
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.startswith("check") and len(rows) == 6 and all("  pass  " in line for line in rows), rows


@pytest.mark.parametrize("path", ["cupy-persistent", "cupy-tiled"])
def test_the_gpu_sanitizer_script_passes_a_bidirectional_stack_through_the_paired_kernels(on_numpy, capsys, path):
    """bench/gpu_sanitize.py --bidirectional (the session's persistent+bidirectional and tiled+bidirectional
    runs) on the stand-in: both directions in one launch agree with the generic path, with lengths and without."""
    script = sanitize_script()
    results = script.check_bidirectional(NUMPY, on_numpy(path))
    assert len(results) == 2 * 2 and all(result.passed for result in results), results


@pytest.mark.parametrize("path", ["cupy-tiled", "cupy-persistent", "cupy-graph"])
def test_the_gpu_sanitizer_script_passes_the_cell_options_through_the_emulated_kernels(on_numpy, capsys, path):
    """bench/gpu_sanitize.py --cell-options (the session's tiled+options and graph+options runs) on the stand-in:
    a two-layer language model with every option the path takes agrees with the generic path."""
    script = sanitize_script()
    results = script.check(NUMPY, on_numpy(path), fused=False, cell_options=True)
    assert len(results) == 2 * 2 and all(result.passed for result in results), results
    assert all("+ options" in result.check for result in results)


@pytest.mark.parametrize("path,cell_options", [("cupy-stepwise", False), ("cupy-stepwise", True),
                                               ("cupy-graph", False), ("cupy-graph", True), ("cupy-persistent", False),
                                               ("cupy-tiled", False)])
def test_the_gpu_sanitizer_script_passes_the_projected_cell_through_the_emulated_kernels(on_numpy, capsys,
                                                                                        cell_options, path):
    """bench/gpu_sanitize.py --proj-size 8 [--cell-options] (the session's stepwise+options+proj,
    graph+options+proj and persistent+proj runs) on the stand-in: the projected kernels agree with the generic
    path, with lengths and without."""
    script = sanitize_script()
    results = script.check(NUMPY, on_numpy(path), fused=False, cell_options=cell_options, proj_size=8)
    assert len(results) == 2 * 2 and all(result.passed for result in results), results
    assert all("+ proj 8" in result.check for result in results)


@pytest.mark.parametrize("proj_size", [0, 8])
def test_the_gpu_sanitizer_script_runs_the_tf32_path_under_its_precision(on_numpy, monkeypatch, capsys, proj_size):
    """bench/gpu_sanitize.py --impl cupy-tiled-tf32 [--proj-size 8] (the session's tiled-tf32 runs) on the
    stand-in: the model runs under precision="tf32", the only one that path takes (the stand-in's NumPy backend
    let through the precision's door), in float32 only, within TF32's tolerance of the generic path."""
    import lstmx.nn.module

    monkeypatch.setattr(lstmx.nn.module, "check_precision", lambda precision, backend, dtype: precision)
    script = sanitize_script()
    results = script.check(NUMPY, on_numpy("cupy-tiled-tf32"), fused=False, proj_size=proj_size)
    assert len(results) == 2 and all(result.passed for result in results), results  # float32, with and without lengths
    assert all(result.check.startswith("cupy-tiled-tf32 tf32") and result.tolerance == script.TF32_TOLERANCE
               for result in results), results
    assert "cupy-tiled-tf32 float64: left out, it computes float32, not float64" in capsys.readouterr().out


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_the_gpu_sanitizer_script_runs_a_16_bit_path_against_the_generic_path_at_its_precision(on_numpy, capsys,
                                                                                               half):
    """bench/gpu_sanitize.py --impl cupy-tiled-bf16 / -fp16 (the session's tiled-bf16 and tiled-fp16 runs) on the
    stand-in: both models at that precision, float32 only, within the 16-bit tolerance."""
    script = sanitize_script()
    name = on_numpy(f"cupy-tiled-{half}")
    results = script.check(NUMPY, name, fused=False)
    assert len(results) == 2 and all(result.passed for result in results), results
    assert all(result.check.startswith(f"{name} {half}") and result.tolerance == script.SIXTEEN_BIT_TOLERANCE
               for result in results), results
    assert f"{name} float64: left out, it computes float32, not float64" in capsys.readouterr().out


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_language_model_recipe_trains_through_every_cupy_path_as_through_the_generic_ones(
        on_numpy, fused_on_numpy, launches, tmp_path, optimizer):
    """The GPU recipe (`lstmx train --backend cupy --impl cupy-graph --update-impl cupy-fused --loss-impl
    cupy-fused`): training with the state carried from window to window, dropout between the layers, global-norm
    clipping and the optimizer, then evaluation, all through the emulated kernels: the same losses as the generic
    paths' (float64). The graph path's buffer sets are lent again from step to step (one per layer shape), not
    captured anew."""
    from lstmx.training.data import CharVocab, split_ids
    from lstmx.training.loop import TrainConfig, Trainer

    graph = sys.modules["lstmx.kernels.cupy.graph"]
    text = "the quick brown fox jumps over the lazy dog; " * 12
    vocab = CharVocab.from_text(text)
    split = split_ids(vocab.encode(text), 0.25)
    config = TrainConfig(steps=4, batch_size=2, seq_len=6, lr=1e-2, clip_norm=1.0, optimizer=optimizer,
                         eval_every=10**9, log_every=10**9)
    results = {}
    for layer, fused in (("generic", "generic"), (on_numpy("cupy-graph"), "cupy-fused")):
        model = lstmx.LanguageModel(len(vocab), 5, 8, 2, 0.25, backend="numpy", dtype="float64", seed=1)
        with registry.use_update_impl(fused), lstmx.use_layer_impl(layer), registry.use_loss_impl(fused):
            trainer = Trainer(model, vocab, split, config, tmp_path / layer, progress=False)
        assert trainer.optimizer.impl == fused  # the requests are read once, into the trainer's plan
        assert (trainer.plan.layer, trainer.plan.loss, trainer.plan.update) == (layer, fused, fused)
        for _ in range(4):
            trainer.train_step()
        results[layer] = (trainer.take_losses(), trainer.evaluate()["val_loss"], model.state_dict())
    (losses, val_loss, state), (expected_losses, expected_val, expected_state) = results["cupy-graph"], results["generic"]
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-12)
    np.testing.assert_allclose(val_loss, expected_val, rtol=1e-12)
    assert_close(state, expected_state, 1e-11)
    shapes = {name[0][0] for name in graph._SETS}
    assert len(graph._SETS) == len(shapes) >= 2  # one set per (T, B, D, H) (two layers): lent again, not added
    assert {"softmax_cross_entropy", "global_norm", f"{optimizer}_update"} <= {n.rsplit("_", 1)[0] for n in launches}


VARIANT_OPTIONS = {"peepholes": dict(peepholes=True), "input_forget": dict(input_forget=True),
                   "cell_clip": dict(cell_clip=0.8), "layer_norm": dict(layer_norm=True),
                   "zoneout": dict(zoneout=(0.3, 0.5)), "recurrent_dropout": dict(recurrent_dropout=0.4),
                   "everything": dict(peepholes=True, input_forget=True, cell_clip=1.2, layer_norm=True,
                                      zoneout=(0.2, 0.4), recurrent_dropout=0.3)}


def variant_problem(options, steps, batch, features, hidden, training, masked, seed=0, proj=0):
    """A layer's arguments for the variant functions: the cell options, ``ExtraParams`` (with a projection (H,
    ``proj``) when ``proj`` > 0: h, dy and the recurrent rows of the weight then have ``proj`` units), and the
    masks a training forward would draw (``LayerNoise``; None in evaluation)."""
    from lstmx.nn.layers.cell import CellOptions
    from lstmx.nn.layers.lstm_layer import ExtraParams, LayerNoise

    arrays, mask = problem(steps, batch, features, hidden, np.float64, seed, masked)
    cell_options = CellOptions(**{k: (tuple(v) if k == "zoneout" else v) for k, v in options.items()})
    rng = np.random.default_rng(seed + 1)
    output = proj or hidden
    if proj:
        arrays.update(weight=0.5 * rng.standard_normal((features + proj, 4 * hidden)),
                      h0=rng.standard_normal((batch, proj)), dy=rng.standard_normal((steps, batch, proj)),
                      dh_last=rng.standard_normal((batch, proj)))
    extra = ExtraParams(rng.standard_normal((hidden, proj)) / np.sqrt(hidden) if proj else None,
                        rng.standard_normal(3 * hidden) if cell_options.peepholes else None,
                        *((rng.standard_normal((2, n)) for n in (4 * hidden, 4 * hidden, hidden))
                          if cell_options.layer_norm else (None, None, None)))
    zoneout_c, zoneout_h = cell_options.zoneout
    noise = None
    if training and cell_options != CellOptions():
        noise = LayerNoise((rng.random((batch, output)) >= 0.4) / 0.6 if cell_options.recurrent_dropout else None,
                           (rng.random((steps, batch, hidden)) < zoneout_c) * 1.0 if zoneout_c else None,
                           (rng.random((steps, batch, output)) < zoneout_h) * 1.0 if zoneout_h else None)
    return arrays, mask, cell_options, extra, noise


def variant_forward_and_backward(module, backward_module, arrays, mask, options, extra, noise):
    a = arrays
    step_mask = None if mask is None else mask[..., None]
    y, (h, c), cache = module.lstm_variant_layer_forward(NUMPY, a["x"], a["weight"], a["bias"], extra, options, a["h0"],
                                                         a["c0"], step_mask, noise)
    dx, (dh0, dc0), dweight, dbias, dextra = backward_module.lstm_variant_layer_backward(
        NUMPY, a["dy"], a["dh_last"], a["dc_last"], a["weight"], extra, options, cache)
    result = dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, dweight=dweight, dbias=dbias)
    result.update({f"d{name}": value for name, value in dextra._asdict().items() if value is not None})
    return result


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("case", list(VARIANT_OPTIONS))
@pytest.mark.parametrize("shape", [(3, 5, 4, 33), (1, 1, 2, 8), (4, 3, 3, 130)], ids=lambda s: "T{}B{}D{}H{}".format(*s))
def test_variant_kernels_match_generic_float64(wrappers, case, shape, training, masked):
    """The stepwise path's kernels for every cell option against the generic path, and either backward on the
    other's cache (H = 130: more units than a block's threads, so each thread runs several)."""
    arrays, mask, options, extra, noise = variant_problem(VARIANT_OPTIONS[case], *shape, training, masked)
    expected = variant_forward_and_backward(generic, generic, arrays, mask, options, extra, noise)
    stepwise = wrappers["stepwise"]
    assert_close(variant_forward_and_backward(stepwise, stepwise, arrays, mask, options, extra, noise), expected,
                 1e-12)
    assert_close(variant_forward_and_backward(stepwise, generic, arrays, mask, options, extra, noise), expected, 1e-12)
    assert_close(variant_forward_and_backward(generic, stepwise, arrays, mask, options, extra, noise), expected, 1e-12)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("case", ["plain", *VARIANT_OPTIONS])
@pytest.mark.parametrize("shape", [(3, 5, 4, 33, 7), (1, 1, 2, 8, 1), (4, 3, 3, 130, 129)],
                         ids=lambda s: "T{}B{}D{}H{}P{}".format(*s))
def test_projected_kernels_match_generic_float64(wrappers, case, shape, training, masked):
    """The LSTMP cell (proj_size) on the stepwise path, without and with each cell option: h's zoneout, mask and
    recurrent dropout act on the projected h, the c side as without a projection; either backward on the
    other's cache (P = 129: more projected units than a block's threads)."""
    *dims, proj = shape
    arrays, mask, options, extra, noise = variant_problem(VARIANT_OPTIONS.get(case, {}), *dims, training, masked,
                                                          proj=proj)
    expected = variant_forward_and_backward(generic, generic, arrays, mask, options, extra, noise)
    assert expected["dprojection"].shape == (dims[3], proj)
    stepwise = wrappers["stepwise"]
    assert_close(variant_forward_and_backward(stepwise, stepwise, arrays, mask, options, extra, noise), expected,
                 1e-12)
    assert_close(variant_forward_and_backward(stepwise, generic, arrays, mask, options, extra, noise), expected, 1e-12)
    assert_close(variant_forward_and_backward(generic, stepwise, arrays, mask, options, extra, noise), expected, 1e-12)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("case", ["plain", *VARIANT_OPTIONS])
@pytest.mark.parametrize("shape", [(3, 5, 4, 33, 0), (2, 3, 3, 9, 4)], ids=lambda s: "T{}B{}D{}H{}P{}".format(*s))
def test_graph_variant_and_projected_layers_match_generic_float64(wrappers, case, shape, training, masked):
    """The CUDA-graph path's layers with each cell option and with the LSTMP cell (the stepwise loops captured):
    against the generic path, twice on one buffer set (the second call a replay: nothing captured anew, no kernel
    launched from Python per step), and the generic backward on the graph forward's cache."""
    *dims, proj = shape
    if case == "plain" and not proj:
        pytest.skip("the plain cell's graph layer is test_kernels_match_generic_float64's")
    arrays, mask, options, extra, noise = variant_problem(VARIANT_OPTIONS.get(case, {}), *dims, training, masked,
                                                          proj=proj)
    expected = variant_forward_and_backward(generic, generic, arrays, mask, options, extra, noise)
    graph = wrappers["graph"]
    for _ in range(2):
        assert_close(variant_forward_and_backward(graph, graph, arrays, mask, options, extra, noise), expected, 1e-12)
    [buffer_set] = graph._SETS.values()
    assert (buffer_set.forward.launches, buffer_set.backward.launches) == (2, 2)
    assert len(buffer_set.forward.operations) == (4 if proj else 2) * dims[0]  # GEMMs and kernels per step
    assert_close(variant_forward_and_backward(graph, generic, arrays, mask, options, extra, noise), expected, 1e-12)


def test_graph_variant_layers_of_one_shape_take_a_set_per_option_and_mode(wrappers):
    """Calls of one shape whose options, training masks or projection differ capture launches that differ (the
    options' scalars, which masks are read): each takes a buffer set of its own, and each matches generic; a
    repeat of the first is a replay on its set."""
    graph = wrappers["graph"]
    calls = [("cell_clip", False, 0), ("cell_clip", True, 0), ("zoneout", False, 0), ("plain", False, 3),
             ("cell_clip", False, 0)]
    for case, training, proj in calls:
        arrays, mask, options, extra, noise = variant_problem(VARIANT_OPTIONS.get(case, {}), 3, 2, 3, 6, training,
                                                              True, proj=proj)
        expected = variant_forward_and_backward(generic, generic, arrays, mask, options, extra, noise)
        assert_close(variant_forward_and_backward(graph, graph, arrays, mask, options, extra, noise), expected, 1e-12)
    assert [s.forward.launches for s in graph._SETS.values()] == [1, 1, 1, 2]  # least recently used first


def test_the_graph_paths_backward_refuses_a_cache_another_path_made(wrappers):
    """Its backward replays the graph of the buffer set its own forward's cache holds: another path's cache
    (none held) is refused in one line before any kernel runs, for the plain and for the variant layers."""
    from lstmx.nn.layers.lstm_layer import LayerInputError

    arrays, mask, options, extra, noise = variant_problem(VARIANT_OPTIONS["peepholes"], 2, 3, 2, 5, True, False)
    message = "the CUDA-graph path's backward takes the cache of its own forward"
    with pytest.raises(LayerInputError, match=message):
        variant_forward_and_backward(generic, wrappers["graph"], arrays, mask, options, extra, noise)
    plain, plain_mask = problem(2, 3, 2, 5, np.float64)
    _, _, cache = wrappers["stepwise"].lstm_layer_forward(NUMPY, plain["x"], plain["weight"], plain["bias"],
                                                          plain["h0"], plain["c0"])
    with pytest.raises(LayerInputError, match=message):
        graph_backward(wrappers["graph"], plain, cache)


POINTWISE_OPTIONS = dict(peepholes=True, input_forget=True, cell_clip=1.2, zoneout=(0.2, 0.4))
TILED_CASES = [*(case for case in VARIANT_OPTIONS if case not in ("layer_norm", "recurrent_dropout", "everything")),
               "pointwise"]


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("case", TILED_CASES)
@pytest.mark.parametrize("shape", [(3, 5, 4, 33), (1, 1, 2, 8), (4, 9, 3, 20)], ids=lambda s: "T{}B{}D{}H{}".format(*s))
@pytest.mark.parametrize("path", ["tiled", "persistent"])
def test_tiled_variant_kernels_match_generic_float64(wrappers, path, case, shape, training, masked):
    """The one-launch paths' kernels with each pointwise cell option and all of them together against the
    generic path, and either backward on the other's cache."""
    options = POINTWISE_OPTIONS if case == "pointwise" else VARIANT_OPTIONS[case]
    arrays, mask, options, extra, noise = variant_problem(options, *shape, training, masked)
    expected = variant_forward_and_backward(generic, generic, arrays, mask, options, extra, noise)
    tiled = wrappers[path]
    assert_close(variant_forward_and_backward(tiled, tiled, arrays, mask, options, extra, noise), expected, 1e-12)
    assert_close(variant_forward_and_backward(tiled, generic, arrays, mask, options, extra, noise), expected, 1e-12)
    assert_close(variant_forward_and_backward(generic, tiled, arrays, mask, options, extra, noise), expected, 1e-12)


@pytest.mark.parametrize("shape", TILE_SHAPES, ids=lambda s: "U{}R{}S{}F{}B{}".format(*s))
def test_tiled_variant_kernels_on_every_tile_shape(wrappers, shape):
    """Every pointwise option at once, with lengths and training masks, on tile shapes whose blocks hold a cell
    for only some threads, rows past the batch and units past the hidden size."""
    arrays, mask, options, extra, noise = variant_problem(POINTWISE_OPTIONS, 3, 7, 3, 33, True, True, seed=3)
    expected = variant_forward_and_backward(generic, generic, arrays, mask, options, extra, noise)
    tiled = wrappers["tiled"]
    with tiled.use_tile_shape(shape):
        assume_fits = tiled.refuses_size(7, 33, np.float64, ("peepholes",))
        if assume_fits is not None:
            pytest.skip(assume_fits)
        assert_close(variant_forward_and_backward(tiled, tiled, arrays, mask, options, extra, noise), expected, 1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_tf32_tiled_variant_kernels_compute_the_layer_within_tf32_error(wrappers, training):
    """The pointwise options on the TF32 tiled kernels (cupy-tiled-tf32): within TF32's error of the generic
    float64 layer, and not equal to the float32 tiled kernels' (the products ran in TF32)."""
    arrays, mask, options, extra, noise = variant_problem(POINTWISE_OPTIONS, 3, 7, 3, 33, training, True)
    expected = variant_forward_and_backward(generic, generic, arrays, mask, options, extra, noise)
    single = {k: v.astype(np.float32) for k, v in arrays.items()}
    extra32 = type(extra)(*(None if v is None else v.astype(np.float32) for v in extra))
    noise32 = None if noise is None else type(noise)(*(None if v is None else v.astype(np.float32) for v in noise))
    mask32 = mask.astype(np.float32)
    reduced = variant_forward_and_backward(wrappers["tiled_tf32"], wrappers["tiled_tf32"], single, mask32, options,
                                           extra32, noise32)
    full = variant_forward_and_backward(wrappers["tiled"], wrappers["tiled"], single, mask32, options, extra32,
                                        noise32)
    assert max(relative_error(reduced, expected).values()) < 1e-2
    assert max(relative_error(full, expected).values()) < 1e-4
    assert max(relative_error(reduced, full).values()) > 1e-5


@pytest.mark.parametrize("path", ["tiled", "persistent"])
def test_tiled_variant_kernels_do_not_depend_on_thread_order(wrappers, path):
    arrays, mask, options, extra, noise = variant_problem(POINTWISE_OPTIONS, 3, 6, 3, 20, True, True)
    tiled = wrappers[path]
    results = []
    for seed in (0, 1):
        RawKernel.seed = seed
        try:
            results.append(variant_forward_and_backward(tiled, tiled, arrays, mask, options, extra, noise))
        finally:
            RawKernel.seed = 0
    for name, value in results[0].items():
        np.testing.assert_array_equal(results[1][name], value, err_msg=name)


@pytest.mark.parametrize("path", ["tiled", "persistent"])
def test_the_one_launch_paths_take_the_pointwise_options_their_registry_records_declare(wrappers, path):
    """What the persistent and tiled kernels apply is what the registry gives them; layer_norm, recurrent dropout
    and a projection are refused in one line before any kernel runs."""
    from lstmx.nn.layers.lstm_layer import LayerInputError

    shared = wrappers["one_launch_variants"]
    for name in ("cupy-persistent", "cupy-tiled", "cupy-tiled-tf32"):
        assert registry.layer_impl(name).cell_options == shared.TAKEN == registry.POINTWISE_OPTIONS
    for case in ("layer_norm", "recurrent_dropout"):
        arrays, mask, options, extra, noise = variant_problem(VARIANT_OPTIONS[case], 2, 3, 2, 8, True, False)
        with pytest.raises(LayerInputError, match=f"the {path} CuPy path takes the cell options peepholes, "
                                                  f"input_forget, cell_clip, zoneout of the lstm cell, not {case}"):
            variant_forward_and_backward(wrappers[path], wrappers[path], arrays, mask, options, extra, noise)


def test_the_plain_projected_layer_keeps_the_generic_signatures_and_cache(wrappers):
    """lstmp_layer_forward / lstmp_layer_backward of the stepwise path equal the generic ones."""
    arrays, mask, _, extra, _ = variant_problem({}, 3, 2, 4, 6, False, True, proj=3)
    a, step_mask = arrays, mask[..., None]
    results = []
    for module in (wrappers["stepwise"], generic):
        y, (h, c), cache = module.lstmp_layer_forward(NUMPY, a["x"], a["weight"], a["bias"], extra.projection,
                                                      a["h0"], a["c0"], step_mask)
        assert cache.variant is None  # the plain cell's cache, as the generic forward leaves it
        grads = module.lstmp_layer_backward(NUMPY, a["dy"], a["dh_last"], a["dc_last"], a["weight"],
                                            extra.projection, cache)
        results.append([y, h, c, grads[0], *grads[1], grads[2], grads[3], grads[4]])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def projected_forward_and_backward(module, backward_module, arrays, mask, projection):
    """``lstmp_layer_forward`` of ``module`` then ``lstmp_layer_backward`` of ``backward_module`` on its cache."""
    a, step_mask = arrays, None if mask is None else mask[..., None]
    y, (h, c), cache = module.lstmp_layer_forward(NUMPY, a["x"], a["weight"], a["bias"], projection, a["h0"], a["c0"],
                                                  step_mask)
    dx, (dh0, dc0), dweight, dbias, dprojection = backward_module.lstmp_layer_backward(
        NUMPY, a["dy"], a["dh_last"], a["dc_last"], a["weight"], projection, cache)
    return dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, dweight=dweight, dbias=dbias, dprojection=dprojection)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("shape", [(3, 5, 4, 33, 7), (1, 1, 2, 8, 1), (4, 9, 3, 64, 40), (2, 6, 2, 40, 33)],
                         ids=lambda s: "T{}B{}D{}H{}P{}".format(*s))
def test_persistent_projected_kernels_match_generic_float64(wrappers, shape, masked):
    """The LSTMP cell on the persistent path (two grid barriers per step: the cell, then the projection): against
    the generic path, and either backward on the other's cache (P = 40, 33: projected columns in two blocks;
    B = 9: rows in three)."""
    *dims, proj = shape
    arrays, mask, _, extra, _ = variant_problem({}, *dims, False, masked, proj=proj)
    expected = projected_forward_and_backward(generic, generic, arrays, mask, extra.projection)
    persistent = wrappers["persistent"]
    for forward, backward in ((persistent, persistent), (persistent, generic), (generic, persistent)):
        assert_close(projected_forward_and_backward(forward, backward, arrays, mask, extra.projection), expected,
                     1e-12)


def test_persistent_projected_kernels_do_not_depend_on_thread_order(wrappers):
    """Each value of the LSTMP kernels is one thread's sum in a fixed order: the emulator's two thread orders give
    the same bits (what deterministic training on a GPU rests on)."""
    arrays, mask, _, extra, _ = variant_problem({}, 3, 9, 3, 40, False, True, proj=33)
    persistent, results = wrappers["persistent"], []
    for seed in (0, 1):
        RawKernel.seed = seed
        try:
            results.append(projected_forward_and_backward(persistent, persistent, arrays, mask, extra.projection))
        finally:
            RawKernel.seed = 0
    for name, value in results[0].items():
        np.testing.assert_array_equal(results[1][name], value, err_msg=name)


def test_a_bidirectional_projected_model_runs_on_the_persistent_path_by_name_only(on_numpy, launches):
    """A two-layer bidirectional LSTM with proj_size through cupy-persistent (asked for by name; "auto" gives the
    projected cell to no CuPy one-launch path yet): every output and gradient as on the generic path, with
    lengths, each direction its own launch of the projected kernels."""
    path = on_numpy("cupy-persistent")
    model = lstmx.LSTM(3, 8, 2, bidirectional=True, proj_size=5, dtype="float64", seed=4)
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((5, 3, 3)), rng.standard_normal((5, 3, 10))
    dh, dc = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 8))
    results = {}
    for impl in ("generic", path):
        y, (h, c), cache = model.forward(x, lengths=[5, 2, 4], impl=impl)
        dx, (dh0, dc0), grads = model.backward(dy, cache, (dh, dc))
        results[impl] = {"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, **grads}
    assert_close(results[path], results["generic"], 1e-12)
    assert launches.count("lstmp_forward_persistent_float64") == 4
    assert launches.count("lstmp_backward_persistent_float64") == 4
    call = registry.Call(NUMPY, np.float64, sizes=(3, 8), cell="lstmp")
    assert not registry.layer_impl(path).auto_takes(call) and registry.choose("layer", call).name != path


def test_the_persistent_projected_kernels_are_sized_for_their_projection(wrappers):
    """The registry, knowing only H, sizes the projected kernels for the largest projection (P = H); a launch
    checks its own P. Past the shared memory a block has, both refuse in one line before any kernel runs."""
    from lstmx.kernels.cupy import cuda_sources as sources

    persistent = wrappers["persistent"]
    forward, backward = sources.PERSISTENT_PROJECTED_KERNELS
    assert sources.persistent_shared_bytes(forward, 64, 4, 8) == sources.persistent_shared_bytes(forward, 64, 4, 8, 64)
    assert sources.persistent_shared_bytes(forward, 64, 4, 8, 16) < sources.persistent_shared_bytes(forward, 64, 4, 8)
    assert sources.persistent_shared_bytes(backward, 64, 4, 8) > sources.persistent_shared_bytes(
        sources.PERSISTENT_KERNELS[1], 64, 4, 8)
    assert persistent.refuses_size(3, 64, np.float64, cell="lstmp") is None
    largest = registry.layer_impl("cupy-persistent").largest_hidden(NUMPY, np.float64, 3)
    assert persistent.refuses_size(3, largest, np.float64) is None
    refused = persistent.refuses_size(3, largest, np.float64, cell="lstmp")
    assert refused is None or "bytes of shared memory" in refused


PROJECTED_TILES = [None, tiling.TileShape(1, 4, 4, 8, 8), tiling.TileShape(3, 4, 8, 8, 16),
                   tiling.TileShape(2, 16, 16, 40, 136)]  # the chosen one; one unit a block, 8-column chunks; units
# not dividing H or P; rows > B


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("tile", PROJECTED_TILES, ids=lambda s: "chosen" if s is None else "U{}R{}S{}F{}B{}".format(*s))
@pytest.mark.parametrize("shape", [(3, 5, 4, 33, 7), (1, 1, 2, 8, 1), (2, 6, 2, 40, 33)],
                         ids=lambda s: "T{}B{}D{}H{}P{}".format(*s))
def test_tiled_projected_kernels_match_generic_float64(wrappers, shape, tile, masked):
    """The LSTMP cell on the tiled kernels (two grid barriers per step; the projection and the backward's
    dL/d(o ⊙ tanh c) as the tiled products, staged in chunks): against the generic path, and either backward on
    the other's cache, for several tile shapes (columns of r in several blocks, chunks shorter than a row)."""
    *dims, proj = shape
    arrays, mask, _, extra, _ = variant_problem({}, *dims, False, masked, proj=proj)
    expected = projected_forward_and_backward(generic, generic, arrays, mask, extra.projection)
    tiled = wrappers["tiled"]
    with contextlib.nullcontext() if tile is None else tiled.use_tile_shape(tile):
        for forward, backward in ((tiled, tiled), (tiled, generic), (generic, tiled)):
            assert_close(projected_forward_and_backward(forward, backward, arrays, mask, extra.projection), expected,
                         1e-12)


def test_tiled_projected_kernels_match_generic_float32(wrappers):
    arrays, mask, _, extra, _ = variant_problem({}, 4, 5, 3, 24, False, True, proj=10)
    expected = projected_forward_and_backward(generic, generic, arrays, mask, extra.projection)
    single = {k: v.astype(np.float32) for k, v in arrays.items()}
    got = projected_forward_and_backward(wrappers["tiled"], wrappers["tiled"], single, mask.astype(np.float32),
                                         extra.projection.astype(np.float32))
    for name, value in expected.items():
        assert got[name].dtype == np.float32, name
        scale = max(1.0, float(np.max(np.abs(value))))
        assert np.max(np.abs(np.asarray(got[name], np.float64) - value)) / scale < 2e-5, name


def test_tiled_projected_kernels_do_not_depend_on_thread_order(wrappers):
    """Each value of the tiled LSTMP kernels is a fixed-order sum of fixed partial sums: the emulator's two thread
    orders give the same bits."""
    arrays, mask, _, extra, _ = variant_problem({}, 3, 9, 3, 40, False, True, proj=33)
    tiled, results = wrappers["tiled"], []
    with tiled.use_tile_shape(tiling.TileShape(3, 4, 8, 8, 16)):
        for seed in (0, 1):
            RawKernel.seed = seed
            try:
                results.append(projected_forward_and_backward(tiled, tiled, arrays, mask, extra.projection))
            finally:
                RawKernel.seed = 0
    for name, value in results[0].items():
        np.testing.assert_array_equal(results[1][name], value, err_msg=name)


def test_a_bidirectional_projected_model_runs_on_the_tiled_path_by_name_only(on_numpy, launches):
    """A two-layer bidirectional LSTM with proj_size through cupy-tiled, asked for by name: every output and
    gradient as on the generic path, with lengths; each direction a launch of its own (no pair kernels for the
    projected cell); "auto" does not give it the projected cell."""
    path = on_numpy("cupy-tiled")
    model = lstmx.LSTM(3, 8, 2, bidirectional=True, proj_size=5, dtype="float64", seed=4)
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((5, 3, 3)), rng.standard_normal((5, 3, 10))
    dh, dc = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 8))
    results = {}
    for impl in ("generic", path):
        y, (h, c), cache = model.forward(x, lengths=[5, 2, 4], impl=impl)
        dx, (dh0, dc0), grads = model.backward(dy, cache, (dh, dc))
        results[impl] = {"y": y, "h": h, "c": c, "dx": dx, "dh0": dh0, "dc0": dc0, **grads}
    assert_close(results[path], results["generic"], 1e-12)
    assert launches.count("lstmp_forward_tiled_float64") == launches.count("lstmp_backward_tiled_float64") == 4
    call = registry.Call(NUMPY, np.float64, sizes=(3, 8), cell="lstmp")
    assert not registry.layer_impl(path).auto_takes(call) and registry.choose("layer", call).name != path


def test_the_tiled_projected_kernels_refuse_what_they_do_not_run(wrappers):
    """No pair launch for the projected cell, no TF32 run on a shape its warp tiles cannot cover, no float64 on
    the TF32 path; a projection whose weights leave no room to stage rows is refused in one line before any
    kernel runs; the registry sizes for P = H."""
    tiled = wrappers["tiled"]
    with tiled.use_tile_shape(tiling.TileShape(4, 16, 4, 16, 64)):
        assert "the TF32 kernels need units a multiple of 8, got 4" in tiled.refuses_projected(3, 16, 8, "tf32")
        assert tiled.refuses_projected(3, 16, 8, "float32") is None
    assert wrappers["tiled_tf32"].refuses_size(3, 16, np.float32, cell="lstmp") is None
    assert "not float64" in wrappers["tiled_tf32"].refuses_size(3, 16, np.float64, cell="lstmp")
    assert "launch of its own" in tiled.refuses_projected(3, 16, 8, "float64", directions=2)
    assert tiled.refuses_size(3, 16, np.float64, cell="lstmp") is None
    assert tiled.refuses_projected(3, 16, 8, "float64") is None
    fixed_only = tiling.TileShape(4, 4, 4, 8, 8)
    room_for_8 = tiling.projected_shared_bytes("lstmp_backward_tiled", fixed_only, 64, 32, 8, 8)
    assert tiling.projected_chunk("lstmp_backward_tiled", fixed_only, 64, 32, 8, room_for_8) == 8
    assert tiling.projected_chunk("lstmp_backward_tiled", fixed_only, 64, 32, 8, room_for_8 - 8) == 0
    arrays, _, _, extra, _ = variant_problem({}, 2, 2, 3, 16, False, False, proj=8)
    with tiled.use_tile_shape(tiling.TileShape(2, 4, 4, 8, 8)):
        a = arrays
        assert tiled.refuses_projected(2, 16, 8, "float64") is None
        y, _, _ = tiled.lstmp_layer_forward(NUMPY, a["x"], a["weight"], a["bias"], extra.projection, a["h0"], a["c0"])
        assert y.shape == (2, 2, 8)


def tf32_projected(wrappers, arrays, mask, extra, shape):
    """The projected layer's forward and backward on cupy-tiled-tf32 in ``shape``, on float32 copies."""
    single = {k: v.astype(np.float32) for k, v in arrays.items()}
    with wrappers["tiled"].use_tile_shape(shape):
        return projected_forward_and_backward(wrappers["tiled_tf32"], wrappers["tiled_tf32"], single,
                                              None if mask is None else mask.astype(np.float32),
                                              extra.projection.astype(np.float32))


PROJECTED_PROBLEMS = [(3, 7, 3, 33, 10), (2, 18, 2, 24, 17)]  # T, B, D, H, P: H and P not multiples of 8; B > 16


@pytest.mark.parametrize("shape", MMA_SHAPES, ids=lambda s: "U{}R{}S{}F{}B{}".format(*s))
@pytest.mark.parametrize("dims", PROJECTED_PROBLEMS, ids=lambda s: "T{}B{}D{}H{}P{}".format(*s))
def test_tf32_projected_kernels_fed_float32_operands_match_float32(wrappers, monkeypatch, shape, dims):
    """Without the rounding to TF32, the projected cell's tensor-core kernels give the float32 layer: the W_hr
    fragments (its columns forward, its rows backward) land where both products need them."""
    plant(monkeypatch, "tiled", OPERAND_ROUNDING, "x")
    *problem_dims, proj = dims
    arrays, mask, _, extra, _ = variant_problem({}, *problem_dims, False, True, proj=proj)
    expected = projected_forward_and_backward(generic, generic, arrays, mask, extra.projection)
    got = tf32_projected(wrappers, arrays, mask, extra, shape)
    for name, value in expected.items():
        assert got[name].dtype == np.float32, name
        scale = max(1.0, float(np.max(np.abs(value))))
        assert np.max(np.abs(np.asarray(got[name], np.float64) - value)) / scale < 3e-5, name


def test_tf32_projected_kernels_compute_the_layer_within_tf32_error(wrappers):
    """With the rounding, within TF32's error of the float64 layer, and measurably off the float32 tiled
    kernels (the products really ran in TF32)."""
    arrays, mask, _, extra, _ = variant_problem({}, 3, 7, 3, 33, False, True, proj=10)
    expected = projected_forward_and_backward(generic, generic, arrays, mask, extra.projection)
    reduced = tf32_projected(wrappers, arrays, mask, extra, MMA_SHAPES[1])
    single = {k: v.astype(np.float32) for k, v in arrays.items()}
    full = projected_forward_and_backward(wrappers["tiled"], wrappers["tiled"], single, mask.astype(np.float32),
                                          extra.projection.astype(np.float32))
    assert max(relative_error(reduced, expected).values()) < 1e-2
    assert max(relative_error(full, expected).values()) < 2e-5
    assert max(relative_error(reduced, full).values()) > 1e-5


def test_tf32_projected_kernels_do_not_depend_on_thread_order(wrappers):
    arrays, mask, _, extra, _ = variant_problem({}, 2, 7, 3, 33, False, True, proj=17)
    results = []
    for seed in (1, 2):
        RawKernel.seed = seed
        try:
            results.append(tf32_projected(wrappers, arrays, mask, extra, MMA_SHAPES[1]))
        finally:
            RawKernel.seed = 0
    for name, value in results[0].items():
        np.testing.assert_array_equal(results[1][name], value, err_msg=name)


def test_variant_kernels_do_not_depend_on_thread_order(wrappers):
    arrays, mask, options, extra, noise = variant_problem(VARIANT_OPTIONS["everything"], 3, 4, 3, 40, True, True)
    stepwise = wrappers["stepwise"]
    results = []
    for seed in (0, 1):
        RawKernel.seed = seed
        try:
            results.append(variant_forward_and_backward(stepwise, stepwise, arrays, mask, options, extra, noise))
        finally:
            RawKernel.seed = 0
    for name, value in results[0].items():
        np.testing.assert_array_equal(results[1][name], value, err_msg=name)


def test_variant_kernels_match_generic_float32(wrappers):
    arrays, mask, options, extra, noise = variant_problem(VARIANT_OPTIONS["everything"], 4, 3, 5, 16, True, True)
    expected = variant_forward_and_backward(generic, generic, arrays, mask, options, extra, noise)
    single = {k: v.astype(np.float32) for k, v in arrays.items()}
    extra32 = type(extra)(*(None if v is None else v.astype(np.float32) for v in extra))
    noise32 = type(noise)(*(None if v is None else v.astype(np.float32) for v in noise))
    got = variant_forward_and_backward(wrappers["stepwise"], wrappers["stepwise"], single,
                                       mask.astype(np.float32), options, extra32, noise32)
    for name, value in expected.items():
        scale = max(1.0, float(np.max(np.abs(value))))
        assert np.max(np.abs(np.asarray(got[name], np.float64) - value)) / scale < 2e-4, name


@pytest.mark.parametrize("impl", [pytest.param(impl, id=impl.name) for impl in registry.LAYER_IMPLS
                                  if impl.backends == ("cupy",)])
def test_each_cuda_path_module_keeps_the_kernel_contract_of_what_it_declares(wrappers, impl):
    """What the registry says a CuPy path takes (cells, cell options), its module has, with the contract's
    parameters: checked here on the stand-in, as Impl.load checks it on a GPU."""
    module = wrappers[impl.module.rsplit(".", 1)[1]]
    assert contract_breaches(module, protocols_for(impl.cells, impl.cell_options, impl.paired_directions)) == []


def test_lstmx_check_compares_each_16_bit_path_with_the_generic_path_at_its_precision(on_numpy):
    from lstmx import check as check_module

    on_numpy("cupy-tiled-bf16")
    on_numpy("cupy-tiled-fp16")
    rows = [row for row in check_module.implementation_checks("numpy") if " bf16 " in row.check or " fp16 " in row.check]
    assert [row.check for row in rows] == [f"cupy-tiled-{half} {half} vs generic {half} (float32{lengths})"
                                           for lengths in ("", ", lengths") for half in ("bf16", "fp16")]
    assert all(row.passed for row in rows), rows
