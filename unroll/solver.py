"""The unrolled solver and its coarse-to-fine driver.

``UnrolledSolver`` lays out a fixed number of step-operator iterations on one energy (one
pyramid level, one linearisation). ``CoarseToFine`` runs it over an image pyramid, warping
frame 2 by the current flow before each linearisation. Both are Flax NNX modules whose numbers
are whatever their operators hold, so the same code is a classical method or a network.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from unroll import image_ops
from unroll.energy import Energy
from unroll.gradients import AbstractGradientMode, Unrolled
from unroll.operators import AbstractPrefilter, AbstractStep, AbstractWarp, Evidence


class Solution(NamedTuple):
    """Result of a solve.

    Attributes:
        flow: ``(h, w, 2)`` final flow.
        trajectory: ``(n, h, w, 2)`` the flow after each iteration of the last (finest-level) stack
            (as the step operator reads it out, see ``AbstractStep.readout``), or None when the
            solver was built with ``keep_trajectory=False``.
        state: the step operator's final state (``UnrolledSolver`` only; None elsewhere).
    """

    flow: jax.Array
    trajectory: jax.Array | None
    state: object = None


class UnrolledSolver(nnx.Module):
    """``num_iters`` applications of ``step`` to ``energy``, as one ``jax.lax.scan``.

    Args:
        energy: the energy to minimise.
        step: the update operator.
        num_iters: iterations per solve (a static number: the stack is fixed).
        gradient: how the backward pass treats the stack (default: full unrolling).
        keep_trajectory: also return every intermediate flow, read out by the step (for sequence
            losses).
        unroll: lay the iterations out as straight-line code instead of a loop: a longer
            compile, but on CPU the gradients of convolutions inside loops are about 10x slower,
            so learned step operators train faster unrolled.
    """

    def __init__(self, energy: Energy, step: AbstractStep, num_iters: int,
                 gradient: AbstractGradientMode | None = None, keep_trajectory: bool = False,
                 unroll: bool = False):
        self.energy = energy
        self.step = step
        self.num_iters = num_iters
        self.gradient = gradient if gradient is not None else Unrolled()
        self.keep_trajectory = keep_trajectory
        self.unroll = unroll

    def context(self, features1: jax.Array) -> dict:
        """The flow-independent part of the evidence for frame 1's features ``(h, w, c)``: the
        energy's context and the step's (``"step"``). Compute it once per pyramid level and pass
        it to ``energy.linearize``."""
        return self.energy.context(features1) | {"step": self.step.context(features1)}

    def __call__(self, evidence: Evidence, flow0: jax.Array, num_iters: int | None = None) -> Solution:
        """Iterate from ``flow0`` ``(h, w, 2)`` on precomputed ``evidence`` (see ``Energy.linearize``)."""
        (flow, state), trajectory = self.gradient(
            lambda carry, i: self.step(self.energy, evidence, carry[0], i, carry[1]),
            (flow0, self.step.init_state(self.energy, evidence, flow0)),
            self.num_iters if num_iters is None else num_iters,
            (lambda carry: self.step.readout(*carry)) if self.keep_trajectory else None,
            lambda flow: self.energy.gradient(evidence, flow),
            self.unroll,
        )
        return Solution(flow, trajectory, state)


def resize_flow(flow: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resample a flow ``(h, w, 2)`` to ``size`` and rescale its vectors to the new pixel units."""
    h, w = flow.shape[:2]
    scale = jnp.array([size[1] / w, size[0] / h], dtype=flow.dtype)
    return image_ops.resize_bilinear(flow, size) * scale


class CoarseToFine(nnx.Module):
    """Coarse-to-fine estimation with warping, around an ``UnrolledSolver``.

    Level 0 is the input resolution; level ``k`` is ``scale**k`` times smaller. On each level,
    from the coarsest, it ``warps`` times: warps frame-2 features by the current flow,
    linearises the energy there, runs the solver, and optionally median-filters the flow
    (Sun, Roth & Black, "Secrets of optical flow estimation", CVPR 2010). The flow is then
    upsampled to the next finer level. With ``num_levels=1, warps=1`` it is a single-scale solve.

    Args:
        solver: the unrolled solver run at each linearisation.
        prefilter: pyramid blur (see ``AbstractPrefilter``).
        warp: backward warp of frame-2 features.
        num_levels: the most pyramid levels; fewer are used where an image would get smaller
            than ``min_size`` pixels.
        scale: size ratio between consecutive levels, in (0, 1).
        warps: linearisations per level.
        level_iters: solver iterations per linearisation for each level, finest first; levels
            beyond the tuple (or all, when empty) use ``solver.num_iters``.
        median_size: side of the median filter applied after each warp (0 = none).
        min_size: smallest pyramid image side, in pixels.
        stop_warp_gradient: no gradient through the linearisation point (the warp's resampling of
            frame 2 and the evidence built there), as RAFT detaches its lookup coordinates; the
            gradient still flows through the iterations and from warp to warp and level to level.
            Differentiating through repeated resampling multiplies image gradients and can
            explode when training.
    """

    def __init__(self, solver: UnrolledSolver, prefilter: AbstractPrefilter, warp: AbstractWarp,
                 num_levels: int = 1, scale: float = 0.5, warps: int = 1, level_iters: tuple[int, ...] = (),
                 median_size: int = 0, min_size: int = 16, stop_warp_gradient: bool = False):
        if not 0.0 < scale < 1.0:
            raise ValueError(f"scale must lie in (0, 1), got {scale}")
        self.solver = solver
        self.prefilter = prefilter
        self.warp = warp
        self.num_levels = num_levels
        self.scale = scale
        self.warps = warps
        self.level_iters = tuple(level_iters)
        self.median_size = median_size
        self.min_size = min_size
        self.stop_warp_gradient = stop_warp_gradient

    def pyramid(self, frame: jax.Array) -> list[jax.Array]:
        """Prefiltered pyramid of ``frame`` ``(h, w, c)``, finest first."""
        sizes = image_ops.level_sizes(frame.shape[:2], self.scale, self.num_levels, self.min_size)
        levels = [self.prefilter(frame, 0)]
        for k, size in enumerate(sizes[1:], start=1):
            levels.append(image_ops.resize_bilinear(self.prefilter(levels[-1], k), size))
        return levels

    def __call__(self, frame1: jax.Array, frame2: jax.Array, flow_init: jax.Array | None = None) -> Solution:
        """Flow ``(h, w, 2)`` from ``frame1`` to ``frame2`` (both ``(h, w, c)``), from ``flow_init``."""
        data = self.solver.energy.data
        pyramid1 = [data.features(level) for level in self.pyramid(frame1)]
        pyramid2 = [data.features(level) for level in self.pyramid(frame2)]
        coarsest = pyramid1[-1].shape[:2]
        if flow_init is None:
            flow = jnp.zeros(coarsest + (2,), frame1.dtype)
        else:
            flow = resize_flow(flow_init, coarsest)
        trajectory = None
        for level in reversed(range(len(pyramid1))):
            features1, features2 = pyramid1[level], pyramid2[level]
            if flow.shape[:2] != features1.shape[:2]:
                flow = resize_flow(flow, features1.shape[:2])
            iters = self.level_iters[level] if level < len(self.level_iters) else self.solver.num_iters
            flow, trajectory = self._refine(features1, features2, flow, iters)
        return Solution(flow, trajectory)

    def _refine(self, features1, features2, flow, iters):
        """``warps`` rounds of warp, linearise, solve (and median-filter) on one level, as one loop
        (laid out flat when the solver unrolls)."""

        context = self.solver.context(features1)  # image-only work stays out of the loop

        def one_warp(_, carry):
            flow, _ = carry
            point = jax.lax.stop_gradient(flow) if self.stop_warp_gradient else flow
            warped, valid = self.warp(features2, point)
            evidence = self.solver.energy.linearize(features1, warped, valid, point, context)
            solution = self.solver(evidence, flow, iters)
            flow = solution.flow
            if self.median_size > 1:
                flow = image_ops.median_filter(flow, self.median_size)
            return flow, solution.trajectory

        trajectory = jnp.zeros((iters,) + flow.shape, flow.dtype) if self.solver.keep_trajectory else None
        return jax.lax.fori_loop(0, self.warps, one_warp, (flow, trajectory), unroll=self.solver.unroll)
