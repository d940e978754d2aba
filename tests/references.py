"""Straightforward NumPy/SciPy re-implementations of the classical methods, used as references.

They are written from the papers, independently of the framework's operators: SciPy filters
for smoothing and derivatives, explicit per-pixel formulas for the updates.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DERIV = np.array([1.0, -8.0, 0.0, 8.0, -1.0]) / 12.0
HS_KERNEL = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D image with replicate borders (SciPy's 'nearest')."""
    return ndimage.gaussian_filter(image, sigma, mode="nearest") if sigma > 0 else image


def derivatives(i1: np.ndarray, i2: np.ndarray):
    """Horn-Schunck style derivatives: spatial ones averaged over both frames, temporal difference."""
    d = lambda im, axis: ndimage.correlate1d(im, DERIV, axis=axis, mode="nearest")
    ix = 0.5 * (d(i1, 1) + d(i2, 1))
    iy = 0.5 * (d(i1, 0) + d(i2, 0))
    return ix, iy, i2 - i1


def neumann_average(u: np.ndarray) -> np.ndarray:
    """Horn-Schunck's weighted neighbour average; neighbours outside the image take u's own value."""
    inside = ndimage.correlate(np.ones_like(u), HS_KERNEL, mode="constant", cval=0.0)
    return ndimage.correlate(u, HS_KERNEL, mode="constant", cval=0.0) + (1.0 - inside) * u


def horn_schunck(i1: np.ndarray, i2: np.ndarray, alpha: float, num_iters: int, sigma: float = 0.0) -> np.ndarray:
    """The iteration of Horn & Schunck (1981), eq. (16): ``u = u_bar - I_x (I_x u_bar + I_y v_bar + I_t) / (alpha^2 + I_x^2 + I_y^2)``.

    Args:
        i1, i2: ``(h, w)`` grey frames.
    Returns:
        ``(h, w, 2)`` flow after ``num_iters`` iterations from zero.
    """
    i1, i2 = smooth(i1.astype(np.float64), sigma), smooth(i2.astype(np.float64), sigma)
    ix, iy, it = derivatives(i1, i2)
    u = np.zeros_like(i1)
    v = np.zeros_like(i1)
    for _ in range(num_iters):
        ub, vb = neumann_average(u), neumann_average(v)
        common = (ix * ub + iy * vb + it) / (alpha**2 + ix**2 + iy**2)
        u, v = ub - ix * common, vb - iy * common
    return np.stack([u, v], axis=-1)


def lucas_kanade(i1: np.ndarray, i2: np.ndarray, window_sigma: float, damping: float, sigma: float = 0.0) -> np.ndarray:
    """One Lucas & Kanade (1981) solve at every pixel: ``(T + damping I) w = -b`` with the
    Gaussian-windowed structure tensor ``T`` and ``b = G * (grad I I_t)``."""
    i1, i2 = smooth(i1.astype(np.float64), sigma), smooth(i2.astype(np.float64), sigma)
    ix, iy, it = derivatives(i1, i2)
    g = lambda x: ndimage.gaussian_filter(x, window_sigma, mode="nearest")
    a, b, d = g(ix * ix) + damping, g(ix * iy), g(iy * iy) + damping
    bx, by = g(ix * it), g(iy * it)
    det = a * d - b * b
    u = -(d * bx - b * by) / det
    v = -(a * by - b * bx) / det
    return np.stack([u, v], axis=-1)
