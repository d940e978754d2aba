"""Image operations against SciPy / NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import ndimage

from unroll import image_ops, selection
from unroll.warp import BilinearWarp

RNG = np.random.default_rng(0)
IMAGE = RNG.uniform(0, 255, (13, 17, 2)).astype(np.float32)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_gaussian_blur_matches_scipy(sigma):
    expected = np.stack([ndimage.gaussian_filter(IMAGE[..., c].astype(np.float64), sigma, mode="nearest")
                         for c in range(2)], -1)
    np.testing.assert_allclose(image_ops.gaussian_blur(jnp.asarray(IMAGE), sigma), expected, rtol=1e-5, atol=1e-3)


def test_gradients_match_scipy_correlate():
    dx, dy = image_ops.gradients(jnp.asarray(IMAGE))
    taps = [1 / 12, -8 / 12, 0, 8 / 12, -1 / 12]
    np.testing.assert_allclose(dx, ndimage.correlate1d(IMAGE, taps, axis=1, mode="nearest"), atol=1e-3)
    np.testing.assert_allclose(dy, ndimage.correlate1d(IMAGE, taps, axis=0, mode="nearest"), atol=1e-3)


def test_gradient_of_a_ramp_is_exact():
    ramp = np.add.outer(2.0 * np.arange(9), -3.0 * np.arange(11))[..., None].astype(np.float32)  # y, x
    dx, dy = image_ops.gradients(jnp.asarray(ramp))
    np.testing.assert_allclose(dx[:, 2:-2], -3.0, rtol=1e-6)
    np.testing.assert_allclose(dy[2:-2], 2.0, rtol=1e-6)


@pytest.mark.parametrize("dy, dx", [(0, 1), (1, 0), (-1, 1), (1, -1), (-1, -1)])
def test_neighbour_is_shift_with_own_value_outside(dy, dx):
    out = np.asarray(image_ops.neighbour(jnp.asarray(IMAGE), dy, dx))
    h, w = IMAGE.shape[:2]
    for y in range(h):
        for x in range(w):
            inside = 0 <= y + dy < h and 0 <= x + dx < w
            np.testing.assert_array_equal(out[y, x], IMAGE[y + dy, x + dx] if inside else IMAGE[y, x])


def test_sample_bilinear_matches_scipy_map_coordinates():
    x = RNG.uniform(0, 16, (5, 6)).astype(np.float32)
    y = RNG.uniform(0, 12, (5, 6)).astype(np.float32)
    out = image_ops.sample_bilinear(jnp.asarray(IMAGE), jnp.asarray(x), jnp.asarray(y))
    for c in range(2):
        expected = ndimage.map_coordinates(IMAGE[..., c], [y, x], order=1, mode="nearest")
        np.testing.assert_allclose(out[..., c], expected, rtol=1e-5)


def test_sample_bilinear_gradients():
    with jax.enable_x64(True):
        image = jnp.asarray(IMAGE, jnp.float64)
        x = jnp.asarray(RNG.uniform(0.1, 15.9, (4, 3)))
        y = jnp.asarray(RNG.uniform(0.1, 11.9, (4, 3)))
        check_grads(lambda im, a, b: image_ops.sample_bilinear(im, a, b), (image, x, y), order=1, modes=["rev"])


def test_resize_bilinear_keeps_constants_and_ramps():
    const = jnp.full((8, 10, 1), 3.0)
    np.testing.assert_allclose(image_ops.resize_bilinear(const, (4, 5)), 3.0)
    ramp = jnp.asarray(np.tile(np.arange(10.0), (8, 1))[..., None])
    half = image_ops.resize_bilinear(ramp, (4, 5))
    np.testing.assert_allclose(half[0, :, 0], [0.5, 2.5, 4.5, 6.5, 8.5])  # pixel centres 2x+0.5


@pytest.mark.parametrize("n", [3, 9, 25, 49])
def test_median_network_equals_numpy_median(n):
    values = RNG.normal(size=(n, 300)).astype(np.float32)
    values[:, :100] = np.round(values[:, :100])  # ties
    np.testing.assert_array_equal(selection.median(list(values)), np.median(values, axis=0))


def test_median_network_is_small():
    ops, _ = selection.median_network(25)
    assert len(ops) < 130


def test_median_filter_matches_scipy():
    expected = np.stack([ndimage.median_filter(IMAGE[..., c], size=5, mode="nearest") for c in range(2)], -1)
    np.testing.assert_array_equal(image_ops.median_filter(jnp.asarray(IMAGE), 5), expected)


def test_warp_by_integer_flow_and_validity_mask():
    flow = np.zeros(IMAGE.shape[:2] + (2,), np.float32)
    flow[..., 0] = 2.0  # u: sample two columns to the right
    warped, valid = BilinearWarp()(jnp.asarray(IMAGE), jnp.asarray(flow))
    np.testing.assert_allclose(warped[:, :-2], IMAGE[:, 2:])
    assert valid[:, :-2].all() and not valid[:, -2:].any()


def test_level_sizes():
    assert image_ops.level_sizes((480, 640), 0.5, 10, 16) == [(480, 640), (240, 320), (120, 160), (60, 80), (30, 40)]
    assert image_ops.level_sizes((480, 640), 0.5, 2, 16) == [(480, 640), (240, 320)]


def test_median_gradient_selects_the_median_element():
    values = [jnp.asarray(RNG.normal(size=(4, 5)).astype(np.float32)) for _ in range(9)]
    grads = jax.grad(lambda vs: jnp.sum(selection.median(vs) * jnp.arange(20.0).reshape(4, 5)))(values)
    stacked, g = np.stack(values), np.stack(grads)
    chosen = np.argsort(stacked, axis=0)[4]  # index of the median (values are distinct)
    expected = np.zeros_like(g)
    np.put_along_axis(expected, chosen[None], np.arange(20.0).reshape(1, 4, 5), axis=0)
    np.testing.assert_array_equal(g, expected)
