"""A learned pyramid prefilter: one normalised separable blur kernel per level."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unroll import image_ops
from unroll.operators import AbstractPrefilter


def _padded_gaussian(sigma: float, radius: int) -> np.ndarray:
    taps = np.zeros(2 * radius + 1)
    if sigma <= 0:
        taps[radius] = 1.0
        return taps
    gauss = image_ops.gaussian_taps(sigma)
    r = min(radius, len(gauss) // 2)
    taps[radius - r : radius + r + 1] = gauss[len(gauss) // 2 - r : len(gauss) // 2 + r + 1]
    return taps / taps.sum()


class LearnedPrefilter(AbstractPrefilter):
    """Separable blur with learned taps per level: ``softmax`` of symmetric logits, so the taps
    are positive, symmetric and sum to 1 — a learned *blur* that keeps brightness and cannot ring
    (free taps normalised by their sum drifted into negative lobes in training and aliased the
    pyramid).

    Initialised to the ``GaussianPrefilter(sigma, input_sigma)`` taps, truncated to ``radius``
    (the default radius 4 holds the sigma = 1 Gaussian exactly). Taps that are zero there start at
    ``floor``; a level whose hand-tuned filter is the identity (``input_sigma = 0``) therefore stays
    (almost exactly) the identity.
    """

    def __init__(self, num_levels: int, sigma: float = 1.0, input_sigma: float = 0.0, radius: int = 4,
                 floor: float = 1e-8):
        init = [_padded_gaussian(input_sigma, radius)] + [_padded_gaussian(sigma, radius)] * (num_levels - 1)
        half = np.stack(init)[:, radius:]  # centre tap first
        self.logits = nnx.Param(jnp.asarray(np.log(np.maximum(half, floor)), jnp.float32))

    def taps(self, level: int) -> jax.Array:
        """The ``(2 radius + 1,)`` taps of ``level``."""
        half = self.logits[min(level, self.logits.shape[0] - 1)]
        return jax.nn.softmax(jnp.concatenate([half[:0:-1], half]))

    def __call__(self, image, level):
        taps = self.taps(level)
        return image_ops.correlate1d(image_ops.correlate1d(image, taps, 0), taps, 1)
