"""A small PNG codec for 8- and 16-bit images.

It exists because imageio's PNG plugin (Pillow) silently reduces 16-bit RGB(A) PNGs to 8 bits on
read and cannot write them at all; KITTI flow files and 16-bit frames need the real 16-bit
samples. It handles non-interlaced 8- and 16-bit grey, grey+alpha, RGB and RGBA PNGs and all five
PNG row filters.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from unroll.errors import InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> samples per pixel (palette images, type 3, are not handled here).
_PNG_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}
_PNG_COLOUR_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
_MAX_PNG_PIXELS = 1 << 28


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
