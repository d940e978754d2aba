"""FlowFormer (Huang, Shi, Zhang, Wang, Cheung, Qin, Dai & Li, "FlowFormer: A Transformer Architecture
for Optical Flow", ECCV 2022) as RAFT's scaffold with another data term, in the reference
drinkingcoder/FlowFormer-Official's ``LatentCostFormer`` configuration ``cnet = fnet = "basicencoder"``,
``gma = False`` (its other keys at ``configs/default.py``): 9,242,224 parameters. The paper's model
(Twins-SVT encoders pretrained on ImageNet, GMA in the update) has 16.1 M.

* features: RAFT's feature encoder (instance norm, 256 channels, 1/8) and a bias-free 1x1
  convolution (the reference's ``channel_convertor``).
* cost volume: RAFT's all-pairs correlation ``<f1, f2> / sqrt(256)`` (the reference leaves out the
  ``sqrt(256)``: the same volume up to a scale that the bias-free convolution absorbs).
* cost encoding (data term): per pixel of frame 1, its cost map patchified and summarised by 8
  latent tokens, three AGT layers (``CostEncoder``); the lookup is RAFT's 9 x 9 window at the
  current flow plus a cross-attention query of the pixel's tokens there (``CostMemoryData``).
* iterative update (step): RAFT's ``RaftUpdate``: motion encoder, SepConvGRU, flow head, context
  from RAFT's context encoder (instance norm) and a 1x1 convolution; truncated gradient.
* readout: RAFT's convex 8x upsampling with a mask from the hidden state.

One difference in structure: the inter-cost-map attention is conditioned on frame 1's matching
features (the data term's own), where the reference uses its context encoder's output (also 256
channels, so the layer shapes agree).
"""

from __future__ import annotations

from flax import nnx

from learned.flowformer.cost_encoder import CostEncoder
from learned.flowformer.decoder import QUERY_CHANNELS, CostMemoryData, MemoryQuery
from learned.nets import conv2d
from learned.raft.correlation import AllPairsCorrelation
from learned.raft.encoders import Encoder
from learned.raft.model import CorrelationData, Raft, RaftUpdate
from learned.raft.update import FlowHead, MaskPredictor, MotionEncoder, SepConvGRU, UpdateBlock
from unroll.energy import Energy
from unroll.gradients import AbstractGradientMode
from unroll.solver import UnrolledSolver

#: RAFT's basic encoder widths (both encoders), the lookup radius, the GRU's hidden channels
WIDTHS, RADIUS, HIDDEN = (64, 64, 96, 128, 256), 4, 128


def encoder(*, rngs: nnx.Rngs, bias: bool) -> nnx.Sequential:
    """RAFT's residual encoder with instance norm and a 1x1 convolution: ``(H, W, 3) -> (H/8, W/8, 256)``."""
    return nnx.Sequential(Encoder("residual", WIDTHS, "instance", rngs=rngs),
                          conv2d(WIDTHS[-1], WIDTHS[-1], 1, bias=bias, rngs=rngs))


def flowformer(num_iters: int, gradient: AbstractGradientMode, *, rngs: nnx.Rngs, keep_trajectory: bool = False,
               unroll: bool = False, pad_mode: str = "sintel") -> Raft:
    """FlowFormer with RAFT's encoders, as a ``Raft`` solver of ``num_iters`` updates."""
    window = (2 * RADIUS + 1) ** 2
    correlation = CorrelationData(encoder(rngs=rngs, bias=False), AllPairsCorrelation(levels=1, radius=RADIUS))
    data = CostMemoryData(correlation, CostEncoder(WIDTHS[-1], rngs=rngs), MemoryQuery(window, rngs=rngs))
    update = UpdateBlock(MotionEncoder(QUERY_CHANNELS + window, (256, 192), (128, 64), 128, rngs=rngs),
                         SepConvGRU(HIDDEN, 2 * HIDDEN, rngs=rngs), FlowHead(HIDDEN, 256, rngs=rngs))
    step = RaftUpdate(encoder(rngs=rngs, bias=True), update, MaskPredictor(HIDDEN, 256, rngs=rngs), HIDDEN)
    return Raft(UnrolledSolver(Energy(data), step, num_iters, gradient, keep_trajectory, unroll), pad_mode)
