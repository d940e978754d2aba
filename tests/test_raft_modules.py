"""RAFT's building blocks: parameter counts against torchvision's, torch-style padding and the blocks
against NumPy references, the GRUs' gate equations, and the two flow upsamplers' channel layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from learned.nets import ConvGRU
from learned.raft.encoders import BottleneckBlock, Encoder, FrozenBatchNorm, InstanceNorm, ResidualBlock, norm
from learned.raft.model import context_encoder, feature_encoder, mask_predictor, update_block
from learned.raft.update import FlowHead, MaskPredictor, MotionEncoder, SepConvGRU, UpdateBlock
from learned.raft.upsample import bilinear_upsample, convex_upsample

TORCHVISION_PARAMS = {"raft": 5_257_536, "raft-small": 990_162}  # Raft_{Large,Small}_Weights meta["num_params"]


def count(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def abstract(factory):
    """The module ``factory(rngs)`` builds, with shapes but no values (no time spent initialising)."""
    return nnx.eval_shape(lambda: factory(nnx.Rngs(0)))


def random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def build(factory, seed=0, scale=0.3):
    """``factory(rngs)`` with every parameter (biases and batch-norm scales included) drawn from
    ``N(0, scale**2)`` by NumPy: no JAX initialiser compiled for each new shape."""
    graphdef, state = nnx.split(abstract(factory))
    rng = np.random.default_rng(seed)
    return nnx.merge(graphdef, jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), state))


def jitted(module, *args):
    return nnx.jit(lambda m, *a: m(*a))(module, *args)


# -- parameter counts by hand, from the layer shapes -------------------------------------------------

def conv(kh, kw, cin, cout):
    return kh * kw * cin * cout + cout


def block_count(kind, cin, cout, stride, per_channel):
    """``per_channel``: the norm's parameters per channel (2 for batch norm, 0 otherwise)."""
    if kind == "residual":
        layers = conv(3, 3, cin, cout) + conv(3, 3, cout, cout) + 2 * per_channel * cout
    else:
        mid = cout // 4
        layers = conv(1, 1, cin, mid) + conv(3, 3, mid, mid) + conv(1, 1, mid, cout) + per_channel * (2 * mid + cout)
    project = stride != 1 or cin != cout
    return layers + project * (conv(1, 1, cin, cout) + per_channel * cout)


def encoder_count(kind, w, per_channel):
    stages = [(w[0], w[1], 1), (w[1], w[2], 2), (w[2], w[3], 2)]
    blocks = sum(block_count(kind, a, b, s, per_channel) + block_count(kind, b, b, 1, per_channel)
                 for a, b, s in stages)
    return conv(7, 7, 3, w[0]) + per_channel * w[0] + blocks + conv(1, 1, w[3], w[4])


def gru_count(hidden, inputs, kh, kw):
    return 3 * conv(kh, kw, hidden + inputs, hidden)


HAND = {
    "raft": {
        "feature": encoder_count("residual", (64, 64, 96, 128, 256), 0),
        "context": encoder_count("residual", (64, 64, 96, 128, 256), 2),
        "motion": conv(1, 1, 324, 256) + conv(3, 3, 256, 192) + conv(7, 7, 2, 128) + conv(3, 3, 128, 64)
        + conv(3, 3, 192 + 64, 126),
        "gru": gru_count(128, 256, 1, 5) + gru_count(128, 256, 5, 1),
        "head": conv(3, 3, 128, 256) + conv(3, 3, 256, 2),
        "mask": conv(3, 3, 128, 256) + conv(1, 1, 256, 576),
    },
    "raft-small": {
        "feature": encoder_count("bottleneck", (32, 32, 64, 96, 128), 0),
        "context": encoder_count("bottleneck", (32, 32, 64, 96, 160), 0),
        "motion": conv(1, 1, 196, 96) + conv(7, 7, 2, 64) + conv(3, 3, 64, 32) + conv(3, 3, 96 + 32, 80),
        "gru": gru_count(96, 146, 3, 3),
        "head": conv(3, 3, 96, 128) + conv(3, 3, 128, 2),
    },
}


@pytest.mark.parametrize("variant", ["raft", "raft-small"])
def test_parameter_counts_match_the_layer_shapes_and_torchvision(variant):
    update = abstract(lambda rngs: update_block(variant, rngs=rngs))
    counts = {"feature": count(abstract(lambda rngs: feature_encoder(variant, rngs=rngs))),
              "context": count(abstract(lambda rngs: context_encoder(variant, rngs=rngs))),
              "motion": count(update.motion), "gru": count(update.gru), "head": count(update.flow_head)}
    if variant == "raft":
        counts["mask"] = count(abstract(lambda rngs: mask_predictor(variant, rngs=rngs)))
    assert counts == HAND[variant]
    assert count(update) == counts["motion"] + counts["gru"] + counts["head"]
    assert sum(counts.values()) == sum(HAND[variant].values()) == TORCHVISION_PARAMS[variant]


# -- NumPy references -------------------------------------------------------------------------------

def np_conv(x, layer, stride=1):
    """Direct correlation with torch's padding: ``k // 2`` zeros on both sides of each kernel dimension."""
    k, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    kh, kw = k.shape[:2]
    xp = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    oh, ow = (xp.shape[0] - kh) // stride + 1, (xp.shape[1] - kw) // stride + 1
    out = np.zeros((oh, ow, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += xp[i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] @ k[i, j]
    return out + b


def np_instance_norm(x):
    return (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-5)


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_gru(gru, h, x):
    hx = np.concatenate([h, x], -1)
    z, r = sigmoid(np_conv(hx, gru.update_gate)), sigmoid(np_conv(hx, gru.reset_gate))
    q = np.tanh(np_conv(np.concatenate([r * h, x], -1), gru.candidate))
    return (1 - z) * h + z * q


def close(actual, expected, tol=1e-4):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=tol, atol=tol)


# -- encoders ---------------------------------------------------------------------------------------

def test_instance_norm_matches_numpy_per_image():
    x = 3 + 2 * random((2, 5, 7, 4))
    close(InstanceNorm()(x[0]), np_instance_norm(x[0]))
    close(InstanceNorm()(x), np.stack([np_instance_norm(xi) for xi in x]))


def test_norm_kinds():
    x = random((4, 5, 3))
    batch = norm("batch", 3)
    batch.scale[...] = jnp.array([1.0, 2.0, -1.0])
    batch.bias[...] = jnp.array([0.5, 0.0, 3.0])
    close(batch(x), x * [1.0, 2.0, -1.0] + [0.5, 0.0, 3.0])
    assert isinstance(batch, FrozenBatchNorm) and count(batch) == 6
    assert isinstance(norm("instance", 3), InstanceNorm) and count(norm("instance", 3)) == 0
    close(norm("none", 3)(x), x)
    with pytest.raises(ValueError, match="unknown norm"):
        norm("group", 3)


@pytest.mark.parametrize("shape", [(10, 12), (9, 11)])
def test_stem_convolution_pads_like_torch(shape):
    """Even sizes tell torch's symmetric padding from "SAME", which pads a stride-2 conv (2, 3)."""
    encoder = build(lambda rngs: Encoder("residual", (4, 4, 4, 4, 4), "none", rngs=rngs))
    x = random(shape + (3,))
    assert encoder.stem_conv.kernel.shape == (7, 7, 3, 4)
    close(encoder.stem_conv(x), np_conv(x, encoder.stem_conv, stride=2))


@pytest.mark.parametrize("shape", [(8, 10), (7, 9)])
def test_residual_block_matches_numpy(shape):
    block = build(lambda rngs: ResidualBlock(3, 5, 2, "instance", rngs=rngs))
    x = random(shape + (3,))
    y = relu(np_instance_norm(np_conv(x, block.conv1, stride=2)))
    y = relu(np_instance_norm(np_conv(y, block.conv2)))
    skip = np_instance_norm(np_conv(x, block.downsample.conv, stride=2))
    out = jitted(block, x)
    assert out.shape == ((shape[0] + 1) // 2, (shape[1] + 1) // 2, 5)
    close(out, relu(skip + y))


def test_bottleneck_block_matches_numpy():
    block = build(lambda rngs: BottleneckBlock(4, 8, 2, "batch", rngs=rngs))
    bn = lambda layer, v: v * np.asarray(layer.scale[...]) + np.asarray(layer.bias[...])
    x = random((8, 6, 4))
    y = relu(bn(block.norm1, np_conv(x, block.conv1)))
    y = relu(bn(block.norm2, np_conv(y, block.conv2, stride=2)))
    y = relu(bn(block.norm3, np_conv(y, block.conv3)))
    skip = bn(block.downsample.norm, np_conv(x, block.downsample.conv, stride=2))
    close(jitted(block, x), relu(skip + y))
    assert block.conv2.kernel.shape == (3, 3, 2, 2)


def test_blocks_project_only_when_shape_changes():
    assert abstract(lambda rngs: ResidualBlock(4, 4, 1, "none", rngs=rngs)).downsample is None
    assert abstract(lambda rngs: ResidualBlock(4, 6, 1, "none", rngs=rngs)).downsample is not None
    assert abstract(lambda rngs: BottleneckBlock(8, 8, 1, "none", rngs=rngs)).downsample is None
    projection = abstract(lambda rngs: BottleneckBlock(8, 8, 2, "none", rngs=rngs)).downsample
    assert projection.conv.kernel.shape == (1, 1, 8, 8)


@pytest.mark.parametrize("block", ["residual", "bottleneck"])
def test_encoder_is_eighth_resolution_and_per_image(block):
    """Odd sizes round up at each stride-2 stage; the unbatched path (vmapped) agrees with the batched one."""
    encoder = build(lambda rngs: Encoder(block, (8, 8, 12, 16, 20), "batch", rngs=rngs))
    batched, per_image = nnx.jit(lambda m, x: (m(x), jax.vmap(m)(x)))(encoder, random((2, 17, 23, 3)))
    assert batched.shape == (2, 3, 3, 20)
    close(per_image, batched)
    assert jax.eval_shape(encoder, jax.ShapeDtypeStruct((64, 96, 3), jnp.float32)).shape == (8, 12, 20)


@pytest.mark.parametrize("variant, channels", [("raft", (256, 256)), ("raft-small", (128, 160))])
def test_published_encoders_output_shapes(variant, channels):
    image = jax.ShapeDtypeStruct((64, 96, 3), jnp.float32)
    for make, c in zip([feature_encoder, context_encoder], channels):
        assert jax.eval_shape(lambda x: make(variant, rngs=nnx.Rngs(0))(x), image).shape == (8, 12, c)


# -- update block -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [(1, 5), (5, 1), (3, 3)])
def test_conv_gru_matches_numpy(kernel):
    gru = build(lambda rngs: ConvGRU(3, 2, rngs=rngs, kernel=kernel))
    assert gru.update_gate.kernel.shape == kernel + (5, 3)
    h, x = np.tanh(random((4, 6, 3), 1)), random((4, 6, 2), 2)
    close(gru(h, x), np_gru(gru, h, x))


def test_sep_conv_gru_runs_rows_then_columns():
    gru = build(lambda rngs: SepConvGRU(3, 2, rngs=rngs))
    assert gru.horizontal.candidate.kernel.shape[:2] == (1, 5)
    assert gru.vertical.candidate.kernel.shape[:2] == (5, 1)
    h, x = np.tanh(random((6, 7, 3), 1)), random((6, 7, 2), 2)
    close(jitted(gru, h, x), np_gru(gru.vertical, np_gru(gru.horizontal, h, x), x))


def np_motion(encoder, flow, corr):
    c, f = corr, flow
    for layer in encoder.corr_convs:
        c = relu(np_conv(c, layer))
    for layer in encoder.flow_convs:
        f = relu(np_conv(f, layer))
    return np.concatenate([relu(np_conv(np.concatenate([c, f], -1), encoder.out_conv)), flow], -1)


def test_motion_encoder_matches_numpy():
    encoder = build(lambda rngs: MotionEncoder(6, (5,), (4, 3), 9, rngs=rngs))
    flow, corr = random((5, 6, 2), 1), random((5, 6, 6), 2)
    close(jitted(encoder, flow, corr), np_motion(encoder, flow, corr))
    kernels = [m.kernel.shape[:2] for m in [*encoder.corr_convs, *encoder.flow_convs, encoder.out_conv]]
    assert kernels == [(1, 1), (7, 7), (3, 3), (3, 3)]


def test_update_block_feeds_context_then_motion_to_the_gru():
    block = build(lambda rngs: UpdateBlock(MotionEncoder(6, (5, 4), (4, 3), 7, rngs=rngs),
                                           ConvGRU(3, 4 + 7, rngs=rngs), FlowHead(3, 5, rngs=rngs)))
    hidden, context, corr, flow = (random((4, 5, c), seed) for seed, c in enumerate([3, 4, 6, 2]))
    new, delta = jitted(block, hidden, context, corr, flow)
    expected = np_gru(block.gru, hidden, np.concatenate([context, np_motion(block.motion, flow, corr)], -1))
    close(new, expected)
    close(delta, np_conv(relu(np_conv(expected, block.flow_head.conv1)), block.flow_head.conv2))


@pytest.mark.parametrize("variant, hidden, context, corr", [("raft", 128, 128, 324), ("raft-small", 96, 64, 196)])
def test_published_update_blocks_shapes(variant, hidden, context, corr):
    shape = lambda c: jax.ShapeDtypeStruct((2, 8, 12, c), jnp.float32)
    out = jax.eval_shape(lambda *a: update_block(variant, rngs=nnx.Rngs(0))(*a),
                         shape(hidden), shape(context), shape(corr), shape(2))
    assert [o.shape for o in out] == [(2, 8, 12, hidden), (2, 8, 12, 2)]


def test_mask_predictor_matches_numpy():
    predictor = build(lambda rngs: MaskPredictor(6, 7, rngs=rngs, factor=2))
    x = random((4, 5, 6))
    expected = 0.25 * np_conv(relu(np_conv(x, predictor.conv1)), predictor.conv2)
    assert expected.shape == (4, 5, 36)
    close(jitted(predictor, x), expected)
    assert jax.eval_shape(mask_predictor("raft", rngs=nnx.Rngs(0)), jax.ShapeDtypeStruct((8, 12, 128), jnp.float32)).shape \
        == (8, 12, 576)


# -- upsampling -------------------------------------------------------------------------------------

def np_convex_upsample(flow, mask, f):
    h, w, _ = flow.shape
    out = np.zeros((f * h, f * w, 2))
    for y in range(h):
        for x in range(w):
            for a in range(f):
                for b in range(f):
                    logits = np.array([mask[y, x, k * f * f + a * f + b] for k in range(9)])
                    weights = np.exp(logits - logits.max())
                    weights /= weights.sum()
                    for k in range(9):
                        ny, nx = y + k // 3 - 1, x + k % 3 - 1
                        if 0 <= ny < h and 0 <= nx < w:
                            out[y * f + a, x * f + b] += weights[k] * f * flow[ny, nx]
    return out


@pytest.mark.parametrize("factor", [4, 8])
def test_convex_upsample_matches_loop(factor):
    flow, mask = random((3, 4, 2), 1), 2 * random((3, 4, 9 * factor * factor), 2)
    close(convex_upsample(flow, mask, factor), np_convex_upsample(flow, mask, factor))


def test_convex_upsample_with_centre_mask_is_nearest():
    f = 4
    flow = random((2, 3, 5, 2))
    mask = np.zeros((2, 3, 5, 9, f, f), np.float32)
    mask[..., 4, :, :] = 100.0  # the centre neighbour, for every sub-pixel
    up = convex_upsample(flow, mask.reshape(2, 3, 5, -1), f)
    close(up, f * np.repeat(np.repeat(flow, f, axis=1), f, axis=2))


def test_convex_upsample_batched_is_per_pair():
    flow, mask = random((2, 3, 4, 2), 1), random((2, 3, 4, 9 * 64), 2)
    batched = convex_upsample(flow, mask)
    assert batched.shape == (2, 24, 32, 2)
    for i in range(2):
        close(convex_upsample(flow[i], mask[i]), batched[i])


def np_bilinear_align_corners(flow, f):
    h, w, _ = flow.shape
    oh, ow = f * h, f * w
    out = np.zeros((oh, ow, 2))
    for yo in range(oh):
        for xo in range(ow):
            sy, sx = yo * (h - 1) / (oh - 1), xo * (w - 1) / (ow - 1)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = sy - y0, sx - x0
            out[yo, xo] = ((1 - dy) * ((1 - dx) * flow[y0, x0] + dx * flow[y0, x1])
                           + dy * ((1 - dx) * flow[y1, x0] + dx * flow[y1, x1]))
    return f * out


@pytest.mark.parametrize("factor", [2, 8])
def test_bilinear_upsample_matches_align_corners_reference(factor):
    flow = random((3, 5, 2))
    up = bilinear_upsample(flow, factor)
    close(up, np_bilinear_align_corners(flow, factor))
    close(np.asarray(up)[[0, -1]][:, [0, -1]], factor * flow[[0, -1]][:, [0, -1]])  # corners land on corners
    close(bilinear_upsample(np.stack([flow, 2 * flow]), factor)[1], 2 * up)
