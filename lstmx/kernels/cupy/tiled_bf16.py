"""``cupy-tiled-bf16``: the tiled kernels with bfloat16 operands on tensor cores, under ``precision="bf16"``
(:mod:`lstmx.kernels.cupy.tiled_rounded`)."""

from __future__ import annotations

from .tiled_rounded import rounded_path

refuses_size, lstm_layer_forward, lstm_layer_backward, lstm_layer_pair_forward, lstm_layer_pair_backward = (
    rounded_path("bf16"))
