"""The CUDA-graph path's layers with cell options (peepholes, ``input_forget``, ``cell_clip``, ``layer_norm``,
zoneout, recurrent dropout) and of the projected cell (``proj_size``, with or without options): the stepwise
path's variant loops (:func:`lstmx.kernels.cupy.variants.forward_recurrence` and its backward) captured once per
buffer set as the plain layer's are (:mod:`lstmx.kernels.cupy.graph`), one launch per direction and pass.

A set's key holds everything the captured launches fix: the dims, the output width, the options (their scalars
are kernel arguments: the clip, ``input_forget``, zoneout's expectation in evaluation), which masks a training
forward brought, the step mask, the dtype, and (:func:`lstmx.kernels.cupy.graph.lend`) cuBLAS's math mode, the
device and the stream. Before each launch the call's parameters, masks, input projection and state are written
into the set's arrays; the cache is those arrays (an :class:`~lstmx.nn.layers.lstm_layer.LSTMLayerCache` holding
the set's lease), and only y, the final state and the gradients are copied out. The input projection with its
layer norm, and everything after the backward loop, run outside the graph as on the stepwise path.

Tested against the generic path in the CPU emulator (``tests/test_cuda_emulated.py``) and on a GPU
(``tests/test_variant_paths.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ...backend import Backend
from ...nn.layers.cell import CellOptions
from ...nn.layers.lstm_layer import (ExtraParams, LayerNoise, LSTMLayerCache, check_extra_params, check_layer_backward,
                                     forward_dims, projected_layers)
from . import variants


class VariantSet(NamedTuple):
    """One buffer set's arrays: both loops' (the backward reads the forward's)."""

    forward: variants.ForwardArrays
    backward: variants.BackwardArrays


def _allocate(dims: tuple[int, int, int, int], layout: variants.Layout) -> VariantSet:
    arrays = VariantSet(variants.allocate_forward(dims, layout), variants.allocate_backward(dims, layout))
    for part in arrays:
        for array in part:
            if array is not None:
                array.fill(0)  # defined values for the warm-up runs
    return arrays


def lstm_variant_layer_forward(
    backend: Backend, x: Any, weight: Any, bias: Any, extra: ExtraParams, options: CellOptions, h0: Any, c0: Any,
    step_mask: Any = None, noise: LayerNoise | None = None
) -> tuple[Any, tuple[Any, Any], LSTMLayerCache]:
    from .graph import lend  # graph.py imports this module at its end

    dims = forward_dims(x, weight, bias, h0, c0, extra.projection)
    check_extra_params(extra, options, dims[3], x.dtype)
    if dims[1] == 0:  # an empty batch has no loop to capture
        return variants.lstm_variant_layer_forward(backend, x, weight, bias, extra, options, h0, c0, step_mask, noise)
    dtype = np.dtype(x.dtype)
    layout = variants.Layout.of(h0, c0, options, step_mask, noise)
    scalars = variants.Scalars.of(options, layout.training, dtype)
    lease = lend((dims, layout, "variant"), dtype, lambda: _allocate(dims, layout),
                 lambda arrays, gemm: variants.forward_recurrence(arrays.forward, dims, scalars, gemm),
                 lambda arrays, gemm: variants.backward_recurrence(arrays.forward, arrays.backward, dims, scalars,
                                                                   gemm))
    arrays = lease.buffer_set.buffers.forward
    x_norm = variants.fill_forward(arrays, x, weight, bias, extra, h0, c0, step_mask, noise, dims)
    lease.buffer_set.forward.launch()
    steps = dims[0]
    final = (arrays.hidden_states[steps].copy(), arrays.cells[steps].copy())
    return arrays.y.copy(), final, variants.forward_cache(arrays, x, step_mask, options, noise, x_norm, lease)


def lstm_variant_layer_backward(
    backend: Backend, dy: Any, dh_last: Any, dc_last: Any, weight: Any, extra: ExtraParams, options: CellOptions,
    cache: LSTMLayerCache
) -> tuple[Any, tuple[Any, Any], Any, Any, ExtraParams]:
    from .graph import held_set

    dims = check_layer_backward(cache, extra, options, dy, dh_last, dc_last, weight)
    held = held_set(cache, dims[1])
    if held is None:  # an empty batch: no loop
        return variants.lstm_variant_layer_backward(backend, dy, dh_last, dc_last, weight, extra, options, cache)
    forward, backward = held.buffers
    variants.fill_parameters(forward, weight, extra)  # the backward's parameters, which its loop reads
    variants.fill_backward(backward, dy, dh_last, dc_last)
    held.backward.launch()
    return variants.backward_outputs(forward, backward, cache, weight, extra, options, dims)


# the projected cell without options: the variant pair with no options, under the generic lstmp signatures
lstmp_layer_forward, lstmp_layer_backward = projected_layers(lstm_variant_layer_forward, lstm_variant_layer_backward)
