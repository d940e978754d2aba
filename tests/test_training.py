"""Sequence loss against a NumPy reference; a few training steps lower the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers import textured_pair

from unroll.config import override
from unroll.losses import sequence_loss
from unroll.methods import build, preset
from unroll.training import OperatorRates, OptimConfig, make_train_step


def test_sequence_loss_matches_numpy():
    rng = np.random.default_rng(0)
    trajectory = rng.normal(size=(3, 4, 5, 2))
    gt = rng.normal(size=(4, 5, 2))
    gt[0, 0] = 1e10  # unknown ground truth
    valid = rng.uniform(size=(4, 5)) > 0.3
    mask = valid & (np.linalg.norm(gt, axis=-1) < 400)
    expected = sum(0.8 ** (2 - i) * np.abs(trajectory[i] - gt).sum(-1)[mask].mean() for i in range(3))
    np.testing.assert_allclose(sequence_loss(jnp.asarray(trajectory), jnp.asarray(gt), jnp.asarray(valid)), expected,
                               rtol=1e-6)


def translation_batch(n=2, shape=(24, 28)):
    """Pairs translated by known sub-pixel shifts; the border, where the shift is unknown, is invalid."""
    pairs = [textured_pair(shape=shape, shift=(0.6 * k - 0.4, 1.0 - 0.7 * k), seed=k) for k in range(n)]
    flows = [np.broadcast_to(np.array([1.0 - 0.7 * k, 0.6 * k - 0.4]), shape + (2,)) for k in range(n)]
    valid = np.zeros(shape, bool)
    valid[4:-4, 4:-4] = True
    return {"frame1": jnp.asarray(np.stack([a for a, _ in pairs])[..., None], jnp.float32),
            "frame2": jnp.asarray(np.stack([b for _, b in pairs])[..., None], jnp.float32),
            "flow": jnp.asarray(np.stack(flows), jnp.float32),
            "valid": jnp.asarray(np.stack([valid] * n))}


def test_a_few_steps_lower_the_loss():
    # A deliberately short stack (2 iterations, one level): learned step sizes can only help.
    config = override(preset("tv-l1"), ["pyramid.levels=1", "pyramid.warps=1", "pyramid.median_size=0",
                                        "solver.num_iters=2", "step.learned=sizes", "smoothness.learned=true"])
    model = build(config, keep_trajectory=True)
    step, params, opt_state = make_train_step(model, OptimConfig(steps=20, learning_rate=2e-2, schedule="constant"))
    batch = translation_batch()
    losses = []
    for _ in range(20):
        params, opt_state, measurements = step(params, opt_state, batch)
        losses.append(float(measurements["loss"]))
    assert losses[-1] < 0.85 * losses[0], losses
    assert np.isfinite(float(measurements["grad_norm"]))
    nnx.update(model, params)
    scales = np.asarray(model.solver.step.scales[...])
    assert np.abs(scales - 1).max() > 1e-3  # the parameters moved and were written back


def test_network_learning_rate_scale_applies_to_network_weights_only():
    config = override(preset("tv-l1"), ["pyramid.levels=1", "pyramid.warps=1", "pyramid.median_size=0",
                                        "solver.num_iters=2", "step.learned=sizes", "smoothness.learned=true"])
    batch = translation_batch()
    moved = {}
    for scale in (0.0, 0.1):
        step, params, opt_state = make_train_step(build(config, keep_trajectory=True),
                                                  OptimConfig(steps=1, learning_rate=1e-2, schedule="constant",
                                                              weight_decay=0.0, network_lr_scale=scale))
        start = nnx.to_pure_dict(params)
        end = nnx.to_pure_dict(step(params, opt_state, batch)[0])  # Adam's first step: +-rate per leaf
        net = lambda p: np.concatenate([np.ravel(x) for x in jax.tree.leaves(p["solver"]["energy"])])
        moved[scale] = (np.abs(net(end) - net(start)).max(),
                        np.abs(np.asarray(end["solver"]["step"]["scales"]) - start["solver"]["step"]["scales"]).max())
    assert moved[0.0][0] == 0.0                                # frozen network
    np.testing.assert_allclose(moved[0.1][0], 1e-3, rtol=1e-3)  # a tenth of the rate
    np.testing.assert_allclose([moved[0.0][1], moved[0.1][1]], 1e-2, rtol=1e-3)  # step sizes: the full rate


def test_operator_learning_rates_scale_their_operators_parameters_only():
    config = override(preset("tv-l1"), ["pyramid.levels=2", "pyramid.warps=1", "pyramid.median_size=0",
                                        "pyramid.learned_prefilter=true", "solver.num_iters=2",
                                        "step.learned=sizes", "smoothness.learned=true"])
    rates = OperatorRates(step=10.0, prefilter=0.0, smoothness=0.5)
    step, params, opt_state = make_train_step(build(config, keep_trajectory=True),
                                              OptimConfig(steps=1, learning_rate=1e-3, schedule="constant",
                                                          weight_decay=0.0, operator_lr_scale=rates))
    start = nnx.to_pure_dict(params)
    end = nnx.to_pure_dict(step(params, opt_state, translation_batch())[0])  # Adam's first step: +-rate per leaf
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), end, start)
    np.testing.assert_allclose(moved["solver"]["step"]["scales"], 1e-2, rtol=1e-3)
    assert moved["prefilter"]["logits"] == 0.0
    edge_net = jax.tree.leaves(moved["solver"]["energy"]["smoothness"])
    np.testing.assert_allclose(max(edge_net), 5e-4, rtol=1e-3)


def test_loss_weights_and_end_point_error_match_numpy():
    rng = np.random.default_rng(2)
    trajectory, gt = rng.normal(size=(3, 4, 5, 2)), rng.normal(size=(4, 5, 2))
    valid = np.ones((4, 5), bool)
    weights = (0.32, 0.08, 0.005)
    expected = sum(w * np.linalg.norm(trajectory[i] - gt, axis=-1).mean() for i, w in enumerate(weights))
    np.testing.assert_allclose(sequence_loss(jnp.asarray(trajectory), jnp.asarray(gt), jnp.asarray(valid),
                                             weights=weights, norm="epe"), expected, rtol=1e-5)
