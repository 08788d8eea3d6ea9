"""Every token-loop implementation of text generation in the registry against the generic loop: the same text
for the same seed (temperature, top-k, greedy, several samples, several layers, tied weights, float64), the models
it does not run refused by name and sent to the generic loop by "auto"."""

from __future__ import annotations

import pytest

import lstmx
from lstmx.dispatch import registry
from lstmx.training.data import CharVocab
from lstmx.nn.sample import generate, samples

VOCAB = CharVocab([chr(ord("a") + k) for k in range(26)] + [" ", "\n"])
FAST = [pytest.param(impl.name, id=impl.name) for impl in registry.GENERATION_IMPLS if impl.name != "generic"]
MODELS = {
    "one layer": dict(embedding_size=8, hidden_size=16),
    "two layers, tied, float64": dict(embedding_size=12, hidden_size=12, num_layers=2, tie_weights=True,
                                      dtype="float64"),
}
SAMPLING = {"temperature 1": dict(), "temperature 0.6, top-k 4": dict(temperature=0.6, top_k=4),
            "greedy": dict(greedy=True), "top-k above the vocabulary": dict(top_k=1000)}


def _runnable(name, model):
    impl = next(i for i in registry.GENERATION_IMPLS if i.name == name)
    reason = impl.refuses(registry.generation_call(model))
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("name", FAST)
def test_a_fast_token_loop_writes_the_generic_loops_text(name, kind, sampling):
    model = lstmx.LanguageModel(len(VOCAB), seed=3, **MODELS[kind])
    _runnable(name, model)
    options = SAMPLING[sampling]
    expected = samples(model, VOCAB, "ab", 70, num_samples=3, seed=11, impl="generic", **options)
    assert samples(model, VOCAB, "ab", 70, num_samples=3, seed=11, impl=name, **options) == expected
    assert len(set(expected)) > 1 or "greedy" in sampling  # the samples differ: each has its own generator


@pytest.mark.parametrize("name", FAST)
def test_a_fast_token_loop_streams_across_its_chunks_and_keeps_the_model_in_its_mode(name):
    model = lstmx.LanguageModel(len(VOCAB), 8, 16, seed=4)
    _runnable(name, model)
    steps = list(generate(model, VOCAB, "a", 75, seed=2, impl=name))  # more than two chunks
    assert steps == list(generate(model, VOCAB, "a", 75, seed=2, impl="generic"))
    assert all(len(step) == 1 for step in steps) and model.training


@pytest.mark.parametrize("name", FAST)
def test_a_model_a_fast_loop_does_not_run_is_refused_by_name_and_auto_runs_it_generically(name):
    model = lstmx.LanguageModel(len(VOCAB), 8, 16, peepholes=True, seed=5)
    impl = next(i for i in registry.GENERATION_IMPLS if i.name == name)
    if "peepholes" not in impl.cell_options:
        with pytest.raises(registry.GenerationImplError, match=f"generation implementation '{name}' cannot"):
            samples(model, VOCAB, "a", 5, impl=name)
    assert registry.choose_generation(model)[0] == "generic"
    assert samples(model, VOCAB, "a", 5) == samples(model, VOCAB, "a", 5, impl="generic")


def test_an_unknown_generation_implementation_is_refused_in_one_line():
    model = lstmx.LanguageModel(len(VOCAB), 8, 16, seed=5)
    with pytest.raises(registry.GenerationImplError, match="impl must be one of auto, cupy-fused, numba, generic; got 'cuda'"):
        samples(model, VOCAB, "a", 5, impl="cuda")
