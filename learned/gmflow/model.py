"""GMFlow (Xu, Zhang, Cai, Rezatofighi & Tao, "GMFlow: Learning Optical Flow via Global Matching",
CVPR 2022), as the reference haofeixu/gmflow's ``GMFlow`` in its two published configurations:

* ``gmflow``: ``num_scales=1, upsample_factor=8, attn_splits_list=[2], corr_radius_list=[-1],
  prop_radius_list=[-1]``: 4,680,288 parameters.
* ``gmflow-refine`` ("GMFlow with refinement"): ``num_scales=2, upsample_factor=4,
  attn_splits_list=[2, 8], corr_radius_list=[-1, 4], prop_radius_list=[-1, 1]``: 4,716,720
  parameters.

In the scaffold's terms:

* features: a CNN backbone (``backbone``) to 1/8 resolution (to 1/4 and then a shared-weight
  ``Trident`` convolution at strides 2 and 1 with refinement), then a transformer
  (``FeatureTransformer``) whose cross-attention lets each frame's features see the other's; the
  same transformer at every scale.
* cost volume / data term: at 1/8 the global correlation of every pixel of frame 1 with every
  pixel of frame 2, ``<f1, f2> / sqrt(c)``: no window, no warp; at 1/4 the correlation in a 9 x 9
  window of frame 2's features warped by the current flow.
* update: one step per scale, not an iteration: the softmax over frame 2 of each pixel's
  correlations gives the expected match (``global_matching``; at 1/4 ``local_matching``, a residual),
  then self-attention on frame 1's features propagates the flow into occluded and textureless areas
  (``FlowPropagation``, over all pixels at 1/8, a 3 x 3 window at 1/4); the readout is RAFT's convex
  upsampling from the finest scale with a mask predicted from the flow and the features.
* coarse-to-fine: with refinement, the 1/8 flow upsampled bilinearly to 1/4 (no gradient through it,
  as the reference's ``flow.detach()``) warps frame 2's features before the second scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from learned.gmflow.backbone import Trident, backbone
from learned.gmflow.matching import FlowPropagation, global_matching, local_matching
from learned.gmflow.transformer import FeatureTransformer, add_position
from learned.padding import crop, pad, padding
from learned.raft.update import MaskPredictor
from learned.raft.upsample import bilinear_upsample, convex_upsample
from unroll import image_ops
from unroll.solver import Solution

#: features of 128 channels
CHANNELS = 128
#: ImageNet statistics of RGB on [0, 1]
MEAN, STD = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])


@dataclass(frozen=True)
class Scale:
    """One scale of GMFlow: features at ``1 / factor``, attention in ``splits x splits`` windows,
    matching over all pixels (``corr_radius`` -1) or a ``(2 r + 1)**2`` window, propagation over all
    pixels (``prop_radius`` -1) or a ``(2 r + 1)**2`` window."""

    factor: int
    splits: int
    corr_radius: int
    prop_radius: int


#: The reference's published configurations, coarse to fine.
SCALES: dict[str, tuple[Scale, ...]] = {
    "gmflow": (Scale(8, 2, -1, -1),),
    "gmflow-refine": (Scale(8, 2, -1, -1), Scale(4, 8, 4, 1)),
}


def normalise(frame: jax.Array) -> jax.Array:
    """A ``(h, w, 3)`` RGB frame on 0..255 to ImageNet-normalised values, as the reference."""
    return (frame / 255.0 - MEAN) / STD


def warp(features: jax.Array, flow: jax.Array) -> jax.Array:
    """``(h, w, c)`` features sampled bilinearly at ``x + flow`` (``flow`` ``(h, w, 2)``), each
    corner outside the image counting 0: the reference's ``flow_warp`` (``grid_sample`` with zero
    padding), as a clamped sample of the features padded by one zero pixel."""
    x, y = image_ops.pixel_grid(*features.shape[:2])
    padded = jnp.pad(features, ((1, 1), (1, 1), (0, 0)))
    return image_ops.sample_bilinear(padded, x + 1 + flow[..., 0], y + 1 + flow[..., 1])


class GMFlow(nnx.Module):
    """GMFlow: backbone, transformer, matching and propagation per scale, convex upsampling.

    Frames are ``(h, w, 3)`` RGB on the 0..255 scale, of any size: they are normalised with the
    ImageNet statistics and padded (edge replication) so that every scale's features split into its
    windows (multiples of 16, or 32 with refinement: the reference's ``padding_factor``), and the
    flow is cropped back.

    Args:
        scales: the scales, coarse to fine (``SCALES``); without refinement, one at 1/8.
        keep_trajectory: also return the trajectory ``(2 * len(scales), h, w, 2)``: per scale the
            matched flow and the propagated flow, upsampled bilinearly, except the last, upsampled
            convexly (the final flow): the predictions of the reference's training loss.
        pad_mode: ``sintel`` (centred) or ``kitti`` (bottom) padding.
    """

    def __init__(self, *, rngs: nnx.Rngs, scales: tuple[Scale, ...] = SCALES["gmflow"],
                 keep_trajectory: bool = False, pad_mode: str = "sintel"):
        finest = scales[-1].factor
        self.backbone = backbone(CHANNELS, finest, rngs=rngs)
        self.trident = Trident(CHANNELS, rngs=rngs) if len(scales) > 1 else None
        self.transformer = FeatureTransformer(CHANNELS, rngs=rngs)
        self.propagation = FlowPropagation(CHANNELS, rngs=rngs)
        self.upsampler = MaskPredictor(2 + CHANNELS, 256, factor=finest, multiplier=1.0, rngs=rngs)
        self.scales = scales
        self.keep_trajectory = keep_trajectory
        self.pad_mode = pad_mode

    def features(self, frames: jax.Array) -> list[jax.Array]:
        """``(2, H, W, 3)`` normalised frames to the backbone's ``(2, H / factor, W / factor, 128)``
        features of each scale, coarse to fine."""
        features = self.backbone(frames)
        if self.trident is None:
            return [features]
        return self.trident(features, tuple(s.factor // self.scales[-1].factor for s in self.scales))

    def __call__(self, frame1: jax.Array, frame2: jax.Array, flow_init: jax.Array | None = None) -> Solution:
        """Flow ``(h, w, 2)`` from ``frame1`` to ``frame2``. ``flow_init`` is ignored: GMFlow
        matches globally and has nothing to warm-start."""
        pads = padding(frame1.shape[:2], math.lcm(*(s.factor * s.splits for s in self.scales)), self.pad_mode)
        frames = pad(normalise(jnp.stack([frame1, frame2])), pads)
        flow, predictions = None, []
        for i, (scale, features) in enumerate(zip(self.scales, self.features(frames))):
            if flow is not None:  # the coarser flow at this scale, frame 2's features warped by it
                flow = jax.lax.stop_gradient(bilinear_upsample(flow, 2))
                features = jnp.stack([features[0], warp(features[1], flow)])
            features = self.transformer(add_position(features, scale.splits), scale.splits)
            if scale.corr_radius < 0:
                matched = global_matching(features[0], features[1])
            else:
                matched = local_matching(features[0], features[1], scale.corr_radius)
            flow = matched if flow is None else flow + matched
            predictions.append(bilinear_upsample(flow, scale.factor))
            flow = self.propagation(features[0], jax.lax.stop_gradient(flow), scale.prop_radius)  # flow.detach()
            if i < len(self.scales) - 1:
                predictions.append(bilinear_upsample(flow, scale.factor))
        mask = self.upsampler(jnp.concatenate([flow, features[0]], -1))
        final = crop(convex_upsample(flow, mask, self.scales[-1].factor), pads)
        if not self.keep_trajectory:
            return Solution(final, None)
        return Solution(final, jnp.stack([crop(p, pads) for p in predictions] + [final]))
