"""Tests for the geometric augmentation: each transform keeps the flow true to the frames.

The main check is consistency: for a pair made by a known translation, the augmented frame 2
sampled at ``(x + u, y + v)`` with the augmented flow must equal the augmented frame 1 at
``(x, y)``, whatever the transform did.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from unroll.data.augment import AugmentConfig, augment, crop, flip, random_crop, rescale
from unroll.data.datasets import Sample
from unroll.errors import InputError

SHAPE = (24, 32)


def translated_pair(flow=(3, -2), shape=SHAPE, smooth=0.0, seed=0) -> dict:
    """A sample whose frame 2 is frame 1 moved by the constant integer ``flow = (u, v)``."""
    u, v = flow
    margin = 8
    texture = np.random.default_rng(seed).uniform(0, 255, (shape[0] + 2 * margin, shape[1] + 2 * margin, 3))
    if smooth:
        texture = ndimage.gaussian_filter(texture, (smooth, smooth, 0))
    window = (slice(margin, margin + shape[0]), slice(margin, margin + shape[1]))
    moved = (slice(margin - v, margin - v + shape[0]), slice(margin - u, margin - u + shape[1]))
    return dict(name="shift", frame1=texture[window].astype(np.float32), frame2=texture[moved].astype(np.float32),
                flow=np.broadcast_to(np.float32([u, v]), (*shape, 2)).copy(), valid=np.ones(shape, bool),
                occluded=None, noc_valid=None)


def warp_error(sample: dict, order: int = 1, border: int = 0) -> np.ndarray:
    """|frame2(x + flow) - frame1(x)| at the pixels whose target lies inside frame 2 (and ``border``)."""
    frame1, frame2, flow = sample["frame1"], sample["frame2"], sample["flow"].astype(np.float64)
    h, w = flow.shape[:2]
    y, x = np.mgrid[:h, :w].astype(np.float64)
    ty, tx = y + flow[..., 1], x + flow[..., 0]
    inside = (ty >= border) & (ty <= h - 1 - border) & (tx >= border) & (tx <= w - 1 - border)
    inside &= (y >= border) & (y < h - border) & (x >= border) & (x < w - border) & sample["valid"]
    errors = [np.abs(ndimage.map_coordinates(frame2[..., c].astype(np.float64), [ty[inside], tx[inside]],
                                             order=order) - frame1[..., c][inside]) for c in range(frame1.shape[2])]
    return np.concatenate(errors)


def random_sample(seed=0, sparse=False) -> dict:
    rng = np.random.default_rng(seed)
    valid = rng.random(SHAPE) < (0.3 if sparse else 0.95)
    return dict(name="random", frame1=rng.uniform(0, 255, (*SHAPE, 3)).astype(np.float32),
                frame2=rng.uniform(0, 255, (*SHAPE, 3)).astype(np.float32),
                flow=rng.normal(0, 3, (*SHAPE, 2)).astype(np.float32), valid=valid,
                occluded=rng.random(SHAPE) < 0.2, noc_valid=valid & (rng.random(SHAPE) < 0.7))


def assert_samples_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


def test_translation_pair_is_consistent():
    assert warp_error(translated_pair(), order=0).max() == 0


@pytest.mark.parametrize("axis, expected", [(1, (-3, -2)), (0, (3, 2))])
def test_flip_negates_one_component(axis, expected):
    out = flip(translated_pair(), axis)
    np.testing.assert_array_equal(out["flow"], np.broadcast_to(np.float32(expected), (*SHAPE, 2)))
    assert warp_error(out, order=0).max() == 0


@pytest.mark.parametrize("axis", [0, 1])
def test_flip_twice_is_identity(axis):
    sample = random_sample()
    once = flip(sample, axis)
    assert not np.array_equal(once["frame1"], sample["frame1"])
    assert_samples_equal(flip(once, axis), sample)


def test_flip_rejects_bad_axis():
    with pytest.raises(InputError, match="axis"):
        flip(random_sample(), 2)


def test_crop_takes_window_and_keeps_flow():
    sample = random_sample()
    out = crop(sample, 3, 5, (10, 12))
    for key in ("frame1", "frame2", "flow", "valid", "occluded", "noc_valid"):
        np.testing.assert_array_equal(out[key], sample[key][3:13, 5:17])
    assert out["name"] == "random"
    with pytest.raises(InputError, match="outside"):
        crop(sample, 20, 0, (10, 12))
    with pytest.raises(InputError, match="larger"):
        random_crop(sample, (25, 12), np.random.default_rng(0))


def test_flips_and_crops_keep_translation_consistent():
    config = AugmentConfig(crop=(16, 20), scale_prob=0.0, hflip_prob=0.5, vflip_prob=0.5)
    seen = set()
    for seed in range(12):
        out = augment(translated_pair(), config, np.random.default_rng(seed))
        assert out["frame1"].shape == (16, 20, 3) and out["flow"].shape == (16, 20, 2)
        u, v = out["flow"][0, 0]
        assert (abs(u), abs(v)) == (3, 2) and np.all(out["flow"] == out["flow"][0, 0])
        assert warp_error(out, order=0).max() == 0
        seen.add((float(u), float(v)))
    assert seen == {(3, -2), (-3, -2), (3, 2), (-3, 2)}  # every flip combination was drawn


def test_dense_scaling_of_constant_flow():
    sample = translated_pair(flow=(3, -2))
    out = rescale(sample, (48, 48))  # x2 in height, x1.5 in width
    np.testing.assert_allclose(out["flow"], np.broadcast_to(np.float32([4.5, -4.0]), (48, 48, 2)), rtol=1e-6)
    assert out["valid"].all() and out["frame1"].shape == (48, 48, 3) and out["frame1"].dtype == np.float32


def test_dense_scaling_keeps_translation_consistent():
    """Smooth texture: bilinear resampling is then close to exact."""
    sample = translated_pair(flow=(3, -2), shape=(48, 64), smooth=3.0)
    for shape in [(72, 96), (36, 48)]:
        errors = warp_error(rescale(sample, shape), order=3, border=2)
        assert errors.size > 100 and errors.mean() < 0.1, shape
    # the same check fails for a wrongly scaled flow
    wrong = rescale(sample, (72, 96)) | {"flow": rescale(sample, (72, 96))["flow"] / 1.5}
    assert warp_error(wrong, order=3, border=2).mean() > 1


def test_dense_scaling_does_not_spread_unknown_flow():
    sample = translated_pair()
    sample["flow"][5, 7] = 1.6666668e9  # Middlebury's unknown flow
    sample["valid"][5, 7] = False
    out = rescale(sample, (48, 64))
    assert np.abs(out["flow"]).max() == pytest.approx(6.0)
    invalid = np.argwhere(~out["valid"])
    assert 1 <= len(invalid) <= 16 and np.all(np.abs(invalid - [10.5, 14.5]).max(axis=1) <= 2)


def test_sparse_upscaling_moves_every_valid_vector():
    sample = random_sample(sparse=True)
    out = rescale(sample, (36, 48), sparse=True)  # x1.5: distinct pixels stay distinct
    assert np.count_nonzero(out["valid"]) == np.count_nonzero(sample["valid"])
    np.testing.assert_allclose(np.sort(out["flow"][out["valid"]], axis=0),
                               np.sort(sample["flow"][sample["valid"]] * 1.5, axis=0), rtol=1e-6)
    assert not out["flow"][~out["valid"]].any()  # nothing interpolated into the holes
    assert np.count_nonzero(out["noc_valid"]) == np.count_nonzero(sample["noc_valid"])
    assert not (out["noc_valid"] & ~out["valid"]).any()
    ys, xs = np.nonzero(sample["valid"])  # each vector lands at the pixel nearest its scaled position
    np.testing.assert_allclose(out["flow"][np.rint((ys + 0.5) * 1.5 - 0.5).astype(int),
                                           np.rint((xs + 0.5) * 1.5 - 0.5).astype(int)],
                               sample["flow"][ys, xs] * 1.5, rtol=1e-6)


def test_sparse_downscaling_keeps_scaled_values():
    sample = random_sample(sparse=True)
    out = rescale(sample, (12, 16), sparse=True)
    n_in, n_out = np.count_nonzero(sample["valid"]), np.count_nonzero(out["valid"])
    assert 0.5 * min(n_in, 12 * 16) < n_out <= n_in  # collisions only
    scaled = {tuple(v) for v in (sample["flow"][sample["valid"]] * 0.5).round(4)}
    assert {tuple(v) for v in out["flow"][out["valid"]].round(4)} <= scaled


def test_sparse_scaling_keeps_translation_consistent():
    sample = translated_pair(flow=(4, -2), shape=(48, 64), smooth=3.0)
    sample["valid"] = np.random.default_rng(1).random((48, 64)) < 0.3
    out = rescale(sample, (72, 96), sparse=True)
    assert warp_error(out, order=3, border=2).mean() < 0.1


def test_augment_is_deterministic():
    config = AugmentConfig(crop=(16, 24), scale_prob=1.0, min_log2_scale=-0.3, max_log2_scale=0.6,
                           vflip_prob=0.5, sparse=True)
    sample = random_sample(sparse=True)
    first = augment(sample, config, np.random.default_rng(7))
    assert_samples_equal(first, augment(sample, config, np.random.default_rng(7)))
    others = [augment(sample, config, np.random.default_rng(seed)) for seed in range(5)]
    assert any(not np.array_equal(first["frame1"], o["frame1"]) for o in others)
    assert all(o["flow"].shape == (16, 24, 2) and o["valid"].dtype == bool for o in others)


def test_augment_accepts_a_dataset_sample_and_leaves_it_alone():
    sample = Sample("s", *(random_sample()[k] for k in ("frame1", "frame2", "flow", "valid")))
    before = {k: v.copy() for k, v in sample._asdict().items() if isinstance(v, np.ndarray)}
    out = augment(sample._asdict(), AugmentConfig(crop=(16, 16), hflip_prob=1.0), np.random.default_rng(0))
    back = Sample(**out)
    assert back.name == "s" and back.occluded is None and back.frame1.shape == (16, 16, 3)
    for key, value in before.items():
        np.testing.assert_array_equal(getattr(sample, key), value)


def test_augment_scales_up_to_fit_the_crop():
    config = AugmentConfig(crop=(40, 40), scale_prob=0.0, hflip_prob=0.0, vflip_prob=0.0)
    out = augment(translated_pair(), config, np.random.default_rng(0))
    assert out["flow"].shape == (40, 40, 2)  # cropped from 40 x 53: 24 x 32 scaled by 5/3, rounded
    np.testing.assert_allclose(out["flow"][0, 0], [3 * 53 / 32, -2 * 40 / 24], rtol=1e-6)


def test_config():
    config = AugmentConfig()
    assert config.crop == (368, 496) and not config.sparse
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hflip_prob = 0.0
    for bad in ({"hflip_prob": 1.5}, {"min_log2_scale": 1.0, "max_log2_scale": 0.0}, {"crop": (0, 10)}):
        with pytest.raises(InputError):
            AugmentConfig(**bad)
    with pytest.raises(InputError, match="valid"):
        augment({"frame1": np.zeros((8, 8, 1)), "frame2": np.zeros((8, 8, 1)), "flow": np.zeros((8, 8, 2))},
                AugmentConfig(crop=None), np.random.default_rng(0))
