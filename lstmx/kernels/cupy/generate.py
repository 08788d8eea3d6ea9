"""CuPy: the token loop of text generation on the device, every sample of a call in one kernel launch per chunk
of tokens (``cuda/generate.cu``, a block per sample): draw → embedding → every LSTM layer → head → next logits.

The generic loop (:mod:`lstmx.nn.sample`) runs a dozen kernels and a host round trip per token; here a chunk of
CHUNK tokens is one launch, and the only transfers are the chunk's uniforms up and its tokens down. The draw is
the host's ``Generator.choice(V, p=p)`` written out (as :mod:`lstmx.kernels.host.numba_generate` writes it) on
uniforms drawn from each sample's own host generator, one per token in order: so a seed gives the generic loop's
text, up to the rounding of the logits (the kernel sums its products in another order than cuBLAS). Greedy
decoding takes the first largest logit, as ``np.argmax``. The cell is the plain LSTM's (``cuda/cell.cuh``).

Each block reads every weight once per token: the loop is bound by that traffic, through L2, with many samples.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator, NamedTuple

import cupy
import numpy as np

from ...nn.sample import chunk_uniforms
from . import cuda_sources

THREADS = 256  # per block, a power of two (the block reductions halve it)
CHUNK = 64  # tokens per launch: few launches, and the first text still streams out early


@functools.cache
def _kernel(dtype: str) -> cupy.RawKernel:
    return cupy.RawKernel(cuda_sources.source("generate", dtype), cuda_sources.kernel_name("lstm_generate", dtype))


class DeviceModel(NamedTuple):
    """The model's parameters as the kernel reads them: contiguous device arrays in the model's dtype."""

    table: Any  # (V, E)
    weights: Any  # every layer's (D_k + H, 4H) weight, one after another, flat
    biases: Any  # (L, 4H)
    head_weight: Any  # (H, V)
    head_bias: Any  # (V,)


def device_model(model: Any) -> DeviceModel:
    dtype = np.dtype(model.dtype_name)
    layers = model.stack.layer_params(model.params)
    weights = cupy.concatenate([cupy.ravel(cupy.ascontiguousarray(layer[0][0], dtype=dtype)) for layer in layers])
    biases = cupy.stack([cupy.ascontiguousarray(layer[0][1], dtype=dtype) for layer in layers])
    return DeviceModel(*(cupy.ascontiguousarray(a, dtype=dtype) for a in (
        model.params["embedding.weight"], weights, biases, model._head_weight(), model.params["head.bias"])))


def token_steps(model: Any, logits: Any, state: Any, length: int, rngs: list[np.random.Generator],
                temperature: float, top_k: int | None, greedy: bool) -> Iterator[list[int]]:
    """:func:`lstmx.nn.sample.token_steps` on the device: the same arguments (checked by its caller, as is the
    model's cell by the registry) and, for a seed, the same tokens; CHUNK tokens per launch."""
    dtype = np.dtype(model.dtype_name)
    table, weights, biases, head_weight, head_bias = device_model(model)
    batch, vocab = logits.shape
    layers, embedding, hidden = model.stack.num_layers, table.shape[1], state[1].shape[-1]
    logits = cupy.array(logits, dtype=dtype, order="C")
    h, c = (cupy.array(part, dtype=dtype, order="C") for part in state)
    workspace = cupy.empty((batch, 2 * vocab), dtype=np.float64)
    layer_space = cupy.empty((batch, max(embedding, hidden) + 4 * hidden), dtype=dtype)
    shared = THREADS * (8 + 4)  # the reductions' doubles and ints
    for start in range(0, length, CHUNK):
        count = min(CHUNK, length - start)
        uniforms = chunk_uniforms(rngs, count, greedy)
        tokens = cupy.empty((count, batch), dtype=np.int64)
        _kernel(dtype.name)((batch,), (THREADS,),
                            (table, weights, biases, head_weight, head_bias, logits, h, c, cupy.asarray(uniforms),
                             workspace, layer_space, tokens, np.int32(count), np.int32(batch), np.int32(vocab),
                             np.int32(embedding), np.int32(hidden), np.int32(layers), np.float64(temperature),
                             np.int32(0 if top_k is None else top_k), np.int32(bool(greedy))),
                            shared_mem=shared)
        for row in cupy.asnumpy(tokens):
            yield [int(token) for token in row]
