"""Motion of a layer: affine maps and the smooth non-rigid deformation `Waves`.

An affine map is a (2, 3) array ``[M | b]``; points are (2, N) float64 arrays, rows ``x`` and
``y``. A deformation ``d`` with Lipschitz constant ``L < 1`` makes ``x -> x + d(x)`` a bijection
of the plane (see the package docstring); `MAX_LIPSCHITZ` bounds the ``L`` a configuration may ask
for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_LIPSCHITZ = 0.5
"""Largest Lipschitz constant a deformation may have (must be < 1; see the module docstring)."""

WAVE_SLOPE = 32 / (3 * math.sqrt(3))
"""Largest slope of `_wave`, per period (about 6.16; cos(2 pi t) has 2 pi)."""


def _wave(t: np.ndarray) -> np.ndarray:
    """A periodic profile close to cos(2 pi t): ``1 - 32 (u (1 - u))^2`` with ``u = t - floor(t)``.

    Period 1, range [-1, 1], twice continuously differentiable (also where u wraps), slope at
    most `WAVE_SLOPE`. It is arithmetic only (NumPy's float64 ``cos`` costs several times more)
    and computed in place, as it runs at every pixel in every fixed-point step.
    """
    u = t - np.floor(t)
    u *= 1.0 - u
    u *= u
    u *= -32.0
    u += 1.0
    return u


@dataclass(frozen=True, eq=False)
class Waves:
    """A smooth displacement field ``d(x) = sum_k a_k wave(k_k . x + phase_k)``, in pixels.

    ``wave`` (`_wave`) is periodic with range [-1, 1] and slope at most `WAVE_SLOPE`, so
    ``|d| <= sum_k |a_k|`` (`bound`) and ``d`` is Lipschitz with constant
    ``sum_k |a_k| |k_k| WAVE_SLOPE`` (`lipschitz`). No waves: ``d = 0``.

    Attributes:
        amplitudes: (K, 2) ``a_k`` in pixels.
        wavevectors: (K, 2) ``k_k`` in periods per pixel.
        phases: (K,) in periods.
    """

    amplitudes: np.ndarray
    wavevectors: np.ndarray
    phases: np.ndarray

    @property
    def bound(self) -> float:
        return float(np.hypot(*self.amplitudes.T).sum())

    @property
    def lipschitz(self) -> float:
        return WAVE_SLOPE * float(np.hypot(*self.amplitudes.T) @ np.hypot(*self.wavevectors.T))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(2, N) points -> (2, N) displacements."""
        phase = np.multiply.outer(self.wavevectors[:, 0], points[0])
        phase += np.multiply.outer(self.wavevectors[:, 1], points[1])
        phase += self.phases[:, None]
        return self.amplitudes.T @ _wave(phase)


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(2, 3) affine map ``[M | b]`` applied to (2, N) points: ``M x + b``."""
    return affine[:, :1] * points[0] + affine[:, 1:2] * points[1] + affine[:, 2:]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2, 3) affine map ``outer(inner(x))``."""
    return np.hstack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]])
