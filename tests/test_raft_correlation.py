"""RAFT's correlation lookup: all-pairs against a NumPy reference and RAFT's channel order, the
on-the-fly back-end against all-pairs (values and gradients), half-precision inputs, and the
memory each back-end compiles to."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned.raft.correlation import BACKENDS, AllPairsCorrelation, OnTheFlyCorrelation
from unroll.errors import InputError


def random_inputs(h, w, d, seed=0, margin=3.0, batch=()):
    """Features ``(*batch, h, w, d)`` and non-integer coords ``(*batch, h, w, 2)`` reaching up to
    ``margin`` px outside the image."""
    rng = np.random.default_rng(seed)
    f1, f2 = (jnp.asarray(rng.normal(size=batch + (h, w, d)), jnp.float32) for _ in range(2))
    x = rng.uniform(-margin, w - 1 + margin, batch + (h, w))
    y = rng.uniform(-margin, h - 1 + margin, batch + (h, w))
    return f1, f2, jnp.asarray(np.stack([x, y], -1), jnp.float32)


def correlate(backend, levels, radius):
    corr = BACKENDS[backend](levels=levels, radius=radius)
    return jax.jit(lambda f1, f2, coords: corr.lookup(corr.build(f1, f2), coords))


def bilinear_zero_padded(image, x, y):
    """``image`` ``(h, w)`` at (x, y), integer positions at pixel centres; corners outside count 0."""
    h, w = image.shape
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    total = 0.0
    for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            if 0 <= xi < w and 0 <= yi < h:
                total += wx * wy * image[yi, xi]
    return total


def reference_lookup(f1, f2, coords, levels, radius):
    """RAFT's lookup with explicit loops: ``(h, w, levels (2 r + 1)**2)``; channel ``i (2 r + 1) + j`` of
    a level is offset x by ``i - r`` and y by ``j - r``."""
    f1, f2, coords = (np.asarray(a, np.float64) for a in (f1, f2, coords))
    h, w, d = f1.shape
    pyramid = [np.einsum("yxc,vuc->yxvu", f1, f2) / np.sqrt(d)]
    for _ in range(levels - 1):
        finer = pyramid[-1]
        coarser = np.zeros((h, w, finer.shape[2] // 2, finer.shape[3] // 2))
        for v in range(coarser.shape[2]):
            for u in range(coarser.shape[3]):
                coarser[:, :, v, u] = finer[:, :, 2 * v : 2 * v + 2, 2 * u : 2 * u + 2].mean((2, 3))
        pyramid.append(coarser)
    side = 2 * radius + 1
    out = np.zeros((h, w, levels * side**2))
    for y in range(h):
        for x in range(w):
            for level, volume in enumerate(pyramid):
                cx, cy = coords[y, x] / 2**level
                for i in range(side):
                    for j in range(side):
                        out[y, x, level * side**2 + i * side + j] = bilinear_zero_padded(
                            volume[y, x], cx + i - radius, cy + j - radius)
    return out


def test_all_pairs_matches_numpy_reference():
    f1, f2, coords = random_inputs(6, 7, 5, margin=4.0)
    coords = coords.at[0, 0].set(jnp.array([-9.3, 2.2])).at[1, 0].set(jnp.array([3.4, 8.6]))  # whole windows outside
    out = correlate("all-pairs", 3, 2)(f1, f2, coords)
    assert out.shape == (6, 7, AllPairsCorrelation(levels=3, radius=2).out_features) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference_lookup(f1, f2, coords, 3, 2), atol=1e-5)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_channel_order_moves_x_with_the_first_index(backend):
    h, w, d, radius, qx, qy = 6, 7, 3, 2, 4, 2
    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(h, w, d))
    f2 = np.zeros((h, w, d))
    f2[qy, qx] = rng.normal(size=d)
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1)
    coords = grid + np.array([1, -1])
    expected = np.zeros((h, w, (2 * radius + 1) ** 2))
    for y in range(h):
        for x in range(w):
            i, j = qx - coords[y, x, 0] + radius, qy - coords[y, x, 1] + radius
            if 0 <= i <= 2 * radius and 0 <= j <= 2 * radius:
                expected[y, x, i * (2 * radius + 1) + j] = f1[y, x] @ f2[qy, qx] / np.sqrt(d)
    assert np.count_nonzero(expected) > 10
    out = correlate(backend, 1, radius)(*(jnp.asarray(a, jnp.float32) for a in (f1, f2, coords)))
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("shape, levels, radius", [((6, 7, 5), 3, 2), ((13, 17, 32), 4, 4)])
def test_on_the_fly_equals_all_pairs(shape, levels, radius):
    # A batch of two pairs under vmap, as the framework calls them; at 13x17 the last level is 1x2 px.
    f1, f2, coords = random_inputs(*shape, seed=2, margin=5.0, batch=(2,))
    all_pairs, on_the_fly = (jax.vmap(correlate(name, levels, radius)) for name in ("all-pairs", "on-the-fly"))
    expected = all_pairs(f1, f2, coords)
    np.testing.assert_allclose(on_the_fly(f1, f2, coords), expected, atol=1e-5)
    np.testing.assert_allclose(expected[1], correlate("all-pairs", levels, radius)(f1[1], f2[1], coords[1]), atol=1e-6)


def linear_functional(backend, levels, radius, weights):
    corr = BACKENDS[backend](levels=levels, radius=radius)
    return lambda f1, f2, coords: jnp.sum(weights * corr.lookup(corr.build(f1, f2), coords))


def test_gradients_agree_between_back_ends():
    f1, f2, coords = random_inputs(9, 11, 8, seed=3)
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(9, 11, 3 * 25)), jnp.float32)
    grads = [jax.jit(jax.grad(linear_functional(name, 3, 2, weights), (0, 1, 2)))(f1, f2, coords)
             for name in ("all-pairs", "on-the-fly")]
    for expected, actual in zip(*grads):
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_all_pairs_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        f1, f2, coords = (a.astype(jnp.float64) for a in random_inputs(6, 7, 5, seed=5))
        weights = jnp.asarray(np.random.default_rng(6).normal(size=(6, 7, 3 * 25)))
        energy = jax.jit(linear_functional("all-pairs", 3, 2, weights))
        grads = jax.grad(energy, (0, 1, 2))(f1, f2, coords)
        args = [f1, f2, coords]
        for which, index in [(0, (2, 3, 1)), (1, (4, 5, 0)), (1, (0, 6, 4)), (2, (1, 2, 0)), (2, (3, 4, 1))]:
            step = [jnp.zeros_like(a) for a in args]
            step[which] = step[which].at[index].set(1e-5)
            plus, minus = ([a + s * sign for a, s in zip(args, step)] for sign in (1, -1))
            numeric = (energy(*plus) - energy(*minus)) / 2e-5
            assert abs(grads[which][index]) > 1e-2
            np.testing.assert_allclose(grads[which][index], numeric, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_half_precision_features_correlate_in_float32(backend, dtype):
    f1, f2, coords = random_inputs(6, 7, 64, seed=7)
    half = [f.astype(dtype) for f in (f1, f2)]
    lookup = correlate(backend, 2, 2)
    out = lookup(*half, coords)
    assert out.dtype == jnp.float32
    # Exactly the float32 result of the rounded features: summing 64 products in half precision
    # would be off by about 1e-2.
    np.testing.assert_allclose(out, lookup(*(f.astype(jnp.float32) for f in half), coords), atol=1e-6)
    np.testing.assert_allclose(out, lookup(f1, f2, coords), atol=0.05)


def compiled_bytes(backend, h, w, d=256, gradient=False):
    """Temporary bytes XLA allocates for build and lookup (or their gradient) at ``(h, w, d)`` features."""
    corr = BACKENDS[backend]()
    features, coords = jax.ShapeDtypeStruct((h, w, d), jnp.float32), jax.ShapeDtypeStruct((h, w, 2), jnp.float32)
    def lookup(f1, f2, xy):
        return corr.lookup(corr.build(f1, f2), xy)

    fn = jax.grad(lambda *args: jnp.sum(lookup(*args)), (0, 1, 2)) if gradient else lookup
    return jax.jit(fn).lower(features, features, coords).compile().memory_analysis().temp_size_in_bytes


def test_on_the_fly_memory_is_linear_in_pixels():
    small, large = (32, 48), (64, 96)  # 4x the pixels
    all_pairs = [compiled_bytes("all-pairs", *s) for s in (small, large)]
    on_the_fly = [compiled_bytes("on-the-fly", *s) for s in (small, large)]
    on_the_fly_gradient = [compiled_bytes("on-the-fly", *s, gradient=True) for s in (small, large)]
    # Measured (CPU): all-pairs 17 -> 210 MiB, on-the-fly 5.1 -> 20 MiB, its gradient 8.6 -> 35 MiB.
    assert all_pairs[1] > 6 * on_the_fly[1]
    assert all_pairs[1] > 4 * on_the_fly_gradient[1]
    assert all_pairs[1] / all_pairs[0] > 10
    assert on_the_fly[1] / on_the_fly[0] < 5
    assert on_the_fly_gradient[1] / on_the_fly_gradient[0] < 5


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_rejects_bad_sizes(backend):
    with pytest.raises(InputError):
        BACKENDS[backend](levels=0)
    with pytest.raises(InputError):
        BACKENDS[backend](radius=-1)
    corr = BACKENDS[backend](levels=3)
    with pytest.raises(InputError):
        corr.build(jnp.zeros((8, 8, 4)), jnp.zeros((8, 9, 4)))
    with pytest.raises(InputError):
        corr.build(jnp.zeros((3, 8, 4)), jnp.zeros((3, 8, 4)))
    assert isinstance(corr, OnTheFlyCorrelation if backend == "on-the-fly" else AllPairsCorrelation)
