"""Small image operations shared by every operator: filtering, derivatives, sampling, resizing.

All functions take channels-last arrays ``(h, w, c)`` (or ``(h, w)`` where noted) and use
replicate ("edge") boundaries unless stated otherwise. They are pure ``jax.numpy`` and so
work under ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unroll import selection

#: Five-point central difference, correlation weights for offsets -2..2 (Sun, Roth & Black 2010).
DERIVATIVE_TAPS = np.array([1.0, -8.0, 0.0, 8.0, -1.0]) / 12.0


def gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (SciPy's convention)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def correlate1d(x: jnp.ndarray, taps, axis: int) -> jnp.ndarray:
    """Correlate ``x`` along ``axis`` (0 = rows/y, 1 = columns/x) with odd-length ``taps``.

    ``out[i] = sum_k taps[k] * x[i + k - r]`` with replicate padding; ``taps`` may be a NumPy
    array (hand-tuned) or a traced JAX array (learned).
    """
    r = (len(taps) - 1) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, mode="edge")
    n = x.shape[axis]
    out = 0.0
    for k in range(len(taps)):
        out = out + taps[k] * jax.lax.slice_in_dim(xp, k, k + n, axis=axis)
    return out


def gaussian_blur(x: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """Separable Gaussian blur of an ``(h, w, ...)`` array; ``sigma <= 0`` returns ``x``."""
    if sigma <= 0:
        return x
    taps = gaussian_taps(sigma)
    return correlate1d(correlate1d(x, taps, 0), taps, 1)


def gradients(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Spatial derivatives ``(d/dx, d/dy)`` of an ``(h, w, ...)`` array, five-point stencil."""
    return correlate1d(x, DERIVATIVE_TAPS, 1), correlate1d(x, DERIVATIVE_TAPS, 0)


def inside_mask(shape: tuple[int, int], dy: int, dx: int) -> np.ndarray:
    """``(h, w)`` bool: True where pixel ``(y + dy, x + dx)`` lies inside the image."""
    h, w = shape
    ys = np.arange(h)[:, None] + dy
    xs = np.arange(w)[None, :] + dx
    return (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)


def shift(x: jnp.ndarray, dy: int, dx: int) -> jnp.ndarray:
    """Value of ``x`` ``(h, w, ...)`` at ``(y + dy, x + dx)``; zero outside the image."""
    h, w = x.shape[:2]
    pad = [(max(-dy, 0), max(dy, 0)), (max(-dx, 0), max(dx, 0))] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad)[max(dy, 0) : max(dy, 0) + h, max(dx, 0) : max(dx, 0) + w]


def neighbour(x: jnp.ndarray, dy: int, dx: int) -> jnp.ndarray:
    """Value of ``x`` at ``(y + dy, x + dx)``; outside the image the pixel's own value.

    Using the pixel's own value makes every out-of-image difference zero, the Neumann
    boundary condition of the classical variational methods.
    """
    h, w = x.shape[:2]
    mask = inside_mask((h, w), dy, dx).reshape((h, w) + (1,) * (x.ndim - 2))
    return jnp.where(mask, shift(x, dy, dx), x)


def sample_bilinear(image: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Bilinear samples of ``image`` ``(h, w, c)`` at pixel coordinates ``x, y`` ``(...)``.

    Pixel ``(i, j)`` sits at ``x = j, y = i``. Coordinates outside the image are clamped to the
    border. Differentiable with respect to the image and the coordinates.

    Returns:
        ``(..., c)`` samples.
    """
    h, w = image.shape[:2]
    x = jnp.clip(x, 0.0, w - 1.0)
    y = jnp.clip(y, 0.0, h - 1.0)
    x0 = jnp.clip(jnp.floor(x), 0, max(w - 2, 0)).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(y), 0, max(h - 2, 0)).astype(jnp.int32)
    x1 = jnp.minimum(x0 + 1, w - 1)
    y1 = jnp.minimum(y0 + 1, h - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def resize_bilinear(image: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Resample ``image`` ``(h, w, c)`` to ``size = (h', w')`` with pixel-centre alignment.

    No anti-aliasing: blur first (the pyramid's prefilter does) when shrinking.
    """
    h, w = image.shape[:2]
    hn, wn = size
    ys = (jnp.arange(hn) + 0.5) * (h / hn) - 0.5
    xs = (jnp.arange(wn) + 0.5) * (w / wn) - 0.5
    yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
    return sample_bilinear(image, xx, yy)


def median_filter(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """Per-channel ``size x size`` median of ``x`` ``(h, w, c)``, replicate boundaries."""
    r = size // 2
    xp = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = x.shape[:2]
    window = [xp[i : i + h, j : j + w] for i in range(size) for j in range(size)]
    return selection.median(window)


def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` coordinate arrays of shape ``(h, w)``, float32."""
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return xx, yy


def level_sizes(size: tuple[int, int], scale: float, max_levels: int, min_size: int) -> list[tuple[int, int]]:
    """Pyramid sizes, finest first: ``round(size * scale**k)`` while both sides stay >= ``min_size``."""
    sizes = [tuple(size)]
    while len(sizes) < max_levels:
        h, w = (max(1, int(round(s * scale ** len(sizes)))) for s in size)
        if min(h, w) < min_size:
            break
        sizes.append((h, w))
    return sizes

