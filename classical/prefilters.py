"""Hand-tuned pyramid prefilter: Gaussian blur."""

from __future__ import annotations

from unroll import image_ops
from unroll.operators import AbstractPrefilter


class GaussianPrefilter(AbstractPrefilter):
    """Gaussian blur: ``input_sigma`` on the input frame, ``sigma`` before each downsampling.

    ``sigma = 1 / sqrt(2 * scale)`` is the usual anti-aliasing choice (1.0 for scale 0.5).
    """

    def __init__(self, sigma: float = 1.0, input_sigma: float = 0.0):
        self.sigma = sigma
        self.input_sigma = input_sigma

    def __call__(self, image, level):
        return image_ops.gaussian_blur(image, self.input_sigma if level == 0 else self.sigma)
