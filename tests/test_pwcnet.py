"""PWC-Net: the reference's parameter count by hand, padding and cropping of odd sizes, the
trajectory, jit against eager, the feature warp, the transposed convolution against torch's
definition, and a few training steps (which also show a gradient reaches every parameter)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from learned.pwcnet import PWCNet, deconv
from unroll.training import OptimConfig, make_train_step


def count(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def build(keep_trajectory=False, seed=0):
    """A ``PWCNet`` with its kernels drawn by NumPy from the module's He-normal initialiser's
    distribution (biases zero): no JAX initialiser compiled for each of its ~100 shapes."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: PWCNet(rngs=nnx.Rngs(0), keep_trajectory=keep_trajectory)))
    rng = np.random.default_rng(seed)

    def draw(s):
        if len(s.shape) < 4:
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1])), s.dtype)

    return nnx.merge(graphdef, jax.tree.map(draw, state))


def frames(shape, shift=(0.0, 0.0), seed=0):
    """A smooth random texture and a copy moved by ``shift = (u, v)`` px, both ``(h, w, 3)`` on 0..255:
    frame 2 at ``p`` is frame 1 at ``p - shift`` (the flow is ``shift`` everywhere)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    k = rng.uniform(-0.4, 0.4, (3, 8, 2))
    phase = rng.uniform(0, 2 * np.pi, (3, 8))

    def texture(x, y):
        waves = np.cos(k[..., 0, None, None] * x + k[..., 1, None, None] * y + phase[..., None, None])
        return np.moveaxis(127.5 + 127.5 * waves.mean(1), 0, -1).astype(np.float32)

    return texture(x, y), texture(x - shift[0], y - shift[1])


# -- parameter count by hand, from the layer shapes of NVlabs' PWCDCNet ------------------------------

def conv(kh, kw, cin, cout):
    return kh * kw * cin * cout + cout


PYRAMID = (3, 16, 32, 64, 96, 128, 196)
COST = 81  # (2 * 4 + 1) ** 2
DENSE = (128, 128, 96, 64, 32)


def estimator(cin, upsampling):
    """conv{l}_0..4 (DenseNet), predict_flow{l}, and deconv{l} + upfeat{l} above level 2."""
    layers = sum(conv(3, 3, cin + sum(DENSE[:i]), w) for i, w in enumerate(DENSE))
    out = cin + sum(DENSE)
    return layers + conv(3, 3, out, 2) + upsampling * (conv(4, 4, 2, 2) + conv(4, 4, out, 2))


PYRAMID_PARAMS = sum(conv(3, 3, a, b) + 2 * conv(3, 3, b, b) for a, b in zip(PYRAMID, PYRAMID[1:]))
ESTIMATOR_PARAMS = estimator(COST, True) + sum(estimator(COST + c + 4, level > 2)
                                               for level, c in zip((5, 4, 3, 2), (128, 96, 64, 32)))
CONTEXT = (COST + 32 + 4 + sum(DENSE), 128, 128, 128, 96, 64, 32, 2)
CONTEXT_PARAMS = sum(conv(3, 3, a, b) for a, b in zip(CONTEXT, CONTEXT[1:]))
HAND = PYRAMID_PARAMS + ESTIMATOR_PARAMS + CONTEXT_PARAMS
#: ``sum(p.numel() for p in PWCDCNet().parameters())``: also counts ``deconv2``, which its forward never uses.
REFERENCE = HAND + conv(4, 4, 2, 2)


def test_parameter_count_matches_the_reference_by_hand():
    assert HAND == 9_374_274 and REFERENCE == 9_374_340
    assert count(nnx.eval_shape(lambda: PWCNet(rngs=nnx.Rngs(0)))) == HAND
    # The published 8.75 M is PWCDCNet_old: no conv{l}aa layers in the pyramid.
    assert REFERENCE - sum(conv(3, 3, b, b) for b in PYRAMID[1:]) == 8_749_280


# -- forward: padding, cropping, trajectory, jit ---------------------------------------------------

@pytest.fixture(scope="module")
def model():
    """One randomly initialised ``PWCNet(keep_trajectory=True)`` for the whole file (never updated)."""
    return build(keep_trajectory=True)


@pytest.fixture(scope="module")
def odd_size_runs(model):
    """Eager and jitted solutions of one random 70x90 pair (padded to 128x128 inside)."""
    frame1, frame2 = (jnp.asarray(f) for f in frames((70, 90), (1.5, -0.5)))
    eager = model(frame1, frame2)
    jitted = nnx.jit(lambda m, a, b: m(a, b))(model, frame1, frame2)
    return eager, jitted


def test_odd_sizes_are_padded_and_cropped_back(odd_size_runs):
    solution, _ = odd_size_runs
    assert solution.flow.shape == (70, 90, 2)
    assert solution.trajectory.shape == (5, 70, 90, 2)  # levels 6, 5, 4, 3, 2
    np.testing.assert_array_equal(solution.trajectory[-1], solution.flow)
    assert np.all(np.isfinite(solution.trajectory))


def test_jit_equals_eager(odd_size_runs):
    eager, jitted = odd_size_runs
    np.testing.assert_allclose(jitted.flow, eager.flow, atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(jitted.trajectory, eager.trajectory, atol=1e-3, rtol=1e-4)


# -- the warp and the upsampling -------------------------------------------------------------------

def test_warp_is_identity_at_zero_flow_and_zero_outside_the_image(model):
    features = jnp.asarray(np.random.default_rng(0).normal(size=(6, 7, 5)), jnp.float32)
    np.testing.assert_array_equal(model.warp_features(features, jnp.zeros((6, 7, 2))), features)
    right = model.warp_features(features, jnp.broadcast_to(jnp.array([1.0, 0.0]), (6, 7, 2)))
    np.testing.assert_allclose(right[:, :-1], features[:, 1:], atol=1e-6)
    np.testing.assert_array_equal(right[:, -1], 0.0)  # sampled outside frame 2: masked, as the reference
    up = model.warp_features(features, jnp.broadcast_to(jnp.array([0.0, -0.25]), (6, 7, 2)))
    np.testing.assert_array_equal(up[0], 0.0)
    np.testing.assert_allclose(up[1:], 0.75 * features[1:] + 0.25 * features[:-1], atol=1e-6)


def test_deconvolution_is_torchs_transposed_convolution():
    """torch ``ConvTranspose2d(3, 2, 4, stride=2, padding=1)``: input pixel ``i`` adds ``W[:, :, a]``
    to output ``2 i - 1 + a``; its weight ``(in, out, 4, 4)`` is the kernel flipped and transposed."""
    rng = np.random.default_rng(0)
    x, weight, bias = rng.normal(size=(5, 6, 3)), rng.normal(size=(3, 2, 4, 4)), rng.normal(size=2)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: deconv(3, 2, rngs=nnx.Rngs(0))))
    kernel = weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
    layer = nnx.merge(graphdef, nnx.State({"kernel": nnx.Param(jnp.asarray(kernel, jnp.float32)),
                                           "bias": nnx.Param(jnp.asarray(bias, jnp.float32))}))
    full = np.zeros((2 * 5 + 2, 2 * 6 + 2, 2))  # output padded by 1 on each side
    for a in range(4):
        for b in range(4):
            full[a:a + 10:2, b:b + 12:2] += x @ weight[:, :, a, b]
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), full[1:-1, 1:-1] + bias, atol=1e-4)


# -- training --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def training(model):
    """The parameters before and after each of 4 steps on one 64x64 pair moved by (2, 1) px, and
    the losses. No weight decay: Adam moves exactly the leaves with a non-zero gradient."""
    config = OptimConfig(steps=4, learning_rate=1e-4, weight_decay=0.0, schedule="constant")
    step, params, opt_state = make_train_step(model, config)
    frame1, frame2 = frames((64, 64), (2.0, 1.0), seed=1)
    batch = {"frame1": frame1[None], "frame2": frame2[None],
             "flow": np.broadcast_to(np.float32([2.0, 1.0]), (1, 64, 64, 2)), "valid": np.ones((1, 64, 64), bool)}
    history, losses = [jax.tree.map(np.asarray, params)], []
    for _ in range(config.steps):
        params, opt_state, measurements = step(params, opt_state, batch)
        history.append(jax.tree.map(np.asarray, params))
        losses.append(float(measurements["loss"]))
    return history, losses


def test_gradients_reach_every_parameter(training):
    history, _ = training
    before, after = jax.tree_util.tree_flatten_with_path(history[0])[0], jax.tree.leaves(history[1])
    assert len(before) == len(after) == 2 * (18 + 5 * 6 + 4 * 2 + 7)  # kernel + bias per layer
    unchanged = [jax.tree_util.keystr(path) for (path, a), b in zip(before, after) if np.array_equal(a, b)]
    assert not unchanged


def test_a_few_training_steps_lower_the_loss(training):
    _, losses = training
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
