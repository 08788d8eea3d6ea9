"""The CuPy generation kernel (``cupy-fused`` generation, ``lstmx/kernels/cupy/generate.py``) on the CUDA
emulator, against the generic token loop: the same tokens for the same seed (both draw on the same uniforms of
each sample's host generator), greedy and sampled, with temperature and top-k, one sample and several, across
chunks of a launch. Planted bugs in the temperature, the top-k cut and the sample's index fail these tests."""

from __future__ import annotations

import numpy as np
import pytest

import lstmx
from lstmx.backend import get_backend
from lstmx.dispatch import registry
from lstmx.nn import sample as generic

from .fake_cupy import fake_cupy_modules
from .test_cuda_emulated import plant

NUMPY = get_backend("numpy")


@pytest.fixture
def wrappers(monkeypatch):
    return fake_cupy_modules(monkeypatch)


def both_loops(wrappers, model, samples, length, **options):
    """(the kernel's tokens, the generic loop's tokens), each (length, samples), from the same prime and seeds."""
    tokens = np.random.default_rng(5).integers(0, model.vocab_size, (4, samples))
    model.eval()
    logits, state = model.infer(NUMPY.asarray(tokens))
    runs = []
    for token_steps in (wrappers["generate"].token_steps, generic.token_steps):
        rngs = [np.random.default_rng(11 + k) for k in range(samples)]
        runs.append(np.array(list(token_steps(model, logits[-1], state, length, rngs, **options))))
    return runs


OPTIONS = [dict(temperature=1.0, top_k=None, greedy=True), dict(temperature=0.7, top_k=None, greedy=False),
           dict(temperature=1.3, top_k=4, greedy=False), dict(temperature=1.0, top_k=1, greedy=False),
           dict(temperature=0.9, top_k=40, greedy=False)]


@pytest.mark.parametrize("options", OPTIONS, ids=["greedy", "temperature", "top-k", "top-1", "top-k-past-V"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_kernel_draws_the_generic_loops_tokens(wrappers, options, dtype):
    model = lstmx.LanguageModel(13, 5, 9, 2, seed=3, dtype=dtype)
    ours, reference = both_loops(wrappers, model, 3, 12, **options)
    assert ours.shape == (12, 3)
    np.testing.assert_array_equal(ours, reference)
    if not options["greedy"] and options["top_k"] != 1:
        assert len(np.unique(ours)) > 3  # it sampled (not a constant token)


def test_one_sample_and_a_run_over_several_launches(wrappers, monkeypatch):
    monkeypatch.setattr(wrappers["generate"], "CHUNK", 5)
    model = lstmx.LanguageModel(11, 4, 6, 1, seed=8)
    ours, reference = both_loops(wrappers, model, 1, 13, temperature=0.8, top_k=None, greedy=False)
    np.testing.assert_array_equal(ours, reference)
    ours, reference = both_loops(wrappers, model, 2, 1, temperature=0.8, top_k=3, greedy=False)
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("old,new,options", [
    ("(double)logits[v] / temperature", "(double)logits[v]", OPTIONS[1]),
    ("above < top_k || !cut", "above <= top_k || !cut", OPTIONS[2]),
    ("const int b = blockIdx.x,", "const int b = 0,", OPTIONS[1]),
    ("other_index < mine", "other_index > mine", OPTIONS[0]),
], ids=["temperature", "top-k", "sample-index", "greedy-ties"])
def test_a_planted_bug_in_the_draw_fails(wrappers, monkeypatch, old, new, options):
    plant(monkeypatch, "generate", old, new)
    model = lstmx.LanguageModel(13, 5, 9, 2, seed=3, dtype="float64")
    if old.startswith("other_index"):
        model.params["head.weight"][...] = 0.0  # every logit the same: the first one wins, as np.argmax
        model.params["head.bias"][...] = 0.0
    ours, reference = both_loops(wrappers, model, 3, 12, **options)
    assert not np.array_equal(ours, reference)


def test_the_registry_offers_it_on_cupy_for_the_plain_cell_by_name_only():
    record = next(impl for impl in registry.GENERATION_IMPLS if impl.name == "cupy-fused")
    assert record.backends == ("cupy",) and record.cells == ("lstm",) and not record.auto
    model = lstmx.LanguageModel(13, 5, 9)
    with pytest.raises(registry.GenerationImplError, match="runs on cupy, not numpy"):
        registry.choose_generation(model, "cupy-fused")


@pytest.mark.parametrize("dtype,length", [("float64", 60), ("float32", 20)])
def test_on_the_gpu_the_kernel_draws_the_generic_loops_tokens(backend, dtype, length):
    """The real kernel on CuPy (skipped elsewhere), the README's model sizes, 8 samples, sampled with top-k."""
    if backend.name != "cupy":
        pytest.skip("the generation kernel runs on CuPy (emulated above)")
    from lstmx.training.data import CharVocab

    vocab = CharVocab([chr(32 + k) for k in range(95)] + ["\n"])
    model = lstmx.LanguageModel(96, 64, 256, 2, backend=backend, seed=4, dtype=dtype)
    runs = [lstmx.samples(model, vocab, "def ", length, num_samples=8, temperature=0.9, top_k=20, seed=3, impl=impl)
            for impl in ("cupy-fused", "generic")]
    assert runs[0] == runs[1]
    greedy = [lstmx.sample(model, vocab, "def ", length, greedy=True, impl=impl) for impl in ("cupy-fused", "generic")]
    assert greedy[0] == greedy[1]
