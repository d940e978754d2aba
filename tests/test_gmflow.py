"""GMFlow: the reference's parameter count by hand, window attention, position encoding, matching and
propagation against NumPy, padding, shapes, gradients, jit and a few training steps."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import textured_pair
from scipy.special import erf

from learned.gmflow import GMFlow
from learned.gmflow.matching import FlowPropagation, global_matching
from learned.gmflow.transformer import (AttentionLayer, add_position, merge_windows, position_encoding, shift_mask,
                                        split_windows, window_attention)
from learned.padding import padding
from unroll.training import OptimConfig, make_train_step

REFERENCE_PARAMS = 4_680_288  # haofeixu/gmflow GMFlow(num_scales=1, upsample_factor=8): "4.68M"


def count(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(actual, expected, tol=1e-4):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=tol, atol=tol)


def rgb_pair(shape, shift=(1.0, 2.0)):
    """A textured frame and its copy moved by ``shift = (dy, dx)``, as ``(h, w, 3)`` on 0..255."""
    i1, i2 = textured_pair(shape, shift)
    rgb = lambda i: np.stack([i, 255 - i, 0.5 * i + 64], -1).astype(np.float32)
    return rgb(i1), rgb(i2)


def build(factory, seed=0):
    """``factory(rngs)`` with NumPy-drawn parameters (no JAX initialiser compiled for each shape):
    kernels ``N(0, 1 / fan_in)``, biases ``N(0, 0.1^2)``, LayerNorm scales ``1 + N(0, 0.1^2)``."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: factory(nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = [key.key for key in path if hasattr(key, "key")][-1]
        scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if name == "kernel" else 0.1
        return jnp.asarray((name == "scale") + scale * rng.normal(size=leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


@pytest.fixture(scope="module")
def model():
    return build(lambda rngs: GMFlow(rngs=rngs, keep_trajectory=True))


#: the model's forward pass, compiled once for each frame size
forward = nnx.jit(lambda model, frame1, frame2: model(frame1, frame2))


# -- parameter count by hand, from the reference's layer shapes ---------------------------------------

def conv(k, cin, cout, bias=True):
    return k * k * cin * cout + bias * cout


def block(cin, cout):
    """Two bias-free 3x3 convolutions; a biased 1x1 projection where the width changes (instance norm:
    no parameters)."""
    return conv(3, cin, cout, False) + conv(3, cout, cout, False) + (cin != cout) * conv(1, cin, cout)


C = 128
BACKBONE = (conv(7, 3, 64, False) + 2 * block(64, 64) + block(64, 96) + block(96, 96) + block(96, 128)
            + block(128, 128) + conv(1, 128, C))
ATTENTION = 4 * C * C + 2 * C  # q, k, v, merge (bias-free), LayerNorm
FFN = 2 * C * 8 * C + 8 * C * C + 2 * C  # 2c -> 8c -> c (bias-free), LayerNorm
TRANSFORMER = 6 * (ATTENTION + ATTENTION + FFN)
PROPAGATION = 2 * (C * C + C)
UPSAMPLER = conv(3, 2 + C, 256) + conv(1, 256, 9 * 64)


def test_parameter_count_matches_the_layer_shapes_and_the_reference():
    abstract = nnx.eval_shape(lambda: GMFlow(rngs=nnx.Rngs(0)))
    counts = [count(m) for m in (abstract.backbone, abstract.transformer, abstract.propagation, abstract.upsampler)]
    assert counts == [BACKBONE, TRANSFORMER, PROPAGATION, UPSAMPLER] == [1_049_120, 3_150_336, 33_024, 447_808]
    assert count(abstract) == sum(counts) == REFERENCE_PARAMS


# -- windows, shifted-window attention and position ----------------------------------------------------

def test_windows_split_row_major_and_merge_back():
    x = random((2, 6, 8, 3))
    windows = split_windows(x, 2)
    assert windows.shape == (2, 4, 3, 4, 3)
    close(windows[:, 1], x[:, :3, 4:])  # top right
    close(windows[:, 2], x[:, 3:, :4])  # bottom left
    close(merge_windows(windows, 2), x)


def test_shift_mask_separates_the_regions_the_roll_brings_together():
    mask = shift_mask((4, 4), 2)  # 2x2 windows, shifted by 1: pixel n of a window is (n // 2, n % 2)
    assert mask.shape == (4, 4, 4)
    close(mask[0], np.zeros((4, 4)))  # no border in the top-left window
    close(mask[1], np.where(np.arange(4)[:, None] % 2 == np.arange(4) % 2, 0.0, -100.0))  # columns wrapped
    close(mask[2], np.where(np.arange(4)[:, None] // 2 == np.arange(4) // 2, 0.0, -100.0))  # rows wrapped
    close(mask[3], -100.0 * (1 - np.eye(4)))  # four regions


def np_window_attention(q, k, v, splits, shift):
    """Per query pixel: a softmax over the keys in its (shifted) window that were not brought in by the
    cyclic roll from the opposite border, i.e. wrapped (row, column) just as the query."""
    h, w, c = q.shape
    wh, ww = h // splits, w // splits
    sy, sx = (wh // 2, ww // 2) if shift and splits > 1 else (0, 0)  # one split: global attention
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    window = ((y - sy) % h // wh, (x - sx) % w // ww)
    wrapped = (y < sy, x < sx)
    out = np.zeros_like(q)
    for i in range(h):
        for j in range(w):
            keys = ((window[0] == window[0][i, j]) & (window[1] == window[1][i, j])
                    & (wrapped[0] == wrapped[0][i, j]) & (wrapped[1] == wrapped[1][i, j]))
            scores = k[keys] @ q[i, j] / math.sqrt(c)
            p = np.exp(scores - scores.max())
            out[i, j] = p @ v[keys] / p.sum()
    return out


@pytest.mark.parametrize("splits, shift", [(2, False), (2, True), (3, True), (1, True)])
def test_window_attention_matches_numpy(splits, shift):
    q, k, v = (random((2, 6, 12, 5), seed) for seed in range(3))  # shifted 3x6 windows move by (1, 3)
    out = jax.jit(window_attention, static_argnums=(3, 4))(q, k, v, splits, shift)
    for b in range(2):
        close(out[b], np_window_attention(q[b], k[b], v[b], splits, shift))


def np_position(h, w, channels):
    """DETR's ``PositionEmbeddingSine(normalize=True)`` step by step, channels last."""
    y = np.cumsum(np.ones((h, w)), 0)
    x = np.cumsum(np.ones((h, w)), 1)
    y, x = y / (y[-1:] + 1e-6) * 2 * np.pi, x / (x[:, -1:] + 1e-6) * 2 * np.pi
    dim = 10000 ** (2 * (np.arange(channels // 2) // 2) / (channels // 2))
    sincos = lambda p: np.stack([np.sin(p[..., 0::2]), np.cos(p[..., 1::2])], -1).reshape(h, w, -1)
    return np.concatenate([sincos(y[..., None] / dim), sincos(x[..., None] / dim)], -1)


def test_position_encoding_is_detrs_sine_repeated_per_window():
    close(position_encoding((3, 5), 8), np_position(3, 5, 8), 1e-5)
    features = random((2, 6, 10, 8))
    windows = split_windows(np.asarray(add_position(features, 2)) - features, 2)
    for n in range(4):
        close(windows[:, n], np.broadcast_to(np_position(3, 5, 8), (2, 3, 5, 8)), 1e-5)


def np_layer_norm(x, layer):
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    return normed * np.asarray(layer.scale[...]) + np.asarray(layer.bias[...])


def test_cross_attention_layer_with_ffn_matches_numpy():
    layer = build(lambda rngs: AttentionLayer(6, 2, rngs=rngs), 1)
    source, target = random((4, 6, 6), 1), random((4, 6, 6), 2)
    weight = lambda linear: np.asarray(linear.kernel[...])
    q, k, v = source @ weight(layer.q_proj), target @ weight(layer.k_proj), target @ weight(layer.v_proj)
    message = np_layer_norm(np_window_attention(q, k, v, 1, False) @ weight(layer.merge), layer.norm)
    hidden = np.concatenate([source, message], -1) @ weight(layer.ffn.fc1)
    gelu = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
    expected = source + np_layer_norm(gelu @ weight(layer.ffn.fc2), layer.ffn.norm)
    close(nnx.jit(lambda m, a, b: m(a, b, 1, False))(layer, source, target), expected)
    assert weight(layer.ffn.fc1).shape == (12, 24) and layer.q_proj.bias is None


# -- matching and propagation -------------------------------------------------------------------------

def softmax_mean(scores, values):
    p = np.exp(scores - scores.max())
    return p @ values / p.sum()


def test_global_matching_is_the_softmax_weighted_mean_position():
    f1, f2 = random((3, 4, 5), 1), random((3, 4, 5), 2)
    positions = np.array([(x, y) for y in range(3) for x in range(4)], np.float64)
    expected = np.zeros((3, 4, 2))
    for y in range(3):
        for x in range(4):
            expected[y, x] = softmax_mean(f2.reshape(12, 5) @ f1[y, x] / np.sqrt(5), positions) - (x, y)
    close(jax.jit(global_matching)(f1, f2), expected)


def test_global_matching_finds_a_shift_of_distinct_features():
    f1 = 10 * random((6, 7, 16))
    f2 = np.roll(f1, (1, -2), axis=(0, 1))  # pixel (y, x) moves to (y + 1, x - 2)
    flow = np.asarray(global_matching(f1, f2))
    close(flow[:5, 2:], np.broadcast_to(np.float32([-2, 1]), (5, 5, 2)), 1e-3)


def test_flow_propagation_matches_numpy():
    """The key is ``k_proj(q_proj(features))``, as the reference computes it."""
    prop = build(lambda rngs: FlowPropagation(5, rngs=rngs), 2)
    features, flow = random((3, 4, 5), 1), random((3, 4, 2), 2)
    affine = lambda linear, x: x @ np.asarray(linear.kernel[...]) + np.asarray(linear.bias[...])
    query = affine(prop.q_proj, features.reshape(12, 5))
    key = affine(prop.k_proj, query)
    expected = np.stack([softmax_mean(key @ q / np.sqrt(5), flow.reshape(12, 2)) for q in query])
    close(prop(features, flow), expected.reshape(3, 4, 2))


# -- the model -----------------------------------------------------------------------------------------

def test_padding_to_multiples_of_sixteen_like_the_reference():
    assert padding((436, 1024), 16, "sintel") == ((6, 6), (0, 0))
    assert padding((375, 1242), 16, "kitti") == ((0, 9), (3, 3))
    assert padding((375, 1242), 16, "sintel") == ((4, 5), (3, 3))
    assert padding((64, 96), 16, "sintel") == ((0, 0), (0, 0))


def test_odd_sizes_give_full_resolution_flow_and_trajectory(model):
    solution = forward(model, *rgb_pair((70, 90)))
    assert solution.flow.shape == (70, 90, 2)
    assert solution.trajectory.shape == (2, 70, 90, 2)
    close(solution.trajectory[-1], np.asarray(solution.flow), 0)
    assert np.all(np.isfinite(solution.trajectory))
    plain = nnx.eval_shape(lambda: GMFlow(rngs=nnx.Rngs(0)))
    shape = nnx.eval_shape(lambda m, a, b: m(a, b), plain, *rgb_pair((17, 9)))
    assert shape.flow.shape == (17, 9, 2) and shape.trajectory is None


def test_jit_equals_eager_and_flow_init_is_ignored(model):
    frame1, frame2 = rgb_pair((70, 90))
    eager = model(frame1, frame2, np.ones((70, 90, 2), np.float32))
    close(forward(model, frame1, frame2).trajectory, np.asarray(eager.trajectory), 1e-3)


LEARNING_RATE = 1e-4


@pytest.fixture(scope="module")
def training():
    """12 AdamW steps (no weight decay, constant rate) on one batch of a textured pair shifted by
    (2, 1) px: the parameters after the first step and the losses."""
    frame1, frame2 = rgb_pair((64, 64))
    batch = {"frame1": frame1[None], "frame2": frame2[None],
             "flow": np.broadcast_to(np.float32([2.0, 1.0]), (1, 64, 64, 2)), "valid": np.ones((1, 64, 64), bool)}
    model = build(lambda rngs: GMFlow(rngs=rngs, keep_trajectory=True))
    config = OptimConfig(steps=12, learning_rate=LEARNING_RATE, schedule="constant", weight_decay=0.0)
    step, params, opt_state = make_train_step(model, config)
    before, losses = params, []
    for i in range(12):
        params, opt_state, measured = step(params, opt_state, batch)
        losses.append(float(measured["loss"]))
        if i == 0:
            first = params
    return before, first, losses


#: parameters without a gradient, in the reference too: the shortcut projections' biases (instance
#: norm subtracts them) and the propagation's key bias (it adds ``<q, b>`` to all of a query's scores)
NO_GRADIENT = {"['backbone']['layer2'][0]['downsample']['conv']['bias']",
               "['backbone']['layer3'][0]['downsample']['conv']['bias']", "['propagation']['k_proj']['bias']"}


def test_gradients_reach_every_parameter(training):
    """Adam's first step moves each parameter by the learning rate times the sign of its gradient,
    so every one with a gradient (above round-off) moves."""
    before, first, _ = training
    still = {jax.tree_util.keystr(path[:-1]) for (path, a), b in
             zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(first))
             if np.max(np.abs(np.asarray(b) - np.asarray(a))) < 0.5 * LEARNING_RATE}
    assert still <= NO_GRADIENT, still - NO_GRADIENT


def test_a_few_training_steps_lower_the_loss(training):
    """The sequence loss (gamma-weighted matching and propagated flows) on one repeated batch."""
    losses = training[2]
    assert max(losses[-3:]) < 0.5 * losses[0], losses
