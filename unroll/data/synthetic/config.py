"""`SyntheticConfig`, what `generate_pair` draws from, and the checks of its values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unroll.data.synthetic.motion import MAX_LIPSCHITZ, WAVE_SLOPE
from unroll.data.synthetic.shapes import _SHAPES
from unroll.data.synthetic.textures import _PATTERNS
from unroll.errors import InputError

@dataclass(frozen=True)
class SyntheticConfig:
    """What `generate_pair` draws from. Ranges are ``(low, high)``, drawn uniformly.

    Attributes:
        size: ``(height, width)`` of the frames.
        num_layers: Number of foreground layers on top of the background.
        layer_radius: Radius of a foreground shape, as a fraction of ``min(height, width)``.
        shapes: Foreground shapes to draw from: ``"ellipse"``, ``"polygon"``, ``"blob"``.
        max_translation: Largest distance, in pixels, a layer's centre moves between frames.
        rotation: Rotation of a layer about its centre between frames, in degrees.
        scale: Scale factor of a layer between frames.
        max_shear: Largest shear of a layer between frames.
        background_motion: The background's translation, rotation, log-scale and shear are the
            foreground's times this factor (0 keeps it still, apart from its deformation).
        deform_amplitude: Largest displacement, in pixels, of a layer's non-rigid deformation.
        deform_wavelength: Shortest wavelength, in pixels, of the deformation (its smoothness).
            ``6.16 * deform_amplitude / deform_wavelength`` (the deformation's Lipschitz bound,
            with 6.16 = `WAVE_SLOPE`) may not exceed `MAX_LIPSCHITZ`.
        brightness: Largest additive change of each frame, in grey levels.
        contrast: Largest relative change of each frame's contrast.
        noise_sigma: Largest standard deviation of the Gaussian noise added to each frame (drawn
            once per pair, independent noise per frame), in grey levels.
        blur_sigma: Largest Gaussian blur, in pixels, drawn once and applied to both frames.
        textures: Procedural textures to draw from: ``"noise"`` (fractal value noise),
            ``"stripes"``, ``"checks"``, ``"blobs"``.
        photo_textures: Also draw textures from scikit-image's sample photographs when it is
            installed (``skimage.data``); without it this silently does nothing.
        texture_grain: Standard deviation of the per-texel colour noise added to every texture,
            in grey levels: detail at the finest scale, so that flow is learnable everywhere.
    """

    size: tuple[int, int] = (256, 320)
    num_layers: tuple[int, int] = (2, 5)
    layer_radius: tuple[float, float] = (0.1, 0.35)
    shapes: tuple[str, ...] = ("ellipse", "polygon", "blob")
    max_translation: float = 24.0
    rotation: tuple[float, float] = (-10.0, 10.0)
    scale: tuple[float, float] = (0.9, 1.1)
    max_shear: float = 0.05
    background_motion: float = 0.5
    deform_amplitude: float = 3.0
    deform_wavelength: float = 96.0
    brightness: float = 8.0
    contrast: float = 0.1
    noise_sigma: float = 2.0
    blur_sigma: float = 0.5
    textures: tuple[str, ...] = ("noise", "stripes", "checks", "blobs")
    photo_textures: bool = False
    texture_grain: float = 10.0

    def __post_init__(self):
        if not (isinstance(self.size, Sequence) and len(self.size) == 2
                and all(_is_int(n) and n >= 2 for n in self.size)):
            _fail("size", "must be (height, width), integers >= 2", self.size)
        _check_range("num_layers", self.num_layers, 0, integer=True)
        _check_range("layer_radius", self.layer_radius, 0, strict=True)
        _check_range("rotation", self.rotation, -math.inf)
        _check_range("scale", self.scale, 0, strict=True)
        for name in ("max_translation", "max_shear", "background_motion", "deform_amplitude",
                     "brightness", "noise_sigma", "blur_sigma", "texture_grain"):
            _check_number(name, getattr(self, name), 0)
        _check_number("deform_wavelength", self.deform_wavelength, 0, strict=True)
        _check_number("contrast", self.contrast, 0)
        if self.contrast >= 1:
            _fail("contrast", "must be < 1", self.contrast)
        if WAVE_SLOPE * self.deform_amplitude / self.deform_wavelength > MAX_LIPSCHITZ:
            _fail("deform_amplitude", f"6.16 * deform_amplitude / deform_wavelength must be <= "
                  f"{MAX_LIPSCHITZ} (the deformation's Lipschitz bound), with deform_wavelength "
                  f"{self.deform_wavelength}", self.deform_amplitude)
        _check_names("shapes", self.shapes, _SHAPES)
        _check_names("textures", self.textures, _PATTERNS)
        if not isinstance(self.photo_textures, bool):
            _fail("photo_textures", "must be True or False", self.photo_textures)


def _fail(name, problem, value):
    raise InputError(f"SyntheticConfig.{name}: {problem}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    real = isinstance(value, (int, float, np.integer, np.floating))
    return real and not isinstance(value, bool) and math.isfinite(value)


def _check_number(name, value, low, strict=False):
    if not _is_number(value) or value < low or (strict and value == low):
        _fail(name, f"must be a finite number {'>' if strict else '>='} {low}", value)


def _check_range(name, pair, low, strict=False, integer=False):
    kind = "integers" if integer else "finite numbers"
    if not (isinstance(pair, Sequence) and len(pair) == 2
            and all(_is_int(v) if integer else _is_number(v) for v in pair)):
        _fail(name, f"must be (low, high), two {kind}", pair)
    if pair[0] < low or (strict and pair[0] == low):
        _fail(name, f"low must be {'>' if strict else '>='} {low}", pair)
    if pair[0] > pair[1]:
        _fail(name, "low must be <= high", pair)


def _check_names(name, names, known):
    if isinstance(names, str) or not names or any(n not in known for n in names):
        _fail(name, f"must be a non-empty tuple of {', '.join(map(repr, known))}", names)
