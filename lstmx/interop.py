"""Weights to and from PyTorch and Keras, as plain NumPy arrays (lstmx never imports torch or keras).

Layouts, per layer k (all three use the gate order i, f, g, o; Keras calls g "c"):

=============  ====================================  =======================================
               lstmx                                  other
=============  ====================================  =======================================
PyTorch        ``weight_l{k}`` (D + H, 4H)             ``weight_ih_l{k}`` (4H, D), ``weight_hh_l{k}`` (4H, H)
               ``bias_l{k}`` (4H,)                     ``bias_ih_l{k}`` + ``bias_hh_l{k}`` (4H,) each
Keras 3        ``weight_l{k}`` (D + H, 4H)             ``kernel`` (D, 4H), ``recurrent_kernel`` (H, 4H)
               ``bias_l{k}`` (4H,)                     ``bias`` (4H,)
=============  ====================================  =======================================

PyTorch's two biases are summed on import; on export the whole bias goes to ``bias_ih`` and ``bias_hh`` is zero
(the same function). Keras must use its defaults ``activation="tanh"``, ``recurrent_activation="sigmoid"``.
A PyTorch ``nn.Linear`` stores its weight as (out, in); lstmx's head is (in, out).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from .backend import to_numpy
from .models import LSTM, LanguageModel


def _host(value: Any) -> np.ndarray:
    """A NumPy copy of a NumPy array, an Array API array, or a torch tensor (through its ``.numpy()``)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(to_numpy(value))


def _torch_layer_count(state_dict: Mapping[str, Any], prefix: str) -> int:
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    unsupported = [k for k in keys if k.endswith("_reverse") or k.startswith("weight_hr")]
    if unsupported:
        raise ValueError(f"bidirectional or projected PyTorch LSTMs are not supported (found {unsupported[0]!r})")
    layers = sorted({int(m.group(1)) for k in keys if (m := re.fullmatch(r"weight_ih_l(\d+)", k))})
    if not layers or layers != list(range(len(layers))):
        raise KeyError(f"no PyTorch LSTM weights 'weight_ih_l0', ... under prefix {prefix!r}")
    return len(layers)


def lstm_params_from_torch(state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """lstmx LSTM parameters (names ``weight_l{k}``, ``bias_l{k}``) from an ``nn.LSTM`` state dict."""
    params = {}
    for k in range(_torch_layer_count(state_dict, prefix)):
        w_ih, w_hh = _host(state_dict[f"{prefix}weight_ih_l{k}"]), _host(state_dict[f"{prefix}weight_hh_l{k}"])
        if w_ih.shape[0] != w_hh.shape[0] or w_hh.shape[0] != 4 * w_hh.shape[1]:
            raise ValueError(f"layer {k}: weight_ih {w_ih.shape} and weight_hh {w_hh.shape} are not (4H, D), (4H, H)")
        bias = np.zeros(w_ih.shape[0], dtype=w_ih.dtype)
        for name in (f"{prefix}bias_ih_l{k}", f"{prefix}bias_hh_l{k}"):
            if name in state_dict:
                bias = bias + _host(state_dict[name])
        params[f"weight_l{k}"] = np.concatenate([w_ih.T, w_hh.T], axis=0)
        params[f"bias_l{k}"] = bias
    return params


def lstm_params_to_torch(params: Mapping[str, Any], input_sizes: Sequence[int], prefix: str = "") -> dict[str, np.ndarray]:
    """An ``nn.LSTM`` state dict (NumPy arrays) from lstmx LSTM parameters; ``input_sizes[k]`` is layer k's D."""
    state = {}
    for k, features in enumerate(input_sizes):
        weight, bias = _host(params[f"weight_l{k}"]), _host(params[f"bias_l{k}"])
        state[f"{prefix}weight_ih_l{k}"] = np.ascontiguousarray(weight[:features].T)
        state[f"{prefix}weight_hh_l{k}"] = np.ascontiguousarray(weight[features:].T)
        state[f"{prefix}bias_ih_l{k}"] = bias.copy()
        state[f"{prefix}bias_hh_l{k}"] = np.zeros_like(bias)
    return state


def _input_sizes(input_size: int, hidden_size: int, num_layers: int) -> list[int]:
    return [input_size] + [hidden_size] * (num_layers - 1)


def lstm_from_torch(state_dict: Mapping[str, Any], *, backend: Any = "numpy", dtype: Any = None,
                    prefix: str = "") -> LSTM:
    """An :class:`LSTM` holding the weights of a PyTorch ``nn.LSTM`` (``module.state_dict()``)."""
    params = lstm_params_from_torch(state_dict, prefix)
    layers = len(params) // 2
    hidden = params["weight_l0"].shape[1] // 4
    features = params["weight_l0"].shape[0] - hidden
    model = LSTM(features, hidden, layers, backend=backend, dtype=dtype or params["weight_l0"].dtype.name)
    model.load_state_dict(params)
    return model


def lstm_to_torch(model: LSTM) -> dict[str, np.ndarray]:
    """A state dict for ``nn.LSTM(input_size, hidden_size, num_layers)``: ``load_state_dict({k: torch.from_numpy(v)})``."""
    return lstm_params_to_torch(model.params, _input_sizes(model.input_size, model.hidden_size, model.num_layers))


def language_model_from_torch(state_dict: Mapping[str, Any], *, backend: Any = "numpy", dtype: Any = None,
                              embedding: str = "embedding.weight", lstm: str = "lstm.", head: str = "head.") -> LanguageModel:
    """A :class:`LanguageModel` from a PyTorch Embedding → LSTM → Linear model's state dict (key prefixes given)."""
    table = _host(state_dict[embedding])
    head_weight, head_bias = _host(state_dict[f"{head}weight"]), _host(state_dict[f"{head}bias"])
    lstm_params = lstm_params_from_torch(state_dict, lstm)
    layers = len(lstm_params) // 2
    hidden = lstm_params["weight_l0"].shape[1] // 4
    if head_weight.shape != (table.shape[0], hidden):
        raise ValueError(f"head weight {head_weight.shape} does not map hidden size {hidden} to vocabulary {table.shape[0]}")
    model = LanguageModel(table.shape[0], table.shape[1], hidden, layers, backend=backend,
                          dtype=dtype or table.dtype.name)
    params = {"embedding.weight": table, "head.weight": head_weight.T, "head.bias": head_bias}
    params.update({f"lstm.{k}": v for k, v in lstm_params.items()})
    model.load_state_dict(params)
    return model


def language_model_to_torch(model: LanguageModel, *, embedding: str = "embedding.weight", lstm: str = "lstm.",
                            head: str = "head.") -> dict[str, np.ndarray]:
    """The inverse of :func:`language_model_from_torch`."""
    lstm_params = {k[len("lstm."):]: v for k, v in model.params.items() if k.startswith("lstm.")}
    state = {embedding: _host(model.params["embedding.weight"])}
    state.update(lstm_params_to_torch(lstm_params, _input_sizes(model.embedding_size, model.hidden_size,
                                                                model.num_layers), lstm))
    state[f"{head}weight"] = np.ascontiguousarray(_host(model.params["head.weight"]).T)
    state[f"{head}bias"] = _host(model.params["head.bias"])
    return state


def lstm_from_keras(layers: Sequence[Sequence[Any]], *, backend: Any = "numpy", dtype: Any = None) -> LSTM:
    """An :class:`LSTM` from stacked Keras LSTM layers' ``layer.get_weights()`` lists ``[kernel, recurrent_kernel, bias]``."""
    params = {}
    for k, weights in enumerate(layers):
        if len(weights) != 3:
            raise ValueError(f"layer {k}: expected [kernel, recurrent_kernel, bias] (use_bias=True), got {len(weights)} arrays")
        kernel, recurrent, bias = (_host(w) for w in weights)
        if recurrent.shape[1] != 4 * recurrent.shape[0] or kernel.shape[1] != recurrent.shape[1]:
            raise ValueError(f"layer {k}: kernel {kernel.shape} / recurrent_kernel {recurrent.shape} are not (D, 4H), (H, 4H)")
        params[f"weight_l{k}"] = np.concatenate([kernel, recurrent], axis=0)
        params[f"bias_l{k}"] = bias
    hidden = params["weight_l0"].shape[1] // 4
    model = LSTM(params["weight_l0"].shape[0] - hidden, hidden, len(layers), backend=backend,
                 dtype=dtype or params["weight_l0"].dtype.name)
    model.load_state_dict(params)
    return model


def lstm_to_keras(model: LSTM) -> list[list[np.ndarray]]:
    """Per layer ``[kernel, recurrent_kernel, bias]`` for Keras's ``layer.set_weights``."""
    out = []
    for k, features in enumerate(_input_sizes(model.input_size, model.hidden_size, model.num_layers)):
        weight, bias = _host(model.params[f"weight_l{k}"]), _host(model.params[f"bias_l{k}"])
        out.append([weight[:features].copy(), weight[features:].copy(), bias.copy()])
    return out
