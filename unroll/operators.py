"""The operator interfaces of the unrolled solver.

An energy is a data term plus a weighted smoothness term; the solver minimises it by repeating
a step operator a fixed number of times; coarse-to-fine adds a pyramid prefilter and a warp.
Each interface is an abstract Flax NNX module with one job. A hand-tuned operator holds plain
numbers; a learned one holds ``nnx.Param``; the solver cannot tell them apart.

Flow convention, everywhere: ``flow[..., 0] = u``, ``flow[..., 1] = v`` in pixels; pixel
``(x, y)`` of frame 1 moves to ``(x + u, y + v)`` in frame 2.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
    from unroll.energy import Energy

#: Whatever a data term precomputes from the frames at a linearisation point (a pytree).
Evidence = Any


class AbstractDataTerm(nnx.Module):
    """How well a flow explains frame 2 given frame 1: a per-pixel energy density."""

    def features(self, frame: jax.Array) -> jax.Array:
        """Map a frame ``(h, w, c)`` to the ``(h, w, c')`` features compared across frames."""
        return frame

    @abc.abstractmethod
    def linearize(self, features1: jax.Array, features2_warped: jax.Array, valid: jax.Array,
                  flow0: jax.Array) -> Evidence:
        """Precompute what ``energy`` needs around the flow ``flow0`` ``(h, w, 2)``.

        Args:
            features1: ``(h, w, c)`` features of frame 1.
            features2_warped: ``(h, w, c)`` features of frame 2 sampled at ``x + flow0``.
            valid: ``(h, w)`` bool, False where that sample left frame 2.
            flow0: ``(h, w, 2)`` the linearisation point.
        """

    @abc.abstractmethod
    def energy(self, evidence: Evidence, flow: jax.Array) -> jax.Array:
        """``(h, w)`` energy density of ``flow`` ``(h, w, 2)``; pixel p depends on ``flow[p]`` only."""

    @abc.abstractmethod
    def curvature(self, evidence: Evidence, flow: jax.Array) -> jax.Array:
        """``(h, w, 2, 2)`` positive semi-definite majoriser of the per-pixel Hessian of ``energy``
        (Gauss-Newton / iteratively-reweighted least squares)."""

    def gradient_and_curvature(self, evidence: Evidence, flow: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(h, w, 2)`` gradient of the summed energy and ``(h, w, 2, 2)`` curvature; override to
        share work between the two (the default differentiates ``energy``)."""
        return jax.grad(lambda f: jnp.sum(self.energy(evidence, f)))(flow), self.curvature(evidence, flow)


class AbstractSmoothness(nnx.Module):
    """The weighted regulariser: how implausible a flow field is on its own."""

    def context(self, image: jax.Array):
        """What the term needs of frame 1 ``image`` ``(h, w, c)`` at this level (e.g. edge weights
        from a network), computed once per linearisation and passed to the methods below as
        ``context``. Default: the image itself."""
        return image

    @abc.abstractmethod
    def energy(self, flow: jax.Array, context) -> jax.Array:
        """Scalar energy of ``flow`` ``(h, w, 2)``; ``context`` is what ``context(image)`` returned
        (for image-conditioned regularisers)."""

    @abc.abstractmethod
    def curvature(self, flow: jax.Array, context) -> jax.Array:
        """``(h, w, 2)`` diagonal majoriser of the Hessian (reweighted neighbour weights)."""

    def gradient_and_curvature(self, flow: jax.Array, context) -> tuple[jax.Array, jax.Array]:
        """``(h, w, 2)`` gradient of ``energy`` and ``(h, w, 2)`` curvature; override to share work
        between the two (the default differentiates ``energy``)."""
        return jax.grad(lambda f: self.energy(f, context))(flow), self.curvature(flow, context)


class AbstractStep(nnx.Module):
    """One update of the flow: gradient step, preconditioned step, or a learned (recurrent) update."""

    def context(self, image: jax.Array) -> Any:
        """What the step needs of frame 1 ``image`` ``(h, w, c)`` (e.g. a network's features of
        it), computed once per pyramid level and found in ``evidence["step"]``. Default: None."""
        return None

    def init_state(self, energy: "Energy", evidence: Evidence, flow: jax.Array) -> Any:
        """State carried from iteration to iteration (a pytree; None for memoryless steps)."""
        return None

    @abc.abstractmethod
    def __call__(self, energy: "Energy", evidence: Evidence, flow: jax.Array, iteration: jax.Array,
                 state: Any) -> tuple[jax.Array, Any]:
        """Return the next flow ``(h, w, 2)`` and state; ``iteration`` is the scalar index in the stack."""

    def readout(self, flow: jax.Array, state: Any) -> jax.Array:
        """The flow an iterate stands for, as the trajectory records it (e.g. RAFT upsamples its
        1/8-resolution flow with a mask predicted from its hidden state). Default: ``flow``."""
        return flow


class AbstractPrefilter(nnx.Module):
    """The blur applied when building an image pyramid."""

    @abc.abstractmethod
    def __call__(self, image: jax.Array, level: int) -> jax.Array:
        """Filter ``image`` ``(h, w, c)``. ``level == 0`` smooths the input frame; ``level == k > 0``
        smooths level ``k - 1`` before it is resampled to level ``k``."""


class AbstractWarp(nnx.Module):
    """Backward warping: sample frame 2 (or its features) where the flow says frame-1 pixels went."""

    @abc.abstractmethod
    def __call__(self, image: jax.Array, flow: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return ``image`` ``(h, w, c)`` sampled at ``x + flow`` ``(h, w, 2)``, and an ``(h, w)``
        bool mask that is False where the sample fell outside the image."""

