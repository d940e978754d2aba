"""GMFlow's CNN backbone: RAFT's residual feature encoder (instance norm, 64-64-96-128 widths) with
bias-free 7x7 and 3x3 convolutions, as the reference's ``CNNEncoder`` for one output scale."""

from __future__ import annotations

from flax import nnx

from learned.raft.encoders import Encoder


def backbone(channels: int = 128, *, rngs: nnx.Rngs) -> Encoder:
    """``(..., h, w, 3) -> (..., ceil(h / 8), ceil(w / 8), channels)``: a bias-free 7x7 stride-2 stem
    to 64 channels, stages of two residual blocks to 64, 96 (strided) and 128 (strided), and a
    biased 1x1 convolution to ``channels``. The shortcut projections keep their bias, as the
    reference's (instance norm cancels it: its gradient is zero)."""
    return Encoder("residual", (64, 64, 96, 128, channels), "instance", rngs=rngs, bias=False)
