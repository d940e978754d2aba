"""Learned data terms: constancy of learned features."""

from __future__ import annotations

import jax
from flax import nnx

from learned.nets import ConvNet, normalise_image
from unroll.operators import AbstractDataTerm


class LearnedFeatures(AbstractDataTerm):
    """The wrapped term's constancy on learned features ``f(I) = I + CNN(I)`` (one encoder shared
    by both frames): a learned, image-dependent transformation of the frame before matching, in
    the spirit of the structure-texture decomposition that robust classical methods apply.

    The encoder's last layer starts at zero, so the term starts equal to the wrapped one. The
    correction is *added* to the frame rather than appended as new channels: a new channel that
    starts at zero adds a residual that is zero with zero derivative to a sum of squares, so its
    gradient would vanish and it could never start to learn.

    Args:
        data: the hand-tuned data term whose constancy is applied to the learned features.
        in_channels: channels of the frames.
        channels: width of the encoder's hidden layers.
        scale: multiplies the correction (in grey levels per unit of network output).
    """

    def __init__(self, data: AbstractDataTerm, in_channels: int, channels: int = 8, *, rngs: nnx.Rngs,
                 scale: float = 10.0):
        self.data = data
        self.encoder = ConvNet(in_channels, in_channels, rngs=rngs, hidden=channels)
        self.scale = scale

    def features(self, frame: jax.Array) -> jax.Array:
        return self.data.features(frame + self.scale * self.encoder(normalise_image(frame)))

    def linearize(self, features1, features2_warped, valid, flow0):
        return self.data.linearize(features1, features2_warped, valid, flow0)

    def energy(self, evidence, flow):
        return self.data.energy(evidence, flow)

    def curvature(self, evidence, flow):
        return self.data.curvature(evidence, flow)

    def gradient_and_curvature(self, evidence, flow):
        return self.data.gradient_and_curvature(evidence, flow)
