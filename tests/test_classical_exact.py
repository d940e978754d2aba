"""The classical special cases reproduce their independent NumPy references exactly."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import textured_pair

import references
from unroll.config import override
from unroll.estimator import FlowEstimator
from unroll.methods import preset


def single_scale(name: str, *assignments: str):
    """A preset reduced to one level, one warp and no median filter: the textbook method."""
    base = ["pyramid.levels=1", "pyramid.warps=1", "pyramid.median_size=0"]
    return FlowEstimator(override(preset(name), base + list(assignments)))


@pytest.mark.parametrize("alpha, iters", [(5.0, 1), (5.0, 60), (15.0, 200)])
def test_horn_schunck_equals_1981_iteration(alpha, iters):
    i1, i2 = textured_pair()
    est = single_scale("horn-schunck", f"smoothness.alpha={alpha}", f"solver.num_iters={iters}")
    flow = est(i1[..., None], i2[..., None])
    expected = references.horn_schunck(i1, i2, alpha, iters, sigma=1.0)
    np.testing.assert_allclose(flow, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))


def test_lucas_kanade_equals_windowed_least_squares():
    i1, i2 = textured_pair(shift=(-0.6, 0.3))
    est = single_scale("lucas-kanade", "data.window_sigma=2.5", "step.damping=0.5", "data.blend=0.5")
    flow = est(i1[..., None], i2[..., None])
    expected = references.lucas_kanade(i1, i2, window_sigma=2.5, damping=0.5, sigma=1.0)
    np.testing.assert_allclose(flow, expected, atol=2e-5)


def test_horn_schunck_gradient_descent_ablation_converges_to_same_fixed_point():
    # Plain gradient descent is the unpreconditioned ablation of the Jacobi step: slower, same minimiser.
    i1, i2 = textured_pair(shape=(16, 18))
    frames = (i1[..., None], i2[..., None])
    jacobi = single_scale("horn-schunck", "smoothness.alpha=20", "solver.num_iters=3000")(*frames)
    gradient = single_scale("horn-schunck", "smoothness.alpha=20", "step.kind=gradient",
                            "step.step_size=4e-4", "solver.num_iters=20000")(*frames)
    np.testing.assert_allclose(gradient, jacobi, atol=2e-3)


@pytest.mark.parametrize("step", ["step.kind=jacobi step.relaxation=1.0", "step.kind=sor"])
def test_tv_recovers_translation(step):
    i1, i2 = textured_pair(shape=(48, 64), shift=(1.5, -2.5))
    est = FlowEstimator(override(preset("tv-l1"), step.split() + ["pyramid.levels=3", "solver.num_iters=40"]))
    flow = est(i1[..., None], i2[..., None])
    interior = flow[8:-8, 8:-8]
    np.testing.assert_allclose(interior.mean(axis=(0, 1)), [-2.5, 1.5], atol=0.05)


def test_colour_and_gradient_constancy_options_recover_translation():
    i1, i2 = textured_pair(shape=(48, 64), shift=(1.5, -2.5))
    j1, j2 = textured_pair(shape=(48, 64), shift=(1.5, -2.5), seed=7)
    rgb1 = np.stack([i1, j1, 0.5 * (i1 + j1)], -1)
    rgb2 = np.stack([i2, j2, 0.5 * (i2 + j2)], -1)
    est = FlowEstimator(override(preset("tv-l1"), ["data.colour=true", "data.gradient_weight=2", "pyramid.levels=3"]))
    assert est.prepare(rgb1).shape == (48, 64, 3)
    assert est.model.solver.energy.data.features(est.prepare(rgb1)).shape == (48, 64, 9)
    flow = est(rgb1, rgb2)
    np.testing.assert_allclose(flow[8:-8, 8:-8].mean(axis=(0, 1)), [-2.5, 1.5], atol=0.05)
