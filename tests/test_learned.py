"""Learned operators: each starts as its hand-tuned twin, and gradients reach every learned parameter."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import textured_pair

from learned.prefilters import LearnedPrefilter
from unroll.config import override
from unroll.methods import build, preset

SMALL = ["pyramid.levels=2", "pyramid.min_size=8", "solver.num_iters=4", "pyramid.warps=2"]
LEARNED = {
    "features": ["data.learned_channels=4"],
    "edge-weights": ["smoothness.learned=true"],
    "step-sizes": ["step.learned=sizes"],
    "preconditioner": ["step.learned=preconditioner"],
    "gru": ["step.learned=gru"],
    "prefilter": ["pyramid.learned_prefilter=true"],
}
# The learned part of each model, as it appears in the parameters' paths.
OWNERS = {"features": "encoder", "edge-weights": "edge_weights", "step-sizes": "scales",
          "preconditioner": "net", "gru": "step", "prefilter": "logits"}


def frames():
    i1, i2 = textured_pair(shape=(24, 30), shift=(0.8, -1.1))
    return jnp.asarray(i1[..., None], jnp.float32), jnp.asarray(i2[..., None], jnp.float32)


def flow_of(model, f1, f2):
    return nnx.jit(lambda m, a, b: m(a, b).flow)(model, f1, f2)


def learned_model(name, base="tv-l1", size=SMALL):
    return build(override(preset(base), size + LEARNED[name]), seed=1)


@functools.cache
def classical_flow(base):
    return flow_of(build(override(preset(base), SMALL)), *frames())


# The horn-schunck scaffold repeats the same operator checks on a second energy.
@pytest.mark.parametrize("base", ["tv-l1", pytest.param("horn-schunck", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(LEARNED))
def test_learned_operator_starts_as_its_hand_tuned_twin(name, base):
    learned = flow_of(learned_model(name, base), *frames())
    np.testing.assert_allclose(learned, classical_flow(base), atol=1e-4, rtol=1e-4)


def test_hand_tuned_methods_have_no_parameters():
    for name in ["tv-l1", "horn-schunck", "lucas-kanade"]:
        assert jax.tree.leaves(nnx.state(build(preset(name)), nnx.Param)) == []


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_training_can_start_from_the_classical_point(name):
    # At initialisation (exactly the hand-tuned method) the loss must already have a gradient:
    # a learned part that starts at a stationary point of the loss would never move. (Two levels:
    # the second one's prefilter is a Gaussian; the first one's, for tv-l1, the identity.)
    model = learned_model(name, size=["pyramid.levels=2", "pyramid.min_size=8", "pyramid.warps=1",
                                      "solver.num_iters=3"])
    f1, f2 = frames()
    target = jnp.broadcast_to(jnp.array([1.1, -0.8]), f1.shape[:2] + (2,))
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(jnp.abs(m(f1, f2).flow - target)), argnums=nnx.DiffState(0, nnx.Param)))(model)
    assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads)) > 1e-6


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_gradients_reach_every_learned_parameter(name):
    model = learned_model(name, size=["pyramid.levels=1", "pyramid.warps=1", "solver.num_iters=3"])
    params = nnx.state(model, nnx.Param)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert paths and all(OWNERS[name] in p for p in paths), paths
    # Zero-initialised output layers block gradients to the layers before them; move off zero.
    noise = jax.tree.map(lambda x: 1e-2 * jax.random.normal(jax.random.key(0), x.shape), params)
    nnx.update(model, jax.tree.map(lambda p, n: p + n, params, noise))
    f1, f2 = frames()
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(f1, f2).flow ** 2)))(model)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


def test_learned_prefilter_taps_stay_a_symmetric_positive_blur():
    prefilter = LearnedPrefilter(num_levels=2, sigma=1.0, input_sigma=0.0)
    noise = jax.random.normal(jax.random.key(0), prefilter.logits.shape)
    prefilter.logits[...] = prefilter.logits[...] + 3.0 * noise
    for level in (0, 1):
        taps = np.asarray(prefilter.taps(level))
        assert taps.shape == (9,) and (taps > 0).all()
        np.testing.assert_allclose(taps, taps[::-1], rtol=1e-6)
        np.testing.assert_allclose(taps.sum(), 1.0, rtol=1e-6)


def test_learned_preconditioner_relaxation_stays_between_zero_and_its_bound():
    step = learned_model("preconditioner").solver.step  # wraps tv-l1's red-black step
    image = frames()[0]
    np.testing.assert_allclose(np.asarray(step.context(image)), 1.0, rtol=1e-6)  # starts as the twin
    last = step.net.layers[-1]
    for sign in (1.0, -1.0):  # a network pushed far either way
        last.kernel[...] = sign * 50.0 * jnp.ones_like(last.kernel[...])
        relaxation = np.asarray(step.context(image))
        assert relaxation.shape == image.shape[:2] + (2,)
        assert (relaxation >= 0).all() and (relaxation <= step.max_scale).all()
        assert np.abs(relaxation - (step.max_scale if sign > 0 else 0.0)).min() < 1e-3  # the bound is reached
