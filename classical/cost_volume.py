"""Hand-tuned matching data term: a local cost volume summarised by a Gaussian per pixel.

Frame 1 is compared with the warped frame 2 at every integer displacement ``d`` of a
``(2r + 1)**2`` window, the costs are turned into a distribution over displacements, and its mean
and covariance become a quadratic data term around the matched flow. This is Anandan's (1989)
SSD-surface block matching with a confidence-weighted match, and the local cost volume of
PWC-Net (Sun et al. 2018) read out as a soft argmin instead of by a network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from classical.data_terms import symmetric_2x2
from classical.penalties import Quadratic, weight
from unroll import image_ops
from unroll.errors import InputError
from unroll.operators import AbstractDataTerm


def displacements(radius: int) -> np.ndarray:
    """``(k, 2)`` integer displacements ``(dx, dy)`` of the ``(2 radius + 1)**2`` window."""
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.stack([dx.ravel(), dy.ravel()], -1)


def cost_volume(features1: jax.Array, features2_warped: jax.Array, radius: int, window_sigma: float) -> jax.Array:
    """``(h, w, k)`` costs ``G_sigma * sum_c (f2w_c(p + d) - f1_c(p))**2`` for each of ``displacements(radius)``.

    ``features1`` and ``features2_warped`` are ``(h, w, c)``; frame 2 is replicated beyond its
    border. Channels are summed (not averaged), so zero channels leave the costs unchanged.
    """
    h, w = features1.shape[:2]
    padded = jnp.pad(features2_warped, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    costs = [jnp.sum((padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w] - features1) ** 2, -1)
             for dx, dy in displacements(radius)]
    return image_ops.gaussian_blur(jnp.stack(costs, -1), window_sigma)


def soft_match(cost: jax.Array, offsets: np.ndarray, temperature: float) -> tuple[jax.Array, jax.Array]:
    """Mean ``(h, w, 2)`` and covariance ``(h, w, 2, 2)`` of the displacements ``offsets`` ``(k, 2)``
    under ``softmax(-cost / temperature)``; ``cost`` is ``(h, w, k)``."""
    # Subtracting the smallest cost keeps the largest exponent at 0: no overflow, no 0/0.
    p = jnp.exp((jnp.min(cost, -1, keepdims=True) - cost) / temperature)
    p = p / jnp.sum(p, -1, keepdims=True)
    offsets = jnp.asarray(offsets, cost.dtype)
    mean = p @ offsets
    centred = offsets - mean[..., None, :]  # (h, w, k, 2)
    covariance = jnp.einsum("...k,...ki,...kj->...ij", p, centred, centred)
    return mean, covariance


class CostVolume(AbstractDataTerm):
    """``0.5 * weight * psi((w - t)^T P (w - t))`` at each pixel, from a local cost volume.

    At the linearisation point ``flow0`` the costs ``C_d`` of ``cost_volume`` over the window's
    displacements ``d`` give ``p_d = softmax_d(-C_d / temperature)``, its mean ``m`` ``(2,)`` and
    covariance ``S`` ``(2, 2)``. The term pulls the flow towards ``t = flow0 + m`` with precision
    ``P = (S + prior I)^-1`` (px^-2): tight along well-matched directions, loose along an edge
    (the aperture problem) or in textureless regions. Pixels whose warp left frame 2 get none.

    Features are the frame itself; any number of channels is compared (learned ones included).

    References:
        P. Anandan, "A computational framework and an algorithm for the measurement of visual
        motion", IJCV 2(3), 1989.
        D. Sun, X. Yang, M.-Y. Liu and J. Kautz, "PWC-Net: CNNs for optical flow using pyramid,
        warping, and cost volume", CVPR 2018.

    Args:
        radius: the search window spans displacements ``-radius..radius`` px in x and y (>= 1).
        window_sigma: standard deviation, in pixels, of the Gaussian window summing the costs.
        temperature: softmax temperature in grey-level**2 (the costs' units; > 0). The default,
            10, is about the cost of a correct match between frames with 2 grey levels of noise
            each (``2 * 2**2 = 8``): displacements within a few such noise floors of the best
            share the weight, which interpolates between integer displacements. Larger spreads
            the distribution: smoother means, lower precision.
        prior: variance (px**2, > 0) added to ``S``; bounds the precision by ``1 / prior``.
        penalty: ``psi``; quadratic by default.
        weight: multiplies the whole term.

    Example:
        >>> data = CostVolume(radius=2)
        >>> f = jnp.zeros((8, 8, 1))
        >>> evidence = data.linearize(f, f, jnp.ones((8, 8), bool), jnp.zeros((8, 8, 2)))
        >>> data.energy(evidence, jnp.zeros((8, 8, 2))).shape
        (8, 8)
    """

    def __init__(self, radius: int = 3, window_sigma: float = 1.0, temperature: float = 10.0,
                 prior: float = 0.05, penalty=None, weight: float = 1.0):
        if radius < 1:
            raise InputError(f"cost-volume radius must be a positive integer, got {radius}")
        if not temperature > 0:
            raise InputError(f"cost-volume temperature must be positive, got {temperature}")
        if not prior > 0:
            raise InputError(f"cost-volume prior variance must be positive, got {prior}")
        self.radius = int(radius)
        self.window_sigma = window_sigma
        self.temperature = temperature
        self.prior = prior
        self.penalty = penalty if penalty is not None else Quadratic()
        self.weight = weight

    def linearize(self, features1, features2_warped, valid, flow0):
        cost = cost_volume(features1, features2_warped, self.radius, self.window_sigma)
        mean, covariance = soft_match(cost, displacements(self.radius), self.temperature)
        a = covariance[..., 0, 0] + self.prior
        b = covariance[..., 0, 1]
        c = covariance[..., 1, 1] + self.prior
        mask = valid.astype(flow0.dtype)
        precision = symmetric_2x2(c, -b, a) * (mask / (a * c - b * b))[..., None, None]
        return {"target": flow0 + mean, "precision": precision, "valid": mask}

    def quadratic_form(self, evidence, flow):
        """``(h, w)`` values of ``(w - t)^T P (w - t)``."""
        r = flow - evidence["target"]
        return jnp.einsum("...i,...ij,...j->...", r, evidence["precision"], r)

    def energy(self, evidence, flow):
        return 0.5 * self.weight * self.penalty(self.quadratic_form(evidence, flow)) * evidence["valid"]

    def curvature(self, evidence, flow):
        return self.gradient_and_curvature(evidence, flow)[1]

    def gradient_and_curvature(self, evidence, flow):
        w = self.weight * weight(self.penalty, self.quadratic_form(evidence, flow))
        curvature = w[..., None, None] * evidence["precision"]
        return jnp.einsum("...ij,...j->...i", curvature, flow - evidence["target"]), curvature
