"""Tests for unroll.flow_io: .flo, KITTI PNG and PFM reading/writing."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from unroll import flow_io
from unroll.errors import InputError
from unroll.flow_io import (
    read_flo,
    read_flow,
    read_kitti_flow,
    read_pfm,
    write_flo,
    write_flow,
    write_kitti_flow,
)
from unroll.metrics import valid_mask


def _raises_naming(path, match: str = ""):
    """pytest.raises(InputError) whose message names `path` (and `match`)."""
    return pytest.raises(InputError, match=re.escape(str(path)) + ".*" + match)


# --------------------------------------------------------------------------- #
# An independent PNG writer: pure Python, every row filter type.
# --------------------------------------------------------------------------- #


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def make_png(samples: np.ndarray, bit_depth: int, colour_type: int, filters=(0, 1, 2, 3, 4)):
    """PNG bytes for (H, W, C) integer `samples`; row r uses filters[r % len]."""
    h, w, c = samples.shape
    bpp = c * bit_depth // 8
    fmt = ">H" if bit_depth == 16 else ">B"
    rows = [
        b"".join(struct.pack(fmt, int(s)) for s in samples[y].reshape(-1)) for y in range(h)
    ]
    out = bytearray()
    prior = bytes(len(rows[0]))
    for y, raw in enumerate(rows):
        f = filters[y % len(filters)]
        out.append(f)
        for i, x in enumerate(raw):
            a = raw[i - bpp] if i >= bpp else 0
            b = prior[i]
            cc = prior[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, cc)][f]
            out.append((x - pred) % 256)
        prior = raw

    def chunk(t: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(t + payload))
        return struct.pack(">I", len(payload)) + t + payload + crc

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(out)))
        + chunk(b"IEND", b"")
    )


def ihdr_of(path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) parsed from a PNG's IHDR."""
    data = Path(path).read_bytes()[:33]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">IIBB", data[16:26])


# --------------------------------------------------------------------------- #
# .flo
# --------------------------------------------------------------------------- #


def test_flo_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    flow = (rng.standard_normal((7, 11, 2)) * 50).astype(np.float32)
    flow[0, 0] = (-3.25, 1e10)  # negative and "unknown" values survive
    path = tmp_path / "f.flo"
    write_flo(path, flow)
    back = read_flo(path)
    assert back.dtype == np.float32 and back.shape == (7, 11, 2)
    np.testing.assert_array_equal(back, flow)


def test_flo_byte_layout_matches_hand_built_file(tmp_path):
    assert struct.unpack("<f", b"PIEH")[0] == 202021.25
    h, w = 2, 3
    # pixel (x, y) holds u = 10*y + x, v = -(10*y + x) - 0.5, stored row-major, interleaved
    values = []
    for y in range(h):
        for x in range(w):
            values += [10.0 * y + x, -(10.0 * y + x) - 0.5]
    hand = b"PIEH" + struct.pack("<ii", w, h) + struct.pack(f"<{len(values)}f", *values)
    hand_path = tmp_path / "hand.flo"
    hand_path.write_bytes(hand)

    flow = read_flo(hand_path)
    assert flow.shape == (h, w, 2)
    assert flow[1, 2, 0] == 12.0 and flow[1, 2, 1] == -12.5
    assert flow[0, 1, 0] == 1.0 and flow[0, 1, 1] == -1.5

    out_path = tmp_path / "written.flo"
    write_flo(out_path, flow)
    assert out_path.read_bytes() == hand


@pytest.mark.parametrize(
    "name, make, problem",
    [
        ("truncated.flo", lambda good: good[:-4], "truncated"),
        ("header_only.flo", lambda good: good[:7], "truncated"),
        ("trailing.flo", lambda good: good + b"\0", "trailing"),
        ("magic.flo", lambda good: b"PIEX" + good[4:], "magic"),
        ("absurd.flo", lambda good: good[:4] + struct.pack("<ii", 2, 10**9) + good[12:], "size"),
        ("negative.flo", lambda good: good[:4] + struct.pack("<ii", -2, 3) + good[12:], "size"),
    ],
)
def test_flo_bad_files_raise_naming_the_path(tmp_path, name, make, problem):
    good = b"PIEH" + struct.pack("<ii", 2, 3) + np.zeros(12, "<f4").tobytes()
    path = tmp_path / name
    path.write_bytes(make(good))
    with _raises_naming(path, problem):
        read_flo(path)


def test_missing_flow_file_raises_input_error(tmp_path):
    path = tmp_path / "nope.flo"
    with _raises_naming(path, "not found"):
        read_flo(path)
    with _raises_naming(path, "not found"):
        read_flow(path)


def test_failed_write_leaves_existing_file_intact(tmp_path):
    path = tmp_path / "keep.flo"
    flow = np.ones((4, 5, 2), np.float32)
    write_flo(path, flow)
    before = path.read_bytes()
    with _raises_naming(path, "shape"):
        write_flo(path, np.ones((4, 5, 3), np.float32))
    with _raises_naming(path, "shape"):
        write_flow(path, np.ones((4, 5), np.float32))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.flo"]


def test_failure_at_replace_removes_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.flo"
    path.write_bytes(b"old contents")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with _raises_naming(path, "cannot write"):
        write_flo(path, np.zeros((3, 3, 2), np.float32))
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["keep.flo"]


def test_write_into_missing_directory_raises(tmp_path):
    path = tmp_path / "no_such_dir" / "f.flo"
    with _raises_naming(path, "cannot write"):
        write_flo(path, np.zeros((2, 2, 2), np.float32))


# --------------------------------------------------------------------------- #
# KITTI PNG
# --------------------------------------------------------------------------- #


def test_kitti_round_trip_is_16_bit(tmp_path):
    rng = np.random.default_rng(1)
    flow = rng.uniform(-500, 500, (9, 13, 2)).astype(np.float32)
    flow[0, 0] = (-512.0, 511.984375)  # the representable extremes
    valid = rng.random((9, 13)) > 0.3
    valid[0, 0] = True
    path = tmp_path / "kitti.png"
    write_kitti_flow(path, flow, valid)

    assert ihdr_of(path) == (13, 9, 16, 2)  # truly 16-bit RGB
    back, back_valid = read_kitti_flow(path)
    assert back.dtype == np.float32 and back.shape == flow.shape
    np.testing.assert_array_equal(back_valid, valid)
    assert np.max(np.abs(back - flow)[valid]) <= 1.0 / 128 + 1e-6
    assert np.max(np.abs(back - flow)[valid]) > 1.0 / 256  # not an accidental float copy
    np.testing.assert_array_equal(back[~valid], 0.0)  # invalid pixels are written as 0


def test_kitti_read_of_independently_written_file(tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 65536, (6, 5, 3))
    raw[:, :, 2] = rng.integers(0, 2, (6, 5))
    path = tmp_path / "indep.png"
    path.write_bytes(make_png(raw, 16, 2))  # rows use all five PNG filters
    flow, valid = read_kitti_flow(path)
    np.testing.assert_array_equal(flow, (raw[:, :, :2] - 32768) / 64.0)
    np.testing.assert_array_equal(valid, raw[:, :, 2] == 1)
    flow2, valid2 = read_flow(path)
    np.testing.assert_array_equal(flow2, flow)
    np.testing.assert_array_equal(valid2, valid)


def test_kitti_rejects_8_bit_png(tmp_path):
    path = tmp_path / "eight.png"
    iio.imwrite(path, np.zeros((4, 4, 3), np.uint8))
    assert ihdr_of(path)[2] == 8
    with _raises_naming(path, "16-bit"):
        read_kitti_flow(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"definitely not a png", "not a PNG"),
        (b"", "not a PNG"),
    ],
)
def test_kitti_rejects_non_png(tmp_path, content, problem):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with _raises_naming(path, problem):
        read_kitti_flow(path)


def test_kitti_rejects_corrupt_and_truncated_png(tmp_path):
    good = make_png(np.full((4, 4, 3), 32768), 16, 2)
    path = tmp_path / "trunc.png"
    path.write_bytes(good[:-20])
    with _raises_naming(path, "truncated"):
        read_kitti_flow(path)
    flipped = bytearray(good)
    flipped[45] ^= 0xFF  # inside the IDAT payload: CRC mismatch
    path = tmp_path / "crc.png"
    path.write_bytes(bytes(flipped))
    with _raises_naming(path, "CRC"):
        read_kitti_flow(path)


def test_kitti_write_out_of_range_raises_and_writes_nothing(tmp_path):
    path = tmp_path / "range.png"
    flow = np.zeros((3, 3, 2), np.float32)
    flow[1, 1, 0] = 600.0
    with _raises_naming(path, "range"):
        write_kitti_flow(path, flow)
    assert not path.exists()
    # the same value at an invalid pixel is fine
    valid = np.ones((3, 3), bool)
    valid[1, 1] = False
    write_kitti_flow(path, flow, valid)
    assert not read_kitti_flow(path)[1][1, 1]


def test_write_flow_png_marks_unknown_pixels_invalid(tmp_path):
    flow = np.zeros((3, 4, 2), np.float32)
    flow[0, 1] = np.nan
    flow[2, 3] = 1.6666668e9
    path = tmp_path / "w.png"
    write_flow(path, flow)
    _, valid = read_flow(path)
    expected = np.ones((3, 4), bool)
    expected[0, 1] = expected[2, 3] = False
    np.testing.assert_array_equal(valid, expected)


# --------------------------------------------------------------------------- #
# PFM
# --------------------------------------------------------------------------- #


def _pfm_bytes(rows_top_to_bottom: np.ndarray, little_endian: bool) -> bytes:
    """Hand-built PFM: header, then rows from the BOTTOM row up."""
    h, w = rows_top_to_bottom.shape[:2]
    colour = rows_top_to_bottom.ndim == 3
    header = f"{'PF' if colour else 'Pf'}\n{w} {h}\n{-1.0 if little_endian else 1.0}\n"
    fmt = "<f" if little_endian else ">f"
    body = b"".join(
        struct.pack(fmt, float(x))
        for y in range(h - 1, -1, -1)
        for x in rows_top_to_bottom[y].reshape(-1)
    )
    return header.encode() + body


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_colour_both_endiannesses(tmp_path, little_endian):
    h, w = 3, 4
    expected = np.arange(h * w * 3, dtype=np.float32).reshape(h, w, 3) - 7.5
    path = tmp_path / "c.pfm"
    path.write_bytes(_pfm_bytes(expected, little_endian))
    out = read_pfm(path)
    assert out.dtype == np.float32 and out.shape == (h, w, 3)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0, 0] == -7.5  # top-left pixel was the first of the LAST stored row

    flow, valid = read_flow(path)
    np.testing.assert_array_equal(flow, expected[:, :, :2])
    assert valid.all()


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_grey(tmp_path, little_endian):
    expected = np.array([[1.0, 2.0, 3.0], [4.0, np.inf, -6.0]], np.float32)
    path = tmp_path / "g.pfm"
    path.write_bytes(_pfm_bytes(expected, little_endian))
    np.testing.assert_array_equal(read_pfm(path), expected)
    with _raises_naming(path, "single-channel"):
        read_flow(path)


def test_pfm_flow_invalid_where_non_finite(tmp_path):
    data = np.zeros((2, 2, 3), np.float32)
    data[1, 0, 1] = np.nan
    path = tmp_path / "n.pfm"
    path.write_bytes(_pfm_bytes(data, True))
    _, valid = read_flow(path)
    np.testing.assert_array_equal(valid, [[True, True], [False, True]])


def test_pfm_bad_files(tmp_path):
    good = _pfm_bytes(np.zeros((2, 2, 3), np.float32), True)
    for name, content, problem in [
        ("trunc.pfm", good[:-1], "truncated"),
        ("trail.pfm", good + b"\0\0\0\0", "trailing"),
        ("hdr.pfm", b"P6\n2 2\n255\n" + bytes(12), "not a PFM"),
        ("scale.pfm", b"PF\n2 2\n0\n" + bytes(48), "scale"),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with _raises_naming(path, problem):
            read_pfm(path)


# --------------------------------------------------------------------------- #
# Dispatch and real data
# --------------------------------------------------------------------------- #


def test_unknown_extension(tmp_path):
    path = tmp_path / "f.xyz"
    path.write_bytes(b"")
    with _raises_naming(path, "extension"):
        read_flow(path)
    with _raises_naming(path, "extension"):
        write_flow(path, np.zeros((2, 2, 2), np.float32))


def test_read_flow_flo_valid_mask(tmp_path):
    flow = np.zeros((2, 3, 2), np.float32)
    flow[0, 2, 1] = 1.6666668e9
    flow[1, 0, 0] = -np.inf
    path = tmp_path / "v.FLO"  # extension matching is case-insensitive
    write_flow(path, flow)
    back, valid = read_flow(path)
    np.testing.assert_array_equal(back, flow)
    np.testing.assert_array_equal(valid, [[True, True, False], [False, True, True]])


def test_real_middlebury_flo(shared_data):
    path = shared_data / "RubberWhale" / "flow10.flo"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    flow = read_flo(path)
    assert flow.shape == (388, 584, 2) and flow.dtype == np.float32
    valid = valid_mask(flow)
    assert int(np.count_nonzero(~valid)) == 3622
    # numbers from the data README: u in -4.58..2.58, v in -2.58..2.92 on valid pixels
    assert -4.59 < flow[valid][:, 0].min() < -4.57 and 2.57 < flow[valid][:, 0].max() < 2.59
    assert -2.59 < flow[valid][:, 1].min() < -2.57 and 2.91 < flow[valid][:, 1].max() < 2.93
    flow2, valid2 = read_flow(path)
    np.testing.assert_array_equal(flow2, flow)
    np.testing.assert_array_equal(valid2, valid)


def test_module_exports():
    for name in flow_io.__all__:
        assert callable(getattr(flow_io, name))
