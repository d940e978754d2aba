"""RAFT's update block (motion encoder, recurrent unit, flow head) and upsampling-mask predictor,
layer for layer as torchvision's, on channels-last ``(..., h, w, c)`` arrays at 1/8 resolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from learned.nets import ConvGRU, conv2d


class MotionEncoder(nnx.Module):
    """Encodes the flow ``(..., h, w, 2)`` and correlation features ``(..., h, w, corr_channels)``
    into ``(..., h, w, out_channels)``: a learned part of ``out_channels - 2`` channels, then the flow.

    The correlation goes through ReLU convolutions to ``corr_layers`` (1x1, then 3x3), the flow
    through ReLU convolutions to ``flow_layers`` (7x7, then 3x3); a 3x3 ReLU convolution mixes both.
    """

    def __init__(self, corr_channels: int, corr_layers: tuple[int, ...], flow_layers: tuple[int, ...],
                 out_channels: int, *, rngs: nnx.Rngs):
        chain = lambda widths, first: nnx.List([conv2d(a, b, first if i == 0 else 3, rngs=rngs)
                                                for i, (a, b) in enumerate(zip(widths, widths[1:]))])
        self.corr_convs = chain((corr_channels, *corr_layers), 1)
        self.flow_convs = chain((2, *flow_layers), 7)
        self.out_conv = conv2d(corr_layers[-1] + flow_layers[-1], out_channels - 2, 3, rngs=rngs)

    def __call__(self, flow: jax.Array, corr: jax.Array) -> jax.Array:
        c, f = corr, flow
        for conv in self.corr_convs:
            c = jax.nn.relu(conv(c))
        for conv in self.flow_convs:
            f = jax.nn.relu(conv(f))
        return jnp.concatenate([jax.nn.relu(self.out_conv(jnp.concatenate([c, f], -1))), flow], -1)


class SepConvGRU(nnx.Module):
    """RAFT's separable ConvGRU: a 1x5 ConvGRU (along rows) then a 5x1 one (along columns)."""

    def __init__(self, hidden: int, inputs: int, *, rngs: nnx.Rngs):
        self.horizontal = ConvGRU(hidden, inputs, rngs=rngs, kernel=(1, 5))
        self.vertical = ConvGRU(hidden, inputs, rngs=rngs, kernel=(5, 1))

    def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
        return self.vertical(self.horizontal(h, x), x)


class FlowHead(nnx.Module):
    """Hidden state ``(..., h, w, in_channels)`` to a flow increment ``(..., h, w, 2)``: two 3x3 convolutions."""

    def __init__(self, in_channels: int, hidden: int, *, rngs: nnx.Rngs):
        self.conv1 = conv2d(in_channels, hidden, 3, rngs=rngs)
        self.conv2 = conv2d(hidden, 2, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv2(jax.nn.relu(self.conv1(x)))


class MaskPredictor(nnx.Module):
    """Hidden state ``(..., h, w, in_channels)`` to the logits ``(..., h, w, 9 * factor**2)`` of the
    convex upsampling (see ``upsample.convex_upsample``), scaled by ``multiplier`` as in RAFT."""

    def __init__(self, in_channels: int, hidden: int, *, rngs: nnx.Rngs, factor: int = 8, multiplier: float = 0.25):
        self.conv1 = conv2d(in_channels, hidden, 3, rngs=rngs)
        self.conv2 = conv2d(hidden, 9 * factor * factor, 1, rngs=rngs)
        self.multiplier = multiplier

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.multiplier * self.conv2(jax.nn.relu(self.conv1(x)))


class UpdateBlock(nnx.Module):
    """One RAFT iteration: motion features of (flow, correlation), the recurrent unit ``gru`` on
    (context, motion features), and the flow head on its new hidden state."""

    def __init__(self, motion: MotionEncoder, gru: nnx.Module, flow_head: FlowHead):
        self.motion = motion
        self.gru = gru
        self.flow_head = flow_head

    def __call__(self, hidden: jax.Array, context: jax.Array, corr: jax.Array,
                 flow: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(hidden, context, corr, flow) -> (hidden, delta_flow (..., h, w, 2))``, all at 1/8 resolution."""
        x = jnp.concatenate([context, self.motion(flow, corr)], -1)
        hidden = self.gru(hidden, x)
        return hidden, self.flow_head(hidden)
