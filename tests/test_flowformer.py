"""FlowFormer: the reference's parameter count by hand and its layer shapes, multi-head attention, the
position encoding and both inter-cost-map attentions against NumPy, the cost encoder's and memory
query's shapes, the model's shapes at odd sizes, gradients, jit and a few training steps."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import close, count, random, rgb_pair, train_on_shifted_pair
from scipy.special import softmax

from learned.flowformer.attention import attend, linear_position
from learned.flowformer.cost_encoder import CostEncoder, GlobalAttention, LocalAttention, PatchEmbed
from learned.flowformer.decoder import MemoryQuery
from unroll.config import override
from unroll.experiment import experiment
from unroll.methods import build, preset
from unroll.training import OptimConfig

#: drinkingcoder/FlowFormer-Official's ``FlowFormer`` with ``cnet = fnet = "basicencoder"``, ``gma = False``
REFERENCE_PARAMS = 9_242_224
#: ... with its Twins-SVT encoders and GMA, the paper's model ("16.1M")
PAPER_PARAMS = 16_168_113
#: that reference's parameter names and shapes (torch layout)
REFERENCE_SHAPES = json.loads((Path(__file__).parent / "data" / "flowformer_state_dict_shapes.json").read_text())


def randomised(module, seed=0):
    """``module`` with ``N(0, 0.1^2)`` added to every parameter (biases and norms move off 0 and 1)."""
    graphdef, state = nnx.split(module)
    rng = np.random.default_rng(seed)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), state))


def config(iters=3):
    return override(preset("flowformer"), [f"solver.num_iters={iters}"])


# -- parameter count by hand, from the reference's layer shapes ---------------------------------------

def conv(k, cin, cout, bias=True):
    return k * k * cin * cout + bias * cout


def linear(cin, cout):
    return cin * cout + cout


def block(cin, cout):
    """RAFT's residual block: two biased 3x3 convolutions, a 1x1 projection where the width changes."""
    return conv(3, cin, cout) + conv(3, cout, cout) + (cin != cout) * conv(1, cin, cout)


ENCODER = (conv(7, 3, 64) + 2 * block(64, 64) + block(64, 96) + block(96, 96) + block(96, 128) + block(128, 128)
           + conv(1, 128, 256))
FEATURES = ENCODER + conv(1, 256, 256, False)  # the bias-free channel_convertor
CONTEXT = ENCODER + conv(1, 256, 256)  # the decoder's proj
NORM = lambda c: 2 * c
PATCH = conv(6, 1, 16) + conv(6, 16, 32) + conv(6, 32, 64) + 2 * linear(128, 128) + NORM(128)
LAYER = 2 * NORM(128) + 4 * linear(128, 128) + 2 * linear(128, 128)  # q, k, v, proj; mlp 128 -> 128 -> 128
LOCAL = linear(256, 64) + 2 * linear(128 + 64, 128) + 2 * linear(128, 128)
GLOBAL = (linear(256, 64) + linear(128 + 64, 128) + 3 * linear(128, 128) + conv(4, 128 + 64, 128) + conv(4, 128, 128)
          + NORM(128))
TWINS = 2 * NORM(128) + linear(128, 512) + linear(512, 128)
COST_ENCODER = PATCH + 8 * 128 + LAYER + 3 * (LAYER + LOCAL + TWINS + GLOBAL + TWINS)
QUERY = (linear(81, 64) + linear(64, 64) + 2 * NORM(64) + linear(64, 64) + 2 * linear(128, 64) + linear(128, 64)
         + 2 * linear(64, 64))
SEPARABLE_GRU = 2 * 3 * (5 * (128 + 256) * 128 + 128)
UPDATE = (conv(1, 81 + 64, 256) + conv(3, 256, 192) + conv(7, 2, 128) + conv(3, 128, 64) + conv(3, 256, 126)
          + SEPARABLE_GRU + conv(3, 128, 256) + conv(3, 256, 2) + conv(3, 128, 256) + conv(1, 256, 9 * 64))


def test_parameter_count_matches_the_layer_shapes_and_the_reference():
    """Per part, the reference's counts: features and convertor, cost encoder, decoder layer and flow
    token encoder, context encoder and proj, update block."""
    model = nnx.eval_shape(lambda: build(config()))
    data, step = model.solver.energy.data, model.solver.step
    counts = [count(data.correlation), count(data.encoder), count(data.query), count(step.context_encoder),
              count(step.update) + count(step.mask)]
    assert counts == [FEATURES, COST_ENCODER, QUERY, CONTEXT, UPDATE] == [
        1_066_848 + 65_536, 3_855_152, 9_408 + 37_504, 1_066_848 + 65_792, 3_075_136]
    assert count(model) == sum(counts) == REFERENCE_PARAMS < PAPER_PARAMS


def test_a_base_of_flowformer_brings_its_learning_rate():
    assert experiment({"base": "flowformer"}).optim == OptimConfig(learning_rate=2.5e-4)


def test_layer_shapes_are_the_references():
    """One parameter array for each of the reference's tensors, of the same shape up to axes of length
    1 (its 1x1 convolutions are linear layers here, its latent tokens carry a batch axis)."""
    model = nnx.eval_shape(lambda: build(config()))
    kernel = lambda s: (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]  # HWIO -> OIHW, (in, out) -> (out, in)
    squeeze = lambda s: tuple(d for d in s if d != 1)
    ours = sorted(squeeze(kernel(leaf.shape) if path[-2].key == "kernel" else leaf.shape)
                  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)))
    assert ours == sorted(squeeze(shape) for shape in REFERENCE_SHAPES.values())


# -- attention and position ---------------------------------------------------------------------------

def np_attend(q, k, v, heads):
    """Per head (consecutive channel groups), a softmax over the keys of ``q k / sqrt(c / heads)``."""
    c, d = q.shape[-1] // heads, v.shape[-1] // heads
    return np.concatenate([softmax(q[..., h * c:(h + 1) * c] @ np.swapaxes(k[..., h * c:(h + 1) * c], -1, -2)
                                   / np.sqrt(c), -1) @ v[..., h * d:(h + 1) * d] for h in range(heads)], -1)


def test_multi_head_attention_matches_numpy_and_broadcasts():
    q, k, v = random((5, 8), 1), random((3, 7, 8), 2), random((3, 7, 4), 3)
    close(jax.jit(attend, static_argnums=3)(q, k, v, 2), np_attend(np.broadcast_to(q, (3, 5, 8)), k, v, 2))


def position(x, y, channels):
    """The reference's linear sine encoding of the position ``(x, y)``."""
    f = np.arange(channels // 4) * 3.14 / 200
    return np.concatenate([np.sin(x * f), np.cos(x * f), np.sin(y * f), np.cos(y * f)])


def test_linear_position_is_the_references_sine_encoding():
    coords = np.float32([[3.0, 7.0], [0.5, 120.0]])
    close(linear_position(coords, 16), np.stack([position(x, y, 16) for x, y in coords]), 1e-6)


# -- inter-cost-map attention -------------------------------------------------------------------------

def affine(layer, x):
    return x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])


def padded(x, multiple):
    h, w = x.shape[1:3]
    return np.pad(x, ((0, 0), (0, -h % multiple), (0, -w % multiple), (0, 0)))


def test_local_attention_matches_numpy():
    """Each pixel attends within its 7x7 block of the zero-padded grid, padding included; queries and
    keys read the tokens, the projected context and the position in the block."""
    layer = randomised(LocalAttention(16, 4, rngs=nnx.Rngs(0), heads=2), 1)
    x, context = random((2, 9, 8, 16), 2), random((9, 8, 4), 3)
    keyed = padded(np.concatenate([x, np.broadcast_to(affine(layer.context_proj, context), (2, 9, 8, 64))], -1), 7)
    values = affine(layer.v, padded(x, 7))
    expected = np.zeros((2, 9, 8, 16))
    for y in range(9):
        for x0 in range(8):
            by, bx = y // 7 * 7, x0 // 7 * 7
            block = [(yy, xx) for yy in range(by, by + 7) for xx in range(bx, bx + 7)]
            keys = np.stack([affine(layer.k, keyed[:, yy, xx] + position(xx - bx, yy - by, 80)) for yy, xx in block], 1)
            query = affine(layer.q, keyed[:, y, x0] + position(x0 - bx, y - by, 80))[:, None]
            attended = np_attend(query, keys, np.stack([values[:, yy, xx] for yy, xx in block], 1), 2)
            expected[:, y, x0] = affine(layer.proj, attended[:, 0])
    close(nnx.jit(lambda m, a, b: m(a, b))(layer, x, context), expected, 2e-4)


def np_layer_norm(x, layer):
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    return normed * np.asarray(layer.scale[...]) + np.asarray(layer.bias[...])


def test_global_attention_matches_numpy():
    """Keys and values summarise 4x4 blocks of the zero-padded grid (a strided convolution, one layer
    norm for both); keys carry their block's corner position, queries their pixel's."""
    layer = randomised(GlobalAttention(16, 4, rngs=nnx.Rngs(0), heads=2), 2)
    x, context = random((2, 6, 9, 16), 4), random((6, 9, 4), 5)
    keyed = padded(np.concatenate([x, np.broadcast_to(affine(layer.context_proj, context), (2, 6, 9, 64))], -1), 4)
    tokens = padded(x, 4)
    strided = lambda conv, t, i, j: sum(t[:, 4 * i + a, 4 * j + b] @ np.asarray(conv.kernel[...])[a, b]
                                        for a in range(4) for b in range(4)) + np.asarray(conv.bias[...])
    blocks = [(i, j) for i in range(2) for j in range(3)]
    keys = np.stack([affine(layer.k, np_layer_norm(strided(layer.sr_key, keyed, i, j), layer.norm)
                            + position(4 * j, 4 * i, 16)) for i, j in blocks], 1)
    values = np.stack([affine(layer.v, np_layer_norm(strided(layer.sr_value, tokens, i, j), layer.norm))
                       for i, j in blocks], 1)
    expected = np.zeros((2, 6, 9, 16))
    for y in range(6):
        for x0 in range(9):
            query = affine(layer.q, keyed[:, y, x0] + position(x0, y, 80))[:, None]
            expected[:, y, x0] = affine(layer.proj, np_attend(query, keys, values, 2)[:, 0])
    close(nnx.jit(lambda m, a, b: m(a, b))(layer, x, context), expected, 2e-4)


# -- cost encoder and memory query ----------------------------------------------------------------------

def test_patch_embedding_pads_cost_maps_to_whole_patches():
    embed = nnx.eval_shape(lambda: PatchEmbed(rngs=nnx.Rngs(0)))
    assert nnx.eval_shape(lambda m, c: m(c), embed, jnp.zeros((6, 9, 17))).shape == (6, 2 * 3, 128)


def test_cost_encoder_and_memory_query_shapes():
    """``(h w, h, w)`` cost maps and ``(h, w, 256)`` features to ``(h w, 8, 128)`` memory; a query of
    it at ``(h, w, 2)`` positions with ``(h, w, 81)`` windows to ``(h, w, 64)``."""
    encoder = nnx.eval_shape(lambda: CostEncoder(256, rngs=nnx.Rngs(0)))
    memory = nnx.eval_shape(lambda m, c, f: m(c, f), encoder, jnp.zeros((35, 5, 7)), jnp.zeros((5, 7, 256)))
    assert memory.shape == (35, 8, 128)
    query = nnx.eval_shape(lambda: MemoryQuery(81, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, mem, win, xy: m(m.keys_values(mem), win, xy), query, memory,
                         jnp.zeros((5, 7, 81)), jnp.zeros((5, 7, 2)))
    assert out.shape == (5, 7, 64)


# -- the model -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return build(config(), keep_trajectory=True)


#: the model's forward pass, compiled once for each frame size
forward = nnx.jit(lambda model, frame1, frame2: model(frame1, frame2))


def test_odd_sizes_give_full_resolution_flow_and_trajectory(model):
    """50 x 70 pads to 56 x 72: 7 x 9 features, whose windows, strided keys and patches all pad."""
    solution = forward(model, *rgb_pair((50, 70)))
    assert solution.flow.shape == (50, 70, 2)
    assert solution.trajectory.shape == (3, 50, 70, 2)
    close(solution.trajectory[-1], np.asarray(solution.flow), 0)
    assert np.all(np.isfinite(solution.trajectory))


def test_jit_equals_eager(model):
    frame1, frame2 = rgb_pair((50, 70))
    close(forward(model, frame1, frame2).trajectory, np.asarray(model(frame1, frame2).trajectory), 1e-3)


LEARNING_RATE = 1e-4


@pytest.fixture(scope="module")
def training(model):
    """12 AdamW steps (no weight decay, constant rate) on one batch of a textured pair shifted by
    (2, 1) px, 3 iterations: the parameters after the first step and the losses. 64 x 80 frames: two
    patches per cost map (with one, the latent tokens' attention to the patches has no gradient)."""
    return train_on_shifted_pair(model, (64, 80), LEARNING_RATE)


def without_gradient(path: str) -> bool:
    """Parameters that cannot have a gradient, in the reference too: the keys' biases (each adds
    ``<q, b>`` to all of a query's scores) and the biases of the encoders' convolutions before an
    instance norm (it subtracts them)."""
    encoder = "['encoder']['layers'][0]" in path or "['context_encoder']['layers'][0]" in path
    return path.endswith("['k']['bias']") or (encoder and path.endswith("['bias']") and "['head']" not in path)


def test_gradients_reach_every_parameter(training):
    """Adam's first step moves each parameter with a gradient (above round-off) by the learning rate."""
    before, first, _ = training
    still = {jax.tree_util.keystr(path[:-1]) for (path, a), b in
             zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(first))
             if np.max(np.abs(np.asarray(b) - np.asarray(a))) < 0.5 * LEARNING_RATE}
    assert still and all(without_gradient(path) for path in still), sorted(p for p in still if not without_gradient(p))


def test_a_few_training_steps_lower_the_loss(training):
    losses = training[2]
    assert max(losses[-3:]) < 0.5 * losses[0], losses
