"""PyTorch ``nn.LSTM`` weights to and from lstmx, as NumPy arrays (lstmx never imports torch).

Per layer k and direction (PyTorch's suffix ``_reverse`` for the reverse one; lstmx uses the same suffix), both
in the gate order i, f, g, o:

=========================================  ==============================================================
lstmx                                      PyTorch
=========================================  ==============================================================
``weight_l{k}`` (D + R, 4H)                ``weight_ih_l{k}`` (4H, D) and ``weight_hh_l{k}`` (4H, R), transposed
``bias_l{k}`` (4H,)                        ``bias_ih_l{k}`` + ``bias_hh_l{k}`` (absent with ``bias=False``)
``projection_l{k}`` (H, P)                 ``weight_hr_l{k}`` (P, H), transposed (``proj_size`` = P > 0)
=========================================  ==============================================================

R is P with a projection, else H; D is the input size for layer 0 and dirs · R above. PyTorch's two biases are
summed on import; on export the whole bias goes to ``bias_ih`` and ``bias_hh`` is zero (the same function). A
PyTorch ``nn.Linear`` stores its weight as (out, in); lstmx's head is (in, out).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

import numpy as np

from ..nn.models import LSTM, LanguageModel
from ._host import host


class TorchLayout(NamedTuple):
    """The ``nn.LSTM`` configuration a state dict describes."""

    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    proj_size: int
    bias: bool


def torch_layout(state_dict: Mapping[str, Any], prefix: str = "") -> TorchLayout:
    """Read the configuration off an ``nn.LSTM`` state dict's keys and shapes; refuse keys it does not explain."""
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    pattern = re.compile(r"(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)_l(\d+)(_reverse)?")
    parsed = {k: pattern.fullmatch(k) for k in keys}
    layers = sorted({int(m.group(2)) for m in parsed.values() if m and m.group(1) == "weight_ih"})
    if not layers or layers != list(range(len(layers))):
        raise KeyError(f"no PyTorch LSTM weights 'weight_ih_l0', ... under prefix {prefix!r}")
    foreign = [k for k, m in parsed.items() if m is None]
    if foreign:
        raise ValueError(f"{prefix}{foreign[0]} is not an nn.LSTM parameter (expected weight_ih_l0, weight_hh_l0, "
                         "weight_hr_l0, bias_ih_l0, bias_hh_l0, with _reverse for the reverse direction)")
    w_ih = host(state_dict[f"{prefix}weight_ih_l0"])
    hidden = w_ih.shape[0] // 4
    bidirectional = "weight_ih_l0_reverse" in keys
    proj = host(state_dict[f"{prefix}weight_hr_l0"]).shape[0] if "weight_hr_l0" in keys else 0
    return TorchLayout(w_ih.shape[1], hidden, len(layers), bidirectional, proj, "bias_ih_l0" in keys)


def _suffix(direction: int) -> str:
    return "_reverse" if direction else ""


def lstm_params_from_torch(state_dict: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, np.ndarray], TorchLayout]:
    """lstmx LSTM parameters (``weight_l{k}``, ``bias_l{k}``, ``projection_l{k}``, ``..._reverse``) and the layout
    from an ``nn.LSTM`` state dict; every shape is checked against the layout."""
    layout = torch_layout(state_dict, prefix)
    hidden, proj = layout.hidden_size, layout.proj_size
    recurrent = proj or hidden
    directions = 2 if layout.bidirectional else 1
    params = {}
    for k in range(layout.num_layers):
        features = layout.input_size if k == 0 else directions * recurrent
        for d in range(directions):
            name = lambda stem: f"{prefix}{stem}_l{k}{_suffix(d)}"  # noqa: E731
            expected = {"weight_ih": (4 * hidden, features), "weight_hh": (4 * hidden, recurrent)}
            if proj:
                expected["weight_hr"] = (proj, hidden)
            if layout.bias:
                expected["bias_ih"] = expected["bias_hh"] = (4 * hidden,)
            arrays = {}
            for stem, shape in expected.items():
                if name(stem) not in state_dict:
                    raise KeyError(f"{name(stem)} is missing from the state dict of this nn.LSTM")
                arrays[stem] = host(state_dict[name(stem)])
                if arrays[stem].shape != shape:
                    raise ValueError(f"{name(stem)} has shape {arrays[stem].shape}, expected {shape}")
            bias = (arrays["bias_ih"] + arrays["bias_hh"] if layout.bias
                    else np.zeros(4 * hidden, dtype=arrays["weight_ih"].dtype))
            own = f"_l{k}{_suffix(d)}"
            params[f"weight{own}"] = np.concatenate([arrays["weight_ih"].T, arrays["weight_hh"].T], axis=0)
            params[f"bias{own}"] = bias
            if proj:
                params[f"projection{own}"] = np.ascontiguousarray(arrays["weight_hr"].T)
    return params, layout


def lstm_params_to_torch(model_params: Mapping[str, Any], layout: TorchLayout, prefix: str = "",
                         source_prefix: str = "") -> dict[str, np.ndarray]:
    """An ``nn.LSTM`` state dict (NumPy arrays) from lstmx parameters (named ``{source_prefix}weight_l{k}``...)."""
    directions = 2 if layout.bidirectional else 1
    recurrent = layout.proj_size or layout.hidden_size
    state = {}
    for k in range(layout.num_layers):
        features = layout.input_size if k == 0 else directions * recurrent
        for d in range(directions):
            own, theirs = f"_l{k}{_suffix(d)}", f"{prefix}{{}}_l{k}{_suffix(d)}"
            weight, bias = host(model_params[f"{source_prefix}weight{own}"]), host(model_params[f"{source_prefix}bias{own}"])
            state[theirs.format("weight_ih")] = np.ascontiguousarray(weight[:features].T)
            state[theirs.format("weight_hh")] = np.ascontiguousarray(weight[features:].T)
            if layout.bias:
                state[theirs.format("bias_ih")] = bias.copy()
                state[theirs.format("bias_hh")] = np.zeros_like(bias)
            elif np.any(bias != 0):
                raise ValueError(f"bias{own} is not zero, so this model cannot be an nn.LSTM(bias=False); export with "
                                 "bias=True")
            if layout.proj_size:
                state[theirs.format("weight_hr")] = np.ascontiguousarray(host(model_params[f"{source_prefix}projection{own}"]).T)
    return state


def lstm_from_torch(state_dict: Mapping[str, Any], *, batch_first: bool = False, backend: Any = "numpy",
                    dtype: Any = None, prefix: str = "") -> LSTM:
    """An :class:`LSTM` holding the weights of any PyTorch ``nn.LSTM`` (``module.state_dict()``): bidirectional,
    ``proj_size`` and ``bias=False`` included; ``batch_first`` is not in a state dict, so pass the module's."""
    params, layout = lstm_params_from_torch(state_dict, prefix)
    model = LSTM(layout.input_size, layout.hidden_size, layout.num_layers, bidirectional=layout.bidirectional,
                 proj_size=layout.proj_size, batch_first=batch_first, backend=backend,
                 dtype=dtype or params["weight_l0"].dtype.name)
    model.load_state_dict(params)
    return model


def _model_layout(model: LSTM | LanguageModel, bias: bool) -> TorchLayout:
    used = model.cell_options.names()
    if used:
        raise ValueError(f"{', '.join(used)} cannot be exported to PyTorch: nn.LSTM has no such option")
    input_size = model.input_size if isinstance(model, LSTM) else model.embedding_size
    return TorchLayout(input_size, model.hidden_size, model.num_layers, getattr(model, "bidirectional", False),
                       model.proj_size, bias)


def lstm_to_torch(model: LSTM, *, bias: bool = True) -> dict[str, np.ndarray]:
    """A state dict for ``nn.LSTM(input_size, hidden_size, num_layers, bias=bias, bidirectional=..., proj_size=...)``
    with the model's settings: ``load_state_dict({k: torch.from_numpy(v)})``. ``bias=False`` needs zero biases."""
    return lstm_params_to_torch(model.params, _model_layout(model, bias))


def language_model_from_torch(state_dict: Mapping[str, Any], *, backend: Any = "numpy", dtype: Any = None,
                              embedding: str = "embedding.weight", lstm: str = "lstm.", head: str = "head.") -> LanguageModel:
    """A :class:`LanguageModel` from a PyTorch Embedding → LSTM → Linear model's state dict (key prefixes given);
    the LSTM may have ``proj_size``, not two directions (a causal model)."""
    table = host(state_dict[embedding])
    head_weight, head_bias = host(state_dict[f"{head}weight"]), host(state_dict[f"{head}bias"])
    lstm_params, layout = lstm_params_from_torch(state_dict, lstm)
    if layout.bidirectional:
        raise ValueError("a bidirectional LSTM cannot be a LanguageModel's (a causal model cannot look ahead)")
    width = layout.proj_size or layout.hidden_size
    if head_weight.shape != (table.shape[0], width):
        raise ValueError(f"head weight {head_weight.shape} does not map the LSTM's {width} outputs to vocabulary "
                         f"{table.shape[0]}")
    model = LanguageModel(table.shape[0], table.shape[1], layout.hidden_size, layout.num_layers,
                          proj_size=layout.proj_size, backend=backend, dtype=dtype or table.dtype.name)
    params = {"embedding.weight": table, "head.weight": head_weight.T, "head.bias": head_bias}
    params.update({f"lstm.{k}": v for k, v in lstm_params.items()})
    model.load_state_dict(params)
    return model


def language_model_to_torch(model: LanguageModel, *, embedding: str = "embedding.weight", lstm: str = "lstm.",
                            head: str = "head.") -> dict[str, np.ndarray]:
    """The inverse of :func:`language_model_from_torch`."""
    state = {embedding: host(model.params["embedding.weight"])}
    state.update(lstm_params_to_torch(model.params, _model_layout(model, True), lstm, source_prefix="lstm."))
    state[f"{head}weight"] = np.ascontiguousarray(host(model._head_weight()).T)  # tied: the embedding itself
    state[f"{head}bias"] = host(model.params["head.bias"])
    return state
