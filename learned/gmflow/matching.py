"""GMFlow's matching and propagation at 1/8 resolution: a flow from the softmax over all pixels of
frame 2 (global correlation), and its propagation by self-attention on frame 1's features."""

from __future__ import annotations

import math

import jax
from flax import nnx

from learned.gmflow.transformer import linear
from learned.raft.model import pixel_grid


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


class FlowPropagation(nnx.Module):
    """GMFlow's global flow propagation: ``(h, w, c)`` features of frame 1 and a flow ``(h, w, 2)``
    to each pixel's attention-weighted mean of the flow over all pixels, the attention from the
    features. The key is ``k_proj(q_proj(features))``, the composition the reference computes (and
    its weights hold); both projections are biased."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.q_proj = linear(channels, channels, bias=True, rngs=rngs)
        self.k_proj = linear(channels, channels, bias=True, rngs=rngs)

    def __call__(self, features: jax.Array, flow: jax.Array) -> jax.Array:
        query = self.q_proj(features)
        return attend(query, self.k_proj(query), flow)
