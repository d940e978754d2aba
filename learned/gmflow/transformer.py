"""GMFlow's feature transformer: sine position encoding per window, then layers of self- and
cross-attention (single head) in split windows, shifted by half a window every other layer (Swin),
on channels-last ``(..., h, w, c)`` features."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

#: the masked scores' offset in shifted windows (the reference's, not -inf)
MASKED = -100.0


def split_windows(x, splits: int):
    """``(..., h, w, c)`` to ``(..., splits**2, h / splits, w / splits, c)``, windows in row-major
    order (NumPy or JAX arrays)."""
    *lead, h, w, c = x.shape
    x = x.reshape(*lead, splits, h // splits, splits, w // splits, c).swapaxes(-4, -3)
    return x.reshape(*lead, splits * splits, h // splits, w // splits, c)


def merge_windows(x, splits: int):
    """The inverse of ``split_windows``: ``(..., splits**2, wh, ww, c)`` to ``(..., splits * wh, splits * ww, c)``."""
    *lead, _, wh, ww, c = x.shape
    x = x.reshape(*lead, splits, splits, wh, ww, c).swapaxes(-4, -3)
    return x.reshape(*lead, splits * wh, splits * ww, c)


def shift_mask(shape: tuple[int, int], splits: int) -> np.ndarray:
    """``(splits**2, n, n)`` score offsets of the shifted windows (``n`` pixels a window): 0 between
    pixels of one region of the rolled image, ``MASKED`` between pixels that the cyclic roll brought
    together from opposite borders (Swin's SW-MSA mask)."""
    h, w = shape
    region = lambda n, size: (np.arange(n) >= n - size).astype(int) + (np.arange(n) >= n - size // 2)
    label = 3 * region(h, h // splits)[:, None] + region(w, w // splits)[None, :]
    windows = split_windows(label[..., None], splits).reshape(splits * splits, -1)
    return np.where(windows[:, :, None] == windows[:, None, :], 0.0, MASKED).astype(np.float32)


def window_attention(q: jax.Array, k: jax.Array, v: jax.Array, splits: int, shift: bool) -> jax.Array:
    """Single-head attention ``softmax(q k^T / sqrt(c)) v`` within each of ``splits x splits``
    windows of ``(..., h, w, c)`` queries, keys and values (``h``, ``w`` multiples of ``splits``).

    With ``shift`` (and ``splits > 1``) the windows are displaced by half a window: the arrays are
    rolled by ``-(h, w) / (2 splits)``, attended with ``shift_mask`` and rolled back. One split is
    global attention.
    """
    h, w, c = q.shape[-3:]
    offset = (h // splits // 2, w // splits // 2) if shift and splits > 1 else (0, 0)
    window = lambda x: split_windows(jnp.roll(x, (-offset[0], -offset[1]), axis=(-3, -2)), splits)
    q, k, v = (window(x).reshape(*x.shape[:-3], splits * splits, -1, c) for x in (q, k, v))
    scores = jnp.einsum("...nqc,...nkc->...nqk", q, k) / math.sqrt(c)
    if offset != (0, 0):
        scores = scores + shift_mask((h, w), splits)
    out = jnp.einsum("...nqk,...nkc->...nqc", jax.nn.softmax(scores, -1), v)
    out = merge_windows(out.reshape(*out.shape[:-2], h // splits, w // splits, c), splits)
    return jnp.roll(out, offset, axis=(-3, -2))


def position_encoding(shape: tuple[int, int], channels: int) -> np.ndarray:
    """DETR's normalised sine encoding ``(h, w, channels)``: ``channels / 2`` of the row, then as
    many of the column; channel ``i`` of each is ``sin`` (even ``i``) or ``cos`` (odd ``i``) of
    ``2 pi (y + 1) / (h + 1e-6) / 10000^(2 floor(i / 2) / (channels / 2))`` (likewise ``x``, ``w``)."""
    h, w = shape
    half = channels // 2
    period = 10000.0 ** (2 * (np.arange(half) // 2) / half)
    phase = lambda n: (np.arange(1, n + 1) / (n + 1e-6) * 2 * np.pi)[:, None] / period
    encode = lambda p: np.where(np.arange(half) % 2 == 0, np.sin(p), np.cos(p))
    rows, cols = encode(phase(h)), encode(phase(w))
    return np.concatenate([np.broadcast_to(rows[:, None], (h, w, half)),
                           np.broadcast_to(cols[None], (h, w, half))], -1).astype(np.float32)


def add_position(features: jax.Array, splits: int) -> jax.Array:
    """``(..., h, w, c)`` features plus the position encoding of one window, repeated in each of the
    ``splits x splits`` windows (the reference's ``feature_add_position``)."""
    h, w, c = features.shape[-3:]
    return features + np.tile(position_encoding((h // splits, w // splits), c), (splits, splits, 1))


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, bias: bool = False) -> nnx.Linear:
    """A linear layer with the reference's Xavier-uniform initialisation."""
    return nnx.Linear(in_features, out_features, use_bias=bias, kernel_init=nnx.initializers.xavier_uniform(),
                      rngs=rngs)


class FeedForward(nnx.Module):
    """The reference's FFN after cross-attention: ``LayerNorm(W2 gelu(W1 [source, message]))``,
    bias-free ``2c -> 2c * expansion -> c``, on ``(..., h, w, c)`` arrays."""

    def __init__(self, channels: int, expansion: int, *, rngs: nnx.Rngs):
        self.fc1 = linear(2 * channels, 2 * channels * expansion, rngs=rngs)
        self.fc2 = linear(2 * channels * expansion, channels, rngs=rngs)
        self.norm = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)

    def __call__(self, source: jax.Array, message: jax.Array) -> jax.Array:
        hidden = jax.nn.gelu(self.fc1(jnp.concatenate([source, message], -1)), approximate=False)
        return self.norm(self.fc2(hidden))


class AttentionLayer(nnx.Module):
    """``source + message`` on ``(..., h, w, c)`` arrays: the message is window attention from
    ``source`` to ``target`` through bias-free q, k, v and merge projections and a LayerNorm, then
    (with ``ffn_expansion``) the ``FeedForward`` of ``[source, message]``."""

    def __init__(self, channels: int, ffn_expansion: int | None, *, rngs: nnx.Rngs):
        self.q_proj, self.k_proj, self.v_proj, self.merge = (linear(channels, channels, rngs=rngs) for _ in range(4))
        self.norm = nnx.LayerNorm(channels, epsilon=1e-5, rngs=rngs)
        self.ffn = None if ffn_expansion is None else FeedForward(channels, ffn_expansion, rngs=rngs)

    def __call__(self, source: jax.Array, target: jax.Array, splits: int, shift: bool) -> jax.Array:
        message = window_attention(self.q_proj(source), self.k_proj(target), self.v_proj(target), splits, shift)
        message = self.norm(self.merge(message))
        if self.ffn is not None:
            message = self.ffn(source, message)
        return source + message


class TransformerBlock(nnx.Module):
    """Self-attention of ``source``, then cross-attention to ``target`` and the feed-forward network."""

    def __init__(self, channels: int, ffn_expansion: int, shift: bool, *, rngs: nnx.Rngs):
        self.self_attn = AttentionLayer(channels, None, rngs=rngs)
        self.cross_attn = AttentionLayer(channels, ffn_expansion, rngs=rngs)
        self.shift = shift

    def __call__(self, source: jax.Array, target: jax.Array, splits: int) -> jax.Array:
        source = self.self_attn(source, source, splits, self.shift)
        return self.cross_attn(source, target, splits, self.shift)


class FeatureTransformer(nnx.Module):
    """``num_layers`` ``TransformerBlock``s (odd ones in shifted windows) on both frames' features.

    ``__call__(features, splits)``: ``(2, h, w, c)`` features of frames 1 and 2 (position already
    added) to the same shape; each layer updates both frames at once, each attending to the other's
    features from before the layer.
    """

    def __init__(self, channels: int = 128, num_layers: int = 6, ffn_expansion: int = 4, *, rngs: nnx.Rngs):
        self.layers = nnx.List([TransformerBlock(channels, ffn_expansion, i % 2 == 1, rngs=rngs)
                                for i in range(num_layers)])

    def __call__(self, features: jax.Array, splits: int) -> jax.Array:
        for layer in self.layers:
            features = layer(features, features[::-1], splits)
        return features
