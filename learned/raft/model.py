"""RAFT as an unrolled solver: which part of the network is which operator.

* data term (``CorrelationData``): the feature encoder, compared across frames by an all-pairs
  correlation pyramid (or its on-the-fly twin); its lookup around ``x + flow`` is the warp.
* step operator (``RaftUpdate``): motion encoder + tied-weight (Sep)ConvGRU + flow head, with the
  context encoder's output as its per-image context and the GRU's hidden state as its state;
  ``readout`` upsamples the 1/8-resolution flow (convex combination, or bilinear for small).
* gradient mode: ``Truncated`` is RAFT's ``coords1.detach()`` between iterations.
* no coarse-to-fine of the field: one solve at 1/8 resolution (``Raft``).

Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow", ECCV 2020. The
architectures and the sampling conventions match torchvision's ``raft_large`` / ``raft_small``,
whose weights ``unroll convert`` imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from learned.nets import ConvGRU, normalise_image
from learned.padding import crop, pad, padding
from learned.raft.correlation import BACKENDS
from learned.raft.encoders import Encoder
from learned.raft.update import FlowHead, MaskPredictor, MotionEncoder, SepConvGRU, UpdateBlock
from learned.raft.upsample import bilinear_upsample, convex_upsample
from unroll.energy import Energy
from unroll.gradients import AbstractGradientMode
from unroll.operators import AbstractDataTerm, AbstractStep
from unroll.solver import Solution, UnrolledSolver, resize_flow

#: RAFT works at 1/8 of the input resolution.
FACTOR = 8


@dataclass(frozen=True)
class Variant:
    """The published sizes of one RAFT model."""

    block: str
    feature_widths: tuple[int, ...]
    context_widths: tuple[int, ...]
    context_norm: str
    radius: int
    corr_layers: tuple[int, ...]
    flow_layers: tuple[int, ...]
    motion_channels: int
    hidden: int
    separable_gru: bool
    head_hidden: int
    convex_upsampling: bool


VARIANTS: dict[str, Variant] = {
    "raft": Variant("residual", (64, 64, 96, 128, 256), (64, 64, 96, 128, 256), "batch", 4,
                    (256, 192), (128, 64), 128, 128, True, 256, True),
    "raft-small": Variant("bottleneck", (32, 32, 64, 96, 128), (32, 32, 64, 96, 160), "none", 3,
                          (96,), (64, 32), 82, 96, False, 128, False),
}


def pixel_grid(shape: tuple[int, int]) -> jax.Array:
    """``(h, w, 2)`` pixel coordinates ``(x, y)``."""
    y, x = jnp.meshgrid(jnp.arange(shape[0], dtype=jnp.float32), jnp.arange(shape[1], dtype=jnp.float32),
                        indexing="ij")
    return jnp.stack([x, y], -1)


class CorrelationData(AbstractDataTerm):
    """RAFT's data term: learned features compared by correlation at every displacement.

    ``linearize`` builds the correlation pyramid once (it does not depend on the flow); ``lookup``
    reads the window around ``x + flow`` on every level (RAFT's "lookup", the warp of this scaffold).
    The energy is the negative feature correlation at the flow; it has no Gauss-Newton curvature,
    so only learned steps can minimise it.
    """

    def __init__(self, encoder: Encoder, correlation: nnx.Module):
        self.encoder = encoder
        self.correlation = correlation

    def features(self, frame: jax.Array) -> jax.Array:
        """``(H, W, 3)`` frame scaled to [-1, 1] -> ``(H/8, W/8, d)`` features."""
        return self.encoder(frame)

    def linearize(self, features1, features2_warped, valid, flow0):
        return self.correlation.build(features1, features2_warped)

    def lookup(self, evidence, flow: jax.Array) -> jax.Array:
        """``(h, w, levels * (2r+1)^2)`` correlations around ``x + flow`` ``(h, w, 2)``."""
        return self.correlation.lookup(evidence, pixel_grid(flow.shape[:2]) + flow)

    def energy(self, evidence, flow):
        r = self.correlation.radius
        return -self.lookup(evidence, flow)[..., r * (2 * r + 1) + r]  # the window's centre, level 0

    def curvature(self, evidence, flow):
        raise NotImplementedError("the correlation energy has no Gauss-Newton curvature; RAFT's step is learned")


class RaftUpdate(AbstractStep):
    """RAFT's update operator: ``w <- w + head(GRU(h, [context, motion(w, lookup(w))]))``.

    The state is the GRU's hidden state, initialised from the context encoder (``tanh`` of its
    first ``hidden`` channels; ``relu`` of the rest is the context read at every iteration).
    """

    def __init__(self, context_encoder: Encoder, update: UpdateBlock, mask: MaskPredictor | None, hidden: int):
        self.context_encoder = context_encoder
        self.update = update
        self.mask = mask
        self.hidden = hidden

    def context(self, image):
        """``(H, W, 3)`` frame 1 in [-1, 1] -> (initial hidden state, context), both at 1/8."""
        net = self.context_encoder(image)
        return jnp.tanh(net[..., :self.hidden]), jax.nn.relu(net[..., self.hidden:])

    def init_state(self, energy, evidence, flow):
        return evidence["step"][0]

    def __call__(self, energy, evidence, flow, iteration, state):
        corr = energy.data.lookup(evidence["data"], flow)
        hidden, delta = self.update(state, evidence["step"][1], corr, flow)
        return flow + delta, hidden

    def readout(self, flow, state):
        """The full-resolution flow ``(8h, 8w, 2)`` of a 1/8-resolution iterate."""
        if self.mask is None:
            return bilinear_upsample(flow, FACTOR)
        return convex_upsample(flow, self.mask(state), FACTOR)


class Raft(nnx.Module):
    """RAFT: features and context at 1/8, ``solver.num_iters`` updates, upsampling by the step.

    Frames are ``(h, w, 3)`` on the 0..255 scale, of any size: they are scaled to [-1, 1] and
    padded (edge replication) to multiples of 8, and the flow is cropped back.

    Args:
        solver: an ``UnrolledSolver`` of a ``CorrelationData`` energy and a ``RaftUpdate`` step.
        pad_mode: ``sintel`` (centred) or ``kitti`` (bottom) padding.
    """

    def __init__(self, solver: UnrolledSolver, pad_mode: str = "sintel"):
        self.solver = solver
        self.pad_mode = pad_mode

    def __call__(self, frame1: jax.Array, frame2: jax.Array, flow_init: jax.Array | None = None) -> Solution:
        """Flow ``(h, w, 2)`` from ``frame1`` to ``frame2``, warm-started from ``flow_init`` ``(h, w, 2)``."""
        pads = padding(frame1.shape[:2], FACTOR, self.pad_mode)
        image1, image2 = pad(normalise_image(frame1), pads), pad(normalise_image(frame2), pads)
        energy, step = self.solver.energy, self.solver.step
        features1, features2 = energy.data.features(image1), energy.data.features(image2)
        low = features1.shape[:2]
        flow0 = jnp.zeros(low + (2,), jnp.float32) if flow_init is None else resize_flow(pad(flow_init, pads), low)
        context = energy.context(features1) | {"step": step.context(image1)}
        evidence = energy.linearize(features1, features2, None, flow0, context)
        solution = self.solver(evidence, flow0)
        flow = crop(step.readout(solution.flow, solution.state), pads)
        trajectory = None if solution.trajectory is None else crop(solution.trajectory, pads)
        return Solution(flow, trajectory)


def feature_encoder(variant: str, *, rngs: nnx.Rngs) -> Encoder:
    """The feature encoder of ``variant`` (instance norm): ``(H, W, 3) -> (H/8, W/8, 256 or 128)``."""
    v = VARIANTS[variant]
    return Encoder(v.block, v.feature_widths, "instance", rngs=rngs)


def context_encoder(variant: str, *, rngs: nnx.Rngs) -> Encoder:
    """The context encoder of ``variant``: the GRU's initial hidden state and the context, stacked."""
    v = VARIANTS[variant]
    return Encoder(v.block, v.context_widths, v.context_norm, rngs=rngs)


def update_block(variant: str, corr_levels: int = 4, radius: int = 0, *, rngs: nnx.Rngs) -> UpdateBlock:
    """Motion encoder, GRU and flow head of ``variant`` for a lookup of ``corr_levels`` levels of
    ``radius`` (0: the variant's)."""
    v = VARIANTS[variant]
    corr = corr_levels * (2 * (radius or v.radius) + 1) ** 2
    inputs = v.context_widths[-1] - v.hidden + v.motion_channels
    gru = SepConvGRU(v.hidden, inputs, rngs=rngs) if v.separable_gru else ConvGRU(v.hidden, inputs, rngs=rngs)
    return UpdateBlock(MotionEncoder(corr, v.corr_layers, v.flow_layers, v.motion_channels, rngs=rngs), gru,
                       FlowHead(v.hidden, v.head_hidden, rngs=rngs))


def mask_predictor(variant: str, *, rngs: nnx.Rngs) -> MaskPredictor | None:
    """The convex-upsampling mask head of ``variant`` (None: bilinear upsampling)."""
    v = VARIANTS[variant]
    return MaskPredictor(v.hidden, 256, rngs=rngs) if v.convex_upsampling else None


def raft(variant: str, num_iters: int, gradient: AbstractGradientMode, *, rngs: nnx.Rngs,
         keep_trajectory: bool = False, unroll: bool = False, correlation: str = "all-pairs",
         corr_levels: int = 4, corr_radius: int = 0, pad_mode: str = "sintel") -> Raft:
    """The published ``raft`` or ``raft-small`` network as a ``Raft`` solver.

    ``correlation``: ``all-pairs`` (the pooled volume) or ``on-the-fly`` (same numbers, memory
    linear in the pixels); ``corr_radius`` 0 keeps the variant's (4, or 3 for small).
    """
    radius = corr_radius or VARIANTS[variant].radius
    data = CorrelationData(feature_encoder(variant, rngs=rngs), BACKENDS[correlation](corr_levels, radius))
    step = RaftUpdate(context_encoder(variant, rngs=rngs), update_block(variant, corr_levels, radius, rngs=rngs),
                      mask_predictor(variant, rngs=rngs), VARIANTS[variant].hidden)
    return Raft(UnrolledSolver(Energy(data), step, num_iters, gradient, keep_trajectory, unroll), pad_mode)
