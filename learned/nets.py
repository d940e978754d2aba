"""Small convolutional building blocks shared by the learned operators."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class ConvNet(nnx.Module):
    """``depth`` 3x3 convolutions with ReLUs between them, on ``(..., h, w, c)`` inputs.

    With ``zero_last=True`` the last layer starts at zero, so the network outputs zeros until
    trained: the way a learned operator starts exactly as its hand-tuned twin.
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, hidden: int = 16,
                 depth: int = 3, zero_last: bool = True):
        widths = [in_features] + [hidden] * (depth - 1) + [out_features]
        self.layers = nnx.List([nnx.Conv(a, b, (3, 3), padding="SAME", rngs=rngs) for a, b in zip(widths, widths[1:])])
        if zero_last:
            last = self.layers[-1]
            last.kernel[...] = jnp.zeros_like(last.kernel[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def normalise_image(image: jax.Array) -> jax.Array:
    """Frames on the 0..255 scale to roughly zero-mean unit range, the scale networks train on."""
    return image / 127.5 - 1.0
