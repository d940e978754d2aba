"""Small synthetic problems shared by the tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def textured_pair(shape=(32, 40), shift=(0.4, 0.7), seed=0, smooth=2.0):
    """A smooth random texture and its copy translated by ``shift = (dy, dx)`` pixels.

    Returns:
        ``(i1, i2)`` float64 ``(h, w)`` arrays on the 0..255 scale; the true flow is
        ``(u, v) = (dx, dy)`` away from the borders.
    """
    rng = np.random.default_rng(seed)
    i1 = ndimage.gaussian_filter(rng.uniform(0, 255, shape), smooth, mode="nearest")
    i1 = (i1 - i1.min()) / (i1.max() - i1.min()) * 255
    i2 = ndimage.shift(i1, shift, order=3, mode="nearest")
    return i1, i2
