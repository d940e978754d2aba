"""PWC-Net as the scaffold's coarse-to-fine solver with learned operators.

* features (``AbstractDataTerm.features``) -> a learned 6-level feature pyramid (``FeaturePyramid``),
  shared by both frames, in place of the classical blurred image pyramid.
* warp -> the core's ``BilinearWarp`` of frame-2 features by the upsampled flow of the level
  above (``PWCNet.warp_features``), as ``CoarseToFine`` warps before each linearisation.
* cost volume / linearisation -> ``local_correlation`` with search range 4 (81 channels).
* update (step operator) -> one per-level DenseNet flow estimator (``FlowEstimator``), a single
  learned step per level that predicts the flow itself (not an increment), and the dilated
  context network (``ContextNetwork``) as the last refinement, at 1/4.
* coarse-to-fine -> PWC's pyramid: levels 6 (1/64) to 2 (1/4), flow and estimator features
  carried down by learned deconvolutions; one warp per level.

Sun, Yang, Liu & Kautz, "PWC-Net: CNNs for Optical Flow Using Pyramid, Warping, and Cost
Volume", CVPR 2018. Layers, channel orders and scalings follow ``PWCDCNet`` of NVlabs/PWC-Net
(``PyTorch/models/PWCNet.py``), whose released weights it could import: torch conv weights
``(out, in, kh, kw)`` -> ``kernel = w.transpose(2, 3, 1, 0)``; transposed convs ``(in, out, 4, 4)``
-> ``kernel = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)``; the unused ``deconv2`` is skipped.
With random weights copied over, the five level estimates match the reference's (run in torch,
warp mask band below aside) to float32 rounding.

Differences from the reference: frames are padded, not resized, to multiples of 64; the warp
drops every sample outside frame 2, where the reference (thresholding a warped ones image at
0.9999) keeps those less than 1e-4 px outside, scaled by their in-image bilinear weight; and
the transposed convolutions' He initialisation uses their true fan-in (torch's counts the
output channels). The published "8.75 M" parameters are ``PWCDCNet_old`` (no ``conv{l}aa``).
"""

from __future__ import annotations

from itertools import accumulate

import jax
import jax.numpy as jnp
from flax import nnx

from learned.local_correlation import local_correlation
from learned.nets import leaky_relu
from learned.padding import crop, pad, padding
from unroll.solver import Solution, resize_flow
from unroll.warp import BilinearWarp

#: Frames are padded to multiples of 2**6: the coarsest level is 1/64.
FACTOR = 64
#: The estimators predict flow / 20 in pixels of the input: flow at level l (1/2**l) in that
#: level's pixels is the prediction times 20 / 2**l (the reference's 0.625, 1.25, 2.5, 5).
FLOW_SCALE = 20.0
SEARCH_RANGE = 4
PYRAMID_WIDTHS = (16, 32, 64, 96, 128, 196)
ESTIMATOR_WIDTHS = (128, 128, 96, 64, 32)
#: ``(width, dilation)`` of the context network's convolutions (a 2-channel one follows).
CONTEXT_LAYERS = ((128, 1), (128, 2), (128, 4), (96, 8), (64, 16), (32, 1))
#: Estimated levels, coarse to fine.
LEVELS = (6, 5, 4, 3, 2)

#: The reference's ``kaiming_normal(mode="fan_in")`` (fan-in of every layer's inputs).
he_normal = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def conv(in_features: int, out_features: int, *, rngs: nnx.Rngs, stride: int = 1, dilation: int = 1) -> nnx.Conv:
    """A biased 3x3 convolution padded like torch's ``Conv2d(padding=dilation)``."""
    return nnx.Conv(in_features, out_features, (3, 3), strides=stride, kernel_dilation=dilation,
                    padding=[(dilation, dilation)] * 2, kernel_init=he_normal, rngs=rngs)


def deconv(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.ConvTranspose:
    """``(h, w, in) -> (2h, 2w, out)``: torch's ``ConvTranspose2d(kernel_size=4, stride=2, padding=1)``
    (a convolution of the 2x-dilated input padded by ``4 - 1 - 1`` with the flipped torch kernel)."""
    return nnx.ConvTranspose(in_features, out_features, (4, 4), strides=2, padding=[(2, 2)] * 2,
                             kernel_init=he_normal, rngs=rngs)


def to_network(frame: jax.Array) -> jax.Array:
    """``(h, w, 3)`` RGB on 0..255 -> BGR in [0, 1], the reference's input (OpenCV channel order)."""
    return frame[..., ::-1] / 255.0


class FeaturePyramid(nnx.Module):
    """``(..., H, W, 3) -> [(..., H/2, W/2, 16), ..., (..., H/64, W/64, 196)]``, finest first: per level a
    stride-2 convolution and two more (the reference's ``conv{l}a``, ``conv{l}aa``, ``conv{l}b``)."""

    def __init__(self, *, rngs: nnx.Rngs):
        widths = (3,) + PYRAMID_WIDTHS
        self.levels = nnx.List([
            nnx.List([conv(a, b, stride=2, rngs=rngs), conv(b, b, rngs=rngs), conv(b, b, rngs=rngs)])
            for a, b in zip(widths, widths[1:])])

    def __call__(self, image: jax.Array) -> list[jax.Array]:
        features = []
        for layers in self.levels:
            for layer in layers:
                image = leaky_relu(layer(image))
            features.append(image)
        return features


class FlowEstimator(nnx.Module):
    """One level's DenseNet: ``x <- [leaky(conv(x)), x]`` for widths 128, 128, 96, 64, 32, then a
    2-channel convolution. ``(h, w, in) -> (flow / 20 (h, w, 2), features (h, w, in + 448))``."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        inputs = list(accumulate(ESTIMATOR_WIDTHS, initial=in_features))
        self.layers = nnx.List([conv(a, b, rngs=rngs) for a, b in zip(inputs, ESTIMATOR_WIDTHS)])
        self.predict = conv(inputs[-1], 2, rngs=rngs)
        self.out_features = inputs[-1]

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for layer in self.layers:
            x = jnp.concatenate([leaky_relu(layer(x)), x], -1)
        return self.predict(x), x


class ContextNetwork(nnx.Module):
    """Dilated convolutions (dilations 1, 2, 4, 8, 16, 1) on the last estimator's features
    ``(h, w, in)``: a flow / 20 residual ``(h, w, 2)``."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        widths = (in_features,) + tuple(w for w, _ in CONTEXT_LAYERS)
        self.layers = nnx.List([conv(a, b, dilation=d, rngs=rngs)
                                for a, b, (_, d) in zip(widths, widths[1:], CONTEXT_LAYERS)])
        self.predict = conv(widths[-1], 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = leaky_relu(layer(x))
        return self.predict(x)


class PWCNet(nnx.Module):
    """PWC-Net (``PWCDCNet``): 9,374,274 parameters.

    Frames are unbatched ``(h, w, 3)`` RGB on the 0..255 scale (``jax.vmap`` for batches), of any
    size: they are converted to BGR in [0, 1] (``to_network``), replicate-padded (centred, by
    ``learned.padding``) to multiples of 64 (the reference resizes instead), and the flow is
    cropped back. The 1/4-resolution estimate is upsampled bilinearly x4 (pixel-centre alignment,
    as the reference's ``cv2.resize``); its values, flow / 20 in input pixels, are only scaled by 20.

    ``flow_init`` is ignored: the coarsest estimator sees only the cost volume, not a flow, and
    predicts the flow itself, so there is no natural place for a warm start.

    Args:
        keep_trajectory: also return the five level estimates, coarse to fine.
    """

    def __init__(self, *, rngs: nnx.Rngs, keep_trajectory: bool = False):
        self.keep_trajectory = keep_trajectory
        self.pyramid = FeaturePyramid(rngs=rngs)
        self.warp = BilinearWarp()
        cost = (2 * SEARCH_RANGE + 1) ** 2
        inputs = [cost] + [cost + PYRAMID_WIDTHS[level - 1] + 4 for level in LEVELS[1:]]
        self.estimators = nnx.List([FlowEstimator(n, rngs=rngs) for n in inputs])
        self.upsample_flow = nnx.List([deconv(2, 2, rngs=rngs) for _ in LEVELS[:-1]])
        self.upsample_features = nnx.List([deconv(e.out_features, 2, rngs=rngs) for e in self.estimators[:-1]])
        self.context = ContextNetwork(self.estimators[-1].out_features, rngs=rngs)

    def warp_features(self, features: jax.Array, flow: jax.Array) -> jax.Array:
        """Frame-2 ``features`` ``(h, w, c)`` sampled bilinearly at ``x + flow`` (``(h, w, 2)``, in
        this level's pixels; pixel centres at integers, as the reference's ``grid_sample`` on its
        ``align_corners=True`` grid); zero where the sample leaves the image (the reference's mask)."""
        warped, valid = self.warp(features, flow)
        return jnp.where(valid[..., None], warped, 0.0)

    def estimates(self, image1: jax.Array, image2: jax.Array) -> list[jax.Array]:
        """The flow / 20 ``(H/2**l, W/2**l, 2)`` of levels 6, ..., 2 for network inputs ``(H, W, 3)``
        (``H``, ``W`` multiples of 64); the last includes the context network's refinement."""
        pyramid = self.pyramid(jnp.stack([image1, image2]))  # both frames at once
        cost = lambda f1, f2: leaky_relu(local_correlation(f1, f2, SEARCH_RANGE))
        f1, f2 = pyramid[LEVELS[0] - 1]
        flow, x = self.estimators[0](cost(f1, f2))
        estimates = [flow]
        for i, level in enumerate(LEVELS[1:], start=1):
            up_flow, up_features = self.upsample_flow[i - 1](flow), self.upsample_features[i - 1](x)
            f1, f2 = pyramid[level - 1]
            warped = self.warp_features(f2, up_flow * (FLOW_SCALE / 2 ** level))
            flow, x = self.estimators[i](jnp.concatenate([cost(f1, warped), f1, up_flow, up_features], -1))
            estimates.append(flow)
        estimates[-1] = flow + self.context(x)
        return estimates

    def __call__(self, frame1: jax.Array, frame2: jax.Array, flow_init: jax.Array | None = None) -> Solution:
        """Flow ``(h, w, 2)`` in pixels from ``frame1`` to ``frame2``; the trajectory ``(5, h, w, 2)``
        holds the level estimates, coarse to fine, each resized to ``(h, w)`` (the last is the flow)."""
        pads = padding(frame1.shape[:2], FACTOR)
        image1, image2 = pad(to_network(frame1), pads), pad(to_network(frame2), pads)
        estimates = self.estimates(image1, image2)
        size = image1.shape[:2]
        full = lambda estimate, level: crop(resize_flow(estimate * (FLOW_SCALE / 2 ** level), size), pads)
        flow = full(estimates[-1], LEVELS[-1])
        trajectory = None
        if self.keep_trajectory:
            trajectory = jnp.stack([full(e, level) for e, level in zip(estimates[:-1], LEVELS)] + [flow])
        return Solution(flow, trajectory)
