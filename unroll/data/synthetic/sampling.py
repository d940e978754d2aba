"""`sample_scene`: random scenes drawn from a `SyntheticConfig`, with their textures, motions and
deformations."""

from __future__ import annotations

import math

import numpy as np

from unroll.data.synthetic.config import SyntheticConfig
from unroll.data.synthetic.layer import Layer
from unroll.data.synthetic.motion import Waves, _compose
from unroll.data.synthetic.scene import Scene
from unroll.data.synthetic.shapes import _SHAPES, Plane
from unroll.data.synthetic.textures import _PATTERNS, Texture, _fbm, _photo, _photos

def _texture(config: SyntheticConfig, rng: np.random.Generator, box) -> Texture:
    """A random texture covering ``box = (x0, y0, x1, y1)`` of texture coordinates."""
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    h, w = math.ceil(box[3]) - y0 + 2, math.ceil(box[2]) - x0 + 2
    kinds = config.textures + (("photo",) if config.photo_textures and _photos() else ())
    kind = kinds[rng.integers(len(kinds))]
    if kind == "photo":
        image = _photo(rng, h, w)
    else:
        low, high = rng.uniform(0, 255, (2, 3, 1, 1)).astype(np.float32)
        image = low + _PATTERNS[kind](rng, h, w) * (high - low)
    # Smooth variation along a random colour, then per-texel grain.
    tint = rng.normal(0, 25.0, (3, 1, 1)).astype(np.float32)
    image = image + tint * _fbm(rng, 1, h, w, rng.uniform(0.5, 1.5))
    grain = rng.random((3, h, w), np.float32) - 0.5  # uniform, standard deviation 1 / sqrt(12)
    image += np.float32(config.texture_grain * math.sqrt(12)) * grain
    return Texture(np.clip(image, 0, 255), (x0, y0))


def _random_motion(config: SyntheticConfig, rng: np.random.Generator, centre, factor: float):
    """A (2, 3) affine map of frame 1 onto frame 2 about ``centre``, ranges scaled by `factor`.

    ``x -> centre + t + R(angle) S(scale) H(shear) (x - centre)``, with ``|t| <=
    factor * max_translation``.
    """
    distance = factor * config.max_translation * math.sqrt(rng.random())
    direction = rng.uniform(0, 2 * np.pi)
    angle = factor * math.radians(rng.uniform(*config.rotation))
    scale = math.exp(factor * rng.uniform(math.log(config.scale[0]), math.log(config.scale[1])))
    shear = factor * config.max_shear * rng.uniform(-1, 1)
    cos, sin = math.cos(angle), math.sin(angle)
    m = np.array([[cos, -sin], [sin, cos]]) @ np.array([[scale, scale * shear], [0.0, scale]])
    shift = np.asarray(centre) + distance * np.array([math.cos(direction), math.sin(direction)])
    return np.hstack([m, (shift - m @ centre)[:, None]])


def _random_waves(config: SyntheticConfig, rng: np.random.Generator) -> Waves:
    """Three waves of total amplitude <= deform_amplitude and wavelengths >= deform_wavelength
    (none if deform_amplitude is 0)."""
    count = 3 if config.deform_amplitude > 0 else 0
    sizes = rng.dirichlet(np.ones(count)) * rng.uniform(0, config.deform_amplitude)
    directions = rng.uniform(0, 2 * np.pi, (2, count))
    frequencies = 1.0 / (config.deform_wavelength * rng.uniform(1.0, 3.0, count))
    return Waves(sizes[:, None] * np.stack([np.cos(directions[0]), np.sin(directions[0])], 1),
                 frequencies[:, None] * np.stack([np.cos(directions[1]), np.sin(directions[1])], 1),
                 rng.random(count))


def sample_scene(config: SyntheticConfig, rng: np.random.Generator) -> Scene:
    """A random scene: a moving background and ``num_layers`` foreground shapes on top.

    Each foreground layer is centred anywhere in frame 1 with a random orientation and moves by
    `_random_motion`; the background's texture coordinates are frame-1 pixels and it moves by
    `_random_motion` with ranges scaled by ``background_motion``. Every layer has its own
    deformation (`_random_waves`).
    """
    h, w = config.size
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    affine1 = np.hstack([np.eye(2), np.zeros((2, 1))])
    affine2 = _random_motion(config, rng, centre, config.background_motion)
    waves = _random_waves(config, rng)
    # The texture must cover frame 1 and the preimage of frame 2 (grown by |d|) under affine2.
    grow = waves.bound + 1.0
    corners = np.array([[-grow, w - 1 + grow, -grow, w - 1 + grow],
                        [-grow, -grow, h - 1 + grow, h - 1 + grow]])
    inverse = np.linalg.inv(affine2[:, :2])
    seen = np.hstack([corners, inverse @ (corners - affine2[:, 2:])])
    box = (*seen.min(1), *seen.max(1))
    layers = [Layer(_texture(config, rng, box), Plane(), affine1, affine2, waves)]
    for _ in range(rng.integers(config.num_layers[0], config.num_layers[1] + 1)):
        radius = rng.uniform(*config.layer_radius) * min(h, w)
        shape = _SHAPES[config.shapes[rng.integers(len(config.shapes))]](rng, radius)
        centre = rng.uniform((0, 0), (w - 1, h - 1))
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        affine1 = np.array([[cos, -sin, centre[0]], [sin, cos, centre[1]]])
        affine2 = _compose(_random_motion(config, rng, centre, 1.0), affine1)
        texture = _texture(config, rng, (-shape.radius, -shape.radius, shape.radius, shape.radius))
        layers.append(Layer(texture, shape, affine1, affine2, _random_waves(config, rng)))
    return Scene(tuple(layers), (h, w))
