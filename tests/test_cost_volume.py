"""The cost-volume data term: against a NumPy reference, exact on integer translations, consistent
gradients and curvatures (float64), end to end in the solver, and as the base of a learned twin."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import textured_pair
from jax.test_util import check_grads
from scipy import ndimage

from classical.cost_volume import CostVolume
from classical.penalties import Charbonnier, Quadratic
from classical.smoothness import PairwiseSmoothness
from unroll.config import override
from unroll.energy import Energy
from unroll.errors import InputError
from unroll.methods import build, preset

PENALTIES = {"quadratic": Quadratic(), "charbonnier": Charbonnier(0.3, 0.5)}


@pytest.fixture
def float64():
    with jax.enable_x64(True):
        yield


def random_problem(seed=0, shape=(12, 14), channels=2):
    """Two textured channels per frame, frame 2 a noisy sub-pixel translate; random mask and flows."""
    rng = np.random.default_rng(seed)
    pairs = [textured_pair(shape, shift=(0.6, -1.3), seed=seed + c, smooth=1.5) for c in range(channels)]
    f1 = np.stack([p[0] for p in pairs], -1)
    f2 = np.stack([p[1] for p in pairs], -1) + rng.normal(0.0, 2.0, shape + (channels,))
    valid = rng.uniform(size=shape) > 0.2
    flow0 = rng.normal(size=shape + (2,))
    flow = flow0 + rng.normal(size=shape + (2,))
    return f1, f2, valid, flow0, flow


def reference_linearize(f1, f2, valid, flow0, radius, window_sigma, temperature, prior):
    """Block matching written out: loops over displacements, edge-padded shifts, SciPy's Gaussian."""
    h, w = f1.shape[:2]
    padded = np.pad(f2, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    offsets, costs = [], []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            ssd = ((shifted - f1) ** 2).sum(-1)
            costs.append(ndimage.gaussian_filter(ssd, window_sigma, mode="nearest"))
            offsets.append((dx, dy))
    costs, offsets = np.stack(costs, -1), np.array(offsets, np.float64)
    p = np.exp(-(costs - costs.min(-1, keepdims=True)) / temperature)
    p /= p.sum(-1, keepdims=True)
    mean = p @ offsets
    centred = offsets[None, None] - mean[..., None, :]
    covariance = np.einsum("hwk,hwki,hwkj->hwij", p, centred, centred)
    precision = np.linalg.inv(covariance + prior * np.eye(2)) * valid[..., None, None]
    return flow0 + mean, precision


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("radius, window_sigma, temperature", [(3, 1.0, 500.0), (2, 1.5, 1000.0)])
def test_linearize_matches_numpy_block_matching(radius, window_sigma, temperature):
    f1, f2, valid, flow0, flow = random_problem()
    data = CostVolume(radius, window_sigma, temperature, prior=0.05, weight=0.7)
    evidence = jax.jit(data.linearize)(*map(jnp.asarray, (f1, f2, valid, flow0)))
    target, precision = reference_linearize(f1, f2, valid, flow0, radius, window_sigma, temperature, 0.05)
    np.testing.assert_allclose(evidence["target"], target, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(evidence["precision"], precision, rtol=1e-4, atol=1e-6)
    # The distributions are neither one-hot nor flat here, so this checks more than the limits.
    assert 0.05 < np.median(np.linalg.inv(precision[valid])[:, 0, 0] - 0.05) < 2.0
    r = flow - target
    expected = 0.5 * 0.7 * np.einsum("hwi,hwij,hwj->hw", r, precision, r)
    np.testing.assert_allclose(data.energy(evidence, jnp.asarray(flow)), expected, rtol=1e-4, atol=1e-8)


def test_shapes_and_dtype_with_any_number_of_channels():
    f1, f2, valid, flow0, flow = (jnp.asarray(a, jnp.float32) if a.dtype != bool else jnp.asarray(a)
                                  for a in random_problem(channels=3))
    data = CostVolume(radius=1)
    evidence = data.linearize(data.features(f1), data.features(f2), valid, flow0)
    shapes = {k: (v.shape, v.dtype) for k, v in evidence.items()}
    assert shapes == {"target": ((12, 14, 2), jnp.float32), "precision": ((12, 14, 2, 2), jnp.float32),
                      "valid": ((12, 14), jnp.float32)}
    grad, curvature = data.gradient_and_curvature(evidence, flow)
    assert data.energy(evidence, flow).shape == (12, 14)
    assert grad.shape == (12, 14, 2) and curvature.shape == (12, 14, 2, 2)
    jitted = jax.jit(data.linearize)(data.features(f1), data.features(f2), valid, flow0)
    np.testing.assert_allclose(jitted["target"], evidence["target"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [(2, -1), (-3, 3), (0, 1)])
def test_integer_translation_is_matched_exactly(shift):
    dy, dx = shift
    i1 = textured_pair((40, 44), smooth=1.5)[0]
    i2 = np.roll(i1, shift, axis=(0, 1))  # i2(y + dy, x + dx) = i1(y, x): flow (dx, dy)
    frame1, frame2 = jnp.asarray(i1[..., None], jnp.float32), jnp.asarray(i2[..., None], jnp.float32)
    data = CostVolume(radius=3, window_sigma=1.0, temperature=1.0)
    evidence = jax.jit(data.linearize)(frame1, frame2, jnp.ones((40, 44), bool), jnp.zeros((40, 44, 2)))
    interior = (slice(10, -10), slice(10, -10))
    np.testing.assert_allclose(evidence["target"][interior], np.broadcast_to([dx, dy], (20, 24, 2)), atol=1e-3)
    # A one-hot match is as certain as the prior allows.
    np.testing.assert_allclose(evidence["precision"][interior], np.broadcast_to(np.eye(2) / 0.05, (20, 24, 2, 2)),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("penalty", sorted(PENALTIES))
def test_closed_form_gradient_matches_autodiff(penalty):
    data = CostVolume(2, 1.0, 100.0, penalty=PENALTIES[penalty], weight=0.7)
    energy = Energy(data, PairwiseSmoothness(1.5, PENALTIES[penalty], "4-neighbour"))
    f1, f2, valid, flow0, flow = map(jnp.asarray, random_problem(1))
    evidence = jax.jit(energy.linearize)(f1, f2, valid, flow0)
    grad, curvature = jax.jit(data.gradient_and_curvature)(evidence["data"], flow)
    autodiff = jax.jit(jax.grad(lambda f: jnp.sum(data.energy(evidence["data"], f))))(flow)
    np.testing.assert_allclose(grad, autodiff, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(curvature, jax.jit(data.curvature)(evidence["data"], flow))
    assert np.all(np.linalg.eigvalsh(np.asarray(curvature)) >= -1e-9)
    total_grad, _ = jax.jit(energy.gradient_and_curvature)(evidence, flow)
    np.testing.assert_allclose(total_grad, jax.jit(energy.gradient)(evidence, flow), rtol=1e-9, atol=1e-9)
    check_grads(jax.jit(lambda f: energy.value(evidence, f)), (flow,), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.usefixtures("float64")
def test_quadratic_curvature_is_the_exact_hessian_block():
    data = CostVolume(2, 1.0, 100.0, weight=0.7)
    f1, f2, valid, flow0, flow = map(jnp.asarray, random_problem(2, shape=(8, 9)))
    evidence = jax.jit(data.linearize)(f1, f2, valid, flow0)
    hessian = jax.jit(jax.hessian(lambda f: jnp.sum(data.energy(evidence, f))))(flow)  # (h, w, 2, h, w, 2)
    blocks = np.asarray(hessian)[np.arange(8)[:, None], np.arange(9)[None, :], :, np.arange(8)[:, None],
                                 np.arange(9)[None, :], :]
    np.testing.assert_allclose(data.curvature(evidence, flow), blocks, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_energy_is_differentiable_in_the_features():
    # Learned feature channels are trained through linearize: the soft match must be smooth in them.
    data = CostVolume(1, 1.0, 200.0)
    f1, f2, valid, flow0, flow = map(jnp.asarray, random_problem(3, shape=(6, 7)))
    loss = jax.jit(lambda a, b: jnp.sum(data.energy(data.linearize(a, b, valid, flow0), flow)))
    check_grads(loss, (f1, f2), order=1, modes=["rev"], eps=1e-4, rtol=1e-4)


def test_invalid_pixels_have_no_data_term():
    data = CostVolume(penalty=Charbonnier(0.5))
    f1, f2, valid, flow0, flow = map(jnp.asarray, random_problem(4))
    evidence = jax.jit(data.linearize)(f1, f2, valid, flow0)
    grad, curvature = data.gradient_and_curvature(evidence, flow)
    invalid = ~np.asarray(valid)
    assert np.all(np.asarray(data.energy(evidence, flow))[invalid] == 0)
    assert np.all(np.asarray(grad)[invalid] == 0) and np.all(np.asarray(curvature)[invalid] == 0)
    assert np.all(np.asarray(data.energy(evidence, flow))[~invalid] > 0)


SCAFFOLD = ["data.kind=cost-volume", "data.window_sigma=1", "smoothness.alpha=10", "pyramid.levels=2",
            "pyramid.warps=5", "solver.num_iters=100"]
SHIFT = (1.3, -2.6)  # (dy, dx): flow (u, v) = (-2.6, 1.3)


def frames(shape=(64, 72)):
    i1, i2 = textured_pair(shape, shift=SHIFT)
    return jnp.asarray(i1[..., None], jnp.float32), jnp.asarray(i2[..., None], jnp.float32)


def flow_of(model, f1, f2):
    return nnx.jit(lambda m, a, b: m(a, b).flow)(model, f1, f2)


def test_solver_recovers_translation():
    flow = np.asarray(flow_of(build(override(preset("horn-schunck"), SCAFFOLD)), *frames()))
    epe = np.linalg.norm(flow - [SHIFT[1], SHIFT[0]], axis=-1)[8:-8, 8:-8].mean()
    assert epe < 0.1, epe


def test_learned_features_start_as_the_hand_tuned_term_and_get_gradients():
    f1, f2 = frames((24, 28))
    size = ["pyramid.levels=1", "pyramid.warps=1", "pyramid.median_size=0", "solver.num_iters=3", "data.radius=2"]
    classical = flow_of(build(override(preset("horn-schunck"), SCAFFOLD + size)), f1, f2)
    model = build(override(preset("horn-schunck"), SCAFFOLD + size + ["data.learned_channels=4"]), seed=1)
    np.testing.assert_allclose(flow_of(model, f1, f2), classical, atol=1e-5, rtol=1e-5)

    params = nnx.state(model, nnx.Param)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert paths and all("encoder" in p for p in paths), paths
    # The encoder's zero-initialised last layer blocks gradients to the layers before it; move off zero.
    noise = jax.tree.map(lambda x: 1e-2 * jax.random.normal(jax.random.key(0), x.shape), params)
    nnx.update(model, jax.tree.map(lambda p, n: p + n, params, noise))
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(f1, f2).flow ** 2)))(model)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize("kwargs", [{"radius": 0}, {"radius": -2}, {"temperature": 0.0}, {"temperature": -5.0},
                                    {"prior": 0.0}])
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        CostVolume(**kwargs)


def test_bad_config_is_rejected_when_built():
    with pytest.raises(InputError, match="radius"):
        build(override(preset("horn-schunck"), ["data.kind=cost-volume", "data.radius=0"]))
