"""Hand-tuned data terms: linearised brightness (or feature) constancy.

Both terms linearise constancy around the current warp ``flow0``: with ``d = flow - flow0``,
``rho_c = I_t + I_x d_u + I_y d_v`` per channel c, where ``I_t = I2(x + flow0) - I1`` and the
spatial derivatives blend the two frames (Sun, Roth & Black 2010). Pixels whose warp leaves
frame 2 get no data term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from classical.penalties import Quadratic, weight
from unroll import image_ops
from unroll.operators import AbstractDataTerm


def constancy_derivatives(features1, features2_warped, valid, blend):
    """``(I_x, I_y, I_t)``, each ``(h, w, c)``, zero where ``valid`` ``(h, w)`` is False."""
    dx1, dy1 = image_ops.gradients(features1)
    dx2, dy2 = image_ops.gradients(features2_warped)
    mask = valid[..., None].astype(features1.dtype)
    ix = (blend * dx2 + (1 - blend) * dx1) * mask
    iy = (blend * dy2 + (1 - blend) * dy1) * mask
    it = (features2_warped - features1) * mask
    return ix, iy, it


def gradient_constancy_features(frame: jax.Array, gradient_weight: float) -> jax.Array:
    """``(h, w, 3c)``: the frame and its weighted spatial derivatives (Brox et al. 2004)."""
    dx, dy = image_ops.gradients(frame)
    return jnp.concatenate([frame, gradient_weight * dx, gradient_weight * dy], axis=-1)


def symmetric_2x2(xx, xy, yy):
    """``(h, w, 2, 2)`` matrices ``[[xx, xy], [xy, yy]]`` from ``(h, w)`` entries."""
    return jnp.stack([jnp.stack([xx, xy], -1), jnp.stack([xy, yy], -1)], -2)


class BrightnessConstancy(AbstractDataTerm):
    """``0.5 * weight * sum_c psi(rho_c**2)`` at each pixel (Horn-Schunck, TV-L1, Classic-C).

    Args:
        penalty: ``psi``; quadratic by default.
        weight: multiplies the whole term.
        blend: spatial derivatives are ``blend * dI2w + (1 - blend) * dI1``.
        gradient_weight: if > 0, also require constancy of the image gradient, with this weight.
    """

    def __init__(self, penalty=None, weight: float = 1.0, blend: float = 0.5, gradient_weight: float = 0.0):
        self.penalty = penalty if penalty is not None else Quadratic()
        self.weight = weight
        self.blend = blend
        self.gradient_weight = gradient_weight

    def features(self, frame):
        if self.gradient_weight > 0:
            return gradient_constancy_features(frame, self.gradient_weight)
        return frame

    def linearize(self, features1, features2_warped, valid, flow0):
        ix, iy, it = constancy_derivatives(features1, features2_warped, valid, self.blend)
        return {"ix": ix, "iy": iy, "it": it, "flow0": flow0}

    def residual(self, evidence, flow):
        """``(h, w, c)`` linearised residuals ``rho``."""
        d = flow - evidence["flow0"]
        return evidence["it"] + evidence["ix"] * d[..., :1] + evidence["iy"] * d[..., 1:]

    def energy(self, evidence, flow):
        return 0.5 * self.weight * jnp.sum(self.penalty(self.residual(evidence, flow) ** 2), axis=-1)

    def curvature(self, evidence, flow):
        return self.gradient_and_curvature(evidence, flow)[1]

    def gradient_and_curvature(self, evidence, flow):
        rho = self.residual(evidence, flow)
        w = self.weight * weight(self.penalty, rho**2)
        ix, iy = evidence["ix"], evidence["iy"]
        grad = jnp.stack([jnp.sum(w * rho * ix, -1), jnp.sum(w * rho * iy, -1)], -1)
        return grad, symmetric_2x2(jnp.sum(w * ix * ix, -1), jnp.sum(w * ix * iy, -1), jnp.sum(w * iy * iy, -1))


class WindowedBrightnessConstancy(AbstractDataTerm):
    """Constancy integrated over a Gaussian window: ``0.5 * weight * sum_c psi(d~^T J_c d~)``.

    ``J_c = G_sigma * (grad3 I_c grad3 I_c^T)`` is the 3x3 motion tensor of channel c and
    ``d~ = (d_u, d_v, 1)``. With a quadratic penalty and no smoothness this is Lucas & Kanade
    (1981); with a smoothness term it is the combined local-global method (Bruhn et al. 2005).

    Args:
        window_sigma: standard deviation of the Gaussian window, in pixels.
        penalty, weight, blend: as for ``BrightnessConstancy``.
    """

    def __init__(self, window_sigma: float = 2.0, penalty=None, weight: float = 1.0, blend: float = 0.5):
        self.window_sigma = window_sigma
        self.penalty = penalty if penalty is not None else Quadratic()
        self.weight = weight
        self.blend = blend

    def linearize(self, features1, features2_warped, valid, flow0):
        ix, iy, it = constancy_derivatives(features1, features2_warped, valid, self.blend)
        products = jnp.stack([ix * ix, ix * iy, iy * iy, ix * it, iy * it, it * it], axis=-1)
        tensor = image_ops.gaussian_blur(products, self.window_sigma)
        return {"tensor": tensor, "flow0": flow0}

    def quadratic_form(self, evidence, flow):
        """``(h, w, c)`` values of ``d~^T J_c d~``."""
        d = flow - evidence["flow0"]
        du, dv = d[..., :1], d[..., 1:]
        xx, xy, yy, xt, yt, tt = jnp.moveaxis(evidence["tensor"], -1, 0)
        return xx * du * du + 2 * xy * du * dv + yy * dv * dv + 2 * (xt * du + yt * dv) + tt

    def energy(self, evidence, flow):
        return 0.5 * self.weight * jnp.sum(self.penalty(self.quadratic_form(evidence, flow)), axis=-1)

    def curvature(self, evidence, flow):
        return self.gradient_and_curvature(evidence, flow)[1]

    def gradient_and_curvature(self, evidence, flow):
        w = self.weight * weight(self.penalty, self.quadratic_form(evidence, flow))
        d = flow - evidence["flow0"]
        du, dv = d[..., :1], d[..., 1:]
        xx, xy, yy, xt, yt, _ = jnp.moveaxis(evidence["tensor"], -1, 0)
        grad = jnp.stack([jnp.sum(w * (xx * du + xy * dv + xt), -1), jnp.sum(w * (xy * du + yy * dv + yt), -1)], -1)
        return grad, symmetric_2x2(jnp.sum(w * xx, -1), jnp.sum(w * xy, -1), jnp.sum(w * yy, -1))
