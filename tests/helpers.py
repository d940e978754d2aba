"""Small synthetic problems shared by the tests."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
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


def count(module) -> int:
    """Number of scalars in the ``nnx.Param`` leaves of ``module``."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def random(shape, seed=0) -> np.ndarray:
    """Standard-normal float32 values of ``shape``."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(actual, expected, tol=1e-4) -> None:
    """Assert ``actual`` equals ``expected`` within ``tol``, relative and absolute."""
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=tol, atol=tol)


def rgb_pair(shape, shift=(1.0, 2.0)):
    """A textured frame and its copy moved by ``shift = (dy, dx)``, as ``(h, w, 3)`` on 0..255."""
    i1, i2 = textured_pair(shape, shift)
    rgb = lambda i: np.stack([i, 255 - i, 0.5 * i + 64], -1).astype(np.float32)
    return rgb(i1), rgb(i2)


def train_on_shifted_pair(model, shape, learning_rate: float, steps: int = 12):
    """``steps`` AdamW steps (no weight decay, constant rate) of ``model`` on one batch: an
    ``rgb_pair`` of ``shape`` shifted by (2, 1) px. Returns the parameters before and after the first
    step, and the losses."""
    from unroll.training import OptimConfig, make_train_step

    frame1, frame2 = rgb_pair(shape)
    batch = {"frame1": frame1[None], "frame2": frame2[None],
             "flow": np.broadcast_to(np.float32([2.0, 1.0]), (1, *shape, 2)), "valid": np.ones((1, *shape), bool)}
    config = OptimConfig(steps=steps, learning_rate=learning_rate, schedule="constant", weight_decay=0.0)
    step, params, opt_state = make_train_step(model, config)
    before, losses = params, []
    for i in range(steps):
        params, opt_state, measured = step(params, opt_state, batch)
        losses.append(float(measured["loss"]))
        if i == 0:
            first = params
    return before, first, losses
