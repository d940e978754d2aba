"""FlowFormer's attention parts on channels-last token arrays ``(..., n, c)``: multi-head attention,
its linear sine encoding of positions, and the pre-norm attention layer of its cost encoder."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def attend(query: jax.Array, key: jax.Array, value: jax.Array, heads: int) -> jax.Array:
    """Multi-head ``softmax(q k^T / sqrt(c / heads)) v``: ``(..., n, c)`` queries, ``(..., m, c)`` keys
    and ``(..., m, d)`` values to ``(..., n, d)``, the channels split into ``heads`` consecutive groups;
    leading axes broadcast."""
    split = lambda x: x.reshape(x.shape[:-1] + (heads, x.shape[-1] // heads))
    lead = jnp.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    q, k, v = (split(jnp.broadcast_to(x, lead + x.shape[-2:])) for x in (query, key, value))
    scores = jnp.einsum("...nhc,...mhc->...hnm", q, k) / math.sqrt(query.shape[-1] // heads)
    out = jnp.einsum("...hnm,...mhd->...nhd", jax.nn.softmax(scores, -1), v)
    return out.reshape(out.shape[:-2] + (-1,))


def linear_position(coords: jax.Array, channels: int) -> jax.Array:
    """The reference's ``LinearPositionEmbeddingSine``: positions ``(..., 2)`` (x, y) to
    ``(..., channels)``: ``sin``, ``cos`` of ``3.14 x f / 200`` for ``f = 0 .. channels / 4 - 1``, then
    the same of ``y`` (3.14 as the reference writes it, not pi)."""
    f = jnp.arange(channels // 4, dtype=jnp.float32) * (3.14 / 200)
    x, y = coords[..., :1] * f, coords[..., 1:] * f
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], -1)


class MLP(nnx.Module):
    """``fc2(gelu(fc1(x)))`` on ``(..., c)``, through ``hidden`` channels."""

    def __init__(self, channels: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(channels, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class AttentionLayer(nnx.Module):
    """The reference's pre-norm ``SelfAttentionLayer`` / ``CrossAttentionLayer`` of the cost encoder:
    ``x + proj(attend(q(norm(x)), k(t), v(t)))``, then ``+ mlp(norm(x))``, with ``t`` the target tokens
    ``(..., m, target_channels)`` or, for self-attention, ``norm(x)``; biased projections, 8 heads."""

    def __init__(self, channels: int, target_channels: int, *, rngs: nnx.Rngs, heads: int = 8):
        self.norm1 = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)
        self.q = nnx.Linear(channels, channels, rngs=rngs)
        self.k = nnx.Linear(target_channels, channels, rngs=rngs)
        self.v = nnx.Linear(target_channels, channels, rngs=rngs)
        self.proj = nnx.Linear(channels, channels, rngs=rngs)
        self.norm2 = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)
        self.mlp = MLP(channels, channels, rngs=rngs)
        self.heads = heads

    def __call__(self, x: jax.Array, target: jax.Array | None = None) -> jax.Array:
        """``x`` ``(..., n, c)`` (leading axes broadcast against ``target``'s) to ``(..., n, c)``."""
        normed = self.norm1(x)
        target = normed if target is None else target
        x = x + self.proj(attend(self.q(normed), self.k(target), self.v(target), self.heads))
        return x + self.mlp(self.norm2(x))
