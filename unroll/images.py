"""Image reading and writing, and frame-pair validation.

Images are float32 arrays of shape (H, W, C) with values in [0, 255] and C = 1 (grey) or 3 (RGB).
16-bit PNGs are read through ``unroll.png`` (imageio would truncate them to 8 bits).
"""

from __future__ import annotations

import os

import numpy as np

from unroll.errors import InputError
from unroll.files import atomic_write_bytes, read_bytes
from unroll.png import PNG_SIGNATURE, decode_png, encode_png, png_info

def _to_float_image(array: np.ndarray, name: str) -> np.ndarray:
    """Converts a decoded (H, W[, C]) array to float32 (H, W, 1|3) in [0, 255]."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{name}: unsupported image layout, array shape {array.shape}")
    if array.shape[2] in (2, 4):  # drop alpha
        array = array[:, :, :-1]
    if array.size == 0:
        raise InputError(f"{name}: empty image (shape {array.shape})")
    if array.dtype == np.bool_:
        out = array.astype(np.float32) * 255.0
    elif array.dtype == np.uint8:
        out = array.astype(np.float32)
    elif array.dtype == np.uint16:
        out = (array.astype(np.float64) * (255.0 / 65535.0)).astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"{name}: integer pixel values {lo}..{hi} outside 0..65535")
        scale = 1.0 if hi <= 255 else 255.0 / 65535.0
        out = (array.astype(np.float64) * scale).astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
    else:
        raise InputError(f"{name}: unsupported pixel type {array.dtype}")
    if not np.all(np.isfinite(out)):
        raise InputError(f"{name}: image contains NaN or Inf values")
    return np.ascontiguousarray(out)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as float32 in [0, 255].

    16-bit PNGs are decoded with this module's own PNG decoder (imageio/Pillow
    would truncate 16-bit RGB to 8 bits) and scaled by 255/65535; other files
    go through imageio's Pillow plugin (PNG, JPEG, PPM/PGM, BMP, TIFF, ...;
    palette images come back as RGB). Alpha channels are dropped; grey images keep a
    channel axis.

    Args:
        path: Image file (PNG, JPEG, PPM, ... anything Pillow reads).

    Returns:
        (H, W, C) float32 array, C = 1 (grey) or 3 (RGB), values in [0, 255].

    Raises:
        InputError: If the file is missing, unreadable, corrupt, empty or holds
            non-finite values. The message names the file.
    """
    name = os.fspath(path)
    data = read_bytes(path, "image")
    if not data:
        raise InputError(f"{name}: empty file, not an image")
    if data[:8] == PNG_SIGNATURE and png_info(data, name)["bit_depth"] == 16:
        return _to_float_image(decode_png(data, name), name)
    import imageio.v3 as iio  # imported lazily: only needed here

    try:
        array = np.asarray(iio.imread(data, index=0, plugin="pillow"))
    except Exception as e:  # imageio/Pillow raise many types for bad files
        raise InputError(
            f"{name}: cannot decode image, unsupported format or corrupt file "
            f"({type(e).__name__}: {e})"
        ) from e
    return _to_float_image(array, name)


def check_frame_pair(
    frame1: np.ndarray,
    frame2: np.ndarray,
    names: tuple[str, str] = ("frame1", "frame2"),
    min_size: int = 8,
) -> None:
    """Checks that two frames can be used together as a flow input pair.

    Args:
        frame1: (H, W, C) first frame.
        frame2: (H, W, C) second frame.
        names: Names of the two frames (argument or file names) for messages.
        min_size: Smallest allowed height and width.

    Raises:
        InputError: If a frame is not a numeric (H, W, C) array, is smaller
            than `min_size` in height or width, the shapes differ, or a frame
            contains NaN/Inf.
    """
    arrays = []
    for frame, name in zip((frame1, frame2), names):
        a = np.asarray(frame)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise InputError(f"{name}: expected a numeric image, got dtype {a.dtype}")
        if a.ndim != 3:
            raise InputError(f"{name}: expected an (H, W, C) image, got shape {a.shape}")
        if a.shape[0] < min_size or a.shape[1] < min_size:
            raise InputError(
                f"{name}: image of size {a.shape[0]}x{a.shape[1]} (HxW) is too small, "
                f"minimum is {min_size}x{min_size}"
            )
        arrays.append(a)
    if arrays[0].shape != arrays[1].shape:
        raise InputError(
            f"{names[0]} and {names[1]} differ in shape: "
            f"{arrays[0].shape} vs {arrays[1].shape}"
        )
    for a, name in zip(arrays, names):
        n_bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if n_bad:
            raise InputError(f"{name}: contains {n_bad} NaN or Inf values")


def to_grey(image: np.ndarray) -> np.ndarray:
    """Converts an image to grey with the ITU-R BT.601 weights.

    Args:
        image: (H, W, 1) or (H, W, 3) image.

    Returns:
        (H, W, 1) float32: 0.299 R + 0.587 G + 0.114 B (the input as float32
        when C = 1).

    Raises:
        InputError: If the image is not (H, W, 1) or (H, W, 3).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise InputError(f"image: expected shape (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.shape[2] == 1:
        return image.astype(np.float32)
    weights = np.array([0.299, 0.587, 0.114])
    return (image.astype(np.float64) @ weights)[:, :, None].astype(np.float32)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes an image atomically as an 8-bit PNG.

    Args:
        path: Destination file.
        image: (H, W) or (H, W, C) array, C = 1, 3 or 4. Float values are
            rounded and clipped to [0, 255]; integer values must lie in
            [0, 255]; booleans map to 0/255.

    Raises:
        InputError: On a bad shape, NaN/Inf, out-of-range integers, or if the
            file cannot be written. An existing file is then left untouched.
    """
    name = os.fspath(path)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape:
        raise InputError(f"{name}: cannot write image of shape {image.shape}")
    if image.dtype == np.bool_:
        pixels = image.astype(np.uint8) * 255
    elif image.dtype == np.uint8:
        pixels = image
    elif np.issubdtype(image.dtype, np.integer):
        if image.min() < 0 or image.max() > 255:
            raise InputError(
                f"{name}: integer pixel values {image.min()}..{image.max()} outside 0..255"
            )
        pixels = image.astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise InputError(f"{name}: image to write contains NaN or Inf values")
        pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    else:
        raise InputError(f"{name}: cannot write image of dtype {image.dtype}")
    atomic_write_bytes(path, encode_png(pixels))
