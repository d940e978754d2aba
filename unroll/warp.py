"""Bilinear backward warping (the default warp of the coarse-to-fine driver)."""

from __future__ import annotations

import jax

from unroll import image_ops
from unroll.operators import AbstractWarp


class BilinearWarp(AbstractWarp):
    """Sample ``image`` at ``(x + u, y + v)`` bilinearly; samples outside the image are invalid.

    Differentiable with respect to the image and the flow. Invalid samples take the nearest
    border value (their data term is switched off by the mask).
    """

    def __call__(self, image: jax.Array, flow: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, w = image.shape[:2]
        xx, yy = image_ops.pixel_grid(h, w)
        x = xx + flow[..., 0]
        y = yy + flow[..., 1]
        valid = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        return image_ops.sample_bilinear(image, x, y), valid
