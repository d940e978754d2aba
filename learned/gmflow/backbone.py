"""GMFlow's CNN backbone: RAFT's residual feature encoder (instance norm, 64-64-96-128 widths) with
bias-free 7x7 and 3x3 convolutions, as the reference's ``CNNEncoder``; for the refinement, to 1/4
and then a trident convolution to 1/8 and 1/4."""

from __future__ import annotations

import jax
from flax import nnx

from learned.nets import conv2d
from learned.raft.encoders import Encoder


def backbone(channels: int = 128, factor: int = 8, *, rngs: nnx.Rngs) -> Encoder:
    """``(..., h, w, 3) -> (..., ceil(h / factor), ceil(w / factor), channels)``, ``factor`` 8 or 4:
    a bias-free 7x7 stride-2 stem to 64 channels, stages of two residual blocks to 64, 96 (strided)
    and 128 (strided for 1/8), and a biased 1x1 convolution to ``channels``. The shortcut
    projections keep their bias, as the reference's (instance norm cancels it: its gradient is zero)."""
    if factor not in (4, 8):
        raise ValueError(f"GMFlow's backbone stops at 1/8 or 1/4, got 1/{factor}")
    return Encoder("residual", (64, 64, 96, 128, channels), "instance", rngs=rngs, bias=False,
                   strides=(1, 2, factor // 4))


class Trident(nnx.Module):
    """The reference's ``MultiScaleTridentConv``: one bias-free 3x3 convolution, its weights shared,
    applied to the same ``(..., h, w, c)`` features at several strides, to
    ``[(..., ceil(h / s), ceil(w / s), c) for s in strides]``. Padded by 1, the stride-``s``
    convolution is the stride-1 one read at every ``s``-th pixel, so it runs once."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = conv2d(channels, channels, 3, bias=False, rngs=rngs)

    def __call__(self, features: jax.Array, strides: tuple[int, ...]) -> list[jax.Array]:
        full = self.conv(features)
        return [full[..., ::s, ::s, :] for s in strides]
