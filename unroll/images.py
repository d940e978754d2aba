"""Image reading/writing, frame-pair validation and a small PNG codec.

Images are float32 arrays of shape (H, W, C) with values in [0, 255] and
C = 1 (grey) or 3 (RGB).

The PNG codec (`encode_png` / `decode_png`) exists because imageio's PNG
plugin (Pillow) silently reduces 16-bit RGB(A) PNGs to 8 bits on read and
cannot write them at all; KITTI flow files and 16-bit frames need the real
16-bit samples. It handles non-interlaced 8- and 16-bit grey, grey+alpha, RGB
and RGBA PNGs and all five PNG row filters.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib

import numpy as np

from unroll.errors import InputError

__all__ = [
    "atomic_write_bytes",
    "check_frame_pair",
    "decode_png",
    "encode_png",
    "png_info",
    "read_image",
    "to_grey",
    "write_image",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> samples per pixel (palette images, type 3, are not handled here).
_PNG_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}
_PNG_COLOUR_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
_MAX_PNG_PIXELS = 1 << 28


# --------------------------------------------------------------------------- #
# Atomic writes
# --------------------------------------------------------------------------- #


def _new_file_mode(path: str) -> int:
    """Permission bits for a file written to `path` (kept if it exists)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically.

    The bytes go to a temporary file in the same directory that then replaces
    `path` with `os.replace`; on any error the temporary file is removed and
    an existing `path` is left untouched.

    Args:
        path: Destination file.
        data: The complete file contents.

    Raises:
        InputError: If the file cannot be written (missing directory, no
            permission, ...).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
        )
    except OSError as e:
        raise InputError(f"{path}: cannot write file ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise InputError(f"{path}: cannot write file ({e.strerror or e})") from e
        raise


def _read_bytes(path: str | os.PathLike, what: str) -> bytes:
    """Reads a whole file, turning OS errors into InputError."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise InputError(f"{os.fspath(path)}: {what} not found (no such file)") from e
    except OSError as e:
        raise InputError(f"{os.fspath(path)}: cannot read {what} ({e.strerror or e})") from e


# --------------------------------------------------------------------------- #
# PNG codec
# --------------------------------------------------------------------------- #


def _png_chunks(data: bytes, name: str):
    """Yields (type, payload) for each chunk, checking lengths and CRCs."""
    if data[:8] != PNG_SIGNATURE:
        raise InputError(f"{name}: not a PNG file (bad signature)")
    pos = 8
    while True:
        if pos + 8 > len(data):
            raise InputError(f"{name}: truncated PNG (missing IEND chunk)")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise InputError(f"{name}: truncated PNG (chunk {ctype!r} cut short)")
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(ctype + payload) != crc:
            raise InputError(f"{name}: corrupt PNG (CRC mismatch in chunk {ctype!r})")
        yield ctype, payload
        if ctype == b"IEND":
            return
        pos = end


def png_info(data: bytes, name: str = "<png>") -> dict:
    """Parses the IHDR chunk of a PNG.

    Args:
        data: PNG file contents (at least the first 33 bytes).
        name: File name used in error messages.

    Returns:
        Dict with int keys `width`, `height`, `bit_depth`, `colour_type`,
        `interlace`.

    Raises:
        InputError: If `data` does not start with a PNG signature and IHDR.
    """
    if data[:8] != PNG_SIGNATURE:
        raise InputError(f"{name}: not a PNG file (bad signature)")
    if len(data) < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d":
        raise InputError(f"{name}: corrupt PNG (missing or bad IHDR chunk)")
    w, h, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return dict(width=w, height=h, bit_depth=depth, colour_type=ctype, interlace=interlace)


def _unfilter(filtered: np.ndarray, ftypes: np.ndarray) -> np.ndarray:
    """Undoes PNG row filtering.

    Sub/Average/Paeth make each byte depend on its left, upper and upper-left
    neighbours, so pixels on one anti-diagonal (row + col = const) are
    independent: the loop runs over the H + W - 1 anti-diagonals and handles
    each one vectorised.

    Args:
        filtered: (H, W, bpp) uint8 filtered bytes (bpp = bytes per pixel).
        ftypes: (H,) filter type (0..4) of each row.

    Returns:
        (H, W, bpp) uint8 reconstructed bytes.
    """
    h, w, bpp = filtered.shape
    if np.all(ftypes == 0):
        return filtered
    x = filtered.astype(np.int16)
    out = np.zeros((h + 1, w + 1, bpp), np.int16)  # zero row on top, zero column on left
    ft = ftypes.astype(np.int16)
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(h - 1, d) + 1)
        c = d - r
        a = out[r + 1, c]  # left
        b = out[r, c + 1]  # up
        ul = out[r, c]  # upper left
        pa = np.abs(b - ul)
        pb = np.abs(a - ul)
        pc = np.abs(a + b - 2 * ul)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
        t = ft[r][:, None]
        pred = np.select(
            [t == 1, t == 2, t == 3, t == 4], [a, b, (a + b) >> 1, paeth], default=0
        )
        out[r + 1, c + 1] = (x[r, c] + pred) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def decode_png(data: bytes, name: str = "<png>") -> np.ndarray:
    """Decodes a non-interlaced 8- or 16-bit grey/grey+alpha/RGB/RGBA PNG.

    Args:
        data: PNG file contents.
        name: File name used in error messages.

    Returns:
        (H, W, C) array, uint8 or uint16 after the PNG bit depth, C = 1, 2, 3
        or 4 (grey, grey+alpha, RGB, RGBA).

    Raises:
        InputError: If the data is not a PNG, is truncated or corrupt, or uses
            a format this decoder does not handle (palette, interlaced, bit
            depth below 8).
    """
    info = png_info(data, name)
    w, h, depth, ctype = info["width"], info["height"], info["bit_depth"], info["colour_type"]
    if ctype not in _PNG_CHANNELS:
        kind = _PNG_COLOUR_NAMES.get(ctype, f"colour type {ctype}")
        raise InputError(f"{name}: unsupported PNG ({kind} image)")
    if depth not in (8, 16):
        raise InputError(f"{name}: unsupported PNG bit depth {depth} (need 8 or 16)")
    if info["interlace"] != 0:
        raise InputError(f"{name}: unsupported PNG (interlaced)")
    if not (0 < w and 0 < h and w * h <= _MAX_PNG_PIXELS):
        raise InputError(f"{name}: PNG has invalid size {w}x{h}")

    idat = b"".join(p for t, p in _png_chunks(data, name) if t == b"IDAT")
    channels = _PNG_CHANNELS[ctype]
    bpp = channels * depth // 8
    expected = h * (1 + w * bpp)
    dec = zlib.decompressobj()
    try:
        raw = dec.decompress(idat, expected + 1)
    except zlib.error as e:
        raise InputError(f"{name}: corrupt PNG image data ({e})") from e
    if len(raw) != expected or not dec.eof:
        raise InputError(
            f"{name}: corrupt PNG image data ({len(raw)} bytes after decompression, "
            f"expected {expected})"
        )
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * bpp)
    ftypes = rows[:, 0]
    if np.any(ftypes > 4):
        raise InputError(f"{name}: corrupt PNG (unknown row filter type {ftypes.max()})")
    pixels = _unfilter(rows[:, 1:].reshape(h, w, bpp), ftypes)
    if depth == 16:
        return pixels.reshape(h, w * bpp).view(">u2").reshape(h, w, channels).astype(np.uint16)
    return pixels.reshape(h, w, channels).copy()


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + ctype
        + payload
        + struct.pack(">I", zlib.crc32(ctype + payload))
    )


def encode_png(array: np.ndarray) -> bytes:
    """Encodes an image as a non-interlaced PNG (every row uses the Up filter).

    Args:
        array: (H, W) or (H, W, C) uint8 or uint16 array, C = 1, 2, 3 or 4
            (grey, grey+alpha, RGB, RGBA). uint16 gives a 16-bit PNG.

    Returns:
        The PNG file contents.

    Raises:
        InputError: On an unsupported dtype or shape.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape:
        raise InputError(f"image to encode as PNG has unsupported shape {array.shape}")
    if array.dtype == np.uint8:
        depth = 8
    elif array.dtype == np.uint16:
        depth = 16
    else:
        raise InputError(f"image to encode as PNG has unsupported dtype {array.dtype}")
    h, w, c = array.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = np.ascontiguousarray(array, dtype=">u2" if depth == 16 else np.uint8)
    raw = raw.view(np.uint8).reshape(h, -1)
    up = np.empty((h, raw.shape[1] + 1), np.uint8)
    up[:, 0] = 2  # Up filter: byte minus the byte above (0 above the first row).
    up[0, 1:] = raw[0]
    up[1:, 1:] = raw[1:] - raw[:-1]  # uint8 arithmetic wraps mod 256, as PNG wants
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    return b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", zlib.compress(up.tobytes(), 6)),
            _chunk(b"IEND", b""),
        ]
    )


# --------------------------------------------------------------------------- #
# Images
# --------------------------------------------------------------------------- #


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
    data = _read_bytes(path, "image")
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
