"""Reading and writing optical-flow files.

Flow convention: a float32 array of shape (H, W, 2) holding (u, v) in pixels;
pixel (x, y) of frame 1 moves to (x + u, y + v) in frame 2.

Formats:
    .flo  Middlebury: b"PIEH" (float32 202021.25, little-endian), int32
          width, int32 height, then H*W interleaved (u, v) float32, row-major.
    .png  KITTI: 16-bit RGB PNG; R = u*64 + 2**15, G = v*64 + 2**15 (uint16),
          B = 1 where the flow is valid, 0 elsewhere.
    .pfm  Portable float map (read only): "PF" (3 channels) or "Pf" (1),
          width height, scale (negative = little-endian), rows bottom to top.

Every write is atomic (temporary file + `os.replace`); every read or write
problem raises `InputError` naming the file.
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from unroll.errors import InputError
from unroll.files import atomic_write_bytes, read_bytes
from unroll.png import decode_png, encode_png, png_info
from unroll.metrics import valid_mask

__all__ = [
    "read_flo",
    "write_flo",
    "read_kitti_flow",
    "write_kitti_flow",
    "read_pfm",
    "read_flow",
    "write_flow",
]

FLO_MAGIC = b"PIEH"  # float32 202021.25, little-endian
_FLO_HEADER = 12
_MAX_DIM = 1 << 16  # reject absurd sizes (a corrupt header) before allocating
_MAX_PIXELS = 1 << 28
_KITTI_SCALE = 64.0
_KITTI_OFFSET = 2**15


def _check_size(name: str, width: int, height: int) -> None:
    if not (0 < width <= _MAX_DIM and 0 < height <= _MAX_DIM and width * height <= _MAX_PIXELS):
        raise InputError(f"{name}: invalid size in header: width {width}, height {height}")


def _check_flow(name: str, flow: np.ndarray) -> np.ndarray:
    """Returns `flow` as an ndarray after checking it is a real (H, W, 2) array."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] == 0 or flow.shape[1] == 0:
        raise InputError(f"{name}: flow must have shape (H, W, 2), got {flow.shape}")
    if not (np.issubdtype(flow.dtype, np.floating) or np.issubdtype(flow.dtype, np.integer)):
        raise InputError(f"{name}: flow must be a real-valued array, got dtype {flow.dtype}")
    return flow


# --------------------------------------------------------------------------- #
# Middlebury .flo
# --------------------------------------------------------------------------- #


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Reads a Middlebury .flo file.

    Args:
        path: The .flo file.

    Returns:
        (H, W, 2) float32 flow, values as stored (unknown flow is usually
        marked by values above 1e9; see `unroll.metrics.valid_mask`).

    Raises:
        InputError: If the file is missing, has a wrong magic number, an
            absurd size, or is truncated or has trailing bytes.
    """
    name = os.fspath(path)
    data = read_bytes(path, ".flo file")
    if len(data) < _FLO_HEADER:
        raise InputError(f"{name}: truncated .flo file ({len(data)} bytes, header needs 12)")
    if data[:4] != FLO_MAGIC:
        raise InputError(f"{name}: not a .flo file (magic {data[:4]!r}, expected {FLO_MAGIC!r})")
    width, height = struct.unpack("<ii", data[4:12])
    _check_size(name, width, height)
    expected = _FLO_HEADER + 8 * width * height
    if len(data) < expected:
        raise InputError(
            f"{name}: truncated .flo file ({len(data)} bytes, expected {expected} "
            f"for {width}x{height})"
        )
    if len(data) > expected:
        raise InputError(
            f"{name}: {len(data) - expected} trailing bytes after the {width}x{height} "
            f".flo data (file has {len(data)} bytes, expected {expected})"
        )
    flow = np.frombuffer(data, "<f4", count=2 * width * height, offset=_FLO_HEADER)
    return flow.reshape(height, width, 2).astype(np.float32)


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Writes a Middlebury .flo file atomically.

    Args:
        path: Destination file.
        flow: (H, W, 2) flow. Values are stored as float32 as they are
            (non-finite or > 1e9 values mark unknown flow).

    Raises:
        InputError: On a bad shape or dtype or if the file cannot be written;
            an existing file is then left untouched.
    """
    name = os.fspath(path)
    flow = _check_flow(name, flow)
    height, width = flow.shape[:2]
    _check_size(name, width, height)
    data = FLO_MAGIC + struct.pack("<ii", width, height) + flow.astype("<f4").tobytes()
    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------- #
# KITTI 16-bit PNG
# --------------------------------------------------------------------------- #


def read_kitti_flow(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a KITTI flow PNG (16-bit RGB).

    Args:
        path: The .png file.

    Returns:
        flow: (H, W, 2) float32, (stored value - 2**15) / 64. Values at
            invalid pixels are whatever the file holds (usually -512).
        valid: (H, W) bool, the third channel is nonzero.

    Raises:
        InputError: If the file is missing, not a PNG, corrupt, or not a
            16-bit RGB PNG.
    """
    name = os.fspath(path)
    data = read_bytes(path, "KITTI flow PNG")
    info = png_info(data, name)
    if info["bit_depth"] != 16 or info["colour_type"] != 2:
        kinds = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
        kind = kinds.get(info["colour_type"], f"colour type {info['colour_type']}")
        raise InputError(
            f"{name}: KITTI flow must be a 16-bit RGB PNG, this is a "
            f"{info['bit_depth']}-bit {kind} PNG"
        )
    raw = decode_png(data, name)
    flow = (raw[:, :, :2].astype(np.float32) - _KITTI_OFFSET) / _KITTI_SCALE
    return flow, raw[:, :, 2] > 0


def write_kitti_flow(
    path: str | os.PathLike, flow: np.ndarray, valid: np.ndarray | None = None
) -> None:
    """Writes a KITTI flow PNG atomically.

    Values are stored as round(value * 64) + 2**15, so they survive to
    1/128 px; invalid pixels are written as zero flow with valid flag 0.

    Args:
        path: Destination file.
        flow: (H, W, 2) flow.
        valid: (H, W) bool mask of pixels with known flow. Defaults to
            `valid_mask(flow)` (finite and |u|, |v| <= 1e9).

    Raises:
        InputError: On a bad shape, non-finite flow at a valid pixel, a valid
            value outside the representable range [-512, 511.984375], or if
            the file cannot be written; an existing file is then untouched.
    """
    name = os.fspath(path)
    flow = _check_flow(name, flow)
    height, width = flow.shape[:2]
    if valid is None:
        valid = valid_mask(flow)
    else:
        valid = np.asarray(valid)
        if valid.shape != (height, width):
            raise InputError(
                f"{name}: valid mask shape {valid.shape} does not match flow shape "
                f"{flow.shape} (expected {(height, width)})"
            )
        valid = valid.astype(bool)
    f64 = flow.astype(np.float64)
    n_bad = int(np.count_nonzero(~np.all(np.isfinite(f64), axis=2) & valid))
    if n_bad:
        raise InputError(f"{name}: flow has non-finite values at {n_bad} valid pixels")
    stored = np.where(valid[:, :, None], np.rint(f64 * _KITTI_SCALE) + _KITTI_OFFSET, _KITTI_OFFSET)
    out_of_range = (stored < 0) | (stored > 65535)
    if np.any(out_of_range):
        lo, hi = -_KITTI_OFFSET / _KITTI_SCALE, (65535 - _KITTI_OFFSET) / _KITTI_SCALE
        vals = f64[out_of_range]
        raise InputError(
            f"{name}: {vals.size} flow values outside the KITTI PNG range "
            f"[{lo}, {hi}] px (min {vals.min():g}, max {vals.max():g})"
        )
    raw = np.empty((height, width, 3), np.uint16)
    raw[:, :, :2] = stored
    raw[:, :, 2] = valid
    atomic_write_bytes(path, encode_png(raw))


# --------------------------------------------------------------------------- #
# PFM
# --------------------------------------------------------------------------- #

_PFM_HEADER = re.compile(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+(\S+)\s")


def read_pfm(path: str | os.PathLike) -> np.ndarray:
    """Reads a PFM (portable float map) file.

    Args:
        path: The .pfm file.

    Returns:
        float32 array, (H, W, 3) for "PF" files and (H, W) for "Pf" files,
        rows ordered top to bottom.

    Raises:
        InputError: If the file is missing, has a bad header, or holds the
            wrong number of bytes.
    """
    name = os.fspath(path)
    data = read_bytes(path, "PFM file")
    m = _PFM_HEADER.match(data[:256])
    if m is None:
        raise InputError(f"{name}: not a PFM file (bad header {data[:20]!r})")
    channels = 3 if m.group(1) == b"PF" else 1
    width, height = int(m.group(2)), int(m.group(3))
    _check_size(name, width, height)
    try:
        scale = float(m.group(4))
    except ValueError:
        scale = 0.0
    if scale == 0.0 or not np.isfinite(scale):
        raise InputError(f"{name}: bad PFM scale {m.group(4).decode(errors='replace')!r}")
    offset = m.end()
    expected = offset + 4 * width * height * channels
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes in"
        raise InputError(
            f"{name}: {problem} PFM file ({len(data)} bytes, expected {expected} "
            f"for {width}x{height}x{channels})"
        )
    dtype = "<f4" if scale < 0 else ">f4"
    array = np.frombuffer(data, dtype, count=width * height * channels, offset=offset)
    shape = (height, width, channels) if channels == 3 else (height, width)
    return np.ascontiguousarray(array.reshape(shape)[::-1], dtype=np.float32)


# --------------------------------------------------------------------------- #
# Dispatch on extension
# --------------------------------------------------------------------------- #


def _extension(path: str | os.PathLike) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def read_flow(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a flow file of any supported format, chosen by extension.

    Args:
        path: A .flo, .png (KITTI) or .pfm file.

    Returns:
        flow: (H, W, 2) float32.
        valid: (H, W) bool. For .flo and .pfm: `valid_mask(flow)` (finite and
            |u|, |v| <= 1e9); for .png: the KITTI valid channel.

    Raises:
        InputError: On an unknown extension, a grey PFM, or any read error.
    """
    name = os.fspath(path)
    ext = _extension(path)
    if ext == ".flo":
        flow = read_flo(path)
        return flow, valid_mask(flow)
    if ext == ".png":
        return read_kitti_flow(path)
    if ext == ".pfm":
        array = read_pfm(path)
        if array.ndim != 3:
            raise InputError(f"{name}: single-channel PFM, not a flow field (need 'PF')")
        flow = np.ascontiguousarray(array[:, :, :2])
        return flow, valid_mask(flow)
    raise InputError(f"{name}: unknown flow file extension {ext!r} (use .flo, .png or .pfm)")


def write_flow(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Writes a flow file, format chosen by extension (.flo or KITTI .png).

    For .png, pixels that fail `valid_mask` (non-finite or > 1e9) are written
    as invalid.

    Args:
        path: Destination .flo or .png file.
        flow: (H, W, 2) flow.

    Raises:
        InputError: On an unknown extension or any write error.
    """
    ext = _extension(path)
    if ext == ".flo":
        write_flo(path, flow)
    elif ext == ".png":
        write_kitti_flow(path, flow)
    else:
        raise InputError(
            f"{os.fspath(path)}: unknown flow file extension {ext!r} (use .flo or .png)"
        )
