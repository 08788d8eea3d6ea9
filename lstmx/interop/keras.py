"""Keras 3 LSTM weights to and from lstmx, as NumPy arrays (lstmx never imports keras).

A Keras ``LSTM`` layer's ``get_weights()`` is ``[kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,)]`` in the
gate order i, f, c, o (Keras's c is lstmx's g); lstmx's ``weight_l{k}`` is kernel over recurrent_kernel. A
``Bidirectional(LSTM)`` layer (``merge_mode="concat"``) gives six arrays, the forward layer's then the backward
layer's: lstmx's ``..._l{k}`` and ``..._l{k}_reverse``. Keras must use its defaults ``activation="tanh"``,
``recurrent_activation="sigmoid"``, ``use_bias=True``; Keras has no projected LSTM.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..nn.models import LSTM
from ._host import host


def _direction(k: int, weights: Sequence[Any], label: str) -> tuple[np.ndarray, np.ndarray]:
    kernel, recurrent, bias = (host(w) for w in weights)
    if recurrent.shape[1] != 4 * recurrent.shape[0] or kernel.shape[1] != recurrent.shape[1] or bias.shape != (
            recurrent.shape[1],):
        raise ValueError(f"layer {k}{label}: kernel {kernel.shape} / recurrent_kernel {recurrent.shape} / bias "
                         f"{bias.shape} are not (D, 4H), (H, 4H), (4H,)")
    return np.concatenate([kernel, recurrent], axis=0), bias


def lstm_from_keras(layers: Sequence[Sequence[Any]], *, batch_first: bool = False, backend: Any = "numpy",
                    dtype: Any = None) -> LSTM:
    """An :class:`LSTM` from stacked Keras layers' ``layer.get_weights()`` lists: three arrays per ``LSTM``
    layer, six per ``Bidirectional(LSTM)`` layer (every layer of one kind). Keras is batch-first: pass
    ``batch_first=True`` to feed the model Keras's (B, T, D) arrays."""
    counts = {len(weights) for weights in layers}
    if not layers or not counts <= {3, 6} or len(counts) != 1:
        raise ValueError("layers must each be [kernel, recurrent_kernel, bias] (LSTM, use_bias=True) or six arrays "
                         f"(Bidirectional(LSTM)), all of one kind; got lists of {sorted(len(w) for w in layers)} arrays")
    bidirectional = counts == {6}
    params = {}
    for k, weights in enumerate(layers):
        for d, label in enumerate(("", "_reverse")[: 2 if bidirectional else 1]):
            params[f"weight_l{k}{label}"], params[f"bias_l{k}{label}"] = _direction(k, weights[3 * d: 3 * d + 3], label)
    hidden = params["weight_l0"].shape[1] // 4
    model = LSTM(params["weight_l0"].shape[0] - hidden, hidden, len(layers), bidirectional=bidirectional,
                 batch_first=batch_first, backend=backend, dtype=dtype or params["weight_l0"].dtype.name)
    model.load_state_dict(params)
    return model


def lstm_to_keras(model: LSTM) -> list[list[np.ndarray]]:
    """Per layer ``[kernel, recurrent_kernel, bias]`` (six arrays for a bidirectional model) for Keras's
    ``layer.set_weights``."""
    if model.proj_size:
        raise ValueError("proj_size must be 0 to export to Keras: Keras has no projected LSTM")
    out = []
    for k in range(model.num_layers):
        features = model.stack.layer_input_size(k)
        layer = []
        for label in ("", "_reverse")[: model.stack.directions]:
            weight, bias = host(model.params[f"weight_l{k}{label}"]), host(model.params[f"bias_l{k}{label}"])
            layer += [weight[:features].copy(), weight[features:].copy(), bias.copy()]
        out.append(layer)
    return out
