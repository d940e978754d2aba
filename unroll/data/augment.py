"""Geometric augmentation of training samples: random scaling, flips and crops.

Every transform moves the frames, the flow and the masks together and keeps the flow's meaning:
pixel ``(x, y)`` of frame 1 moves to ``(x + u, y + v)`` in frame 2, in the transformed frames.
A sample is a dict with the fields of ``Sample`` (``Sample._asdict()``): ``frame1``, ``frame2``
``(h, w, c)``, ``flow`` ``(h, w, 2)``, ``valid`` ``(h, w)`` bool, and optionally the masks
``occluded`` and ``noc_valid`` (``None`` or absent when the dataset has none); other fields
(``name``) pass through unchanged::

    >>> rng = np.random.default_rng(0)                                    # doctest: +SKIP
    >>> out = augment(dataset[i]._asdict(), AugmentConfig(crop=(320, 448)), rng)
    >>> out["frame1"].shape, out["flow"].shape
    ((320, 448, 3), (320, 448, 2))

Pixel centres are the grid: pixel ``x`` of a frame of width ``w`` resized to ``w'`` sits at
``(x + 0.5) * w' / w - 0.5``, so a flow vector scales by exactly ``w' / w`` (and ``h' / h``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unroll.errors import InputError

__all__ = ["AugmentConfig", "augment", "rescale", "flip", "crop", "random_crop"]

FRAME_KEYS = ("frame1", "frame2")
MASK_KEYS = ("valid", "occluded", "noc_valid")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation parameters; the defaults suit FlyingChairs-sized frames (384 x 512).

    Attributes:
        crop: ``(height, width)`` of the random crop, or ``None`` for no crop. Frames smaller than
            this (after scaling) are scaled up until the crop fits.
        scale_prob: Probability of a random rescaling.
        min_log2_scale, max_log2_scale: The scale factor is ``2 ** s``, ``s`` uniform in this range.
        hflip_prob, vflip_prob: Probabilities of a horizontal (left-right) and a vertical flip.
        sparse: Ground truth valid at scattered pixels only (KITTI, HD1K: ``dataset.sparse``):
            rescaling then moves each valid vector to its new pixel instead of interpolating
            between valid and invalid ones.
    """

    crop: tuple[int, int] | None = (368, 496)
    scale_prob: float = 0.8
    min_log2_scale: float = -0.2
    max_log2_scale: float = 0.5
    hflip_prob: float = 0.5
    vflip_prob: float = 0.1
    sparse: bool = False

    def __post_init__(self):
        for field in ("scale_prob", "hflip_prob", "vflip_prob"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise InputError(f"AugmentConfig.{field}: {getattr(self, field)} is not a probability in [0, 1]")
        if self.min_log2_scale > self.max_log2_scale:
            raise InputError(f"AugmentConfig: min_log2_scale {self.min_log2_scale} > max_log2_scale "
                             f"{self.max_log2_scale}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise InputError(f"AugmentConfig.crop: {self.crop} is not a (height, width) of positive sizes")


def augment(sample: dict, config: AugmentConfig, rng: np.random.Generator) -> dict:
    """Randomly rescales, flips and crops ``sample``, in that order.

    The random numbers drawn are the same whatever the config, so equal generators give equal
    results, and changing one probability does not reshuffle the other choices.

    Args:
        sample: The sample dict (see the module docstring); it is not modified.
        config: The augmentation parameters.
        rng: The source of randomness.

    Returns:
        A new sample dict of the same keys, frames and flow ``config.crop`` in size when set.
    """
    _check(sample)
    do_scale, log2_scale = rng.random() < config.scale_prob, rng.uniform(config.min_log2_scale,
                                                                          config.max_log2_scale)
    do_hflip, do_vflip = rng.random() < config.hflip_prob, rng.random() < config.vflip_prob
    h, w = sample["flow"].shape[:2]
    scale = 2.0 ** log2_scale if do_scale else 1.0
    if config.crop is not None:
        scale = max(scale, config.crop[0] / h, config.crop[1] / w)  # the crop must fit
    shape = (round(h * scale), round(w * scale))
    if config.crop is not None:
        shape = (max(shape[0], config.crop[0]), max(shape[1], config.crop[1]))
    out = rescale(sample, shape, sparse=config.sparse) if shape != (h, w) else dict(sample)
    if do_hflip:
        out = flip(out, axis=1)
    if do_vflip:
        out = flip(out, axis=0)
    if config.crop is not None:
        out = random_crop(out, config.crop, rng)
    return out


def _check(sample: dict) -> None:
    missing = [k for k in (*FRAME_KEYS, "flow", "valid") if sample.get(k) is None]
    if missing:
        raise InputError(f"sample: missing {', '.join(missing)} (has {', '.join(sample)})")
    size = sample["flow"].shape[:2]
    for key in (*FRAME_KEYS, *MASK_KEYS):
        if sample.get(key) is not None and sample[key].shape[:2] != size:
            raise InputError(f"sample: {key} of size {sample[key].shape[:2]}, flow of size {size}")


def _map(sample: dict, frames, flow, masks) -> dict:
    """``sample`` with each field replaced by its function of the field (``None`` stays ``None``)."""
    out = dict(sample)
    for keys, fn in ((FRAME_KEYS, frames), (("flow",), flow), (MASK_KEYS, masks)):
        for key in keys:
            if sample.get(key) is not None:
                out[key] = fn(sample[key])
    return out


def flip(sample: dict, axis: int) -> dict:
    """Mirrors ``sample`` left-right (``axis=1``, negating ``u``) or upside down (``axis=0``, negating ``v``).

    Pixel ``x`` goes to ``w - 1 - x`` and its target ``x + u`` to ``w - 1 - x - u``, hence ``-u``.
    """
    if axis not in (0, 1):
        raise InputError(f"flip: axis must be 0 (vertical) or 1 (horizontal), got {axis}")

    def mirror(array):
        return np.ascontiguousarray(np.flip(array, axis))

    def mirror_flow(flow):
        flow = mirror(flow)
        flow[:, :, 1 - axis] *= -1  # axis 1 (x) holds u in channel 0, axis 0 (y) v in channel 1
        return flow

    return _map(sample, mirror, mirror_flow, mirror)


def crop(sample: dict, top: int, left: int, size: tuple[int, int]) -> dict:
    """The ``size = (height, width)`` window of ``sample`` at ``(top, left)``; flow values unchanged."""
    h, w = sample["flow"].shape[:2]
    if not (0 <= top and top + size[0] <= h and 0 <= left and left + size[1] <= w):
        raise InputError(f"crop: window {size} at (top {top}, left {left}) outside the {h} x {w} sample")

    def window(array):
        return np.ascontiguousarray(array[top:top + size[0], left:left + size[1]])

    return _map(sample, window, window, window)


def random_crop(sample: dict, size: tuple[int, int], rng: np.random.Generator) -> dict:
    """A ``size = (height, width)`` window of ``sample`` at a uniformly random position."""
    h, w = sample["flow"].shape[:2]
    if size[0] > h or size[1] > w:
        raise InputError(f"crop: window {size} larger than the {h} x {w} sample")
    return crop(sample, int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1)), size)


def _source_coords(new: int, old: int) -> np.ndarray:
    """Where the centres of ``new`` pixels fall on a grid of ``old`` pixels spanning the same extent."""
    return (np.arange(new) + 0.5) * (old / new) - 0.5


def _bilinear(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(h, w, c)`` array resampled bilinearly to ``shape``, float64; samples clamp at the border."""
    (h, w), (new_h, new_w) = array.shape[:2], shape
    y = np.clip(_source_coords(new_h, h), 0, h - 1)
    x = np.clip(_source_coords(new_w, w), 0, w - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    a = np.asarray(array, np.float64)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def _nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    (h, w), (new_h, new_w) = array.shape[:2], shape
    y = np.clip(np.rint(_source_coords(new_h, h)), 0, h - 1).astype(int)
    x = np.clip(np.rint(_source_coords(new_w, w)), 0, w - 1).astype(int)
    return array[y][:, x]


def rescale(sample: dict, shape: tuple[int, int], sparse: bool = False) -> dict:
    """``sample`` resized to ``shape = (height, width)``, its flow vectors scaled to match.

    Frames are resampled bilinearly. Dense flow (``sparse=False``) too, and a pixel stays valid
    only where every pixel it is interpolated from is valid; the other masks take the nearest
    pixel. Sparse flow (``sparse=True``) is never interpolated: each valid vector moves to the
    pixel nearest its new position (when two land on one pixel, one of them is kept; when
    upscaling, pixels between them stay invalid), and the masks move with it.

    Args:
        sample: The sample dict.
        shape: The new ``(height, width)``.
        sparse: Whether the ground truth is sparse (see above).
    """
    _check(sample)
    (h, w), (new_h, new_w) = sample["flow"].shape[:2], shape
    factors = np.array([new_w / w, new_h / h])  # (u, v) scale with (x, y)
    frames = {k: _bilinear(sample[k], shape).astype(np.float32) for k in FRAME_KEYS}
    valid = np.asarray(sample["valid"], bool)
    flow = np.where(valid[:, :, None], sample["flow"], 0.0)  # no unknown-flow markers (1e9) in the sums
    out = dict(sample) | frames
    if not sparse:
        out["flow"] = (_bilinear(flow, shape) * factors).astype(np.float32)
        out["valid"] = _bilinear(valid[:, :, None], shape)[:, :, 0] > 1 - 1e-6
        for key in MASK_KEYS[1:]:
            if sample.get(key) is not None:
                out[key] = _nearest(np.asarray(sample[key], bool), shape)
        return out
    ys, xs = np.nonzero(valid)
    ty = np.rint((ys + 0.5) * factors[1] - 0.5).astype(int)
    tx = np.rint((xs + 0.5) * factors[0] - 0.5).astype(int)
    inside = (ty >= 0) & (ty < new_h) & (tx >= 0) & (tx < new_w)
    ys, xs, ty, tx = ys[inside], xs[inside], ty[inside], tx[inside]
    out["flow"] = np.zeros((new_h, new_w, 2), np.float32)
    out["flow"][ty, tx] = flow[ys, xs] * factors
    for key in MASK_KEYS:
        if sample.get(key) is not None:
            out[key] = np.zeros((new_h, new_w), bool)
            out[key][ty, tx] = np.asarray(sample[key], bool)[ys, xs]
    return out
