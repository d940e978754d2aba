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


def conv2d(in_features: int, out_features: int, kernel: int | tuple[int, int], *, rngs: nnx.Rngs,
           stride: int = 1, bias: bool = True) -> nnx.Conv:
    """A convolution padded like torch's ``Conv2d(padding=k // 2)``: ``k // 2`` zeros on both
    sides of each kernel dimension. (``"SAME"`` pads a stride-2 convolution asymmetrically.)"""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    return nnx.Conv(in_features, out_features, kernel, strides=(stride, stride),
                    padding=[(k // 2, k // 2) for k in kernel], use_bias=bias, rngs=rngs)


class ConvGRU(nnx.Module):
    """Convolutional GRU cell (Ballas et al. 2016), as in RAFT's update block: hidden state
    ``h (..., h, w, hidden)``, input ``x (..., h, w, inputs)``, a ``kernel``-sized convolution per gate."""

    def __init__(self, hidden: int, inputs: int, *, rngs: nnx.Rngs, kernel: tuple[int, int] = (3, 3)):
        gate = lambda: conv2d(hidden + inputs, hidden, kernel, rngs=rngs)
        self.update_gate, self.reset_gate, self.candidate = gate(), gate(), gate()

    def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
        hx = jnp.concatenate([h, x], -1)
        z = jax.nn.sigmoid(self.update_gate(hx))
        r = jax.nn.sigmoid(self.reset_gate(hx))
        q = jnp.tanh(self.candidate(jnp.concatenate([r * h, x], -1)))
        return (1 - z) * h + z * q


def neighbours(x: jax.Array, radius: int) -> jax.Array:
    """``(..., h, w, c)`` to ``(..., h, w, (2 r + 1)**2, c)``: the values at ``p + (dx, dy)`` for
    ``dy``, then ``dx``, in ``-r .. r`` (row-major), zero outside the image (torch's ``unfold``
    with zero padding)."""
    h, w = x.shape[-3:-1]
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(radius, radius), (radius, radius), (0, 0)])
    n = 2 * radius + 1
    return jnp.stack([padded[..., i:i + h, j:j + w, :] for i in range(n) for j in range(n)], -2)


def leaky_relu(x: jax.Array) -> jax.Array:
    """LeakyReLU with slope 0.1, FlowNet's and PWC-Net's activation."""
    return jax.nn.leaky_relu(x, 0.1)


def normalise_image(image: jax.Array) -> jax.Array:
    """Frames on the 0..255 scale to roughly zero-mean unit range, the scale networks train on."""
    return image / 127.5 - 1.0
