"""The local correlation layer of FlowNetC and PWC-Net: feature dot products over a window of
displacements (a cost volume of matching scores, with no search beyond the window)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def local_correlation(f1: jax.Array, f2: jax.Array, max_displacement: int, stride: int = 1) -> jax.Array:
    """``(h, w, n*n)`` scores ``<f1(p), f2(p + d)> / c`` for the displacements
    ``d = (dx, dy)`` in ``{-D, -D + s, ..., D}^2`` (``n = 2 D / s + 1``), zero where ``p + d`` is
    outside frame 2; channel ``i n + j`` holds ``dy = -D + i s``, ``dx = -D + j s``.

    ``f1``, ``f2``: ``(h, w, c)`` features. Computed one row of displacements at a time, so memory
    stays ``O(n h w)`` beyond the inputs. Correlates in float32 (or float64 for float64 inputs).
    """
    if f1.shape != f2.shape or f1.ndim != 3:
        raise ValueError(f"features must both be (h, w, c), got {f1.shape} and {f2.shape}")
    h, w, c = f1.shape
    dtype = jnp.result_type(f1.dtype, f2.dtype, jnp.float32)
    f1, f2 = f1.astype(dtype) / c, f2.astype(dtype)
    d = max_displacement
    padded = jnp.pad(f2, ((d, d), (d, d), (0, 0)))
    shifts = jnp.arange(0, 2 * d + 1, stride)

    def row(dy):
        band = jax.lax.dynamic_slice_in_dim(padded, dy, h, 0)  # (h, w + 2d, c)
        return jnp.stack([jnp.sum(f1 * band[:, dx:dx + w], -1) for dx in range(0, 2 * d + 1, stride)], -1)

    return jnp.moveaxis(jax.lax.map(row, shifts), 0, 2).reshape(h, w, -1)
