"""RAFT's correlation lookup: feature correlations read in a window around where each pixel moved.

The correlation of pixel ``p`` of frame 1 with pixel ``q`` of frame 2 is
``<f1(p), f2(q)> / sqrt(d)``, in float32 (or float64) whatever the features' dtype. Level 0 of the
pyramid holds all of them; level ``l + 1`` averages level ``l`` over 2x2 blocks of ``q`` (stride 2,
an odd last row or column dropped, like torch's ``avg_pool2d``). A lookup at the absolute positions
``coords`` reads at level ``l`` the ``(2 r + 1)**2`` points ``coords / 2**l + (dx, dy)``,
``dx, dy = -r..r``, bilinearly (integer positions are pixel centres; each corner outside the image
counts as 0, like ``grid_sample(align_corners=True, padding_mode="zeros")``). Channels are
level-major; in a level, channel ``i (2 r + 1) + j`` holds ``dx = i - r`` and ``dy = j - r`` (the
first index moves x: RAFT's ``meshgrid(dy, dx)`` order, kept so that its weights apply).

Two back-ends give the same numbers. ``AllPairsCorrelation`` stores the pyramid of all
correlations, ``(h w)**2`` values. ``OnTheFlyCorrelation`` stores frame 2's features pooled to
each level instead (pooling is linear, so correlating with pooled features equals pooling the
correlations) and computes only the looked-up values: memory ``O(h w d)``, more work per lookup.

References:
    Z. Teed and J. Deng, "RAFT: Recurrent all-pairs field transforms for optical flow",
    ECCV 2020 (its ``CorrBlock`` and ``AlternateCorrBlock``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unroll.errors import InputError


def average_pool(x: jax.Array, axis: int) -> jax.Array:
    """2x2 means with stride 2 over axes ``axis, axis + 1`` of ``x``; an odd last row or column is dropped."""
    h, w = x.shape[axis] // 2, x.shape[axis + 1] // 2
    x = jax.lax.slice_in_dim(jax.lax.slice_in_dim(x, 0, 2 * h, axis=axis), 0, 2 * w, axis=axis + 1)
    return x.reshape(x.shape[:axis] + (h, 2, w, 2) + x.shape[axis + 2 :]).mean((axis + 1, axis + 3))


def _compute_dtype(*arrays: jax.Array):
    """float32, or float64 for float64 inputs: half-precision features are correlated in float32."""
    return jnp.result_type(*(a.dtype for a in arrays), jnp.float32)


def _window_corners(centres: jax.Array, radius: int, shape: tuple[int, int]):
    """Integer points of the windows around ``centres`` ``(n, 2)`` (x, y) on an ``(h, w)`` grid.

    Every window point shares its centre's fractional part, so the bilinear corners of the whole
    ``(2 r + 1)**2`` window are the ``(2 r + 2)**2`` points ``floor(centre) - r + (a, b)``,
    ``a, b = 0..2 r + 1``. Returns their flat indices ``y w + x`` ``(n, 2 r + 2, 2 r + 2)``
    (``a`` on axis 1; 0 where outside the grid), whether each is inside the grid (same shape), and
    the fractional parts ``(n, 2)``.
    """
    h, w = shape
    base = jnp.floor(centres)
    offsets = jnp.arange(-radius, radius + 2)
    x = base[:, 0, None].astype(jnp.int32) + offsets  # (n, 2 r + 2), along a
    y = base[:, 1, None].astype(jnp.int32) + offsets  # along b
    inside = ((x >= 0) & (x < w))[:, :, None] & ((y >= 0) & (y < h))[:, None, :]
    index = jnp.where(inside, y[:, None, :] * w + x[:, :, None], 0)
    return index, inside, centres - base


def _blend(corners: jax.Array, fraction: jax.Array) -> jax.Array:
    """``(..., (2 r + 1)**2)`` bilinear window values, x-major, from their ``(..., 2 r + 2, 2 r + 2)``
    corners and the fractional parts ``(..., 2)`` (x, y) of the window centres."""
    fx, fy = fraction[..., 0, None, None], fraction[..., 1, None, None]
    along_x = corners[..., :-1, :] * (1 - fx) + corners[..., 1:, :] * fx
    window = along_x[..., :-1] * (1 - fy) + along_x[..., 1:] * fy
    return window.reshape(window.shape[:-2] + (-1,))


def _windows(centres: jax.Array, shape: tuple[int, int], levels: int, radius: int, read) -> jax.Array:
    """``(n, levels (2 r + 1)**2)`` windows around ``centres`` ``(n, 2)`` (level-0 x, y) of an
    ``(h, w)`` grid; ``read(index)`` gives the correlations ``(n, levels, k)`` at the flat
    positions ``index`` ``(n, levels, k)`` of each level's grid (``(h >> l, w >> l)`` at level ``l``)."""
    n = centres.shape[0]
    corners = [_window_corners(centres / 2**level, radius, (shape[0] >> level, shape[1] >> level))
               for level in range(levels)]
    index, inside, fraction = (jnp.stack(x, 1) for x in zip(*corners))  # (n, levels, ...)
    values = read(index.reshape(n, levels, -1)).reshape(index.shape)
    return _blend(jnp.where(inside, values, 0), fraction).reshape(n, -1)


class _Correlation(nnx.Module):
    """What the back-ends share: the window's size and the checks of their inputs."""

    def __init__(self, levels: int = 4, radius: int = 4):
        if levels < 1:
            raise InputError(f"correlation pyramid needs at least one level, got {levels}")
        if radius < 0:
            raise InputError(f"correlation lookup radius must be >= 0, got {radius}")
        self.levels = int(levels)
        self.radius = int(radius)
        self.out_features = self.levels * (2 * self.radius + 1) ** 2

    def _check(self, f1: jax.Array, f2: jax.Array):
        if f1.ndim != 3 or f1.shape != f2.shape:
            raise InputError(f"correlated features must both be (h, w, d), got {f1.shape} and {f2.shape}")
        if min(f1.shape[:2]) < 2 ** (self.levels - 1):
            raise InputError(f"{self.levels} pyramid levels need features of at least "
                             f"{2 ** (self.levels - 1)} px a side, got {f1.shape[:2]}")


class AllPairsCorrelation(_Correlation):
    """RAFT's correlation pyramid: every pixel of frame 1 against every pixel of frame 2.

    ``build`` costs ``h w`` dot products per pixel and stores about ``4/3 (h w)**2`` values; each
    lookup is then a gather. Example:
        >>> corr = AllPairsCorrelation(levels=2, radius=1)
        >>> f = jnp.ones((4, 6, 8))
        >>> corr.lookup(corr.build(f, f), jnp.zeros((4, 6, 2))).shape
        (4, 6, 18)
    """

    def build(self, f1: jax.Array, f2: jax.Array) -> list[jax.Array]:
        """Levels ``(h w, h_l, w_l)`` from features ``f1``, ``f2`` ``(h, w, d)``; row ``y w + x`` is
        pixel (x, y) of frame 1."""
        self._check(f1, f2)
        h, w, d = f1.shape
        dtype = _compute_dtype(f1, f2)
        a, b = (f.reshape(h * w, d).astype(dtype) for f in (f1, f2))
        volume = jnp.matmul(a / np.sqrt(d).astype(dtype), b.T, precision=jax.lax.Precision.HIGHEST)
        pyramid = [volume.reshape(h * w, h, w)]
        for _ in range(self.levels - 1):
            pyramid.append(average_pool(pyramid[-1], 1))
        return pyramid

    def lookup(self, pyramid: list[jax.Array], coords: jax.Array) -> jax.Array:
        """``(h, w, out_features)`` windows of the pyramid around ``coords`` ``(h, w, 2)`` (absolute
        level-0 positions x, y: the pixel grid plus the flow)."""
        h, w = coords.shape[:2]

        def read(index):
            levels = [jnp.take_along_axis(volume.reshape(h * w, -1), index[:, level], 1, mode="promise_in_bounds")
                      for level, volume in enumerate(pyramid)]
            return jnp.stack(levels, 1)

        centres = coords.reshape(-1, 2).astype(_compute_dtype(coords))
        return _windows(centres, (h, w), self.levels, self.radius, read).reshape(h, w, -1)


class OnTheFlyCorrelation(_Correlation):
    """The same lookup without the pyramid of correlations: memory ``O(h w d)`` instead of ``O((h w)**2)``.

    ``build`` only pools frame 2's features. A lookup computes just the correlations at the
    ``levels (2 r + 2)**2`` bilinear corners of each pixel's windows (that many times ``d``
    multiply-adds per pixel), a chunk of pixels at a time: each step gathers about ``h w`` frame-2
    feature vectors, as many as there are pixels. Steps are recomputed in the backward pass, so
    gradients (to both features and ``coords``) store no gathered features either. Example:
        >>> corr = OnTheFlyCorrelation(levels=2, radius=1)
        >>> f = jnp.ones((4, 6, 8))
        >>> corr.lookup(corr.build(f, f), jnp.zeros((4, 6, 2))).shape
        (4, 6, 18)
    """

    def build(self, f1: jax.Array, f2: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """``(f1, [f2 pooled to each level (h_l, w_l, d)])`` from features ``(h, w, d)``, in the compute dtype."""
        self._check(f1, f2)
        dtype = _compute_dtype(f1, f2)
        pooled = [f2.astype(dtype)]
        for _ in range(self.levels - 1):
            pooled.append(average_pool(pooled[-1], 0))
        return f1.astype(dtype), pooled

    def lookup(self, pyramid: tuple[jax.Array, list[jax.Array]], coords: jax.Array) -> jax.Array:
        """``(h, w, out_features)`` windows around ``coords`` ``(h, w, 2)`` (absolute level-0
        positions x, y: the pixel grid plus the flow), as ``AllPairsCorrelation.lookup`` gives them."""
        f1, pooled = pyramid
        h, w, d = f1.shape
        f2 = jnp.concatenate([f.reshape(-1, d) for f in pooled])  # all levels, one after another
        starts = np.cumsum([0] + [f.shape[0] * f.shape[1] for f in pooled[:-1]])[:, None]

        @functools.partial(jax.checkpoint, prevent_cse=False)
        def pixel(args):
            f1_p, centre = args

            def read(index):
                rows = f2.at[index[0] + starts].get(mode="promise_in_bounds")  # (levels, k, d)
                return jnp.matmul(rows, f1_p, precision=jax.lax.Precision.HIGHEST)[None]

            return _windows(centre[None], (h, w), self.levels, self.radius, read)[0]

        f1 = f1.reshape(h * w, d) / np.sqrt(d).astype(f1.dtype)
        centres = coords.reshape(-1, 2).astype(_compute_dtype(coords))
        chunk = -(-h * w // (self.levels * (2 * self.radius + 2) ** 2))
        return jax.lax.map(pixel, (f1, centres), batch_size=chunk).reshape(h, w, -1)


BACKENDS = {"all-pairs": AllPairsCorrelation, "on-the-fly": OnTheFlyCorrelation}
"""The correlation back-ends by name: interchangeable, same numbers, different memory and time."""
