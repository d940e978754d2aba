"""Optical-flow error metrics (Middlebury / KITTI definitions).

Flow convention: (H, W, 2) arrays holding (u, v) in pixels.
"""

from __future__ import annotations

import numpy as np

from unroll.errors import InputError

__all__ = ["UNKNOWN_FLOW_THRESHOLD", "valid_mask", "flow_metrics"]

UNKNOWN_FLOW_THRESHOLD = 1e9
"""Middlebury marks unknown flow with values above this (usually 1.6666668e9)."""


def _check_flow_shape(flow: np.ndarray, name: str) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"{name}: expected a flow of shape (H, W, 2), got {flow.shape}")
    return flow


def valid_mask(flow_gt: np.ndarray) -> np.ndarray:
    """Pixels whose ground-truth flow is known.

    Args:
        flow_gt: (H, W, 2) flow.

    Returns:
        (H, W) bool: u and v are finite and |u|, |v| <= 1e9.

    Raises:
        InputError: If `flow_gt` is not (H, W, 2).
    """
    flow_gt = _check_flow_shape(flow_gt, "flow_gt")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(flow_gt) & (np.abs(flow_gt) <= UNKNOWN_FLOW_THRESHOLD)
    return np.all(ok, axis=2)


def flow_metrics(
    flow: np.ndarray, flow_gt: np.ndarray, valid: np.ndarray | None = None
) -> dict:
    """Compares a flow estimate with ground truth over the valid pixels.

    Args:
        flow: (H, W, 2) estimated flow.
        flow_gt: (H, W, 2) ground-truth flow.
        valid: Optional (H, W) bool mask; it is AND-ed with
            `valid_mask(flow_gt)`.

    Returns:
        Dict of Python numbers:
            epe: mean endpoint error |flow - flow_gt| in pixels.
            aae: mean angular error in degrees between (u, v, 1) and
                (u_gt, v_gt, 1) (Barron et al. / Middlebury).
            px1, px3, px5: percentage of pixels with endpoint error > 1, 3, 5.
            fl_all: percentage of pixels with endpoint error > 3 px and
                > 5 % of |flow_gt| (KITTI Fl-all).
            n_valid: number of pixels evaluated (int).

    Raises:
        InputError: On shape mismatches, non-finite estimates at valid pixels,
            or when no pixel is valid.
    """
    flow = _check_flow_shape(flow, "flow")
    flow_gt = _check_flow_shape(flow_gt, "flow_gt")
    if flow.shape != flow_gt.shape:
        raise InputError(
            f"flow and flow_gt differ in shape: {flow.shape} vs {flow_gt.shape}"
        )
    mask = valid_mask(flow_gt)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != flow.shape[:2]:
            raise InputError(
                f"valid: mask shape {valid.shape} does not match flow shape {flow.shape} "
                f"(expected {flow.shape[:2]})"
            )
        mask &= valid.astype(bool)
    n_valid = int(np.count_nonzero(mask))
    if n_valid == 0:
        raise InputError("flow_gt: no valid pixels to evaluate")

    est = np.asarray(flow, np.float64)[mask]  # (N, 2)
    gt = np.asarray(flow_gt, np.float64)[mask]
    n_bad = int(np.count_nonzero(~np.all(np.isfinite(est), axis=1)))
    if n_bad:
        raise InputError(f"flow: non-finite values at {n_bad} valid pixels")

    epe = np.hypot(est[:, 0] - gt[:, 0], est[:, 1] - gt[:, 1])
    dot = est[:, 0] * gt[:, 0] + est[:, 1] * gt[:, 1] + 1.0
    norms = np.sqrt((np.sum(est**2, axis=1) + 1.0) * (np.sum(gt**2, axis=1) + 1.0))
    angle = np.degrees(np.arccos(np.clip(dot / norms, -1.0, 1.0)))
    gt_mag = np.hypot(gt[:, 0], gt[:, 1])

    def percent(outliers: np.ndarray) -> float:
        return float(100.0 * np.count_nonzero(outliers) / n_valid)

    return {
        "epe": float(epe.mean()),
        "aae": float(angle.mean()),
        "px1": percent(epe > 1.0),
        "px3": percent(epe > 3.0),
        "px5": percent(epe > 5.0),
        "fl_all": percent((epe > 3.0) & (epe > 0.05 * gt_mag)),
        "n_valid": n_valid,
    }
