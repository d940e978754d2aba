"""Training losses over an unrolled trajectory."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def training_mask(flow_gt: jax.Array, valid: jax.Array, max_flow: float) -> jax.Array:
    """``(h, w)`` float mask: valid ground truth whose magnitude is below ``max_flow`` px."""
    finite = jnp.all(jnp.isfinite(flow_gt), axis=-1)
    small = jnp.linalg.norm(jnp.where(finite[..., None], flow_gt, 0.0), axis=-1) < max_flow
    return (valid & finite & small).astype(flow_gt.dtype)


def sequence_loss(trajectory: jax.Array, flow_gt: jax.Array, valid: jax.Array, gamma: float = 0.8,
                  max_flow: float = 400.0, weights: tuple[float, ...] = (), norm: str = "l1") -> jax.Array:
    """RAFT's sequence loss: ``sum_i gamma^(N-1-i) * mean_valid |w_i - w_gt|_1`` (Teed & Deng 2020).

    Args:
        trajectory: ``(n, h, w, 2)`` the flow after each iteration (or ``(h, w, 2)`` for one).
        flow_gt: ``(h, w, 2)`` ground truth; ``valid``: ``(h, w)`` bool.
        gamma: weight decay towards earlier iterations.
        max_flow: ground truth above this magnitude is left out (as are invalid pixels).
        weights: explicit weights of the ``n`` entries, first to last, instead of the powers of
            ``gamma`` (FlowNet's and PWC-Net's multi-scale weights).
        norm: ``l1`` (RAFT) or ``epe``, the end-point error (FlowNet, PWC-Net).
    """
    trajectory = trajectory[None] if trajectory.ndim == 3 else trajectory
    mask = training_mask(flow_gt, valid, max_flow)
    safe_gt = jnp.where(mask[..., None] > 0, flow_gt, 0.0)
    difference = trajectory - safe_gt
    if norm == "l1":
        errors = jnp.sum(jnp.abs(difference), axis=-1)  # (n, h, w)
    else:  # the gradient of the norm is finite where the difference vanishes
        errors = jnp.sqrt(jnp.sum(difference ** 2, axis=-1) + 1e-12)
    per_iteration = jnp.sum(errors * mask, axis=(1, 2)) / jnp.maximum(jnp.sum(mask), 1.0)
    n = trajectory.shape[0]
    if weights:
        if len(weights) != n:
            raise ValueError(f"{len(weights)} loss weights for a trajectory of {n} predictions")
        factors = jnp.asarray(weights, trajectory.dtype)
    else:
        factors = gamma ** jnp.arange(n - 1, -1, -1, dtype=trajectory.dtype)
    return jnp.sum(factors * per_iteration)


def endpoint_error(flow: jax.Array, flow_gt: jax.Array, valid: jax.Array, max_flow: float = 400.0) -> jax.Array:
    """Mean end-point error over the training mask (a differentiable metric for logging)."""
    mask = training_mask(flow_gt, valid, max_flow)
    error = jnp.linalg.norm(flow - jnp.where(mask[..., None] > 0, flow_gt, 0.0), axis=-1)
    return jnp.sum(error * mask) / jnp.maximum(jnp.sum(mask), 1.0)
