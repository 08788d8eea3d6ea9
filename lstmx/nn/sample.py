"""Text generation from a language model: priming text, temperature, top-k, greedy; seeded and repeatable."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..backend import to_numpy
from ..options import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, OptionError, check_arguments
from ..training.data import CharVocab


def next_token_distribution(logits: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    """Probabilities over the vocabulary from one row of logits (host float64), after temperature and top-k."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if top_k is not None and top_k < scaled.size:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    scaled -= scaled.max()
    weights = np.exp(scaled)
    return weights / weights.sum()


def chunk_uniforms(rngs: list[np.random.Generator], count: int, greedy: bool) -> np.ndarray:
    """(samples, ``count``): the uniforms the next ``count`` draws of each sample take from its own generator, in
    order, as ``Generator.choice`` draws them one per token (greedy decoding draws nothing: zeros). The compiled
    token loops draw on these, so a seed gives every loop the same text."""
    return np.zeros((len(rngs), count)) if greedy else np.stack([rng.random(count) for rng in rngs])


def _check_sampling(model: Any, vocab: CharVocab, length: int, temperature: float, top_k: int | None,
                    greedy: bool, num_samples: int = 1) -> None:
    check_arguments(length=(length, NON_NEGATIVE_INT), num_samples=(num_samples, POSITIVE_INT))
    if not greedy and POSITIVE.check(temperature) is not None:
        raise OptionError(f"temperature must be > 0 (use greedy=True for argmax decoding), got {temperature!r}")
    if top_k is not None:
        check_arguments(top_k=(top_k, POSITIVE_INT))
    if len(vocab) != model.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} entries but the model expects {model.vocab_size}")


def generate(
    model: Any,
    vocab: CharVocab,
    prime: str = "",
    length: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    seed: int = 0,
    num_samples: int = 1,
    impl: str | None = None,
) -> Iterator[list[int]]:
    """Yield, step by step, the next token of each of ``num_samples`` independent samples (a list of ids), after
    every sample has read ``prime``. The samples run as one batch; sample k draws from its own generator seeded
    ``seed + k``, so sample 0 is the single sample of ``seed``. ``impl`` names the token loop's implementation
    (:func:`lstmx.dispatch.registry.choose_generation`; default: the registry's choice). Arguments as :func:`sample`."""
    from ..dispatch import registry

    _check_sampling(model, vocab, length, temperature, top_k, greedy, num_samples)
    _, token_steps = registry.choose_generation(model, impl)
    if not prime:
        prime = "\n" if "\n" in vocab.index else vocab.symbols[0]
    ids = vocab.encode(prime)  # unknown characters are a clear error here
    rngs = [np.random.default_rng(seed + k) for k in range(num_samples)]
    was_training = model.training
    model.eval()
    try:
        tokens = model.backend.asarray(np.repeat(ids.reshape(-1, 1), num_samples, axis=1))
        logits, state = model.infer(tokens)
        yield from token_steps(model, logits[-1, ...], state, length, rngs, temperature, top_k, greedy)
    finally:
        model.train(was_training)


def token_steps(model: Any, logits: Any, state: Any, length: int, rngs: list[np.random.Generator],
                temperature: float, top_k: int | None, greedy: bool) -> Iterator[list[int]]:
    """The generic token loop: from the last logits (B, V) and the state after the prime, each step draws every
    sample's token on the host (sample k from ``rngs[k]``, as ``Generator.choice``) and runs the model's inference
    forward on it."""
    backend = model.backend
    for step_number in range(length):
        rows = to_numpy(logits)
        step = [int(np.argmax(row)) if greedy else
                int(rng.choice(row.size, p=next_token_distribution(row, temperature, top_k)))
                for row, rng in zip(rows, rngs)]
        yield step
        if step_number + 1 < length:
            all_logits, state = model.infer(backend.asarray(np.array([step])), state, check_input=False)
            logits = all_logits[-1, ...]


def sample(
    model: Any,
    vocab: CharVocab,
    prime: str = "",
    length: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    seed: int = 0,
    impl: str | None = None,
) -> str:
    """Generate ``length`` tokens after ``prime`` and return the generated text (without the prime).

    ``greedy`` takes the most likely token each step; otherwise tokens are drawn from the softmax of
    logits / ``temperature``, restricted to the ``top_k`` most likely when set. The same seed gives the same text.
    ``impl`` names the token loop's implementation (:func:`lstmx.dispatch.registry.choose_generation`).
    """
    return samples(model, vocab, prime, length, temperature=temperature, top_k=top_k, greedy=greedy, seed=seed,
                   impl=impl)[0]


def samples(model: Any, vocab: CharVocab, prime: str = "", length: int = 200, *, num_samples: int = 1,
            **options: Any) -> list[str]:
    """``num_samples`` independent texts generated in one batch (sample k as :func:`sample` with ``seed + k``)."""
    steps = list(generate(model, vocab, prime, length, num_samples=num_samples, **options))
    return [vocab.decode([step[k] for step in steps]) for k in range(num_samples)]
