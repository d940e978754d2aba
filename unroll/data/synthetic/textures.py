"""Textures: RGB images laid over texture coordinates, and the procedural and photographic sources
they are drawn from."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from unroll.data.synthetic.motion import _wave

@dataclass(frozen=True, eq=False)
class Texture:
    """An RGB image laid over texture coordinates: texel ``(i, j)`` sits at ``origin + (j, i)``.

    Attributes:
        image: (3, h, w) float32, channels first, 0..255, h, w >= 2.
        origin: Texture coordinates ``(x, y)`` of texel ``(0, 0)``.
    """

    image: np.ndarray
    origin: tuple[float, float]

    def sample(self, coords: np.ndarray) -> np.ndarray:
        """Bilinear lookup, clamped at the border: (2, N) texture coordinates -> (3, N) float32."""
        h, w = self.image.shape[1:]
        x = np.clip(coords[0] - self.origin[0], 0, w - 1)
        y = np.clip(coords[1] - self.origin[1], 0, h - 1)
        x0, y0 = np.minimum(x.astype(np.intp), w - 2), np.minimum(y.astype(np.intp), h - 2)
        fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
        flat, i = self.image.reshape(3, -1), y0 * w + x0
        top, bottom = np.take(flat, i, 1), np.take(flat, i + w, 1)
        top += (np.take(flat, i + 1, 1) - top) * fx
        bottom += (np.take(flat, i + w + 1, 1) - bottom) * fx
        return top + (bottom - top) * fy


def _upsample2(field: np.ndarray) -> np.ndarray:
    """Linear interpolation at half steps: (C, a, b) lattice -> (C, 2a - 1, 2b - 1)."""
    c, a, b = field.shape
    out = np.empty((c, 2 * a - 1, 2 * b - 1), field.dtype)
    out[:, ::2, ::2] = field
    out[:, 1::2, ::2] = 0.5 * (field[:, 1:] + field[:, :-1])
    out[:, :, 1::2] = 0.5 * (out[:, :, 2::2] + out[:, :, :-2:2])
    return out


def _fbm(rng: np.random.Generator, channels: int, h: int, w: int, roughness: float) -> np.ndarray:
    """Fractal value noise: (channels, h, w) float32, zero mean, unit standard deviation.

    Uniform noise on lattices of spacing 2^l px (l = 0, 1, ...), weighted 2^(l * roughness) and
    summed coarse to fine by repeated 2x upsampling (a Laplacian pyramid in reverse).
    """
    field = np.zeros((channels, 2, 2), np.float32)
    for level in range(math.ceil(math.log2(max(h, w, 2))), -1, -1):
        lh, lw = -(-h >> level) + 1, -(-w >> level) + 1  # samples at 0, 2^l, 2 * 2^l, ...
        noise = rng.random((channels, lh, lw), np.float32) - 0.5
        field = _upsample2(field)[:, :lh, :lw] + np.float32(2.0 ** (level * roughness)) * noise
    field = field[:, :h, :w]
    return (field - field.mean()) / field.std()


def _noise(rng, h, w):
    """Fractal value noise of random roughness."""
    return np.clip(0.5 + 0.25 * _fbm(rng, 1, h, w, rng.uniform(0.5, 1.5))[0], 0, 1)


def _plane_wave(rng, h, w, angle):
    """Phase, in periods, of a wave of period 3..24 px at `angle`: (h, w)."""
    period = rng.uniform(3.0, 24.0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return (x * math.cos(angle) + y * math.sin(angle)) / period + rng.random()


def _stripes(rng, h, w):
    """Parallel stripes, from smooth waves to nearly square ones."""
    sharpness = rng.uniform(1.0, 8.0)  # 1: smooth waves, 8: nearly square
    return np.clip(0.5 + 0.5 * sharpness * _wave(_plane_wave(rng, h, w, rng.uniform(0, np.pi))),
                   0, 1)


def _checks(rng, h, w):
    """A (possibly rectangular) checkerboard: the product of two crossing waves."""
    angle, sharpness = rng.uniform(0, np.pi), rng.uniform(1.0, 8.0)
    across = _plane_wave(rng, h, w, angle + np.pi / 2)
    product = _wave(_plane_wave(rng, h, w, angle)) * _wave(across)
    return np.clip(0.5 + 0.5 * sharpness * product, 0, 1)


def _blobs(rng, h, w):
    """Sharp-edged random blobs: a threshold of coarse fractal noise."""
    return (_fbm(rng, 1, h, w, 1.5)[0] > rng.uniform(-0.7, 0.7)).astype(np.float32)


_PATTERNS = {"noise": _noise, "stripes": _stripes, "checks": _checks, "blobs": _blobs}
"""Scalar patterns in [0, 1], by name: (rng, h, w) -> (h, w), coloured by `sampling._texture`."""


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled sample photographs, (3, h, w) float32; () without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        return ()
    loaders = (data.astronaut, data.chelsea, data.coffee, data.rocket, data.immunohistochemistry,
               data.hubble_deep_field, data.brick, data.grass, data.gravel)
    photos = []
    for load in loaders:
        try:
            image = load()
        except Exception:  # noqa: BLE001 -- a photo missing from the install, or a failed download
            continue
        image = np.asarray(image, np.float32)
        image = image[..., :3].transpose(2, 0, 1) if image.ndim == 3 else np.stack([image] * 3)
        photos.append(np.ascontiguousarray(image))
    return tuple(photos)


def _photo(rng, h, w):
    """A random crop of a random photograph, mirrored to size where it is too small: (3, h, w)."""
    photo = _photos()[rng.integers(len(_photos()))]
    pad = ((0, 0), (0, max(0, h - photo.shape[1])), (0, max(0, w - photo.shape[2])))
    photo = np.pad(photo, pad, mode="symmetric")
    top, left = rng.integers(photo.shape[1] - h + 1), rng.integers(photo.shape[2] - w + 1)
    return photo[:, top:top + h, left:left + w][:, :: rng.choice((-1, 1)), :: rng.choice((-1, 1))]
