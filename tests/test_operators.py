"""Operator battery: fused gradient/curvature against autodiff, curvature against hand formulas,
energies' gradients against finite differences (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from classical.data_terms import BrightnessConstancy, WindowedBrightnessConstancy
from classical.penalties import Charbonnier, Quadratic, weight
from classical.smoothness import STENCILS, PairwiseSmoothness
from unroll import image_ops
from unroll.energy import Energy

PENALTIES = {"quadratic": Quadratic(), "charbonnier": Charbonnier(0.3, 0.5), "robust": Charbonnier(0.1, 0.45)}


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def random_problem(seed=0, shape=(9, 11), channels=2):
    rng = np.random.default_rng(seed)
    f1 = jnp.asarray(rng.uniform(0, 255, shape + (channels,)))
    f2 = jnp.asarray(rng.uniform(0, 255, shape + (channels,)))
    valid = jnp.asarray(rng.uniform(size=shape) > 0.2)
    flow0 = jnp.asarray(rng.normal(size=shape + (2,)))
    flow = flow0 + jnp.asarray(rng.normal(size=shape + (2,)))
    return f1, f2, valid, flow0, flow


def neumann_curvature(smoothness, flow):
    """Independent reference: sum over all stencil offsets of w psi'((w_p - w_neighbour)^2)."""
    total = 0.0
    for (dy, dx), w in STENCILS[smoothness.stencil].items():
        diff = flow - image_ops.neighbour(flow, dy, dx)
        total = total + w * weight(smoothness.penalty, diff**2)
    return smoothness.alpha**2 * total


@pytest.mark.parametrize("penalty", sorted(PENALTIES))
@pytest.mark.parametrize("stencil", sorted(STENCILS))
def test_smoothness_fused_gradient_and_curvature(penalty, stencil):
    smoothness = PairwiseSmoothness(1.7, PENALTIES[penalty], stencil)
    *_, flow = random_problem()
    grad, curv = smoothness.gradient_and_curvature(flow, None)
    np.testing.assert_allclose(grad, jax.grad(lambda f: smoothness.energy(f, None))(flow), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(curv, neumann_curvature(smoothness, flow), rtol=1e-10)


def test_quadratic_horn_schunck_smoothness_has_constant_curvature_alpha_squared():
    *_, flow = random_problem()
    np.testing.assert_allclose(PairwiseSmoothness(3.0).curvature(flow, None), 9.0)


DATA_TERMS = {
    "brightness": lambda p: BrightnessConstancy(p, weight=0.7),
    "gradient-constancy": lambda p: BrightnessConstancy(p, gradient_weight=2.0),
    "windowed": lambda p: WindowedBrightnessConstancy(1.5, p),
}


@pytest.mark.parametrize("penalty", sorted(PENALTIES))
@pytest.mark.parametrize("kind", sorted(DATA_TERMS))
def test_data_term_fused_gradient_matches_autodiff(kind, penalty):
    data = DATA_TERMS[kind](PENALTIES[penalty])
    f1, f2, valid, flow0, flow = random_problem(1)
    evidence = data.linearize(data.features(f1), data.features(f2), valid, flow0)
    grad, curv = data.gradient_and_curvature(evidence, flow)
    autodiff = jax.grad(lambda f: jnp.sum(data.energy(evidence, f)))(flow)
    np.testing.assert_allclose(grad, autodiff, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(curv, data.curvature(evidence, flow))
    assert np.all(np.linalg.eigvalsh(np.asarray(curv)) >= -1e-9)


@pytest.mark.parametrize("kind", sorted(DATA_TERMS))
def test_quadratic_data_curvature_is_the_exact_hessian_block(kind):
    data = DATA_TERMS[kind](Quadratic())
    f1, f2, valid, flow0, flow = random_problem(2, shape=(5, 6))
    evidence = data.linearize(data.features(f1), data.features(f2), valid, flow0)
    per_pixel = lambda wp, p: data.energy(evidence, flow.at[p].set(wp))[p]
    for p in [(0, 0), (2, 3), (4, 5)]:
        np.testing.assert_allclose(data.curvature(evidence, flow)[p], jax.hessian(per_pixel)(flow[p], p), rtol=1e-9)


def test_invalid_pixels_have_no_data_term():
    data = BrightnessConstancy(Charbonnier(0.5))
    f1, f2, valid, flow0, flow = random_problem(3)
    evidence = data.linearize(f1, f2, valid, flow0)
    energy = np.asarray(data.energy(evidence, flow))
    np.testing.assert_allclose(energy[~np.asarray(valid)], 2 * 0.5 * Charbonnier(0.5)(0.0))  # two channels, rho = 0
    assert np.all(energy[np.asarray(valid)] > energy[~np.asarray(valid)].max())


@pytest.mark.parametrize("penalty", sorted(PENALTIES))
def test_energy_gradient_matches_finite_differences(penalty):
    energy = Energy(BrightnessConstancy(PENALTIES[penalty]), PairwiseSmoothness(2.0, PENALTIES[penalty], "4-neighbour"))
    f1, f2, valid, flow0, flow = random_problem(4, shape=(6, 7))
    evidence = energy.linearize(f1, f2, valid, flow0)
    check_grads(lambda f: energy.value(evidence, f), (flow,), order=1, modes=["rev"], eps=1e-6)
    grad, _ = energy.gradient_and_curvature(evidence, flow)
    np.testing.assert_allclose(grad, energy.gradient(evidence, flow), rtol=1e-9, atol=1e-9)


def test_charbonnier_weight_is_its_derivative():
    s = jnp.linspace(0.0, 10.0, 7)
    penalty = Charbonnier(0.2, 0.45)
    np.testing.assert_allclose(weight(penalty, s), 0.45 * (s + 0.04) ** (-0.55), rtol=1e-12)
    np.testing.assert_allclose(Charbonnier(0.2, 0.5)(s), np.sqrt(s + 0.04), rtol=1e-12)
