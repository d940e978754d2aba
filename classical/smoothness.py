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
        edge_weights: optional module ``image (h, w, c) -> {offset: (h, w, 1)}`` that scales each
            pair's weight by the value at its first pixel (image-conditioned, edge-aware
            smoothness); None for uniform weights.
    """

    def __init__(self, alpha: float, penalty=None, stencil: str = "horn-schunck", edge_weights=None):
        if stencil not in STENCILS:
            raise ValueError(f"unknown stencil {stencil!r}; choose one of {sorted(STENCILS)}")
        self.alpha = alpha
        self.penalty = penalty if penalty is not None else Quadratic()
        self.stencil = stencil
        self.edge_weights = edge_weights

    def context(self, image: jax.Array) -> dict:
        """The edge-weight maps ``{offset: (h, w, 1)}`` of frame 1 (``{}`` without ``edge_weights``)."""
        return self.edge_weights(image) if self.edge_weights is not None else {}

    def pair_weights(self, flow: jax.Array, maps: dict | None):
        """``[(offset, weight, diff, here, there)]`` for each half-stencil offset; ``weight`` is a
        scalar or a per-pair ``(h', w', 1)`` array (see ``pair_differences`` for the rest).
        ``maps`` is what ``context`` returned (None: no maps)."""
        maps = maps or {}
        h, w = flow.shape[:2]
        pairs = []
        for offset, wgt in half_stencil(self.stencil).items():
            diff, here, there = pair_differences(flow, *offset)
            if offset in maps:  # the map's values at each pair's first pixel
                (top, bottom), (left, right), _ = here
                wgt = wgt * maps[offset][top : h - bottom, left : w - right]
            pairs.append((offset, wgt, diff, here, there))
        return pairs

    def energy(self, flow: jax.Array, context: dict | None) -> jax.Array:
        total = 0.0
        for _, w, diff, _, _ in self.pair_weights(flow, context):
            total = total + jnp.sum(w * self.penalty(diff**2))
        return 0.5 * self.alpha**2 * total

    def curvature(self, flow: jax.Array, context: dict | None) -> jax.Array:
        return self.gradient_and_curvature(flow, context)[1]

    def gradient_and_curvature(self, flow: jax.Array, context: dict | None) -> tuple[jax.Array, jax.Array]:
        """One IRLS weight per pair serves both of its pixels, in the gradient and the curvature.

        A neighbour outside the image counts as a pair with zero difference (Neumann), so it adds
        ``w * psi'(0)`` to the curvature and nothing to the gradient.
        """
        h, w = flow.shape[:2]
        outside = sum(wgt * ~image_ops.inside_mask((h, w), dy, dx) for (dy, dx), wgt in STENCILS[self.stencil].items())
        grad = 0.0
        curv = outside[..., None] * weight(self.penalty, jnp.zeros((), flow.dtype))
        for _, wgt, diff, here, there in self.pair_weights(flow, context):
            pair = wgt * weight(self.penalty, diff**2)
            grad = grad + jnp.pad(pair * diff, here) - jnp.pad(pair * diff, there)
            curv = curv + jnp.pad(pair, here) + jnp.pad(pair, there)
        return self.alpha**2 * grad, self.alpha**2 * curv


def half_stencil(stencil: str) -> dict:
    """The stencil's offsets with ``(dy, dx) > (0, 0)`` and their weights: each unordered pair once."""
    return {o: w for o, w in STENCILS[stencil].items() if o > (0, 0)}


def pair_differences(flow: jax.Array, dy: int, dx: int):
    """Differences ``flow[p] - flow[p + (dy, dx)]`` over the pixels p whose neighbour is inside.

    Requires ``dy >= 0``. Returns the differences and the two ``jnp.pad`` widths that put a
    per-pair array back on the full grid at p and at ``p + (dy, dx)``.
    """
    h, w = flow.shape[:2]
    x0, x1 = max(0, -dx), w - max(0, dx)
    diff = flow[: h - dy, x0:x1] - flow[dy:, x0 + dx : x1 + dx]
    here = ((0, dy), (x0, w - x1), (0, 0))
    there = ((dy, 0), (x0 + dx, w - x1 - dx), (0, 0))
    return diff, here, there
