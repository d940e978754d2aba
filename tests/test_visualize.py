"""Tests for unroll.visualize against wheel colours worked out by hand."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from unroll.errors import InputError
from unroll.visualize import color_wheel, flow_to_color, write_flow_image

# The Middlebury wheel: 55 colours in segments RY=15, YG=6, GC=4, CB=11, BM=13,
# MR=6; within a segment of n colours the changing channel steps by
# floor(255 * i / n). Entries used below, worked out by hand:
#   index  0 (RY, i=0):  (255,   0,   0)
#   index 13 (RY, i=13): (255, floor(255*13/15)=221, 0)
#   index 14 (RY, i=14): (255, floor(255*14/15)=238, 0)
#   index 27 (CB, i=2):  (0, 255 - floor(255*2/11)=209, 255)
#   index 40 (BM, i=4):  (floor(255*4/13)=78, 0, 255)
#   index 41 (BM, i=5):  (floor(255*5/13)=98, 0, 255)
#   index 54 (MR, i=5):  (255, 0, 255 - floor(255*5/6)=43)
# Direction: a = atan2(-v, -u) / pi in [-1, 1] maps to wheel position
# (a + 1) / 2 * 54, interpolating linearly between neighbouring entries.


def test_wheel_entries():
    wheel = color_wheel()
    assert wheel.shape == (55, 3)
    expected = {
        0: (255, 0, 0),
        13: (255, 221, 0),
        14: (255, 238, 0),
        15: (255, 255, 0),
        21: (0, 255, 0),
        25: (0, 255, 255),
        27: (0, 209, 255),
        36: (0, 0, 255),
        40: (78, 0, 255),
        41: (98, 0, 255),
        49: (255, 0, 255),
        54: (255, 0, 43),
    }
    for index, rgb in expected.items():
        np.testing.assert_array_equal(wheel[index], rgb, err_msg=f"wheel[{index}]")


@pytest.mark.parametrize(
    "uv, rgb",
    [
        # +u: a = atan2(-0.0, -1) / pi = -1 -> position 0
        ((2.0, 0.0), (255, 0, 0)),
        # -u: a = atan2(-0.0, 1) / pi = 0 -> position 27
        ((-2.0, 0.0), (0, 209, 255)),
        # +v: a = -1/2 -> position 13.5, halfway between entries 13 and 14
        ((0.0, 2.0), (255, (221 + 238) // 2, 0)),
        # -v: a = +1/2 -> position 40.5, halfway between entries 40 and 41
        ((0.0, -2.0), ((78 + 98) // 2, 0, 255)),
    ],
)
def test_pure_direction_colours(uv, rgb):
    flow = np.array([[uv]], np.float32)
    np.testing.assert_array_equal(flow_to_color(flow, max_flow=2.0)[0, 0], rgb)
    # max_flow defaults to the largest magnitude, so the result is the same
    np.testing.assert_array_equal(flow_to_color(flow)[0, 0], rgb)


def test_saturation_and_darkening():
    flow = np.array([[[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]]], np.float32)
    img = flow_to_color(flow, max_flow=2.0)
    np.testing.assert_array_equal(img[0, 0], (255, 255, 255))  # zero motion is white
    # r = 1/2: c -> 1 - r (1 - c); red (1, 0, 0) -> (1, 0.5, 0.5) -> floor(127.5) = 127
    np.testing.assert_array_equal(img[0, 1], (255, 127, 127))
    # r = 2 > 1: c -> 0.75 c; floor(0.75 * 255) = 191
    np.testing.assert_array_equal(img[0, 2], (191, 0, 0))


def test_invalid_pixels_black_and_shape():
    flow = np.zeros((3, 5, 2), np.float32)
    flow[..., 0] = 1.0
    flow[0, 0] = np.nan
    flow[1, 2, 1] = np.inf
    flow[2, 4] = 1.6666668e9
    img = flow_to_color(flow)
    assert img.shape == (3, 5, 3) and img.dtype == np.uint8
    black = np.zeros((3, 5), bool)
    black[0, 0] = black[1, 2] = black[2, 4] = True
    assert np.all(img[black] == 0)
    # the huge marker does not set the scale: the valid pixels are fully saturated red
    assert np.all(img[~black] == (255, 0, 0))


def test_all_zero_or_all_invalid():
    np.testing.assert_array_equal(flow_to_color(np.zeros((2, 2, 2))), np.full((2, 2, 3), 255))
    np.testing.assert_array_equal(flow_to_color(np.full((2, 2, 2), np.nan)), np.zeros((2, 2, 3)))


def test_bad_input():
    with pytest.raises(InputError, match="flow"):
        flow_to_color(np.zeros((4, 4, 3)))
    with pytest.raises(InputError, match="max_flow"):
        flow_to_color(np.zeros((4, 4, 2)), max_flow=0.0)


def test_write_flow_image(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.standard_normal((6, 9, 2)).astype(np.float32)
    path = tmp_path / "flow.png"
    write_flow_image(path, flow, max_flow=3.0)
    back = iio.imread(path)  # read back with imageio/Pillow, not our decoder
    assert back.shape == (6, 9, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, flow_to_color(flow, max_flow=3.0))
