"""Hand-tuned step operators: plain and block-preconditioned gradient steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unroll.operators import AbstractStep


def solve_2x2(block: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve ``block @ x = rhs`` per pixel; ``block`` ``(..., 2, 2)``, ``rhs`` ``(..., 2)``."""
    a, b = block[..., 0, 0], block[..., 0, 1]
    c, d = block[..., 1, 0], block[..., 1, 1]
    det = a * d - b * c
    return jnp.stack([d * rhs[..., 0] - b * rhs[..., 1], a * rhs[..., 1] - c * rhs[..., 0]], -1) / det[..., None]


def newton_increment(energy, evidence, flow: jax.Array, damping: float) -> jax.Array:
    """``(P(w) + damping I)^-1 grad E(w)`` ``(h, w, 2)`` with P the energy's 2x2 curvature blocks."""
    grad, block = energy.gradient_and_curvature(evidence, flow)
    return solve_2x2(block + damping * jnp.eye(2, dtype=flow.dtype), grad)


class GradientStep(AbstractStep):
    """``w <- w - step_size * grad E(w)``: unpreconditioned gradient descent."""

    def __init__(self, step_size: float):
        self.step_size = step_size

    def __call__(self, energy, evidence, flow, iteration, state):
        return flow - self.step_size * energy.gradient(evidence, flow), state


class BlockJacobiStep(AbstractStep):
    """``w <- w - relaxation * (P(w) + damping I)^-1 grad E(w)``, P the energy's 2x2 curvature blocks.

    With the quadratic Horn-Schunck energy this is exactly the Horn-Schunck (1981) iteration:
    ``P = grad I grad I^T + alpha**2 I`` and the update solves each pixel's 2x2 system with the
    neighbours held at their current average. With a windowed data term and no smoothness, one
    step from the linearisation point is the Lucas-Kanade (Gauss-Newton) solve; ``damping``
    keeps textureless pixels finite (Levenberg-Marquardt). With robust penalties P holds the
    reweighted (IRLS) curvatures: a lagged-nonlinearity Jacobi iteration.
    """

    def __init__(self, relaxation: float = 1.0, damping: float = 0.0):
        self.relaxation = relaxation
        self.damping = damping

    def __call__(self, energy, evidence, flow, iteration, state):
        return flow - self.relaxation * newton_increment(energy, evidence, flow, self.damping), state


class RedBlackStep(AbstractStep):
    """Block Gauss-Seidel with over-relaxation (SOR) in red-black (checkerboard) order.

    Updates the pixels with even ``x + y`` by the block step of ``BlockJacobiStep``, then the odd
    ones from the refreshed field. On a 4-neighbour stencil this is exact Gauss-Seidel, which
    converges much faster than Jacobi; ``relaxation`` in (1, 2) over-relaxes (Young 1950).
    Costs two gradient evaluations per step.
    """

    def __init__(self, relaxation: float = 1.8, damping: float = 0.0):
        self.relaxation = relaxation
        self.damping = damping

    def __call__(self, energy, evidence, flow, iteration, state):
        h, w = flow.shape[:2]
        red = (np.add.outer(np.arange(h), np.arange(w)) % 2 == 0)[..., None]
        for colour in (red, ~red):
            increment = newton_increment(energy, evidence, flow, self.damping)
            flow = flow - jnp.where(colour, self.relaxation * increment, 0.0)
        return flow, state
