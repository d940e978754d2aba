"""Gradient modes: unrolled, rematerialised, truncated and implicit, against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import textured_pair

from classical.data_terms import BrightnessConstancy
from classical.prefilters import GaussianPrefilter
from classical.smoothness import PairwiseSmoothness
from classical.steps import BlockJacobiStep
from unroll.energy import Energy
from unroll.gradients import Implicit, Truncated, Unrolled
from unroll.solver import CoarseToFine, UnrolledSolver
from unroll.warp import BilinearWarp


def hs_solve(alpha, frame1, frame2, num_iters, mode):
    """Single-level Horn-Schunck flow ``(h, w, 2)`` with a differentiable ``alpha``."""
    solver = UnrolledSolver(Energy(BrightnessConstancy(), PairwiseSmoothness(alpha)), BlockJacobiStep(),
                            num_iters, mode)
    return CoarseToFine(solver, GaussianPrefilter(1.0, input_sigma=1.0), BilinearWarp())(frame1, frame2).flow


def loss(alpha, frame1, frame2, num_iters, mode):
    """A scalar that depends on every flow vector."""
    flow = hs_solve(alpha, frame1, frame2, num_iters, mode)
    return jnp.sum(jnp.sin(flow[..., 0]) + flow[..., 1] ** 2)


@pytest.fixture
def frames():
    i1, i2 = textured_pair(shape=(12, 14), shift=(0.3, -0.4), seed=3)
    with jax.enable_x64(True):
        yield jnp.asarray(i1[..., None]), jnp.asarray(i2[..., None])


def central_difference(f, x, eps):
    return (f(x + eps) - f(x - eps)) / (2 * eps)


@pytest.mark.parametrize("mode", [Unrolled(), Unrolled(remat=True)], ids=["unrolled", "remat"])
def test_unrolled_gradient_matches_finite_differences(frames, mode):
    f1, f2 = frames
    f = lambda a: loss(a, f1, f2, 30, mode)
    np.testing.assert_allclose(jax.grad(f)(4.0), central_difference(f, 4.0, 1e-4), rtol=1e-6)


def test_gradient_with_respect_to_frames_matches_finite_differences(frames):
    f1, f2 = frames
    direction = jnp.asarray(np.random.default_rng(0).normal(size=f2.shape))
    f = lambda t: loss(4.0, f1, f2 + t * direction, 30, Unrolled())
    grad_f2 = jax.grad(lambda im: loss(4.0, f1, im, 30, Unrolled()))(f2)
    np.testing.assert_allclose(jnp.vdot(grad_f2, direction), central_difference(f, 0.0, 1e-4), rtol=1e-6)


def test_implicit_gradient_matches_unrolled_at_convergence(frames):
    f1, f2 = frames
    unrolled = jax.grad(loss)(4.0, f1, f2, 3000, Unrolled())
    implicit = jax.grad(loss)(4.0, f1, f2, 3000, Implicit(adjoint_iters=500))
    fd = central_difference(lambda a: loss(a, f1, f2, 3000, Unrolled()), 4.0, 1e-4)
    np.testing.assert_allclose(implicit, unrolled, rtol=1e-6)
    np.testing.assert_allclose(implicit, fd, rtol=1e-6)


def test_implicit_forward_equals_unrolled_forward(frames):
    f1, f2 = frames
    np.testing.assert_allclose(hs_solve(4.0, f1, f2, 50, Implicit()), hs_solve(4.0, f1, f2, 50, Unrolled()))


def test_truncated_gradient_sees_only_the_last_step(frames):
    f1, f2 = frames
    n = 20
    previous = jax.lax.stop_gradient(hs_solve(4.0, f1, f2, n - 1, Unrolled()))
    solver = lambda a: UnrolledSolver(Energy(BrightnessConstancy(), PairwiseSmoothness(a)), BlockJacobiStep(), 1)
    model = CoarseToFine(solver(4.0), GaussianPrefilter(1.0, input_sigma=1.0), BilinearWarp())
    f1s, f2s = model.prefilter(f1, 0), model.prefilter(f2, 0)
    evidence = model.solver.energy.linearize(f1s, f2s, jnp.ones(f1.shape[:2], bool), jnp.zeros(f1.shape[:2] + (2,)))

    def last_step_loss(a):
        flow = solver(a)(evidence, previous).flow
        return jnp.sum(jnp.sin(flow[..., 0]) + flow[..., 1] ** 2)

    truncated = jax.grad(loss)(4.0, f1, f2, n, Truncated())
    np.testing.assert_allclose(truncated, central_difference(last_step_loss, 4.0, 1e-4), rtol=1e-6)
    assert not np.isclose(truncated, jax.grad(loss)(4.0, f1, f2, n, Unrolled()), rtol=1e-3)


def test_learned_parameter_receives_gradient_and_constants_do_not():
    """An nnx.Param in one operator is trainable; the hand-tuned operators hold no state."""
    i1, i2 = textured_pair(shape=(12, 14), seed=4)
    smoothness = PairwiseSmoothness(nnx.Param(jnp.asarray(4.0)))
    solver = UnrolledSolver(Energy(BrightnessConstancy(), smoothness), BlockJacobiStep(), 10)
    model = CoarseToFine(solver, GaussianPrefilter(1.0, input_sigma=1.0), BilinearWarp())

    def model_loss(m):
        return jnp.sum(m(jnp.asarray(i1[..., None]), jnp.asarray(i2[..., None])).flow ** 2)

    grads = nnx.grad(model_loss)(model)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) == 1 and "alpha" in jax.tree_util.keystr(leaves[0][0])
    assert float(leaves[0][1]) != 0.0
