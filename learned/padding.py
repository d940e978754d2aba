"""Padding frames to the multiple a network's downsampling needs, and cropping its flow back, as
the reference implementations' ``InputPadder`` (edge replication)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Pads = tuple[tuple[int, int], tuple[int, int]]


def padding(shape: tuple[int, int], multiple: int, mode: str = "sintel") -> Pads:
    """``((top, bottom), (left, right))`` padding of an ``(h, w)`` image to multiples of ``multiple``:
    centred (``sintel``) or at the bottom (``kitti``; horizontally centred in both)."""
    ph, pw = -shape[0] % multiple, -shape[1] % multiple
    rows = (ph // 2, ph - ph // 2) if mode == "sintel" else (0, ph)
    return rows, (pw // 2, pw - pw // 2)


def pad(x: jax.Array, pads: Pads) -> jax.Array:
    """``x`` ``(..., h, w, c)`` padded by ``pads``, replicating the edge."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 3) + list(pads) + [(0, 0)], mode="edge")


def crop(x: jax.Array, pads: Pads) -> jax.Array:
    """Undo ``pad`` on ``x`` ``(..., H, W, c)``."""
    (top, bottom), (left, right) = pads
    return x[..., top:x.shape[-3] - bottom, left:x.shape[-2] - right, :]
