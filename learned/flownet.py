"""FlowNetS and FlowNetC as the scaffold: which part of the network is which operator.

* features: FlowNetC's siamese ``conv1``-``conv3`` (shared weights) turn each frame into 256
  channels at 1/8. FlowNetS has no separate features: its encoder sees both frames stacked as
  channels and has to learn the matching itself.
* cost volume (FlowNetC): the local correlation of the two feature maps over the displacements
  ``{-20, -18, ..., 20}^2`` at 1/8 (441 channels, motions up to 160 pixels of the input), next to
  ``conv_redir``'s 32 channels of frame-1 features; the contracting encoder continues to 1/64.
* coarse-to-fine: the refinement decoder predicts a flow at 1/64 and again on each finer scale up
  to 1/4, from the encoder's skip features, the deconvolved coarser features and the upsampled
  coarser flow. Unlike ``CoarseToFine``, nothing is warped between scales.
* update: none; one feed-forward pass (the trajectory is the per-scale predictions, coarse to
  fine). ``Stacked`` (FlowNet 2.0) adds the iterations: each network after the first refines the
  flow from frame 2 warped by it, one more unrolled iteration with a warp.

Dosovitskiy et al., "FlowNet: Learning Optical Flow with Convolutional Networks", ICCV 2015; Ilg
et al., "FlowNet 2.0: Evolution of Optical Flow Estimation with Deep Networks", CVPR 2017. The
layers are those of ClementPinard/FlowNetPytorch's ``flownets`` and ``flownetc`` (no batch norm),
on channels-last ``(..., h, w, c)`` arrays; predictions are the flow / ``DIV_FLOW`` in pixels of
the input at every scale, as that code trains them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from learned.local_correlation import local_correlation
from learned.nets import leaky_relu, normalise_image
from learned.padding import crop, pad, padding
from unroll.solver import Solution, resize_flow
from unroll.warp import BilinearWarp

#: The networks predict the flow divided by this.
DIV_FLOW = 20.0
#: Inputs are padded to multiples of the coarsest scale, 1/64.
MULTIPLE = 64
#: FlowNetC's correlation: displacements up to 20 feature pixels, every 2nd (21 x 21 = 441).
MAX_DISPLACEMENT, CORRELATION_STRIDE = 20, 2
#: Extra input channels of a refining network in ``Stacked``: warped frame 2, flow, brightness error.
REFINE_INPUTS = 6

#: torch's ``kaiming_normal_(w, 0.1)`` (fan in, LeakyReLU gain), FlowNetPytorch's initialisation.
KAIMING = nnx.initializers.variance_scaling(2 / (1 + 0.1 ** 2), "fan_in", "normal")


def per_image(fn: Callable, ndim: int) -> Callable:
    """``fn`` of unbatched ``(h, w, c)`` arrays, mapped over the leading axes of ``ndim``-d arrays."""
    for _ in range(ndim - 3):
        fn = jax.vmap(fn)
    return fn


def deconv2d(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.ConvTranspose:
    """torch's ``ConvTranspose2d(in, out, 4, stride=2, padding=1, bias=False)``:
    ``(..., h, w, in) -> (..., 2h, 2w, out)``."""
    return nnx.ConvTranspose(in_features, out_features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                             use_bias=False, transpose_kernel=True, kernel_init=KAIMING, rngs=rngs)


class Conv(nnx.Module):
    """A biased ``kernel`` convolution (torch's padding ``kernel // 2``) and a LeakyReLU(0.1):
    ``(..., h, w, in) -> (..., h / stride, w / stride, out)``."""

    def __init__(self, in_features: int, out_features: int, kernel: int = 3, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_features, out_features, (kernel, kernel), strides=stride, padding=kernel // 2,
                             kernel_init=KAIMING, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return leaky_relu(self.conv(x))


class Stem(nnx.Module):
    """``conv1``-``conv3``: ``(..., h, w, in)`` -> features at 1/4 ``(..., h/4, w/4, 128)`` and at
    1/8 ``(..., h/8, w/8, 256)``."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv(in_features, 64, 7, 2, rngs=rngs)
        self.conv2 = Conv(64, 128, 5, 2, rngs=rngs)
        self.conv3 = Conv(128, 256, 5, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out2 = self.conv2(self.conv1(x))
        return out2, self.conv3(out2)


class Contracting(nnx.Module):
    """``conv3_1``-``conv6_1``: ``(..., h/8, w/8, in)`` -> features at 1/8, 1/16, 1/32, 1/64
    (256, 512, 512, 1024 channels)."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.conv3_1 = Conv(in_features, 256, rngs=rngs)
        self.conv4, self.conv4_1 = Conv(256, 512, stride=2, rngs=rngs), Conv(512, 512, rngs=rngs)
        self.conv5, self.conv5_1 = Conv(512, 512, stride=2, rngs=rngs), Conv(512, 512, rngs=rngs)
        self.conv6, self.conv6_1 = Conv(512, 1024, stride=2, rngs=rngs), Conv(1024, 1024, rngs=rngs)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        out3 = self.conv3_1(x)
        out4 = self.conv4_1(self.conv4(out3))
        out5 = self.conv5_1(self.conv5(out4))
        return [out3, out4, out5, self.conv6_1(self.conv6(out5))]


class StackedEncoder(nnx.Module):
    """FlowNetS's encoder: the frames and any extra inputs stacked as channels,
    ``(..., h, w, 6 + extra)`` -> skip features at 1/4 ... 1/64 (128, 256, 512, 512, 1024 channels)."""

    def __init__(self, extra_inputs: int = 0, *, rngs: nnx.Rngs):
        self.stem = Stem(6 + extra_inputs, rngs=rngs)
        self.contracting = Contracting(256, rngs=rngs)

    def __call__(self, image1: jax.Array, image2: jax.Array, *extra: jax.Array) -> list[jax.Array]:
        out2, out3 = self.stem(jnp.concatenate([image1, image2, *extra], -1))
        return [out2, *self.contracting(out3)]


def correlation(f1: jax.Array, f2: jax.Array) -> jax.Array:
    """FlowNetC's cost volume ``(..., h, w, 441)`` of features ``(..., h, w, c)``: dot products
    divided by ``c``, as FlowNetPytorch's ``correlate`` (and Caffe's layer) normalise, then LeakyReLU."""
    corr = per_image(lambda a, b: local_correlation(a, b, MAX_DISPLACEMENT, CORRELATION_STRIDE), f1.ndim)
    return leaky_relu(corr(f1, f2))


class CorrelationEncoder(nnx.Module):
    """FlowNetC's encoder: a siamese ``Stem`` per frame ``(..., h, w, 3)``, the correlation of the
    1/8 features and ``conv_redir`` of frame 1's -> skip features at 1/4 (frame 1's) ... 1/64
    (128, 256, 512, 512, 1024 channels)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = Stem(3, rngs=rngs)
        self.conv_redir = Conv(256, 32, 1, rngs=rngs)
        displacements = (2 * MAX_DISPLACEMENT // CORRELATION_STRIDE + 1) ** 2
        self.contracting = Contracting(32 + displacements, rngs=rngs)

    def __call__(self, image1: jax.Array, image2: jax.Array) -> list[jax.Array]:
        out2a, out3a = self.stem(image1)
        _, out3b = self.stem(image2)
        stacked = jnp.concatenate([self.conv_redir(out3a), correlation(out3a, out3b)], -1)
        return [out2a, *self.contracting(stacked)]


class Decoder(nnx.Module):
    """The refinement decoder shared by FlowNetS and FlowNetC.

    ``skips``: encoder features finest first, ``(..., h/4, w/4, 128)`` ... ``(..., h/64, w/64, 1024)``.
    Returns the predictions coarse to fine, ``(..., h/64, w/64, 2)`` ... ``(..., h/4, w/4, 2)``:
    ``predict_flow`` of the coarsest features, then per finer scale of the concatenation
    ``[skip, deconv(coarser), upsampled coarser prediction]``.
    """

    def __init__(self, skip_widths: Sequence[int] = (128, 256, 512, 512, 1024),
                 deconv_widths: Sequence[int] = (64, 128, 256, 512), *, rngs: nnx.Rngs):
        predict = lambda width: nnx.Conv(width, 2, (3, 3), padding=1, use_bias=False, kernel_init=KAIMING, rngs=rngs)
        width = skip_widths[-1]
        predictors, deconvs, upsamplers = [predict(width)], [], []
        for skip, out in zip(reversed(skip_widths[:-1]), reversed(deconv_widths)):
            deconvs.append(deconv2d(width, out, rngs=rngs))
            upsamplers.append(deconv2d(2, 2, rngs=rngs))
            width = skip + out + 2
            predictors.append(predict(width))
        self.predict_flow = nnx.List(predictors)
        self.deconv = nnx.List(deconvs)
        self.upsample_flow = nnx.List(upsamplers)

    def __call__(self, skips: Sequence[jax.Array]) -> list[jax.Array]:
        x = skips[-1]
        predictions = [self.predict_flow[0](x)]
        for skip, deconv, upsample, predict in zip(reversed(skips[:-1]), self.deconv, self.upsample_flow,
                                                   self.predict_flow[1:]):
            x = jnp.concatenate([skip, leaky_relu(deconv(x)), upsample(predictions[-1])], -1)
            predictions.append(predict(x))
        return predictions


def to_pixels(prediction: jax.Array, size: tuple[int, int]) -> jax.Array:
    """A prediction ``(..., H/k, W/k, 2)`` (flow / ``DIV_FLOW`` in input pixels) resized bilinearly
    to the flow ``(..., H, W, 2)`` in pixels (torch's ``interpolate``, ``align_corners=False``)."""
    factor = size[0] // prediction.shape[-3]  # the level's pixels, which resize_flow scales by factor
    return per_image(lambda p: resize_flow(p, size), prediction.ndim)(DIV_FLOW / factor * prediction)


def upsampled(predictions: Sequence[jax.Array], size: tuple[int, int], every: bool) -> jax.Array:
    """``(..., n, H, W, 2)``: the finest prediction (``n = 1``), or all of them (``every``), in pixels at ``size``."""
    return jnp.stack([to_pixels(p, size) for p in (predictions if every else predictions[-1:])], -4)


def solution(flows: jax.Array, pads, keep_trajectory: bool) -> Solution:
    """The ``Solution`` of padded flows ``(..., n, H, W, 2)``, cropped: the last is the flow."""
    flows = crop(flows, pads)
    return Solution(flows[..., -1, :, :, :], flows if keep_trajectory else None)


def prepare(frame1: jax.Array, frame2: jax.Array):
    """Frames ``(..., h, w, 3)`` (0..255) scaled to [-1, 1] and padded, with their padding."""
    pads = padding(frame1.shape[-3:-1], MULTIPLE)
    return pad(normalise_image(frame1), pads), pad(normalise_image(frame2), pads), pads


class FlowNet(nnx.Module):
    """An encoder and the refinement decoder; ``FlowNetS`` and ``FlowNetC`` pick the encoder.

    Frames are ``(h, w, 3)`` on the 0..255 scale (or ``(..., h, w, 3)``), of any size: scaled to
    [-1, 1], padded (edge replication, centred) to multiples of 64, and the flow cropped back. The
    flow is the finest prediction (1/4) upsampled bilinearly, times ``DIV_FLOW``. With
    ``keep_trajectory`` the ``Solution``'s trajectory ``(5, h, w, 2)`` holds every scale's
    prediction so upsampled, coarse (1/64) to fine (1/4, the flow).
    """

    extra_inputs = 0

    def __init__(self, encoder: StackedEncoder | CorrelationEncoder, keep_trajectory: bool, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.decoder = Decoder(rngs=rngs)
        self.keep_trajectory = keep_trajectory

    def predict(self, image1: jax.Array, image2: jax.Array, *extra: jax.Array) -> list[jax.Array]:
        """Padded images ``(..., H, W, 3)`` in [-1, 1] and ``extra_inputs`` more channels ->
        predictions coarse to fine, ``(..., H/64, W/64, 2)`` ... ``(..., H/4, W/4, 2)``."""
        return self.decoder(self.encoder(image1, image2, *extra))

    def __call__(self, frame1: jax.Array, frame2: jax.Array, flow_init: jax.Array | None = None) -> Solution:
        """Flow ``(h, w, 2)`` from ``frame1`` to ``frame2``. ``flow_init`` is ignored: one pass
        estimates from scratch (``Stacked`` refines a flow)."""
        image1, image2, pads = prepare(frame1, frame2)
        flows = upsampled(self.predict(image1, image2), image1.shape[-3:-1], self.keep_trajectory)
        return solution(flows, pads, self.keep_trajectory)


class FlowNetS(FlowNet):
    """FlowNetS ("simple"): frames stacked as 6 channels (plus ``extra_inputs``, as a refining
    network of ``Stacked``). 38,675,536 parameters (38,694,352 with ``REFINE_INPUTS``)."""

    def __init__(self, *, rngs: nnx.Rngs, keep_trajectory: bool = False, extra_inputs: int = 0):
        super().__init__(StackedEncoder(extra_inputs, rngs=rngs), keep_trajectory, rngs=rngs)
        self.extra_inputs = extra_inputs


class FlowNetC(FlowNet):
    """FlowNetC ("correlation"): siamese features and their correlation. 39,174,320 parameters."""

    def __init__(self, *, rngs: nnx.Rngs, keep_trajectory: bool = False):
        super().__init__(CorrelationEncoder(rngs=rngs), keep_trajectory, rngs=rngs)


def brightness_error(image1: jax.Array, warped: jax.Array) -> jax.Array:
    """``(..., h, w, 1)``: the Euclidean norm over channels of ``image1 - warped`` (FlowNet2's
    ``ChannelNorm``; a tiny epsilon keeps its gradient finite where they agree)."""
    return jnp.sqrt(jnp.sum((image1 - warped) ** 2, -1, keepdims=True) + 1e-12)


class Stacked(nnx.Module):
    """FlowNet 2.0's stacking (FlowNet2-CS, -CSS) as unrolled iterations.

    The first network estimates the flow from the frames. Each next one, a ``FlowNetS`` built with
    ``extra_inputs=REFINE_INPUTS``, sees frame 1, frame 2, frame 2 warped backward by the current
    flow, the current flow / ``DIV_FLOW`` and the brightness error, all at the (padded) input
    resolution, and its flow is added to the current one. (FlowNet2's networks output the whole
    flow instead of a correction.) With ``keep_trajectory`` the trajectory is every network's
    per-scale flows in turn (5 per network), the last equal to the flow; the networks' own
    ``keep_trajectory`` is not used.
    """

    def __init__(self, networks: Sequence[FlowNet], *, keep_trajectory: bool = False):
        if not networks or networks[0].extra_inputs:
            raise ValueError("the first network must take the two frames alone (extra_inputs=0)")
        if any(net.extra_inputs != REFINE_INPUTS for net in networks[1:]):
            raise ValueError(f"refining networks must be FlowNetS(extra_inputs={REFINE_INPUTS})")
        self.networks = nnx.List(networks)
        self.keep_trajectory = keep_trajectory
        self.warp = BilinearWarp()

    def __call__(self, frame1: jax.Array, frame2: jax.Array, flow_init: jax.Array | None = None) -> Solution:
        """Flow ``(h, w, 2)`` from ``frame1`` to ``frame2``; a given ``flow_init`` ``(h, w, 2)``
        replaces the first network's estimate (that network is then skipped)."""
        image1, image2, pads = prepare(frame1, frame2)
        size = image1.shape[-3:-1]
        warp = per_image(lambda image, flow: self.warp(image, flow)[0], image1.ndim)
        if flow_init is None:
            steps = [upsampled(self.networks[0].predict(image1, image2), size, self.keep_trajectory)]
            flow = steps[0][..., -1, :, :, :]
        else:
            steps, flow = [], pad(flow_init, pads)
        for network in self.networks[1:]:
            warped = warp(image2, flow)
            delta = network.predict(image1, image2, warped, flow / DIV_FLOW, brightness_error(image1, warped))
            steps.append(flow[..., None, :, :, :] + upsampled(delta, size, self.keep_trajectory))
            flow = steps[-1][..., -1, :, :, :]
        flows = jnp.concatenate(steps, -4) if steps else flow[..., None, :, :, :]
        return solution(flows, pads, self.keep_trajectory)
