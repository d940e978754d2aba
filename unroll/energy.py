"""The energy an unrolled solver minimises: a data term plus a weighted smoothness term."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unroll.operators import AbstractDataTerm, AbstractSmoothness, Evidence


class Energy(nnx.Module):
    """``E(w) = sum_p data(w_p) + smoothness(w)`` (the smoothness carries its own weight).

    Args:
        data: the data term.
        smoothness: the regulariser, or None for a purely local energy (Lucas-Kanade).
    """

    def __init__(self, data: AbstractDataTerm, smoothness: AbstractSmoothness | None = None):
        self.data = data
        self.smoothness = smoothness

    def context(self, features1: jax.Array) -> dict:
        """What does not depend on the flow: frame 1's features ``image`` and the smoothness term's
        context of them (see AbstractSmoothness); compute it once per pyramid level."""
        smoothness = self.smoothness.context(features1) if self.smoothness is not None else None
        return {"image": features1, "smoothness": smoothness}

    def linearize(self, features1, features2_warped, valid, flow0, context: dict | None = None) -> Evidence:
        """Evidence for both terms: the data term's (see AbstractDataTerm) and the entries of
        ``context`` (default: ``self.context(features1)``)."""
        context = self.context(features1) if context is None else context
        return {"data": self.data.linearize(features1, features2_warped, valid, flow0), **context}

    def value(self, evidence: Evidence, flow: jax.Array) -> jax.Array:
        """Scalar energy of ``flow`` ``(h, w, 2)``."""
        total = jnp.sum(self.data.energy(evidence["data"], flow))
        if self.smoothness is not None:
            total = total + self.smoothness.energy(flow, evidence["smoothness"])
        return total

    def gradient(self, evidence: Evidence, flow: jax.Array) -> jax.Array:
        """``(h, w, 2)`` gradient of ``value`` with respect to the flow."""
        return jax.grad(lambda f: self.value(evidence, f))(flow)

    def curvature(self, evidence: Evidence, flow: jax.Array) -> jax.Array:
        """``(h, w, 2, 2)`` block-diagonal majoriser of the Hessian."""
        return self.gradient_and_curvature(evidence, flow)[1]

    def gradient_and_curvature(self, evidence: Evidence, flow: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``gradient`` and ``curvature`` together, sharing the terms' reweighting work."""
        grad, block = self.data.gradient_and_curvature(evidence["data"], flow)
        if self.smoothness is not None:
            smooth_grad, diag = self.smoothness.gradient_and_curvature(flow, evidence["smoothness"])
            grad, block = grad + smooth_grad, block + _diagonal(diag)
        return grad, block


def _diagonal(diag: jax.Array) -> jax.Array:
    """``(..., 2)`` -> ``(..., 2, 2)`` diagonal matrices."""
    return diag[..., :, None] * jnp.eye(2, dtype=diag.dtype)
