"""Flow from RAFT's 1/8 resolution back to full resolution, as torchvision's ``upsample_flow``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned.nets import neighbours


def convex_upsample(flow: jax.Array, mask: jax.Array, factor: int = 8) -> jax.Array:
    """Convex upsampling (RAFT section 3.3): ``flow (..., h, w, 2)`` and mask logits
    ``(..., h, w, 9 * factor**2)`` to ``(..., factor * h, factor * w, 2)``.

    Mask channel ``k * factor**2 + a * factor + b`` weighs the 3x3 neighbour ``k = 3 * ky + kx``
    (zero outside the image) for output pixel ``(factor * y + a, factor * x + b)``; the weights are
    a softmax over ``k`` (in float32 for half-precision logits), and the flow is scaled by ``factor``.
    """
    *lead, h, w, _ = flow.shape
    logits = mask.astype(jnp.promote_types(mask.dtype, jnp.float32))
    weights = jax.nn.softmax(logits.reshape(*lead, h, w, 9, factor, factor), axis=-3)
    up = jnp.einsum("...kab,...kc->...abc", weights, neighbours(factor * flow, 1))  # (..., h, w, factor, factor, 2)
    up = jnp.moveaxis(up, -3, -4)  # (..., h, factor, w, factor, 2)
    return up.reshape(*lead, factor * h, factor * w, 2)


def _align_corners_weights(n: int, factor: int) -> jax.Array:
    """``(factor * n, n)``: linear interpolation weights with the corner pixels' centres aligned."""
    m = factor * n
    position = jnp.arange(m) * ((n - 1) / (m - 1) if m > 1 else 0.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(position[:, None] - jnp.arange(n)[None, :]))


def bilinear_upsample(flow: jax.Array, factor: int = 8) -> jax.Array:
    """``flow (..., h, w, 2)`` resized bilinearly (``align_corners=True``) to
    ``(..., factor * h, factor * w, 2)`` and scaled by ``factor``, as raft_small upsamples."""
    *_, h, w, _ = flow.shape
    rows, cols = _align_corners_weights(h, factor), _align_corners_weights(w, factor)
    return factor * jnp.einsum("Yy,Xx,...yxc->...YXc", rows, cols, flow)
