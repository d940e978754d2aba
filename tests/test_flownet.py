"""FlowNetS and FlowNetC: parameter counts against FlowNetPytorch's (by hand, from its layer
shapes), the transposed convolution against torch's definition, shapes and padding, the
trajectory, gradients, jit against eager, a few training steps, and FlowNet 2.0-style stacking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import textured_pair

from learned.flownet import REFINE_INPUTS, Decoder, FlowNetC, FlowNetS, Stacked, deconv2d
from unroll.training import OptimConfig, make_train_step

# ClementPinard/FlowNetPytorch's flownets / flownetc (batchNorm=False), summed from the layer shapes
# below; the FlowNet 2.0 paper lists 38.67 M and 39.17 M.
REFERENCE_PARAMS = {FlowNetS: 38_675_536, FlowNetC: 39_174_320}


def count(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def abstract(factory):
    """The module ``factory(rngs)`` builds, with shapes but no values (no time spent initialising)."""
    return nnx.eval_shape(lambda: factory(nnx.Rngs(0)))


def build(factory, seed=0):
    """``factory(rngs)`` with He-scaled NumPy weights (kernels ``N(0, 2 / fan_in)``, biases
    ``N(0, 0.01^2)``): no JAX initialiser compiled for each of the many shapes."""
    graphdef, state = nnx.split(abstract(factory))
    rng = np.random.default_rng(seed)

    def draw(s):
        std = np.sqrt(2 / np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.01
        return jnp.asarray(std * rng.standard_normal(s.shape, np.float32), s.dtype)
    return nnx.merge(graphdef, jax.tree.map(draw, state))


def frames(shape, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.uniform(0, 255, shape + (3,)), jnp.float32) for _ in range(2))


# -- parameter counts by hand, from FlowNetPytorch's layer shapes -------------------------------------

def conv(k, cin, cout, bias=True):
    return k * k * cin * cout + bias * cout


def deconv(cin, cout):  # 4x4, no bias
    return 16 * cin * cout


def stem(cin):  # conv1, conv2, conv3
    return conv(7, cin, 64) + conv(5, 64, 128) + conv(5, 128, 256)


CONTRACTING = conv(3, 256, 512) + 3 * conv(3, 512, 512) + conv(3, 512, 1024) + conv(3, 1024, 1024)  # conv4..conv6_1
DECODER = (deconv(1024, 512) + deconv(1026, 256) + deconv(770, 128) + deconv(386, 64)  # deconv5..deconv2
           + sum(conv(3, c, 2, bias=False) for c in (1024, 1026, 770, 386, 194))   # predict_flow6..2
           + 4 * deconv(2, 2))                                                      # upsampled_flow6_to_5..3_to_2
HAND = {FlowNetS: stem(6) + conv(3, 256, 256) + CONTRACTING + DECODER,
        FlowNetC: stem(3) + conv(1, 256, 32) + conv(3, 32 + 441, 256) + CONTRACTING + DECODER}


@pytest.mark.parametrize("cls", [FlowNetS, FlowNetC])
def test_parameter_counts_match_flownetpytorch(cls):
    assert HAND[cls] == REFERENCE_PARAMS[cls]
    model = abstract(lambda rngs: cls(rngs=rngs))
    assert count(model.decoder) == DECODER
    assert count(model) == HAND[cls]


def test_a_refining_flownets_takes_six_more_channels_in_conv1():
    refiner = abstract(lambda rngs: FlowNetS(rngs=rngs, extra_inputs=REFINE_INPUTS))
    assert count(refiner) == HAND[FlowNetS] - stem(6) + stem(6 + REFINE_INPUTS)


# -- layers -----------------------------------------------------------------------------------------

def test_deconv_is_torchs_conv_transpose():
    """torch's ConvTranspose2d(cin, cout, 4, 2, 1) with weight ``W (cin, cout, 4, 4)``:
    ``out[2 y - 1 + ky, 2 x - 1 + kx] += in[y, x] W[:, :, ky, kx]``; the kernel is ``W`` as ``(ky, kx, cout, cin)``."""
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, 5, 4)), rng.normal(size=(4, 2, 4, 4))
    layer = nnx.eval_shape(lambda: deconv2d(4, 2, rngs=nnx.Rngs(0)))
    layer.kernel = nnx.Param(jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32))
    expected = np.zeros((8, 12, 2))
    for y, xx, ky, kx in np.ndindex(3, 5, 4, 4):
        oy, ox = 2 * y - 1 + ky, 2 * xx - 1 + kx
        if 0 <= oy < 6 and 0 <= ox < 10:
            expected[oy + 1, ox + 1] += x[y, xx] @ w[:, :, ky, kx]
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), expected[1:-1, 1:-1], rtol=1e-5, atol=1e-5)


def test_decoder_predicts_coarse_to_fine():
    skips = [jax.ShapeDtypeStruct((2, 32 // 2 ** k, 48 // 2 ** k, c), jnp.float32)
             for k, c in enumerate((128, 256, 512, 512, 1024))]
    decoder = abstract(lambda rngs: Decoder(rngs=rngs))
    predictions = nnx.eval_shape(lambda d, s: d(s), decoder, skips)
    assert [p.shape for p in predictions] == [(2, 32 // 2 ** k, 48 // 2 ** k, 2) for k in (4, 3, 2, 1, 0)]


# -- the models -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [FlowNetS, FlowNetC])
@pytest.mark.parametrize("shape", [(70, 90), (64, 129)])
def test_output_shapes_for_any_size(cls, shape):
    model = abstract(lambda rngs: cls(rngs=rngs, keep_trajectory=True))
    frame1, frame2 = (jax.ShapeDtypeStruct(shape + (3,), jnp.float32),) * 2
    solution = nnx.eval_shape(lambda m, a, b: m(a, b), model, frame1, frame2)
    assert solution.flow.shape == shape + (2,)
    assert solution.trajectory.shape == (5,) + shape + (2,)
    batched = (jax.ShapeDtypeStruct((2,) + shape + (3,), jnp.float32),) * 2
    solution = nnx.eval_shape(lambda m, a, b: m(a, b), model, *batched)
    assert solution.flow.shape == (2,) + shape + (2,) and solution.trajectory.shape == (2, 5) + shape + (2,)


def test_jit_matches_eager_and_the_trajectory_ends_at_the_flow():
    model = build(lambda rngs: FlowNetS(rngs=rngs, keep_trajectory=True))
    frame1, frame2 = frames((40, 50))
    eager = model(frame1, frame2)
    np.testing.assert_array_equal(eager.trajectory[-1], eager.flow)
    jitted = nnx.jit(lambda m, a, b: m(a, b))(model, frame1, frame2)
    scale = float(jnp.abs(eager.trajectory).max())
    assert scale > 0
    np.testing.assert_allclose(jitted.trajectory, eager.trajectory, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(jitted.trajectory[-1], jitted.flow, rtol=1e-6, atol=1e-6 * scale)


def test_gradients_reach_every_parameter_of_flownetc():
    model = build(lambda rngs: FlowNetC(rngs=rngs))
    frame1, frame2 = frames((40, 50))
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(40, 50, 2)), jnp.float32)
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(weights * m(frame1, frame2).flow)))(model)
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param)):
        assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_a_few_training_steps_lower_the_loss_and_reach_every_parameter_of_flownets():
    i1, i2 = textured_pair(shape=(64, 64), shift=(1.5, -2.0), smooth=3.0)
    batch = {"frame1": jnp.asarray(np.repeat(i1[None, ..., None], 3, -1), jnp.float32),
             "frame2": jnp.asarray(np.repeat(i2[None, ..., None], 3, -1), jnp.float32),
             "flow": jnp.broadcast_to(jnp.array([-2.0, 1.5]), (1, 64, 64, 2)),
             "valid": jnp.ones((1, 64, 64), bool)}
    model = build(lambda rngs: FlowNetS(rngs=rngs, keep_trajectory=True))
    config = OptimConfig(steps=3, learning_rate=3e-5, schedule="constant", weight_decay=0.0)
    step, params, opt_state = make_train_step(model, config)
    start, losses = params, []
    for _ in range(3):
        params, opt_state, measurements = step(params, opt_state, batch)
        losses.append(float(measurements["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses
    # without weight decay Adam moves a parameter only where it had a gradient
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), params, start)
    assert min(jax.tree.leaves(moved)) > 0


# -- stacking ---------------------------------------------------------------------------------------

def test_stacked_shapes_parameters_and_checks():
    stack = abstract(lambda rngs: Stacked([FlowNetC(rngs=rngs), FlowNetS(rngs=rngs, extra_inputs=REFINE_INPUTS)],
                                          keep_trajectory=True))
    assert count(stack) == HAND[FlowNetC] + HAND[FlowNetS] - stem(6) + stem(6 + REFINE_INPUTS)
    frame = jax.ShapeDtypeStruct((70, 90, 3), jnp.float32)
    solution = nnx.eval_shape(lambda m, a, b: m(a, b), stack, frame, frame)
    assert solution.flow.shape == (70, 90, 2) and solution.trajectory.shape == (10, 70, 90, 2)
    flow = jax.ShapeDtypeStruct((70, 90, 2), jnp.float32)
    solution = nnx.eval_shape(lambda m, a, b, f: m(a, b, f), stack, frame, frame, flow)
    assert solution.trajectory.shape == (5, 70, 90, 2)  # the first network skipped
    with pytest.raises(ValueError, match="refining"):
        abstract(lambda rngs: Stacked([FlowNetS(rngs=rngs), FlowNetS(rngs=rngs)]))


def test_a_refiner_adds_its_output_to_the_flow_init():
    """With ``predict_flow2`` at zero the refiner's correction is zero: the flow stays ``flow_init``
    (the first network is skipped). Eager, reusing the FlowNetS ops compiled above."""
    stack = build(lambda rngs: Stacked([FlowNetS(rngs=rngs), FlowNetS(rngs=rngs, extra_inputs=REFINE_INPUTS)]))
    last = stack.networks[1].decoder.predict_flow[-1]
    last.kernel[...] = jnp.zeros_like(last.kernel[...])
    frame1, frame2 = frames((40, 50))
    flow_init = jnp.asarray(np.random.default_rng(2).normal(size=(40, 50, 2)), jnp.float32)
    np.testing.assert_allclose(stack(frame1, frame2, flow_init).flow, flow_init, atol=1e-6)
