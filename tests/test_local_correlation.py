"""The local correlation layer against a NumPy loop."""

from __future__ import annotations

import numpy as np
import pytest

from learned.local_correlation import local_correlation


def _reference(f1, f2, d, s):
    h, w, c = f1.shape
    shifts = range(-d, d + 1, s)
    out = np.zeros((h, w, len(shifts) ** 2))
    for y in range(h):
        for x in range(w):
            for i, dy in enumerate(shifts):
                for j, dx in enumerate(shifts):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        out[y, x, i * len(shifts) + j] = f1[y, x] @ f2[y + dy, x + dx] / c
    return out


@pytest.mark.parametrize("d, s", [(2, 1), (4, 2), (3, 3)])
def test_matches_a_loop_over_pixels_and_displacements(d, s):
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(2, 6, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(local_correlation(f1, f2, d, s), _reference(f1, f2, d, s), atol=1e-5)


def test_a_shifted_copy_scores_its_own_energy_at_its_displacement():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(12, 14, 8)).astype(np.float32)
    f1, f2 = base[2:10, 3:11], base[3:11, 1:9]  # f1(p) = f2(p + d) for d = (dx, dy) = (2, -1)
    scores = np.asarray(local_correlation(f1, f2, 2))
    np.testing.assert_allclose(scores[1:, :6, (-1 + 2) * 5 + (2 + 2)], (f1[1:, :6] ** 2).sum(-1) / 8, rtol=1e-5)
