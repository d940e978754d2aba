"""Learned data terms: constancy of learned features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from learned.nets import ConvNet, normalise_image
from unroll.operators import AbstractDataTerm


class LearnedFeatures(AbstractDataTerm):
    """A data term on ``[hand-tuned features, CNN(frame)]``: the wrapped term's constancy, extended
    to ``channels`` learned feature channels from a shared encoder (the same weights for both
    frames). The encoder's last layer starts at zero, so the extra channels are zero and the term
    starts equal to the wrapped one.

    Args:
        data: the hand-tuned data term whose per-channel constancy is applied to all channels.
        in_channels: channels of the frames.
        channels: learned feature channels.
        scale: multiplies the learned features (their residuals are in intensity units).
    """

    def __init__(self, data: AbstractDataTerm, in_channels: int, channels: int = 8, *, rngs: nnx.Rngs,
                 hidden: int = 16, scale: float = 255.0):
        self.data = data
        self.encoder = ConvNet(in_channels, channels, rngs=rngs, hidden=hidden)
        self.scale = scale

    def features(self, frame: jax.Array) -> jax.Array:
        learned = self.scale * self.encoder(normalise_image(frame))
        return jnp.concatenate([self.data.features(frame), learned], axis=-1)

    def linearize(self, features1, features2_warped, valid, flow0):
        return self.data.linearize(features1, features2_warped, valid, flow0)

    def energy(self, evidence, flow):
        return self.data.energy(evidence, flow)

    def curvature(self, evidence, flow):
        return self.data.curvature(evidence, flow)

    def gradient_and_curvature(self, evidence, flow):
        return self.data.gradient_and_curvature(evidence, flow)
