"""Tests for unroll.data.synthetic: determinism, exact ground truth, occlusion, config checks."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from unroll.data import synthetic
from unroll.data.synthetic import (Ellipse, Layer, Plane, Scene, SyntheticConfig, SyntheticDataset,
                                   Texture, Waves, generate_pair, sample_scene, sampling, shapes,
                                   textures)
from unroll.errors import InputError

SMALL = SyntheticConfig(size=(96, 128), num_layers=(2, 3))
STILL = replace(SMALL, brightness=0.0, contrast=0.0, noise_sigma=0.0, blur_sigma=0.0)
# Deformations near the Lipschitz limit: WAVE_SLOPE * 5 / 64 = 0.48 <= 0.5.
STRONG = replace(STILL, deform_amplitude=5.0, deform_wavelength=64.0)


def _grid(h, w):
    """(2, h * w) float64 pixel positions, rows x and y, in raster order."""
    return np.indices((h, w), np.float64)[::-1].reshape(2, -1)


def _planar(image):
    """(h, w, c) -> (c, h * w)."""
    return image.reshape(-1, image.shape[-1]).T.astype(np.float64)


def _rigid_and_one_step(scene, grid):
    """Frame-2 positions of the frame-1 pixels from the affine part alone, and after one step of
    the fixed-point iteration (wrong answers the exact flow must beat)."""
    ids, coords = scene.locate(grid, 1)
    rigid, one_step = np.empty_like(grid), np.empty_like(grid)
    for index, layer in enumerate(scene.layers):
        mine = ids == index
        y = layer.affine2[:, :2] @ coords[:, mine] + layer.affine2[:, 2:]
        rigid[:, mine], one_step[:, mine] = y, y - layer.deformation(y)
    return rigid, one_step


# --- Determinism and the dataset -----------------------------------------------------------------

def test_same_seed_same_pair_other_seed_other_pair():
    a, b, c = generate_pair(SMALL, 7), generate_pair(SMALL, 7), generate_pair(SMALL, 8)
    for key in ("frame1", "frame2", "flow", "valid", "occluded"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in ("frame1", "frame2", "flow"):
        assert not np.array_equal(a[key], c[key]), key


def test_outputs_have_the_documented_shapes_and_ranges():
    pair = generate_pair(SMALL, 0)
    assert pair["frame1"].shape == pair["frame2"].shape == (96, 128, 3)
    assert pair["flow"].shape == (96, 128, 2)
    assert pair["valid"].shape == pair["occluded"].shape == (96, 128)
    assert pair["frame1"].dtype == pair["frame2"].dtype == pair["flow"].dtype == np.float32
    assert pair["valid"].dtype == pair["occluded"].dtype == bool
    assert pair["valid"].all() and 0.0 < pair["occluded"].mean() < 0.7
    for key in ("frame1", "frame2"):
        assert 0 <= pair[key].min() and pair[key].max() <= 255 and pair[key].std() > 10, key
    assert np.isfinite(pair["flow"]).all()


def test_dataset_items_are_pairs_of_seed_and_index():
    data = SyntheticDataset(SMALL, seed=3, length=10)
    assert len(data) == 10 and len(SyntheticDataset()) >= 1_000_000
    expected = generate_pair(SMALL, (3, 4))
    for key, value in data[4].items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
    np.testing.assert_array_equal(data[-1]["flow"], data[9]["flow"])
    assert not np.array_equal(data[4]["flow"], SyntheticDataset(SMALL, seed=4)[4]["flow"])
    batch = data.batch([1, 4, 4])
    assert batch["frame1"].shape == (3, 96, 128, 3) and batch["valid"].shape == (3, 96, 128)
    assert batch["occluded"].shape == (3, 96, 128)
    np.testing.assert_array_equal(batch["flow"][1], expected["flow"])
    with pytest.raises(IndexError):
        data[10]
    with pytest.raises(InputError, match="index"):
        data[1.5]
    with pytest.raises(InputError, match="seed"):
        SyntheticDataset(SMALL, seed=-1)


# --- Exactness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flow_is_exact_at_the_texture_level(seed):
    """Frame 2 rendered exactly at (x + u, y + v) equals frame 1 on every unoccluded pixel; the
    negated flow, the flow without the non-rigid part and a single fixed-point step all fail."""
    scene = sample_scene(STRONG, np.random.default_rng(seed))
    pair = scene.pair()
    grid, visible = _grid(*scene.size), ~pair["occluded"].ravel()
    frame1, flow = _planar(pair["frame1"]), _planar(pair["flow"])

    def error(target):
        return np.abs(scene.render(target, 2) - frame1)[:, visible]

    assert error(grid + flow).max() < 1e-3
    rigid, one_step = _rigid_and_one_step(scene, grid)
    assert error(grid - flow).mean() > 10.0
    assert error(rigid).mean() > 3.0
    assert error(one_step).max() > 0.5


def test_fixed_point_inverts_the_frame2_backward_map():
    rng = np.random.default_rng(5)
    for seed in range(4):
        for layer in sample_scene(STRONG, np.random.default_rng(seed)).layers:
            assert layer.deformation.lipschitz <= synthetic.MAX_LIPSCHITZ
            coords = rng.uniform(-200, 200, (2, 1000))
            back = layer.to_texture(layer.to_frame2(coords), 2)
            np.testing.assert_allclose(back, coords, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_warping_frame2_by_the_flow_reproduces_frame1(seed):
    """Independent check with SciPy's bilinear interpolation, on a texture without grain, at the
    unoccluded pixels whose 2 x 2 interpolation footprint in frame 2 shows their own layer."""
    scene = sample_scene(replace(STRONG, textures=("noise",), texture_grain=0.0),
                         np.random.default_rng(seed))
    pair = scene.pair()
    h, w = scene.size
    grid = _grid(h, w)
    frame1, frame2, flow = _planar(pair["frame1"]), pair["frame2"], _planar(pair["flow"])
    ids1, ids2 = scene.locate(grid, 1)[0], scene.locate(grid, 2)[0].reshape(h, w)
    x0 = np.clip(np.floor(grid[0] + flow[0]).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(grid[1] + flow[1]).astype(int), 0, h - 2)
    clean = ~pair["occluded"].ravel() & np.all(
        [ids2[y0 + dy, x0 + dx] == ids1 for dy in (0, 1) for dx in (0, 1)], axis=0)
    assert clean.mean() > 0.5

    def error(motion):
        x, y = grid + motion
        warped = [ndimage.map_coordinates(frame2[..., c], [y, x], order=1) for c in range(3)]
        return np.abs(np.array(warped) - frame1)[:, clean].mean()

    exact = error(flow)
    assert exact < 1.5  # mean, in grey levels of 255: bilinear interpolation error only
    assert error(-flow) > 10 * exact and error(0 * flow) > 10 * exact
    assert error(_rigid_and_one_step(scene, grid)[0] - grid) > 2 * exact


# --- Occlusion -----------------------------------------------------------------------------------

def _disc_layer(value, radius, centre1, centre2):
    """A flat-coloured disc moving by translation from centre1 to centre2."""
    side = 2 * math.ceil(radius) + 3
    texture = Texture(np.full((3, side, side), value, np.float32), (-(side // 2), -(side // 2)))
    none = Waves(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    affine = lambda c: np.array([[1.0, 0.0, c[0]], [0.0, 1.0, c[1]]])
    return Layer(texture, Ellipse(radius, radius), affine(centre1), affine(centre2), none)


def test_a_layer_passing_in_front_hides_the_one_below():
    h, w = 64, 80
    none = Waves(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    background = Layer(Texture(np.full((3, h + 2, w + 2), 30.0, np.float32), (-1, -1)), Plane(),
                       identity, identity, none)
    still = _disc_layer(120.0, 12.5, (40, 32), (40, 32))
    mover = _disc_layer(220.0, 10.5, (14, 32), (40, 32))  # passes over `still`'s centre
    pair = Scene((background, still, mover), (h, w)).pair()

    y, x = np.mgrid[0:h, 0:w]
    near_still, near_mover = np.hypot(x - 40, y - 32), np.hypot(x - 14, y - 32)
    in_mover = near_mover <= 10.5
    in_still = (near_still <= 12.5) & ~in_mover
    frame1 = np.select([in_mover, in_still], [220, 120], 30)
    frame2 = np.select([near_still <= 10.5, near_still <= 12.5], [220, 120], 30)
    np.testing.assert_array_equal(pair["frame1"][..., 0], frame1)
    np.testing.assert_array_equal(pair["frame2"][..., 0], frame2)
    np.testing.assert_array_equal(pair["flow"][..., 0], np.where(in_mover, 26.0, 0.0))
    np.testing.assert_array_equal(pair["flow"][..., 1], 0.0)
    # The still disc's pixels under the mover in frame 2 are occluded; so is the background under
    # either disc; the mover itself stays visible.
    hidden = np.where(in_mover, False, np.where(in_still, near_still <= 10.5, near_still <= 12.5))
    np.testing.assert_array_equal(pair["occluded"], hidden)
    assert pair["valid"].all()
    assert hidden[in_still].any() and not hidden[in_still].all()


def test_pixels_leaving_the_image_are_occluded():
    config = replace(STILL, num_layers=(0, 0), max_translation=0.0, rotation=(0.0, 0.0),
                     scale=(1.25, 1.25), max_shear=0.0, deform_amplitude=0.0, background_motion=1.0)
    pair = generate_pair(config, 0)
    h, w = config.size
    y, x = np.mgrid[0:h, 0:w]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # A zoom by 1.25 about the centre: exactly this flow, and only the central part stays.
    np.testing.assert_allclose(pair["flow"][..., 0], 0.25 * (x - cx), atol=1e-4)
    np.testing.assert_allclose(pair["flow"][..., 1], 0.25 * (y - cy), atol=1e-4)
    inside = (np.abs(1.25 * (x - cx)) <= cx) & (np.abs(1.25 * (y - cy)) <= cy)
    np.testing.assert_array_equal(pair["occluded"], ~inside)
    assert pair["valid"].all()


# --- Config ranges and photometric changes -------------------------------------------------------

def test_photometric_changes_leave_flow_and_masks_alone():
    loud = replace(SMALL, brightness=30.0, contrast=0.3, noise_sigma=8.0, blur_sigma=1.5)
    a, b = generate_pair(loud, 5), generate_pair(STILL, 5)
    np.testing.assert_array_equal(a["flow"], b["flow"])
    np.testing.assert_array_equal(a["valid"], b["valid"])
    np.testing.assert_array_equal(a["occluded"], b["occluded"])
    for key in ("frame1", "frame2"):
        assert np.abs(a[key] - b[key]).mean() > 1.0, key
    assert np.abs(a["frame1"] - a["frame2"]).mean() > np.abs(b["frame1"] - b["frame2"]).mean()


@pytest.mark.parametrize("amplitude", [0.0, 3.0])
def test_flow_stays_within_the_configured_motion(amplitude):
    config = replace(STILL, num_layers=(1, 4), max_translation=10.0, rotation=(0.0, 0.0),
                     scale=(1.0, 1.0), max_shear=0.0, deform_amplitude=amplitude)
    for seed in range(4):
        scene = sample_scene(config, np.random.default_rng(seed))
        assert 1 <= len(scene.layers) - 1 <= 4
        flow = scene.pair()["flow"]
        assert np.hypot(flow[..., 0], flow[..., 1]).max() <= 10.0 + amplitude + 1e-4
        if amplitude == 0.0:  # pure translations: one flow vector per layer
            ids = scene.locate(_grid(*scene.size), 1)[0].reshape(scene.size)
            for index in np.unique(ids):
                assert np.ptp(flow[ids == index], axis=0).max() < 1e-4


# --- Shapes and textures against independent references -------------------------------------------

def _crossings_inside(vertices, points):
    """Even-odd ray casting, one point at a time."""
    inside = []
    for px, py in points.T:
        crossings = 0
        for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, -1, 0)):
            if (ay > py) != (by > py) and px < ax + (py - ay) * (bx - ax) / (by - ay):
                crossings += 1
        inside.append(crossings % 2 == 1)
    return np.array(inside)


def test_shapes_match_references():
    rng = np.random.default_rng(0)
    points = rng.uniform(-50, 50, (2, 400))
    for _ in range(5):
        polygon = shapes._random_polygon(rng, 45.0)
        np.testing.assert_array_equal(polygon.contains(points),
                                      _crossings_inside(polygon.vertices, points))
        blob = shapes._random_blob(rng, 45.0)
        angle, r = np.arctan2(points[1], points[0]), np.hypot(*points)
        rho = blob.r0 * (1 + sum(abs(c) * np.cos((k + 2) * angle + np.angle(c))
                                 for k, c in enumerate(blob.weights)))
        np.testing.assert_array_equal(blob.contains(points), r <= rho)
        assert blob.radius <= 45.0 + 1e-9 and polygon.radius <= 45.0 + 1e-9
    # (2.0 / 3)^2 + (1.5 / 2)^2 = 1.007 > 1; (2.0 / 3)^2 + (1.2 / 2)^2 = 0.804 <= 1.
    points = np.array([[2.9, 0.0, 2.0, -2.0], [0.0, 1.9, 1.5, 1.2]])
    np.testing.assert_array_equal(Ellipse(3.0, 2.0).contains(points), [True, True, False, True])


def test_texture_sampling_is_bilinear_and_clamped():
    image = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    texture = Texture(image, (10.0, 20.0))
    coords = np.array([[10.0, 11.5, 12.25, 0.0, 30.0], [20.0, 21.0, 22.5, 0.0, 40.0]])
    expected = np.stack([image[:, 0, 0], image[:, 1, 1:3].mean(1),
                         0.5 * (image[:, 2, 2] * 0.75 + image[:, 2, 3] * 0.25)
                         + 0.5 * (image[:, 3, 2] * 0.75 + image[:, 3, 3] * 0.25),
                         image[:, 0, 0], image[:, 3, 4]], 1)
    np.testing.assert_allclose(texture.sample(coords), expected, rtol=1e-6)


def test_textures_have_fine_detail():
    """Neighbouring pixels differ: there is structure at the finest scale to compute flow from."""
    for kind in ("noise", "stripes", "checks", "blobs"):
        frame = generate_pair(replace(STILL, textures=(kind,)), 1)["frame1"]
        assert np.abs(np.diff(frame, axis=1)).mean() > 3.0, kind


def test_photo_textures_fall_back_silently_without_scikit_image(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # makes `import skimage` fail
    textures._photos.cache_clear()
    try:
        with_photos = generate_pair(replace(SMALL, photo_textures=True), 2)
    finally:
        textures._photos.cache_clear()
    np.testing.assert_array_equal(with_photos["frame1"], generate_pair(SMALL, 2)["frame1"])


def test_photo_textures_are_used_when_scikit_image_is_installed():
    pytest.importorskip("skimage")
    assert textures._photos()
    photos = replace(SMALL, photo_textures=True, textures=("noise",))
    plain, box = replace(photos, photo_textures=False), (0, 0, 40, 30)
    assert sampling._texture(photos, np.random.default_rng(0), box).image.shape == (3, 32, 42)
    # Without photos every texture here is "noise"; with them, some are crops of photographs.
    differ = [not np.array_equal(sampling._texture(photos, np.random.default_rng(seed), box).image,
                                 sampling._texture(plain, np.random.default_rng(seed), box).image)
              for seed in range(8)]
    assert any(differ)


# --- Bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("size", (-1, 64)), ("size", (64,)), ("size", (64.0, 80)),
    ("num_layers", (3, 1)), ("num_layers", (-1, 2)),
    ("layer_radius", (0.0, 0.2)), ("rotation", (10.0, -10.0)),
    ("scale", (0.0, 1.0)), ("scale", (1.2, 0.8)),
    ("max_translation", -1.0), ("max_translation", float("nan")), ("contrast", 1.0),
    ("noise_sigma", -0.5), ("deform_amplitude", 10.0), ("deform_wavelength", 0.0),
    ("shapes", ("square",)), ("textures", ()), ("textures", "noise"), ("photo_textures", "yes"),
])
def test_bad_config_values_are_rejected_by_name(field, value):
    with pytest.raises(InputError, match=rf"SyntheticConfig\.{field}\b"):
        SyntheticConfig(**{field: value})


def test_bad_arguments_are_rejected():
    with pytest.raises(InputError, match="seed"):
        generate_pair(SMALL, -3)
    with pytest.raises(InputError, match="config"):
        generate_pair({"size": (10, 10)}, 0)
    with pytest.raises(InputError, match="config"):
        SyntheticDataset({"size": (10, 10)})
    steep = Waves(np.array([[10.0, 0.0]]), np.array([[0.1, 0.0]]), np.zeros(1))
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    texture = Texture(np.zeros((3, 4, 4), np.float32), (0.0, 0.0))
    with pytest.raises(InputError, match="Lipschitz"):
        Layer(texture, Plane(), identity, identity, steep)
    with pytest.raises(InputError, match="Plane"):
        Scene((Layer(texture, Ellipse(1.0, 1.0), identity, identity, Waves(
            np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))),), (4, 4))
    scene = sample_scene(SMALL, np.random.default_rng(0))
    with pytest.raises(InputError, match="frame"):
        scene.locate(np.zeros((2, 3)), 3)
