"""Learned, image-conditioned weights for the pairwise smoothness term."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from learned.nets import ConvNet, normalise_image


class ContextEdgeWeights(nnx.Module):
    """Per-pair smoothness weights ``exp(b tanh(f(I1) / b))`` from a small CNN ``f`` on frame 1
    (edge-aware regularisation). ``f`` starts at zero, so the weights start at 1 (uniform); they
    stay within ``[1 / max_ratio, max_ratio]`` (``b = log max_ratio``): a weight near zero would
    leave textureless pixels with a singular system, and the step would blow up there.

    Args:
        offsets: the neighbour offsets ``(dy, dx)`` to weight (a smoothness term's half stencil).
        channels: channels of frame 1's features.
        max_ratio: the largest factor by which a pair's weight may differ from the hand-tuned one.
    """

    def __init__(self, offsets, channels: int, *, rngs: nnx.Rngs, hidden: int = 16, max_ratio: float = 10.0):
        self.offsets = tuple(offsets)
        self.net = ConvNet(channels, len(self.offsets), rngs=rngs, hidden=hidden)
        self.bound = math.log(max_ratio)

    def __call__(self, image: jax.Array) -> dict:
        logits = self.bound * jnp.tanh(self.net(normalise_image(image)) / self.bound)
        return {o: jnp.exp(logits[..., k : k + 1]) for k, o in enumerate(self.offsets)}
