"""The unrolled solver and coarse-to-fine driver: jit == eager, vmap == loop, trajectory, warm start."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import textured_pair

from unroll.config import override
from unroll.errors import InputError
from unroll.estimator import FlowEstimator
from unroll.methods import PRESETS, build, preset

SMALL = ["pyramid.levels=2", "solver.num_iters=5"]


def frames(seed=0, shape=(24, 28)):
    i1, i2 = textured_pair(shape=shape, seed=seed)
    return jnp.asarray(i1[..., None], jnp.float32), jnp.asarray(i2[..., None], jnp.float32)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_jit_equals_eager(name):
    model = build(override(preset(name), SMALL))
    f1, f2 = frames()
    eager = model(f1, f2).flow
    np.testing.assert_allclose(jax.jit(lambda a, b: model(a, b).flow)(f1, f2), eager, atol=1e-4)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_vmap_equals_loop(name):
    est = FlowEstimator(override(preset(name), SMALL))
    pairs = [frames(seed) for seed in range(3)]
    batch = est.batch(np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs]))
    for k, (a, b) in enumerate(pairs):
        np.testing.assert_allclose(batch[k], est(a, b), atol=1e-4)


def test_trajectory_holds_every_iteration_of_the_finest_stack():
    model = build(override(preset("horn-schunck"), ["pyramid.levels=1", "pyramid.warps=1", "pyramid.median_size=0",
                                                     "solver.num_iters=7"]), keep_trajectory=True)
    f1, f2 = frames()
    solution = model(f1, f2)
    assert solution.trajectory.shape == (7,) + f1.shape[:2] + (2,)
    np.testing.assert_allclose(solution.trajectory[-1], solution.flow)
    shorter = build(override(preset("horn-schunck"), ["pyramid.levels=1", "pyramid.warps=1",
                                                      "pyramid.median_size=0", "solver.num_iters=3"]))(f1, f2)
    np.testing.assert_allclose(solution.trajectory[2], shorter.flow, atol=1e-6)


def test_warm_start_continues_where_a_run_stopped():
    config = override(preset("tv-l1"), ["pyramid.levels=1", "pyramid.median_size=0", "solver.num_iters=10"])
    f1, f2 = frames(shape=(20, 24))
    three = build(override(config, ["pyramid.warps=3"]))(f1, f2).flow
    two = build(override(config, ["pyramid.warps=2"]))(f1, f2).flow
    continued = build(override(config, ["pyramid.warps=1"]))(f1, f2, two).flow
    np.testing.assert_allclose(continued, three, atol=1e-5)
    assert np.abs(two - three).max() > 1e-3


def test_level_iters_override_per_level():
    base = override(preset("horn-schunck"), ["pyramid.levels=2", "pyramid.min_size=8", "pyramid.warps=1", "pyramid.median_size=0",
                                             "solver.num_iters=5"])
    f1, f2 = frames()
    same = build(override(base, ["solver.level_iters=5,5"]))(f1, f2).flow
    np.testing.assert_allclose(same, build(base)(f1, f2).flow)
    different = build(override(base, ["solver.level_iters=5,1"]))(f1, f2).flow
    assert np.abs(different - same).max() > 1e-4


def test_float64_in_float64_out():
    with jax.enable_x64(True):
        i1, i2 = textured_pair(shape=(20, 24))
        flow = build(override(preset("tv-l1"), SMALL))(jnp.asarray(i1[..., None]), jnp.asarray(i2[..., None])).flow
        assert flow.dtype == jnp.float64


def test_estimator_rejects_bad_frames():
    est = FlowEstimator(preset("tv-l1"))
    a, b = frames()
    with pytest.raises(InputError, match="NaN|finite"):
        est(a.at[3, 4, 0].set(np.nan), b)
    with pytest.raises(InputError, match="24, 28|shape"):
        est(a, b[:-1])
    with pytest.raises(InputError, match="small|minimum"):
        est(a[:6, :6], b[:6, :6])
