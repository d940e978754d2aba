"""GMFlow with and without refinement: the reference's parameter counts by hand and its layer shapes,
window attention, position encoding, global and local matching, propagation, the warp and the trident
convolution against NumPy, padding, shapes, gradients, jit and a few training steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import close, count, random, rgb_pair, train_on_shifted_pair
from scipy.special import erf

from learned.gmflow import SCALES, GMFlow
from learned.gmflow.backbone import Trident, backbone
from learned.gmflow.matching import FlowPropagation, global_matching, local_matching
from learned.gmflow.model import warp
from learned.gmflow.transformer import (AttentionLayer, add_position, merge_windows, position_encoding, shift_mask,
                                        split_windows, window_attention)
from learned.padding import padding
from unroll.experiment import experiment
from unroll.methods import count_params, preset

#: haofeixu/gmflow's GMFlow(num_scales=1, upsample_factor=8) ("4.68M") and (num_scales=2, upsample_factor=4)
REFERENCE_PARAMS = {"gmflow": 4_680_288, "gmflow-refine": 4_716_720}
#: the reference's parameter names and shapes (torch layout) in both configurations
REFERENCE_SHAPES = json.loads((Path(__file__).parent / "data" / "gmflow_state_dict_shapes.json").read_text())


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


@pytest.fixture(scope="module", params=list(SCALES))
def model(request):
    return build(lambda rngs: GMFlow(rngs=rngs, scales=SCALES[request.param], keep_trajectory=True))


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
TRIDENT = conv(3, C, C, False)  # one kernel for both strides
UPSAMPLER_4 = conv(3, 2 + C, 256) + conv(1, 256, 9 * 16)  # convex upsampling x4 from 1/4


def test_parameter_count_matches_the_layer_shapes_and_the_reference():
    abstract = nnx.eval_shape(lambda: GMFlow(rngs=nnx.Rngs(0)))
    counts = [count(m) for m in (abstract.backbone, abstract.transformer, abstract.propagation, abstract.upsampler)]
    assert counts == [BACKBONE, TRANSFORMER, PROPAGATION, UPSAMPLER] == [1_049_120, 3_150_336, 33_024, 447_808]
    assert abstract.trident is None
    assert count(abstract) == sum(counts) == REFERENCE_PARAMS["gmflow"]


def test_refinement_parameter_count_matches_the_layer_shapes_and_the_reference():
    """The same backbone (its last stage unstrided), transformer and propagation, one trident kernel,
    and a mask for x4 upsampling."""
    abstract = nnx.eval_shape(lambda: GMFlow(rngs=nnx.Rngs(0), scales=SCALES["gmflow-refine"]))
    parts = (abstract.backbone, abstract.trident, abstract.transformer, abstract.propagation, abstract.upsampler)
    counts = [count(m) for m in parts]
    assert counts == [BACKBONE, TRIDENT, TRANSFORMER, PROPAGATION, UPSAMPLER_4] == [
        1_049_120, 147_456, 3_150_336, 33_024, 336_784]
    assert count(abstract) == sum(counts) == REFERENCE_PARAMS["gmflow-refine"]


def test_refinement_is_a_method_with_gmflows_recipe():
    assert count_params(preset("gmflow-refine")) == REFERENCE_PARAMS["gmflow-refine"]
    assert experiment({"base": "gmflow-refine"}).optim.gamma == 0.9


def torch_layout(shape):
    """A kernel's shape as torch stores it: HWIO -> OIHW, (in, out) -> (out, in)."""
    return {4: lambda s: (s[3], s[2], s[0], s[1]), 2: lambda s: s[::-1], 1: lambda s: s}[len(shape)](tuple(shape))


@pytest.mark.parametrize("kind", list(SCALES))
def test_layer_shapes_are_the_references(kind):
    """One parameter array for each of the reference's tensors, of the same shape (recorded from
    ``GMFlow(**kwargs).state_dict()`` in torch)."""
    abstract = nnx.eval_shape(lambda: GMFlow(rngs=nnx.Rngs(0), scales=SCALES[kind]))
    ours = sorted(torch_layout(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert ours == sorted(tuple(shape) for shape in REFERENCE_SHAPES[kind].values())


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


def window(h, w, y, x, radius):
    """The displacements ``(dx, dy)`` of the window around ``(y, x)``, row-major, and whether each stays inside."""
    d = [(dx, dy) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    return d, [0 <= y + dy < h and 0 <= x + dx < w for dx, dy in d]


def test_local_matching_is_the_softmax_weighted_mean_displacement_inside_the_window():
    f1, f2 = random((4, 5, 3), 1), random((4, 5, 3), 2)
    expected = np.zeros((4, 5, 2))
    for y in range(4):
        for x in range(5):
            d, inside = window(4, 5, y, x, 2)
            d = np.array([v for v, keep in zip(d, inside) if keep], np.float64)
            scores = np.array([f2[y + dy, x + dx] @ f1[y, x] for dx, dy in d.astype(int)]) / np.sqrt(3)
            expected[y, x] = softmax_mean(scores, d)
    close(jax.jit(local_matching, static_argnums=2)(f1, f2, 2), expected)


def test_local_matching_finds_a_shift_within_the_window():
    f1 = random((8, 9, 16))
    f1 = 40 * f1 / np.linalg.norm(f1, axis=-1, keepdims=True)  # each pixel's own match scores highest
    f2 = np.roll(f1, (-1, 2), axis=(0, 1))  # pixel (y, x) moves to (y - 1, x + 2)
    close(local_matching(f1, f2, 3)[1:, :7], np.broadcast_to(np.float32([2, -1]), (7, 7, 2)), 1e-3)


def test_local_flow_propagation_matches_numpy():
    """Over the 3x3 window, the key ``k_proj(features)``; outside the image a key and a flow of zero
    (a score of 0 that still takes its share, as the reference's zero-padded ``unfold``)."""
    prop = build(lambda rngs: FlowPropagation(5, rngs=rngs), 3)
    features, flow = random((3, 4, 5), 1), random((3, 4, 2), 2)
    affine = lambda linear, x: x @ np.asarray(linear.kernel[...]) + np.asarray(linear.bias[...])
    query, key = affine(prop.q_proj, features), affine(prop.k_proj, features)
    expected = np.zeros((3, 4, 2))
    for y in range(3):
        for x in range(4):
            d, inside = window(3, 4, y, x, 1)
            scores = np.array([key[y + dy, x + dx] @ query[y, x] if keep else 0.0
                               for (dx, dy), keep in zip(d, inside)]) / np.sqrt(5)
            values = np.array([flow[y + dy, x + dx] if keep else (0.0, 0.0) for (dx, dy), keep in zip(d, inside)])
            expected[y, x] = softmax_mean(scores, values)
    close(nnx.jit(lambda m, f, v: m(f, v, 1))(prop, features, flow), expected)


def test_warp_samples_bilinearly_with_zeros_outside():
    """``grid_sample(align_corners=True, padding_mode="zeros")``: each of the four corners outside counts 0."""
    features = random((4, 5, 3), 1)
    flow = np.random.default_rng(2).uniform(-2.5, 2.5, (4, 5, 2)).astype(np.float32)
    expected = np.zeros((4, 5, 3))
    for y in range(4):
        for x in range(5):
            sx, sy = x + flow[y, x, 0], y + flow[y, x, 1]
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            for cy, cx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                if 0 <= cy < 4 and 0 <= cx < 5:
                    expected[y, x] += (1 - abs(sx - cx)) * (1 - abs(sy - cy)) * features[cy, cx]
    close(jax.jit(warp)(features, flow), expected, 1e-5)


def test_trident_is_one_kernel_at_strides_one_and_two():
    trident = build(lambda rngs: Trident(4, rngs=rngs))
    features = random((2, 8, 6, 4))
    kernel = np.asarray(trident.conv.kernel[...])
    strided = lambda s: jax.lax.conv_general_dilated(features, kernel, (s, s), ((1, 1), (1, 1)),
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    coarse, fine = trident(features, (2, 1))
    close(coarse, strided(2), 1e-5)
    close(fine, strided(1), 1e-5)
    assert coarse.shape == (2, 4, 3, 4)


def test_refinement_backbone_stops_at_a_quarter():
    encoder = nnx.eval_shape(lambda: backbone(16, 4, rngs=nnx.Rngs(0)))
    assert nnx.eval_shape(lambda m, x: m(x), encoder, jnp.zeros((2, 64, 40, 3))).shape == (2, 16, 10, 16)


# -- the model -----------------------------------------------------------------------------------------

def test_padding_to_multiples_of_sixteen_or_thirty_two_like_the_reference():
    assert padding((436, 1024), 32, "sintel") == ((6, 6), (0, 0))
    assert padding((375, 1242), 32, "kitti") == ((0, 9), (3, 3))
    assert padding((436, 1024), 16, "sintel") == ((6, 6), (0, 0))
    assert padding((375, 1242), 16, "kitti") == ((0, 9), (3, 3))
    assert padding((375, 1242), 16, "sintel") == ((4, 5), (3, 3))
    assert padding((64, 96), 16, "sintel") == ((0, 0), (0, 0))


def test_odd_sizes_give_full_resolution_flow_and_trajectory(model):
    """Two predictions per scale (matched, propagated), the last the convexly upsampled flow."""
    solution = forward(model, *rgb_pair((70, 90)))
    assert solution.flow.shape == (70, 90, 2)
    assert solution.trajectory.shape == (2 * len(model.scales), 70, 90, 2)
    close(solution.trajectory[-1], np.asarray(solution.flow), 0)
    assert np.all(np.isfinite(solution.trajectory))
    plain = nnx.eval_shape(lambda: GMFlow(rngs=nnx.Rngs(0), scales=model.scales))
    shape = nnx.eval_shape(lambda m, a, b: m(a, b), plain, *rgb_pair((17, 9)))
    assert shape.flow.shape == (17, 9, 2) and shape.trajectory is None


def test_jit_equals_eager_and_flow_init_is_ignored(model):
    """In float64: in float32 the sharp softmaxes of random weights amplify round-off to 0.05 px at the
    few pixels where two matches score alike (the refinement's local matching)."""
    with jax.enable_x64(True):
        graphdef, state = nnx.split(model)
        model = nnx.merge(graphdef, jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), state))
        frame1, frame2 = (frame.astype(np.float64) for frame in rgb_pair((70, 90)))
        eager = model(frame1, frame2, np.ones((70, 90, 2)))
        close(forward(model, frame1, frame2).trajectory, np.asarray(eager.trajectory), 1e-6)


LEARNING_RATE = 1e-4


@pytest.fixture(scope="module", params=list(SCALES))
def training(request):
    """12 AdamW steps (no weight decay, constant rate) on one batch of a textured pair shifted by
    (2, 1) px: the parameters after the first step and the losses."""
    model = build(lambda rngs: GMFlow(rngs=rngs, scales=SCALES[request.param], keep_trajectory=True))
    return train_on_shifted_pair(model, (64, 64), LEARNING_RATE)


#: parameters without a gradient, in the reference too: the shortcut projections' biases (instance
#: norm subtracts them) and, without refinement, the propagation's key bias (it adds ``<q, b>`` to all
#: of a query's scores; in a window at the border, not to the zero-padded keys)
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
    """The sequence loss (gamma-weighted matched and propagated flows) on one repeated batch."""
    losses = training[2]
    assert max(losses[-3:]) < 0.5 * losses[0], losses
