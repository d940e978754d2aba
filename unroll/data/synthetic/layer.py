"""`Layer`: a textured shape and its motion, with the backward maps that render it and the
fixed-point iteration that moves its texture points to frame 2."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from unroll.data.synthetic.motion import Waves, _apply
from unroll.data.synthetic.shapes import Blob, Ellipse, Plane, Polygon
from unroll.data.synthetic.textures import Texture
from unroll.errors import InputError

TOLERANCE = 1e-10
"""Bound, in pixels, on the error of the frame-2 positions found by fixed-point iteration."""


@dataclass(frozen=True, eq=False)
class Layer:
    """A textured shape and its motion.

    Attributes:
        texture: Its colours, in texture coordinates.
        shape: The region of texture coordinates it covers (`Plane` for the background).
        affine1: (2, 3) map from texture coordinates to frame 1.
        affine2: (2, 3) map from texture coordinates to frame 2, before the deformation.
        deformation: Frame-2 position ``q`` shows texture point ``affine2^-1(q + d(q))``;
            ``deformation.lipschitz`` must be < 1.
    """

    texture: Texture
    shape: Plane | Ellipse | Polygon | Blob
    affine1: np.ndarray
    affine2: np.ndarray
    deformation: Waves

    def __post_init__(self):
        if not self.deformation.lipschitz < 1:
            raise InputError(f"Layer.deformation: Lipschitz constant must be < 1, got "
                             f"{self.deformation.lipschitz}")

    @functools.cached_property
    def _frames(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per frame: the inverse (2, 3) affine map, and a box ``(x0, y0, x1, y1)`` holding all
        that the layer covers there (the disc of its shape's radius, mapped, and grown by |d|)."""
        frames = {}
        grows = ((1, self.affine1, 0.0), (2, self.affine2, self.deformation.bound))
        for frame, affine, grow in grows:
            inverse = np.linalg.inv(affine[:, :2])
            reach = self.shape.radius * np.linalg.norm(affine[:, :2], 2) + grow
            frames[frame] = (np.hstack([inverse, -inverse @ affine[:, 2:]]),
                             np.concatenate([affine[:, 2] - reach, affine[:, 2] + reach]))
        return frames

    def box(self, frame: int) -> np.ndarray:
        """(4,) box ``(x0, y0, x1, y1)`` of `frame` (1 or 2) outside which the layer is absent."""
        return self._frames[frame][1]

    def to_texture(self, points: np.ndarray, frame: int) -> np.ndarray:
        """Backward map: (2, N) points of `frame` (1 or 2) -> (2, N) texture coordinates."""
        if frame == 2:
            points = points + self.deformation(points)
        return _apply(self._frames[frame][0], points)

    def to_frame2(self, coords: np.ndarray) -> np.ndarray:
        """Forward map: (2, N) texture coordinates -> (2, N) positions ``q`` in frame 2.

        Solves ``q + d(q) = affine2(coords)`` by the fixed-point iteration ``q <- affine2(coords)
        - d(q)``, a contraction of rate ``L = deformation.lipschitz``; it stops when the
        a-posteriori bound ``L / (1 - L) |q_n - q_n-1|`` on the error is below `TOLERANCE`.
        """
        target = _apply(self.affine2, coords)
        lip = self.deformation.lipschitz
        q = target - self.deformation(target)
        while True:
            q, previous = target - self.deformation(q), q
            if lip / (1 - lip) * np.abs(q - previous).max(initial=0.0) <= TOLERANCE:
                return q
