"""Learned, image-conditioned weights for the pairwise smoothness term."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from learned.nets import ConvNet, normalise_image


class ContextEdgeWeights(nnx.Module):
    """Per-pair smoothness weights ``exp(f(I1))`` from a small CNN on frame 1 (edge-aware
    regularisation); ``f`` starts at zero, so the weights start at 1 (uniform).

    Args:
        offsets: the neighbour offsets ``(dy, dx)`` to weight (a smoothness term's half stencil).
        channels: channels of frame 1's features.
    """

    def __init__(self, offsets, channels: int, *, rngs: nnx.Rngs, hidden: int = 16):
        self.offsets = tuple(offsets)
        self.net = ConvNet(channels, len(self.offsets), rngs=rngs, hidden=hidden)

    def __call__(self, image: jax.Array) -> dict:
        logits = self.net(normalise_image(image))
        return {o: jnp.exp(logits[..., k : k + 1]) for k, o in enumerate(self.offsets)}
