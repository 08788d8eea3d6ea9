"""Compiled token loop for text generation on NumPy: embedding → LSTM layers → head → softmax → draw, for every
generated token of every sample, in one Numba function per chunk of tokens.

A token of one sample is ~0.7 MFLOP (E 64, H 256, V 96); the generic loop (:mod:`lstmx.nn.sample`) spends nearly all
its time on the Python calls around it. Here the products are loops the compiler vectorises (no BLAS call, so
nothing but Numba is needed), each weight row read once for every sample of the batch.

The draw is NumPy's ``Generator.choice(V, p=p)`` with ``p`` from :func:`lstmx.nn.sample.next_token_distribution`
(temperature, top-k), written out: the cumulative sum of p, normalised by its last entry, searched (side "right")
for a uniform the caller drew from the sample's own generator (one per token, in order, as ``choice`` draws
them). So a seed gives the text the generic loop gives, up to the rounding of the logits (the two paths sum the
products in another order). Greedy decoding takes the first largest logit, as ``np.argmax``. The LSTM cell is
:class:`lstmx.nn.cells.LSTMCell`'s, with the Numba layer path's activations (:mod:`lstmx.kernels.host.numba_layer`).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
from numba import njit

from ...nn.sample import chunk_uniforms
from .numba_layer import _JIT, _sigmoid, _tanh

CHUNK = 32  # tokens per compiled call: short enough to stream, long enough that the call's cost vanishes


@njit(**_JIT)
def _draw(logits, uniform, temperature, top_k, greedy, scaled):
    """The token ``choice`` would draw (or argmax when ``greedy``) from one row of logits."""
    vocab = logits.shape[0]
    if greedy:
        best = 0
        for v in range(1, vocab):
            if logits[v] > logits[best]:
                best = v
        return best
    for v in range(vocab):
        scaled[v] = np.float64(logits[v]) / temperature
    if 0 < top_k < vocab:
        cutoff = np.sort(scaled)[vocab - top_k]
        for v in range(vocab):
            if scaled[v] < cutoff:
                scaled[v] = -np.inf
    largest = scaled[0]
    for v in range(1, vocab):
        largest = max(largest, scaled[v])
    total = 0.0
    for v in range(vocab):
        scaled[v] = math.exp(scaled[v] - largest)
        total += scaled[v]
    cumulative = 0.0
    for v in range(vocab):
        cumulative += scaled[v] / total
        scaled[v] = cumulative
    last = scaled[vocab - 1]
    for v in range(vocab):  # side="right": the first entry above the uniform
        if uniform < scaled[v] / last:
            return v
    return vocab - 1


@njit(**_JIT)
def _product(inputs, weight, bias, out):
    """out (B, N) = inputs (B, K) @ weight (K, N) + bias: four rows of inputs at a time, so each weight row read
    from memory serves four rows of the output."""
    rows, columns = out.shape
    for b in range(rows):
        for n in range(columns):
            out[b, n] = bias[n]
    for first in range(0, rows - rows % 4, 4):
        o0, o1, o2, o3 = out[first], out[first + 1], out[first + 2], out[first + 3]
        for k in range(weight.shape[0]):
            row = weight[k]
            x0, x1, x2, x3 = inputs[first, k], inputs[first + 1, k], inputs[first + 2, k], inputs[first + 3, k]
            for n in range(columns):
                w = row[n]
                o0[n] += x0 * w
                o1[n] += x1 * w
                o2[n] += x2 * w
                o3[n] += x3 * w
    for b in range(rows - rows % 4, rows):
        target = out[b]
        for k in range(weight.shape[0]):
            row, value = weight[k], inputs[b, k]
            for n in range(columns):
                target[n] += value * row[n]


@njit(**_JIT)
def generate_chunk(table, weights, biases, head_weight, head_bias, logits, h, c, uniforms, temperature, top_k,
                   greedy, tokens):
    """Fill ``tokens`` (n, B) with n steps of every sample, starting from ``logits`` (B, V) of the last token read
    and the state ``h``, ``c`` (L, B, H); updates the three in place. ``uniforms`` (B, n) are the draws."""
    batch, hidden = h.shape[1], h.shape[2]
    embedding = table.shape[1]
    dtype = h.dtype
    scaled = np.empty(logits.shape[1], np.float64)
    width = max(embedding, hidden) + hidden
    inputs = np.empty((batch, width), dtype)
    z = np.empty((batch, 4 * hidden), dtype)
    for s in range(tokens.shape[0]):
        for b in range(batch):
            token = _draw(logits[b], uniforms[b, s], temperature, top_k, greedy, scaled)
            tokens[s, b] = token
            inputs[b, :embedding] = table[token]
        features = embedding
        for layer in range(len(weights)):
            if layer > 0:
                features = hidden
                for b in range(batch):
                    inputs[b, :hidden] = h[layer - 1, b]
            for b in range(batch):
                inputs[b, features:features + hidden] = h[layer, b]
            _product(inputs[:, :features + hidden], weights[layer], biases[layer], z)
            for b in range(batch):
                zb, cb, hb = z[b], c[layer, b], h[layer, b]
                for j in range(hidden):
                    i = _sigmoid(zb[j])
                    f = _sigmoid(zb[hidden + j])
                    g = _tanh(zb[2 * hidden + j])
                    o = _sigmoid(zb[3 * hidden + j])
                    cb[j] = f * cb[j] + i * g
                    hb[j] = o * _tanh(cb[j])
        _product(h[len(weights) - 1], head_weight, head_bias, logits)


def generation_arrays(model: Any) -> tuple[Any, ...]:
    """The model's parameters as the compiled loop takes them: contiguous host arrays in the model's dtype."""
    dtype = np.dtype(model.dtype_name)
    params = model.params

    def host(value: Any) -> np.ndarray:
        return np.ascontiguousarray(value, dtype=dtype)

    layers = model.stack.layer_params(params)
    weights = tuple(host(layer[0][0]) for layer in layers)
    biases = tuple(host(layer[0][1]) for layer in layers)
    return host(params["embedding.weight"]), weights, biases, host(model._head_weight()), host(params["head.bias"])


def run_chunk(arrays: tuple[Any, ...], logits: np.ndarray, h: np.ndarray, c: np.ndarray, uniforms: np.ndarray,
              temperature: float, top_k: int | None, greedy: bool) -> np.ndarray:
    """``tokens`` (n, B) for the next n = ``uniforms.shape[1]`` steps; ``logits``, ``h``, ``c`` updated in place."""
    table, weights, biases, head_weight, head_bias = arrays
    tokens = np.empty((uniforms.shape[1], logits.shape[0]), np.int64)
    generate_chunk(table, weights, biases, head_weight, head_bias, logits, h, c, uniforms, float(temperature),
                   0 if top_k is None else int(top_k), bool(greedy), tokens)
    return tokens


def token_steps(model: Any, logits: Any, state: Any, length: int, rngs: list[np.random.Generator],
                temperature: float, top_k: int | None, greedy: bool) -> Iterator[list[int]]:
    """:func:`lstmx.nn.sample.token_steps` compiled: the same arguments and tokens, CHUNK steps per compiled call."""
    dtype = np.dtype(model.dtype_name)
    arrays = generation_arrays(model)
    logits = np.array(logits, dtype=dtype, order="C")
    h, c = (np.array(part, dtype=dtype, order="C") for part in state)
    for start in range(0, length, CHUNK):
        count = min(CHUNK, length - start)
        uniforms = chunk_uniforms(rngs, count, greedy)
        for row in run_chunk(arrays, logits, h, c, uniforms, temperature, top_k, greedy):
            yield [int(token) for token in row]
