"""A learned pyramid prefilter: one normalised separable blur kernel per level."""

from __future__ import annotations

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
    """Separable blur with learned taps per level, divided by their sum (so it keeps brightness).

    Initialised to the ``GaussianPrefilter(sigma, input_sigma)`` taps, truncated to ``radius``
    (the default radius 4 holds the sigma = 1 Gaussian exactly).
    """

    def __init__(self, num_levels: int, sigma: float = 1.0, input_sigma: float = 0.0, radius: int = 4):
        init = [_padded_gaussian(input_sigma, radius)] + [_padded_gaussian(sigma, radius)] * (num_levels - 1)
        self.taps = nnx.Param(jnp.asarray(np.stack(init), jnp.float32))

    def __call__(self, image, level):
        taps = self.taps[min(level, self.taps.shape[0] - 1)]
        taps = taps / jnp.sum(taps)
        return image_ops.correlate1d(image_ops.correlate1d(image, taps, 0), taps, 1)
