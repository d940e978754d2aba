"""Penalty functions ``psi(s)`` of a squared residual ``s = r**2``.

Energies use ``0.5 * psi(r**2)``; iteratively-reweighted least squares uses ``psi'(s)`` as the
weight of the quadratic majoriser, which is valid for every concave ``psi`` (Black & Rangarajan
1996). The derivative comes from ``jax.jvp``, so a new penalty only defines its value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Quadratic(nnx.Module):
    """``psi(s) = s``: least squares (Horn & Schunck 1981, Lucas & Kanade 1981)."""

    def __call__(self, s: jax.Array) -> jax.Array:
        return s


class Charbonnier(nnx.Module):
    """Generalised Charbonnier ``psi(s) = (s + eps**2)**exponent`` (Sun, Roth & Black 2010).

    ``exponent=0.5`` is the classic Charbonnier, a differentiable L1/TV; smaller is more robust
    (and non-convex).
    """

    def __init__(self, eps: float = 1e-3, exponent: float = 0.5):
        self.eps = eps
        self.exponent = exponent

    def __call__(self, s: jax.Array) -> jax.Array:
        if self.exponent == 0.5:  # sqrt is several times cheaper than pow on CPU
            return jnp.sqrt(s + self.eps**2)
        return (s + self.eps**2) ** self.exponent


def weight(penalty, s: jax.Array) -> jax.Array:
    """Elementwise ``psi'(s)``, the IRLS weight of a residual whose square is ``s``."""
    return jax.jvp(penalty, (s,), (jnp.ones_like(s),))[1]
