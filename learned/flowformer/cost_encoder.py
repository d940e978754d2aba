"""FlowFormer's cost memory encoder: each pixel's cost map over frame 2, cut into 8 x 8 patches and
summarised by a few latent tokens, refined by alternate-group transformer (AGT) layers.

Tokens are channels-last. A cost map is ``(H, W)``: the correlations of one pixel of frame 1 with
every pixel of frame 2 at 1/8 resolution. The memory is ``(h w, K, D)``: ``K`` latent cost tokens of
``D`` channels per pixel of frame 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from learned.flowformer.attention import MLP, AttentionLayer, attend, linear_position
from learned.raft.model import pixel_grid

#: the reference's widths (configs/default.py): patch features, latent tokens and their channels,
#: AGT layers, the context channels added to inter-cost-map queries and keys, heads
PATCH_CHANNELS, TOKENS, CHANNELS, DEPTH, CONTEXT_CHANNELS, HEADS = 64, 8, 128, 3, 64, 8
#: patch size on the cost maps; inter-cost-map windows (locally grouped) and key stride (global)
PATCH, WINDOW, STRIDE = 8, 7, 4


def pad_to(x: jax.Array, multiple: int) -> jax.Array:
    """``(..., h, w, c)`` padded with zeros at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-3:-1]
    return jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, -h % multiple), (0, -w % multiple), (0, 0)])


class PatchEmbed(nnx.Module):
    """Cost maps ``(n, H, W)`` to ``(n, ceil(H / 8) ceil(W / 8), 2 channels)`` patch tokens: zero-padded
    to multiples of 8, three 6x6 stride-2 convolutions (1 -> c/4 -> c/2 -> c, ReLUs between), the
    patch centres' ``linear_position`` appended, two 1x1 convolutions (ReLU between) and a LayerNorm."""

    def __init__(self, channels: int = PATCH_CHANNELS, *, rngs: nnx.Rngs):
        widths = (1, channels // 4, channels // 2, channels)
        self.convs = nnx.List([nnx.Conv(a, b, (6, 6), strides=2, padding=[(2, 2), (2, 2)], rngs=rngs)
                               for a, b in zip(widths, widths[1:])])
        self.fc1 = nnx.Linear(2 * channels, 2 * channels, rngs=rngs)
        self.fc2 = nnx.Linear(2 * channels, 2 * channels, rngs=rngs)
        self.norm = nnx.LayerNorm(2 * channels, epsilon=1e-5, rngs=rngs)
        self.channels = channels

    def __call__(self, cost: jax.Array) -> jax.Array:
        x = pad_to(cost[..., None], PATCH)
        for i, conv in enumerate(self.convs):
            x = conv(x) if i == len(self.convs) - 1 else jax.nn.relu(conv(x))
        n, h, w, _ = x.shape
        centres = linear_position(pixel_grid((h, w)) * PATCH + PATCH / 2, self.channels)
        x = jnp.concatenate([x, jnp.broadcast_to(centres, x.shape).astype(x.dtype)], -1)
        return self.norm(self.fc2(jax.nn.relu(self.fc1(x)))).reshape(n, h * w, -1)


def windows(x: jax.Array, size: int) -> jax.Array:
    """``(..., H, W, c)`` (multiples of ``size``) to ``(..., H / size, W / size, size**2, c)``."""
    *lead, h, w, c = x.shape
    x = x.reshape(*lead, h // size, size, w // size, size, c).swapaxes(-4, -3)
    return x.reshape(*lead, h // size, w // size, size * size, c)


def merge(x: jax.Array, size: int) -> jax.Array:
    """The inverse of ``windows``."""
    *lead, nh, nw, _, c = x.shape
    x = x.reshape(*lead, nh, nw, size, size, c).swapaxes(-4, -3)
    return x.reshape(*lead, nh * size, nw * size, c)


class LocalAttention(nnx.Module):
    """Inter-cost-map attention in 7 x 7 windows of frame 1's pixels (Twins' locally-grouped
    self-attention with context, the reference's ``LocallyGroupedAttnRPEContext``): queries and keys
    from the tokens, a projection of the context and the position in the window; values from the
    tokens. The tokens and context are zero-padded to whole windows, the padding attended to too."""

    def __init__(self, channels: int, context_in: int, *, rngs: nnx.Rngs, heads: int = HEADS):
        self.context_proj = nnx.Linear(context_in, CONTEXT_CHANNELS, rngs=rngs)
        self.q = nnx.Linear(channels + CONTEXT_CHANNELS, channels, rngs=rngs)
        self.k = nnx.Linear(channels + CONTEXT_CHANNELS, channels, rngs=rngs)
        self.v = nnx.Linear(channels, channels, rngs=rngs)
        self.proj = nnx.Linear(channels, channels, rngs=rngs)
        self.heads = heads

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """``x`` ``(K, h, w, c)`` (one token of each pixel, for each latent), ``context`` ``(h, w, c')``."""
        h, w = x.shape[1:3]
        context = jnp.broadcast_to(self.context_proj(context), x.shape[:3] + (CONTEXT_CHANNELS,))
        keyed = windows(pad_to(jnp.concatenate([x, context.astype(x.dtype)], -1), WINDOW), WINDOW)
        keyed = keyed + linear_position(pixel_grid((WINDOW, WINDOW)), keyed.shape[-1]).reshape(-1, keyed.shape[-1])
        values = self.v(windows(pad_to(x, WINDOW), WINDOW))
        out = merge(attend(self.q(keyed), self.k(keyed), values, self.heads), WINDOW)
        return self.proj(out[:, :h, :w])


class GlobalAttention(nnx.Module):
    """Inter-cost-map attention to keys and values subsampled 4 x 4 (Twins' global sub-sampled
    attention with context, the reference's ``GlobalSubSampleAttnRPEContext``): queries from the
    tokens, the context and the position; keys from a strided 4x4 convolution of tokens and context,
    values from one of the tokens, both layer-normed (one norm), keys plus their position."""

    def __init__(self, channels: int, context_in: int, *, rngs: nnx.Rngs, heads: int = HEADS):
        self.context_proj = nnx.Linear(context_in, CONTEXT_CHANNELS, rngs=rngs)
        self.q = nnx.Linear(channels + CONTEXT_CHANNELS, channels, rngs=rngs)
        self.k = nnx.Linear(channels, channels, rngs=rngs)
        self.v = nnx.Linear(channels, channels, rngs=rngs)
        self.proj = nnx.Linear(channels, channels, rngs=rngs)
        strided = lambda a: nnx.Conv(a, channels, (STRIDE, STRIDE), strides=STRIDE, padding="VALID", rngs=rngs)
        self.sr_key, self.sr_value = strided(channels + CONTEXT_CHANNELS), strided(channels)
        self.norm = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)
        self.heads = heads

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """``x`` ``(K, h, w, c)``, ``context`` ``(h, w, c')``."""
        k, h, w, c = x.shape
        context = jnp.broadcast_to(self.context_proj(context), (k, h, w, CONTEXT_CHANNELS))
        keyed = pad_to(jnp.concatenate([x, context.astype(x.dtype)], -1), STRIDE)
        hp, wp = keyed.shape[1:3]
        query = self.q(keyed + linear_position(pixel_grid((hp, wp)), keyed.shape[-1]))
        keys = self.norm(self.sr_key(keyed)) + linear_position(pixel_grid((hp // STRIDE, wp // STRIDE)) * STRIDE, c)
        values = self.norm(self.sr_value(pad_to(x, STRIDE)))
        flat = lambda t: t.reshape(k, -1, t.shape[-1])
        out = attend(flat(query), flat(self.k(keys)), flat(self.v(values)), self.heads).reshape(k, hp, wp, c)
        return self.proj(out[:, :h, :w])


class TwinsBlock(nnx.Module):
    """Twins' pre-norm block: ``x + attention(norm(x), context)``, then ``+ mlp(norm(x))`` (4x wide)."""

    def __init__(self, attention: nnx.Module, channels: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)
        self.attention = attention
        self.norm2 = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)
        self.mlp = MLP(channels, 4 * channels, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        x = x + self.attention(self.norm1(x), context)
        return x + self.mlp(self.norm2(x))


class CostEncoder(nnx.Module):
    """Cost maps ``(h w, h, w)`` of frame 1's pixels and frame 1's features ``(h, w, context_in)``
    (the inter-cost-map attention's context) to the cost memory ``(h w, K, D)``.

    ``PatchEmbed`` tokens are summarised by cross-attention from ``K`` learned latent tokens; then
    ``DEPTH`` AGT layers, each an intra-cost-map self-attention (among one pixel's ``K`` tokens) and
    an inter-cost-map one (among all pixels' tokens of one latent: ``LocalAttention`` then
    ``GlobalAttention``); a residual connection around the AGT layers.
    """

    def __init__(self, context_in: int, *, rngs: nnx.Rngs):
        self.patch_embed = PatchEmbed(rngs=rngs)
        self.latents = nnx.Param(jax.random.normal(rngs.params(), (TOKENS, CHANNELS)))
        self.input_layer = AttentionLayer(CHANNELS, 2 * PATCH_CHANNELS, rngs=rngs)
        self.intra = nnx.List([AttentionLayer(CHANNELS, CHANNELS, rngs=rngs) for _ in range(DEPTH)])
        twins = lambda attention: nnx.List([TwinsBlock(attention(CHANNELS, context_in, rngs=rngs), CHANNELS, rngs=rngs)
                                            for _ in range(DEPTH)])
        self.inter_local, self.inter_global = twins(LocalAttention), twins(GlobalAttention)

    def __call__(self, cost: jax.Array, context: jax.Array) -> jax.Array:
        h, w = context.shape[:2]
        x = self.input_layer(self.latents[...], self.patch_embed(cost))
        shortcut = x
        for intra, inter_local, inter_global in zip(self.intra, self.inter_local, self.inter_global):
            x = intra(x).reshape(h, w, TOKENS, CHANNELS).transpose(2, 0, 1, 3)  # (K, h, w, D)
            x = inter_global(inter_local(x, context), context)
            x = x.transpose(1, 2, 0, 3).reshape(h * w, TOKENS, CHANNELS)
        return x + shortcut
