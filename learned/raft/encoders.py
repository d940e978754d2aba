"""RAFT's feature and context encoders, layer for layer as torchvision's ``FeatureEncoder``, on
channels-last ``(..., h, w, c)`` arrays. Every convolution is biased and padded like torch's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from learned.nets import conv2d


class InstanceNorm(nnx.Module):
    """Each channel to zero mean and unit (biased) variance over the image, as torch's
    ``InstanceNorm2d(affine=False)``: no parameters. Computed in float32 (or float64) for
    half-precision ``x``, returned in ``x``'s dtype."""

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = y.mean(axis=(-3, -2), keepdims=True)
        var = y.var(axis=(-3, -2), keepdims=True)
        return ((y - mean) / jnp.sqrt(var + 1e-5)).astype(x.dtype)


class FrozenBatchNorm(nnx.Module):
    """BatchNorm in inference form, ``x * scale + bias`` per channel: the importer folds torch's
    running mean and variance, eps and affine weight and bias into ``scale`` and ``bias``."""

    def __init__(self, channels: int):
        self.scale = nnx.Param(jnp.ones((channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.scale[...] + self.bias[...]


class Identity(nnx.Module):
    """No normalisation."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def norm(kind: str, channels: int) -> nnx.Module:
    """The normalisation layer ``kind`` ("instance", "batch" or "none") for ``channels`` channels."""
    layers = {"instance": InstanceNorm, "batch": lambda: FrozenBatchNorm(channels), "none": Identity}
    if kind not in layers:
        raise ValueError(f"unknown norm {kind!r}: choose one of {sorted(layers)}")
    return layers[kind]()


_norm = norm  # the blocks' ``norm`` argument (a kind) shadows the factory


class Projection(nnx.Module):
    """The shortcut of a block that changes resolution or width: a strided 1x1 convolution and a norm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str, *, rngs: nnx.Rngs):
        self.conv = conv2d(in_channels, out_channels, 1, stride=stride, rngs=rngs)
        self.norm = _norm(norm, out_channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.conv(x))


def shortcut(in_channels: int, out_channels: int, stride: int, norm: str, rngs: nnx.Rngs) -> Projection | None:
    """A projection where the block changes resolution or width, else ``None`` (the identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return Projection(in_channels, out_channels, stride, norm, rngs=rngs)


class ResidualBlock(nnx.Module):
    """Two 3x3 conv-norm-ReLUs (the first strided) and a ReLU after the skip connection:
    ``(..., h, w, in) -> (..., ceil(h / stride), ceil(w / stride), out)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str, *, rngs: nnx.Rngs,
                 bias: bool = True):
        self.conv1 = conv2d(in_channels, out_channels, 3, stride=stride, bias=bias, rngs=rngs)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = conv2d(out_channels, out_channels, 3, bias=bias, rngs=rngs)
        self.norm2 = _norm(norm, out_channels)
        self.downsample = shortcut(in_channels, out_channels, stride, norm, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = jax.nn.relu(self.norm2(self.conv2(y)))
        return jax.nn.relu((x if self.downsample is None else self.downsample(x)) + y)


class BottleneckBlock(nnx.Module):
    """1x1, strided 3x3 and 1x1 conv-norm-ReLUs through ``out // 4`` channels, and a ReLU after the
    skip connection: ``(..., h, w, in) -> (..., ceil(h / stride), ceil(w / stride), out)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str, *, rngs: nnx.Rngs,
                 bias: bool = True):
        mid = out_channels // 4
        self.conv1 = conv2d(in_channels, mid, 1, bias=bias, rngs=rngs)
        self.norm1 = _norm(norm, mid)
        self.conv2 = conv2d(mid, mid, 3, stride=stride, bias=bias, rngs=rngs)
        self.norm2 = _norm(norm, mid)
        self.conv3 = conv2d(mid, out_channels, 1, bias=bias, rngs=rngs)
        self.norm3 = _norm(norm, out_channels)
        self.downsample = shortcut(in_channels, out_channels, stride, norm, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = jax.nn.relu(self.norm2(self.conv2(y)))
        y = jax.nn.relu(self.norm3(self.conv3(y)))
        return jax.nn.relu((x if self.downsample is None else self.downsample(x)) + y)


BLOCKS = {"residual": ResidualBlock, "bottleneck": BottleneckBlock}


def _stem(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv(x)``; on CPU a 32-channel stem is computed as two 16-channel halves, the same numbers:
    XLA:CPU (jax 0.10) runs the 7x7 stride-2 convolution from 3 to 32 channels about 4x slower than
    one to 16 (18 ms against 3.8 ms at 368x496; 48 or 64 outputs are not affected), which made the
    stems a tenth of raft-small's forward time."""
    if conv.out_features != 32 or jax.default_backend() != "cpu":
        return conv(x)
    dtype = conv.dtype or jnp.result_type(x, conv.kernel[...])  # the conv's compute dtype, as conv(x) casts
    lead, image = x.shape[:-3], x.reshape((-1,) + x.shape[-3:]).astype(dtype)
    halves = [jax.lax.conv_general_dilated(image, conv.kernel[..., half].astype(dtype), conv.strides, conv.padding,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
              for half in (slice(0, 16), slice(16, 32))]
    y = jnp.concatenate(halves, -1) + (0.0 if conv.bias is None else conv.bias[...].astype(dtype))
    return y.reshape(lead + y.shape[1:])


class Encoder(nnx.Module):
    """torchvision's ``FeatureEncoder``: ``(..., h, w, in_channels) -> (..., ceil(h / 8), ceil(w / 8), widths[4])``.

    A 7x7 stride-2 conv-norm-ReLU stem to ``widths[0]``, then three stages of two ``block``s
    ("residual" or "bottleneck") to ``widths[1..3]`` (the first block of each stage strided by
    ``strides``: 1, 2, 2), then a 1x1 convolution to ``widths[4]``. ``bias=False`` drops the biases of
    the stem and the blocks' convolutions (GMFlow's backbone); the shortcut projections and the head
    keep theirs. ``strides=(1, 2, 1)`` stops at 1/4 (GMFlow with refinement).
    """

    def __init__(self, block: str, widths: tuple[int, ...], norm: str, *, rngs: nnx.Rngs, in_channels: int = 3,
                 bias: bool = True, strides: tuple[int, int, int] = (1, 2, 2)):
        if block not in BLOCKS or len(widths) != 5:
            raise ValueError(f"need block in {sorted(BLOCKS)} and 5 widths, got {block!r} and {widths}")
        make = lambda a, b, stride: BLOCKS[block](a, b, stride, norm, rngs=rngs, bias=bias)
        stage = lambda a, b, stride: nnx.List([make(a, b, stride), make(b, b, 1)])
        self.stem_conv = conv2d(in_channels, widths[0], 7, stride=2, bias=bias, rngs=rngs)
        self.stem_norm = _norm(norm, widths[0])
        self.layer1 = stage(widths[0], widths[1], strides[0])
        self.layer2 = stage(widths[1], widths[2], strides[1])
        self.layer3 = stage(widths[2], widths[3], strides[2])
        self.head = conv2d(widths[3], widths[4], 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_norm(_stem(self.stem_conv, x)))
        for block in [*self.layer1, *self.layer2, *self.layer3]:
            x = block(x)
        return self.head(x)
