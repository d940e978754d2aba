"""GMFlow's matching and propagation: a flow from the softmax over the pixels of frame 2 (all of them
at 1/8, a window around each pixel in the refinement at 1/4), and its propagation by self-attention
on frame 1's features (over all pixels, or a window)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from learned.gmflow.transformer import linear
from learned.local_correlation import local_correlation
from learned.nets import neighbours
from learned.raft.model import pixel_grid

#: the scores of displacements that leave frame 2 in local matching (the reference's, not -inf)
OUTSIDE = -1e9


def attend(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """``softmax(query key^T / sqrt(c))`` over all pixels, applied to ``value``: ``(h, w, c)``
    queries, ``(h', w', c)`` keys and ``(h', w', d)`` values to ``(h, w, d)``."""
    h, w, c = query.shape
    scores = query.reshape(h * w, c) @ key.reshape(-1, c).T / math.sqrt(c)
    return (jax.nn.softmax(scores, -1) @ value.reshape(-1, value.shape[-1])).reshape(h, w, -1)


def global_matching(features1: jax.Array, features2: jax.Array) -> jax.Array:
    """The flow ``(h, w, 2)`` of ``(h, w, c)`` features: for each pixel of frame 1, the mean
    position of frame 2's pixels weighted by the softmax of their correlation ``<f1, f2> / sqrt(c)``,
    less its own position."""
    grid = pixel_grid(features1.shape[:2])
    return attend(features1, features2, grid) - grid


def displacements(radius: int) -> np.ndarray:
    """``((2 r + 1)**2, 2)`` displacements ``(dx, dy)`` of a window, row-major (``dy`` outer): the
    channel order of ``local_correlation`` and ``neighbours``."""
    d = np.arange(-radius, radius + 1, dtype=np.float32)
    return np.stack(np.meshgrid(d, d), -1).reshape(-1, 2)


def window_scores(features1: jax.Array, features2: jax.Array, radius: int) -> jax.Array:
    """``(h, w, (2 r + 1)**2)`` scores ``<f1(p), f2(p + d)> / sqrt(c)`` of ``(h, w, c)`` features,
    zero where ``p + d`` is outside (``local_correlation`` scaled from ``1 / c`` to ``1 / sqrt(c)``)."""
    return local_correlation(features1, features2, radius) * math.sqrt(features1.shape[-1])


def local_matching(features1: jax.Array, features2: jax.Array, radius: int) -> jax.Array:
    """The flow ``(h, w, 2)`` of ``(h, w, c)`` features within a ``(2 r + 1)**2`` window: for each
    pixel, the mean displacement ``d`` weighted by the softmax of ``<f1(p), f2(p + d)> / sqrt(c)``
    over the ``d`` that stay inside frame 2 (the reference's ``local_correlation_softmax``)."""
    inside = neighbours(jnp.ones(features1.shape[:2] + (1,), bool), radius)[..., 0]
    scores = jnp.where(inside, window_scores(features1, features2, radius), OUTSIDE)
    return jax.nn.softmax(scores, -1) @ displacements(radius)


class FlowPropagation(nnx.Module):
    """GMFlow's flow propagation: ``(h, w, c)`` features of frame 1 and a flow ``(h, w, 2)`` to each
    pixel's attention-weighted mean of the flow, the attention from the features; both projections
    are biased.

    ``radius`` -1 (global): over all pixels, the key ``k_proj(q_proj(features))``, the composition
    the reference computes (and its weights hold). ``radius`` r > 0: over the ``(2 r + 1)**2`` window,
    the key ``k_proj(features)``, keys and flows zero outside the image (the reference's
    ``forward_local_window_attn``: a border pixel's outside neighbours score 0, not excluded).
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.q_proj = linear(channels, channels, bias=True, rngs=rngs)
        self.k_proj = linear(channels, channels, bias=True, rngs=rngs)

    def __call__(self, features: jax.Array, flow: jax.Array, radius: int = -1) -> jax.Array:
        query = self.q_proj(features)
        if radius < 0:
            return attend(query, self.k_proj(query), flow)
        weights = jax.nn.softmax(window_scores(query, self.k_proj(features), radius), -1)
        return jnp.einsum("hwk,hwkc->hwc", weights, neighbours(flow, radius))
