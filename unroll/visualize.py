"""Flow visualisation with the Middlebury colour wheel (Baker et al., 2011).

The hue encodes the direction of motion and the saturation its magnitude
relative to `max_flow`: zero motion is white, motion of `max_flow` pixels is
the fully saturated wheel colour, and larger motion is darkened.
"""

from __future__ import annotations

import os

import numpy as np

from unroll.errors import InputError
from unroll.images import write_image
from unroll.metrics import valid_mask

__all__ = ["color_wheel", "flow_to_color", "write_flow_image"]

# Number of colours in each segment of the wheel, going
# red -> yellow -> green -> cyan -> blue -> magenta -> red.
_SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))


def color_wheel() -> np.ndarray:
    """Builds the 55-colour Middlebury wheel.

    In each segment one RGB channel ramps up or down in steps of
    floor(255 * i / n), i = 0..n-1, while the others are held at 0 or 255.

    Returns:
        (55, 3) float64 array of RGB values in [0, 255].
    """
    rows = []
    for seg, n in _SEGMENTS:
        ramp = np.floor(255.0 * np.arange(n) / n)
        full, zero = np.full(n, 255.0), np.zeros(n)
        rgb = {
            "RY": (full, ramp, zero),  # red, green rising
            "YG": (255.0 - ramp, full, zero),  # red falling, green
            "GC": (zero, full, ramp),  # green, blue rising
            "CB": (zero, 255.0 - ramp, full),  # green falling, blue
            "BM": (ramp, zero, full),  # red rising, blue
            "MR": (full, zero, 255.0 - ramp),  # red, blue falling
        }[seg]
        rows.append(np.stack(rgb, axis=1))
    return np.concatenate(rows, axis=0)


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """Colour-codes a flow field.

    The direction angle atan2(-v, -u) / pi in [-1, 1] is mapped linearly onto
    the wheel (-1 -> first colour, 1 -> last), interpolating between the two
    nearest wheel colours. With r = |flow| / max_flow, a colour c in [0, 1]
    becomes 1 - r (1 - c) for r <= 1 (white at r = 0) and 0.75 c for r > 1;
    the result is floor(255 * c).

    Args:
        flow: (H, W, 2) flow (u, v).
        max_flow: Magnitude shown fully saturated. Defaults to the largest
            magnitude among valid pixels (1 if that is zero or there are none).

    Returns:
        (H, W, 3) uint8 RGB image; pixels that fail `valid_mask` (non-finite,
        or |u| or |v| > 1e9) are black.

    Raises:
        InputError: If `flow` is not (H, W, 2) or `max_flow` is not a positive
            finite number.
    """
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"flow: expected shape (H, W, 2), got {flow.shape}")
    valid = valid_mask(flow)
    out = np.zeros(flow.shape[:2] + (3,), np.uint8)
    u = flow[..., 0].astype(np.float64)[valid]
    v = flow[..., 1].astype(np.float64)[valid]
    mag = np.hypot(u, v)
    if max_flow is None:
        max_flow = float(mag.max()) if mag.size else 0.0
        if max_flow == 0.0:
            max_flow = 1.0
    else:
        try:
            ok = bool(np.isfinite(max_flow) and max_flow > 0)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"max_flow: must be a positive finite number, got {max_flow!r}")
        max_flow = float(max_flow)

    wheel = color_wheel() / 255.0
    n = len(wheel)
    rad = mag / max_flow
    pos = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (n - 1)  # in [0, n - 1]
    k0 = np.floor(pos).astype(np.int64)
    k1 = (k0 + 1) % n
    frac = (pos - k0)[:, None]
    col = (1.0 - frac) * wheel[k0] + frac * wheel[k1]
    rad = rad[:, None]
    col = np.where(rad <= 1.0, 1.0 - rad * (1.0 - col), 0.75 * col)
    out[valid] = np.floor(255.0 * col).astype(np.uint8)
    return out


def write_flow_image(
    path: str | os.PathLike, flow: np.ndarray, max_flow: float | None = None
) -> None:
    """Writes `flow_to_color(flow, max_flow)` atomically as a PNG.

    Args:
        path: Destination .png file.
        flow: (H, W, 2) flow.
        max_flow: See `flow_to_color`.

    Raises:
        InputError: On bad input or if the file cannot be written.
    """
    write_image(path, flow_to_color(flow, max_flow))
