"""RAFT in the scaffold: published sizes, padding, both correlation back-ends, the truncated
gradient, warm start and a few training steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from learned.padding import padding
from learned.raft.model import raft
from unroll.config import override
from unroll.gradients import Truncated, Unrolled
from unroll.methods import build, count_params, preset
from unroll.training import OptimConfig, make_train_step


def _frames(shape, seed=0):
    """A smooth random frame and a copy shifted by (2, 1) px, both (h, w, 3) on 0..255."""
    rng = np.random.default_rng(seed)
    big = rng.uniform(0, 255, (shape[0] // 4 + 4, shape[1] // 4 + 4, 3))
    image = np.asarray(jax.image.resize(big, (shape[0] + 8, shape[1] + 8, 3), "cubic"), np.float32)
    return image[4:4 + shape[0], 4:4 + shape[1]], image[3:3 + shape[0], 2:2 + shape[1]]


@pytest.mark.parametrize("name, count", [("raft", 5_257_536), ("raft-small", 990_162)])
def test_parameter_counts_equal_the_reference_implementations(name, count):
    assert count_params(preset(name)) == count


def test_padding_to_multiples_of_eight_like_raft():
    assert padding((436, 1024), 8, "sintel") == ((2, 2), (0, 0))
    assert padding((375, 1242), 8, "kitti") == ((0, 1), (3, 3))
    assert padding((375, 1242), 8, "sintel") == ((0, 1), (3, 3))
    assert padding((370, 1226), 8, "sintel") == ((3, 3), (3, 3))
    assert padding((370, 1226), 8, "kitti") == ((0, 6), (3, 3))
    assert padding((64, 64), 8, "kitti") == ((0, 0), (0, 0))


@pytest.mark.parametrize("mode", ["sintel", "kitti"])
def test_odd_sizes_are_padded_and_cropped_back(mode):
    config = override(preset("raft-small"), ["solver.num_iters=2", f"model.padding={mode}"])
    frame1, frame2 = _frames((67, 93))
    solution = build(config, keep_trajectory=True)(jnp.asarray(frame1), jnp.asarray(frame2))
    assert solution.flow.shape == (67, 93, 2)
    assert solution.trajectory.shape == (2, 67, 93, 2)
    np.testing.assert_allclose(solution.trajectory[-1], solution.flow, atol=1e-6)
    assert np.all(np.isfinite(solution.flow))


@pytest.mark.parametrize("name", ["raft", "raft-small"])
def test_correlation_back_ends_give_the_same_flow_and_gradients(name):
    frame1, frame2 = _frames((64, 72))
    flows, grads = [], []
    for backend in ("all-pairs", "on-the-fly"):
        model = build(override(preset(name), ["solver.num_iters=3", f"model.correlation={backend}"]),
                      keep_trajectory=True)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            solution = nnx.merge(graphdef, params, rest)(frame1, frame2)
            return jnp.mean(jnp.abs(solution.trajectory - 1.0)), solution.flow

        (_, flow), grad = jax.value_and_grad(loss, has_aux=True)(params)
        flows.append(flow)
        grads.append(jax.tree.leaves(grad))
    np.testing.assert_allclose(flows[0], flows[1], atol=1e-4)
    scale = max(float(jnp.max(jnp.abs(g))) for g in grads[0])  # leaves that should be 0 hold round-off
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)


def test_truncated_gradient_detaches_the_flow_between_iterations():
    """RAFT's ``coords1.detach()``: the final flow depends on the warm start only through the
    values, not the gradient, when truncated; unrolled, the gradient flows back to it."""
    frame1, frame2 = _frames((64, 64))
    init = jnp.full((64, 64, 2), 0.5, jnp.float32)

    def sensitivity(mode):
        model = raft("raft-small", 3, mode, rngs=nnx.Rngs(0))
        return jax.grad(lambda f: jnp.sum(model(frame1, frame2, f).flow ** 2))(init)

    assert float(jnp.max(jnp.abs(sensitivity(Truncated())))) == 0.0
    assert float(jnp.max(jnp.abs(sensitivity(Unrolled())))) > 1e-3


def test_warm_start_with_no_iterations_returns_the_initial_flow():
    frame1, frame2 = _frames((64, 80))
    init = jnp.broadcast_to(jnp.array([1.5, -2.0], jnp.float32), (64, 80, 2))
    model = raft("raft-small", 0, Truncated(), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model(frame1, frame2, init).flow, init, atol=1e-5)


def test_jit_equals_eager():
    frame1, frame2 = _frames((64, 64))
    model = build(override(preset("raft"), ["solver.num_iters=2"]))
    eager = model(frame1, frame2).flow
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b).flow)(state, frame1, frame2)
    np.testing.assert_allclose(jitted, eager, atol=1e-4)


def test_a_few_training_steps_lower_the_loss():
    """RAFT's recipe (AdamW, one-cycle, clip 1, gamma 0.8) on one repeated batch of shifted pairs."""
    frame1, frame2 = _frames((64, 64))
    batch = {"frame1": frame1[None], "frame2": frame2[None],
             "flow": np.broadcast_to(np.float32([2.0, 1.0]), (1, 64, 64, 2)), "valid": np.ones((1, 64, 64), bool)}
    model = build(override(preset("raft-small"), ["solver.num_iters=4"]), keep_trajectory=True)
    step, params, opt_state = make_train_step(model, OptimConfig(steps=8, learning_rate=1e-4, schedule="constant"))
    losses = []
    for _ in range(8):
        params, opt_state, measured = step(params, opt_state, batch)
        losses.append(float(measured["loss"]))
    assert losses[-1] < 0.6 * losses[0], losses
