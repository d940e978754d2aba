"""FlowFormer's cost memory decoder as the scaffold's data term: the lookup at the current flow is RAFT's
9 x 9 window of the cost volume and a query of the pixel's latent cost memory by cross-attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from learned.flowformer.attention import MLP, attend, linear_position
from learned.flowformer.cost_encoder import CHANNELS, HEADS, CostEncoder
from learned.raft.model import CorrelationData, pixel_grid
from unroll.operators import AbstractDataTerm

#: the reference's query channels (``query_latent_dim``)
QUERY_CHANNELS = 64


class MemoryQuery(nnx.Module):
    """The reference's ``MemoryDecoderLayer``: a pixel's cost window ``(h, w, n)`` around its current
    match to a query token (two 1x1 convolutions, GELU between), which attends (8 heads) to the
    pixel's ``K`` memory tokens with the match's ``linear_position`` added (pre-norm); the result,
    projected from ``[attended, query]``, plus the query, then a pre-norm MLP: ``(h, w, 64)``."""

    def __init__(self, window_channels: int, *, rngs: nnx.Rngs, channels: int = QUERY_CHANNELS):
        self.token1 = nnx.Linear(window_channels, channels, rngs=rngs)
        self.token2 = nnx.Linear(channels, channels, rngs=rngs)
        self.norm1 = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)
        self.q = nnx.Linear(channels, channels, rngs=rngs)
        self.k = nnx.Linear(CHANNELS, channels, rngs=rngs)
        self.v = nnx.Linear(CHANNELS, channels, rngs=rngs)
        self.proj = nnx.Linear(2 * channels, channels, rngs=rngs)
        self.norm2 = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)
        self.mlp = MLP(channels, channels, rngs=rngs)

    def keys_values(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The memory ``(h w, K, D)``'s keys and values ``(h w, K, 64)``, computed once for all iterations."""
        return self.k(memory), self.v(memory)

    def __call__(self, keys_values: tuple[jax.Array, jax.Array], window: jax.Array, coords: jax.Array) -> jax.Array:
        """``window`` ``(h, w, n)`` cost window around ``coords`` ``(h, w, 2)`` (the matches, x + flow)."""
        h, w = window.shape[:2]
        query = self.token2(jax.nn.gelu(self.token1(window), approximate=False)).reshape(h * w, 1, -1)
        position = linear_position(coords, query.shape[-1]).reshape(h * w, 1, -1)
        attended = attend(self.q(self.norm1(query) + position), *keys_values, HEADS)
        x = query + self.proj(jnp.concatenate([attended, query], -1))
        return (x + self.mlp(self.norm2(x))).reshape(h, w, -1)


class CostMemoryData(AbstractDataTerm):
    """FlowFormer's data term: RAFT's ``CorrelationData`` (features, all-pairs volume, window lookup)
    with the volume also encoded into a latent cost memory.

    ``linearize`` builds the volume and encodes it (``CostEncoder``, frame 1's features as the
    context) once; ``lookup`` reads the window around ``x + flow`` and queries the memory there
    (``MemoryQuery``): ``(h, w, 64 + n)`` channels, the reference's ``[cost_global, cost_forward]``.
    The energy is RAFT's: the negative correlation at the flow.
    """

    def __init__(self, correlation: CorrelationData, encoder: CostEncoder, query: MemoryQuery):
        self.correlation = correlation
        self.encoder = encoder
        self.query = query

    def features(self, frame: jax.Array) -> jax.Array:
        return self.correlation.features(frame)

    def linearize(self, features1, features2_warped, valid, flow0):
        volume = self.correlation.linearize(features1, features2_warped, valid, flow0)
        return volume, self.query.keys_values(self.encoder(volume[0], features1))

    def lookup(self, evidence, flow: jax.Array) -> jax.Array:
        """``(h, w, 64 + (2 r + 1)**2)``: the memory's answer and the window around ``x + flow`` ``(h, w, 2)``."""
        volume, keys_values = evidence
        window = self.correlation.lookup(volume, flow)
        return jnp.concatenate([self.query(keys_values, window, pixel_grid(flow.shape[:2]) + flow), window], -1)

    def energy(self, evidence, flow):
        return self.correlation.energy(evidence[0], flow)

    def curvature(self, evidence, flow):
        raise NotImplementedError("the cost memory has no Gauss-Newton curvature; FlowFormer's step is learned")
