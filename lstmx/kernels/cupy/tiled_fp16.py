"""``cupy-tiled-fp16``: the tiled kernels with half precision operands on tensor cores, under ``precision="fp16"``
(:mod:`lstmx.kernels.cupy.tiled_rounded`)."""

from __future__ import annotations

from .tiled_rounded import rounded_path

refuses_size, lstm_layer_forward, lstm_layer_backward, lstm_layer_pair_forward, lstm_layer_pair_backward = (
    rounded_path("fp16"))
