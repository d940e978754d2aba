"""Tests for unroll.images: reading, validation, grey conversion, writing."""

from __future__ import annotations

import os
import re
import struct
import zlib

import imageio.v3 as iio
import numpy as np
import pytest

from unroll.errors import InputError
from unroll.images import check_frame_pair, read_image, to_grey, write_image
from unroll.png import decode_png


def _png16(samples: np.ndarray, colour_type: int) -> bytes:
    """Minimal 16-bit PNG (filter 0 on every row) built with struct + zlib."""
    h, w, _ = samples.shape
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(t + payload))
        return struct.pack(">I", len(payload)) + t + payload + crc

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def rgba8():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)


def test_read_grey_rgb_rgba_8_bit(tmp_path, rgba8):
    cases = {
        "grey.png": (rgba8[:, :, 0], rgba8[:, :, :1]),
        "grey_alpha.png": (rgba8[:, :, :2], rgba8[:, :, :1]),
        "rgb.png": (rgba8[:, :, :3], rgba8[:, :, :3]),
        "rgba.png": (rgba8, rgba8[:, :, :3]),
    }
    for name, (stored, expected) in cases.items():
        path = tmp_path / name
        iio.imwrite(path, stored)
        img = read_image(path)
        assert img.dtype == np.float32, name
        assert img.shape == expected.shape, name
        np.testing.assert_array_equal(img, expected.astype(np.float32), err_msg=name)


def test_read_16_bit_grey_written_by_pillow(tmp_path):
    raw = np.array([[0, 32768, 65535], [257, 1000, 60000]], np.uint16)
    path = tmp_path / "grey16.png"
    iio.imwrite(path, raw)
    assert struct.unpack(">B", path.read_bytes()[24:25])[0] == 16
    img = read_image(path)
    assert img.shape == (2, 3, 1)
    np.testing.assert_allclose(img[:, :, 0], raw * (255.0 / 65535.0), rtol=1e-6)
    assert img[0, 0, 0] == 0.0 and img[0, 2, 0] == 255.0 and img[1, 0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (6, 4)])
def test_read_16_bit_colour_keeps_precision(tmp_path, colour_type, channels):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 65536, (4, 6, channels))
    raw[0, 0, :3] = (0, 32768, 65535)
    path = tmp_path / "c16.png"
    path.write_bytes(_png16(raw, colour_type))
    img = read_image(path)
    assert img.shape == (4, 6, 3)
    np.testing.assert_allclose(img, raw[:, :, :3] * (255.0 / 65535.0), rtol=1e-6)
    # 32768 is 127.50..., not 128 as an 8-bit truncation (32768 >> 8) would give
    assert img[0, 0, 1] == pytest.approx(127.50195, abs=1e-4)


def test_decoder_matches_pillow_on_real_frame(shared_data):
    path = shared_data / "RubberWhale" / "frame10.png"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = path.read_bytes()  # rows use the Sub, Average and Paeth filters
    np.testing.assert_array_equal(decode_png(data, str(path)), iio.imread(data))
    img = read_image(path)
    assert img.shape == (388, 584, 3) and 0 <= img.min() and img.max() <= 255


def test_corrupt_and_missing_files_raise_naming_them(tmp_path):
    good = tmp_path / "good.png"
    iio.imwrite(good, np.zeros((8, 8, 3), np.uint8))
    cases = {
        "garbage.png": b"this is not an image at all",
        "empty.png": b"",
        "truncated.png": good.read_bytes()[:40],
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError, match=re.escape(str(path))):
            read_image(path)
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match=re.escape(str(missing)) + ".*not found"):
        read_image(missing)
    trunc16 = tmp_path / "trunc16.png"
    trunc16.write_bytes(_png16(np.zeros((4, 4, 3), int), 2)[:-30])
    with pytest.raises(InputError, match=re.escape(str(trunc16)) + ".*truncated"):
        read_image(trunc16)


def test_check_frame_pair():
    a = np.zeros((10, 12, 3), np.float32)
    assert check_frame_pair(a, a.copy()) is None
    with pytest.raises(InputError, match=r"frame1 and frame2.*\(10, 12, 3\).*\(10, 11, 3\)"):
        check_frame_pair(a, a[:, :11])
    with pytest.raises(InputError, match=r"left.png and right.png.*\(10, 12, 3\).*\(10, 12, 1\)"):
        check_frame_pair(a, a[:, :, :1], names=("left.png", "right.png"))
    for bad_value in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[3, 4, 1] = bad_value
        with pytest.raises(InputError, match="frame2.*NaN or Inf"):
            check_frame_pair(a, b)
        with pytest.raises(InputError, match="first.*NaN or Inf"):
            check_frame_pair(b, a, names=("first", "second"))
    small = np.zeros((10, 5, 3), np.float32)
    with pytest.raises(InputError, match=r"frame1.*10x5.*minimum is 8x8"):
        check_frame_pair(small, small)
    check_frame_pair(small, small, min_size=5)
    with pytest.raises(InputError, match=r"frame2.*\(10, 12\)"):
        check_frame_pair(a, a[:, :, 0])


def test_to_grey():
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.float32)
    grey = to_grey(img)
    assert grey.shape == (1, 4, 1) and grey.dtype == np.float32
    expected = [0.299 * 255, 0.587 * 255, 0.114 * 255, 0.299 * 10 + 0.587 * 20 + 0.114 * 30]
    np.testing.assert_allclose(grey[0, :, 0], expected, rtol=1e-6)
    one = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    np.testing.assert_array_equal(to_grey(one), one)
    with pytest.raises(InputError, match="shape"):
        to_grey(np.zeros((2, 3, 4)))


def test_write_image_round_trip_and_atomic(tmp_path):
    path = tmp_path / "out.png"
    img = np.array([[[0.4, 0.6, 254.6], [300.0, -5.0, 128.0]]], np.float32)
    write_image(path, img)
    back = iio.imread(path)  # independent decoder
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, [[[0, 1, 255], [255, 0, 128]]])
    before = path.read_bytes()
    with pytest.raises(InputError, match=re.escape(str(path)) + ".*NaN"):
        write_image(path, np.full((2, 2, 3), np.nan, np.float32))
    with pytest.raises(InputError, match=re.escape(str(path)) + ".*shape"):
        write_image(path, np.zeros((2, 2, 5), np.uint8))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.png"]
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_image(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(iio.imread(tmp_path / "grey.png"), grey)
