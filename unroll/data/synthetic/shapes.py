"""Shapes: regions of texture coordinates, star-shaped about the origin, and random ones."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

@dataclass(frozen=True)
class Plane:
    """The whole plane (the background)."""

    radius = math.inf

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """(2, N) texture coordinates -> (N,) bool."""
        return np.ones(coords.shape[1], bool)


@dataclass(frozen=True)
class Ellipse:
    """Points with ``(x / a)^2 + (y / b)^2 <= 1``."""

    a: float
    b: float

    @property
    def radius(self) -> float:
        return max(self.a, self.b)

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """(2, N) texture coordinates -> (N,) bool."""
        return (coords[0] / self.a) ** 2 + (coords[1] / self.b) ** 2 <= 1.0


@dataclass(frozen=True, eq=False)
class Polygon:
    """A polygon star-shaped about the origin.

    Attributes:
        vertices: (n, 2) vertices by increasing angle in (-pi, pi], consecutive ones less than pi
            apart, so that the polygon is the union of the triangles (origin, v_i, v_i+1).
    """

    vertices: np.ndarray

    @property
    def radius(self) -> float:
        return float(np.hypot(*self.vertices.T).max())

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """(2, N) texture coordinates -> (N,) bool."""
        vx, vy = self.vertices.T
        i = (np.searchsorted(np.arctan2(vy, vx), np.arctan2(coords[1], coords[0])) - 1) % len(vx)
        j = (i + 1) % len(vx)
        # Inside the triangle of the point's sector: on the origin's side of its outer edge.
        ax, ay = vx[i], vy[i]
        return (vx[j] - ax) * (coords[1] - ay) - (vy[j] - ay) * (coords[0] - ax) >= 0


@dataclass(frozen=True, eq=False)
class Blob:
    """Points with ``|c| <= r0 (1 + Re sum_k w_k e^(i k theta))``, ``theta`` the angle of ``c``.

    Attributes:
        r0: Mean radius.
        weights: (K,) complex ``w_k`` for the harmonics ``k = 2 .. K + 1``; ``sum |w_k| < 1``.
    """

    r0: float
    weights: np.ndarray

    @property
    def radius(self) -> float:
        return self.r0 * (1.0 + float(np.abs(self.weights).sum()))

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """(2, N) texture coordinates -> (N,) bool."""
        z = coords[0] + 1j * coords[1]
        r = np.abs(z)
        unit = z / np.maximum(r, 1e-300)  # e^(i theta), with only powers (no trigonometry)
        power, wobble = unit * unit, np.zeros(len(z))
        for w in self.weights:
            wobble += (w * power).real
            power = power * unit
        return r <= self.r0 * (1.0 + wobble)


def _random_ellipse(rng: np.random.Generator, radius: float) -> Ellipse:
    return Ellipse(radius, radius * rng.uniform(0.4, 1.0))


def _random_polygon(rng: np.random.Generator, radius: float) -> Polygon:
    n = rng.integers(4, 9)  # jittered by < 0.35 of a step, consecutive angles stay < pi apart
    angles = (np.arange(n) + rng.uniform(-0.35, 0.35, n) + rng.random()) * 2 * np.pi / n
    angles = np.sort(np.pi - (np.pi - angles) % (2 * np.pi))  # wrapped into (-pi, pi]
    radii = radius * rng.uniform(0.45, 1.0, n)
    return Polygon(np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1))


def _random_blob(rng: np.random.Generator, radius: float) -> Blob:
    weights = rng.dirichlet(np.ones(4)) * rng.uniform(0.1, 0.5) * np.exp(2j * np.pi * rng.random(4))
    return Blob(radius / (1.0 + np.abs(weights).sum()), weights)


_SHAPES = {"ellipse": _random_ellipse, "polygon": _random_polygon, "blob": _random_blob}
"""Random foreground shapes by name: (rng, bounding radius) -> shape."""
