"""GMFlow without refinement (Xu, Zhang, Cai, Rezatofighi & Tao, "GMFlow: Learning Optical Flow
via Global Matching", CVPR 2022), as the reference haofeixu/gmflow's ``GMFlow`` with
``num_scales=1, upsample_factor=8, attn_splits_list=[2], corr_radius_list=[-1],
prop_radius_list=[-1]``: 4,680,288 parameters.

In the scaffold's terms:

* features: a CNN backbone (``backbone``) to 1/8 resolution, then a transformer
  (``FeatureTransformer``) whose cross-attention lets each frame's features see the other's.
* cost volume / data term: the global correlation of every pixel of frame 1 with every pixel of
  frame 2, ``<f1, f2> / sqrt(c)``: no window, no warp.
* update: one step, not an iteration: the softmax over frame 2 of each pixel's correlations
  gives the expected match (``global_matching``), then self-attention on frame 1's features
  propagates the flow into occluded and textureless areas (``FlowPropagation``); the readout
  is RAFT's convex upsampling x8 with a mask predicted from the flow and the features.
* coarse-to-fine: none at 1/8 (the reference's optional refinement at 1/4 is left out).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from learned.gmflow.backbone import backbone
from learned.gmflow.matching import FlowPropagation, global_matching
from learned.gmflow.transformer import FeatureTransformer, add_position
from learned.padding import crop, pad, padding
from learned.raft.update import MaskPredictor
from learned.raft.upsample import bilinear_upsample, convex_upsample
from unroll.solver import Solution

#: features at 1/8 resolution, 128 channels; attention in 2 x 2 windows
FACTOR, CHANNELS, SPLITS = 8, 128, 2
#: ImageNet statistics of RGB on [0, 1]
MEAN, STD = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])


def normalise(frame: jax.Array) -> jax.Array:
    """A ``(h, w, 3)`` RGB frame on 0..255 to ImageNet-normalised values, as the reference."""
    return (frame / 255.0 - MEAN) / STD


class GMFlow(nnx.Module):
    """GMFlow at 1/8: backbone, transformer, global matching, propagation, convex upsampling.

    Frames are ``(h, w, 3)`` RGB on the 0..255 scale, of any size: they are normalised with the
    ImageNet statistics and padded (edge replication) to multiples of 16, so that the 1/8 features
    split into 2 x 2 windows (the reference's ``padding_factor`` 16 for this model), and the flow is
    cropped back.

    Args:
        keep_trajectory: also return the trajectory ``(2, h, w, 2)``: the global matching's flow
            (upsampled bilinearly) and the propagated flow (upsampled convexly, the final flow), the
            two predictions of the reference's training loss.
        pad_mode: ``sintel`` (centred) or ``kitti`` (bottom) padding.
    """

    def __init__(self, *, rngs: nnx.Rngs, keep_trajectory: bool = False, pad_mode: str = "sintel"):
        self.backbone = backbone(CHANNELS, rngs=rngs)
        self.transformer = FeatureTransformer(CHANNELS, rngs=rngs)
        self.propagation = FlowPropagation(CHANNELS, rngs=rngs)
        self.upsampler = MaskPredictor(2 + CHANNELS, 256, factor=FACTOR, multiplier=1.0, rngs=rngs)
        self.keep_trajectory = keep_trajectory
        self.pad_mode = pad_mode

    def __call__(self, frame1: jax.Array, frame2: jax.Array, flow_init: jax.Array | None = None) -> Solution:
        """Flow ``(h, w, 2)`` from ``frame1`` to ``frame2``. ``flow_init`` is ignored: GMFlow
        matches globally and has nothing to warm-start."""
        pads = padding(frame1.shape[:2], FACTOR * SPLITS, self.pad_mode)
        frames = pad(normalise(jnp.stack([frame1, frame2])), pads)
        features = self.transformer(add_position(self.backbone(frames), SPLITS), SPLITS)
        matched = global_matching(features[0], features[1])
        flow = self.propagation(features[0], jax.lax.stop_gradient(matched))  # the reference's flow.detach()
        mask = self.upsampler(jnp.concatenate([flow, features[0]], -1))
        final = crop(convex_upsample(flow, mask, FACTOR), pads)
        if not self.keep_trajectory:
            return Solution(final, None)
        return Solution(final, jnp.stack([crop(bilinear_upsample(matched, FACTOR), pads), final]))
