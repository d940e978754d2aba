"""Hand-tuned smoothness: penalised differences between neighbouring flow vectors."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from classical.penalties import Quadratic, weight
from unroll import image_ops
from unroll.operators import AbstractSmoothness

#: Neighbour offsets ``(dy, dx)`` and weights. "horn-schunck" is the 3x3 averaging stencil of
#: Horn & Schunck (1981): 1/6 for edge neighbours, 1/12 for corners (weights sum to 1).
STENCILS = {
    "horn-schunck": {(0, 1): 1 / 6, (1, 0): 1 / 6, (0, -1): 1 / 6, (-1, 0): 1 / 6,
                     (1, 1): 1 / 12, (1, -1): 1 / 12, (-1, 1): 1 / 12, (-1, -1): 1 / 12},
    "4-neighbour": {(0, 1): 1.0, (1, 0): 1.0, (0, -1): 1.0, (-1, 0): 1.0},
}


class PairwiseSmoothness(AbstractSmoothness):
    """``alpha**2 / 2 * sum_{pairs p~q} w_pq [psi((u_p - u_q)**2) + psi((v_p - v_q)**2)]``.

    With the quadratic penalty and the Horn-Schunck stencil its gradient is
    ``alpha**2 (w - w_bar)``, ``w_bar`` the stencil average (out-of-image neighbours take the
    pixel's own value), which is the smoothness half of the Horn-Schunck equations.

    Args:
        alpha: regularisation strength; the term is weighted by ``alpha**2``.
        penalty: ``psi``; quadratic by default.
        stencil: a key of ``STENCILS``.
    """

    def __init__(self, alpha: float, penalty=None, stencil: str = "horn-schunck"):
        if stencil not in STENCILS:
            raise ValueError(f"unknown stencil {stencil!r}; choose one of {sorted(STENCILS)}")
        self.alpha = alpha
        self.penalty = penalty if penalty is not None else Quadratic()
        self.stencil = stencil

    def energy(self, flow: jax.Array, image: jax.Array) -> jax.Array:
        total = 0.0
        for (dy, dx), w in STENCILS[self.stencil].items():
            if (dy, dx) > (0, 0):  # each unordered pair once
                diff = flow - image_ops.neighbour(flow, dy, dx)
                total = total + w * jnp.sum(self.penalty(diff**2))
        return 0.5 * self.alpha**2 * total

    def curvature(self, flow: jax.Array, image: jax.Array) -> jax.Array:
        total = 0.0
        for (dy, dx), w in STENCILS[self.stencil].items():
            diff = flow - image_ops.neighbour(flow, dy, dx)
            total = total + w * weight(self.penalty, diff**2)
        return self.alpha**2 * total
