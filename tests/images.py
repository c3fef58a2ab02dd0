"""Tiny, valid image files for tests: one per format, distinct content for every seed.

Each builder gives a well-formed 1- to 3-pixel image (PNG with correct CRCs, a decodable
baseline JPEG, GIF89a, a consistent 24-bit BMP, a baseline TIFF) that carries its seed in
metadata. `image_bytes` and `write_image` can pad an image to an exact size, inside the format
(a PNG text chunk, JPEG and GIF comments, a BMP gap before the pixels, unreferenced TIFF
bytes), so padded files still start with the right signature and end with the right trailer.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

KINDS = ("png", "jpeg", "gif", "bmp", "tiff")
_ALIASES = {"jpg": "jpeg", "tif": "tiff"}


def png_bytes(seed: int) -> bytes:
    """A 1x1 RGB PNG (IHDR, tEXt, IDAT, IEND, correct CRCs)."""
    return _png(seed, 0)


def jpeg_bytes(seed: int) -> bytes:
    """A 1x1 grayscale baseline JPEG, FFD8FF ... FFD9, with the seed in a COM segment."""
    return _jpeg(seed, 0)


def gif_bytes(seed: int) -> bytes:
    """A 1x1 GIF89a ending with 0x3B, with the seed in a comment extension."""
    return _gif(seed, 0)


def bmp_bytes(seed: int) -> bytes:
    """A 3x1 24-bit BMP whose header sizes and offsets agree; the seed is in the pixels."""
    return _bmp(seed, 0)


def tiff_bytes(seed: int, *, big_endian: bool = False) -> bytes:
    """A 1x1 grayscale baseline TIFF ("II*\\0", or "MM\\0*" when `big_endian`)."""
    return _tiff(seed, 0, big_endian)


def image_bytes(kind: str, seed: int, size: int | None = None) -> bytes:
    """The image of `kind` ("png", "jpeg"/"jpg", "gif", "bmp", "tiff"/"tif"), padded to `size`."""
    build = _BUILDERS[_ALIASES.get(kind, kind)]
    base = build(seed, 0)
    if size is None:
        return base
    if size < len(base):
        raise ValueError(f"a {kind} image needs at least {len(base)} bytes, not {size}")
    data = build(seed, size - len(base))
    assert len(data) == size, (kind, size, len(data))
    return data


def write_image(path: Path | str, kind: str, seed: int, size: int | None = None) -> Path:
    """Write `image_bytes(kind, seed, size)` to `path` (parents created); returns the path."""
    target = Path(os.fsdecode(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(image_bytes(kind, seed, size))
    return target


def _label(seed: int) -> bytes:
    return f"syncd test image {seed}".encode()


def _split(data: bytes, parts: int) -> list[bytes]:
    """`data` cut into `parts` pieces whose lengths differ by at most one."""
    step, extra = divmod(len(data), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + step + (1 if i < extra else 0)
        pieces.append(data[start:end])
        start = end
    return pieces


def _spread(label: bytes, pad: int, overhead: int, capacity: int) -> list[bytes]:
    """Split label+padding into segments so that their encoded size (each adds `overhead`
    bytes, holds at most `capacity`) is exactly that of one label segment plus `pad`."""
    total = overhead + len(label) + pad
    count = -(-total // (overhead + capacity))
    return _split(label + b" " * (total - overhead * count - len(label)), count)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(seed: int, pad: int) -> bytes:
    rgb = (seed & 0xFFFFFF).to_bytes(3, "big")
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + _png_chunk(b"tEXt", b"Comment\x00" + _label(seed) + b" " * pad)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" + rgb))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


# One Huffman table with a single 1-bit code for symbol 0: DC "no difference", AC "end of block".
_ONE_CODE_TABLE = bytes([1] + [0] * 15) + b"\x00"
_JPEG_HEAD = _jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
_JPEG_BODY = (
    _jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)  # quantisation table 0, all ones
    + _jpeg_segment(0xC0, b"\x08\x00\x01\x00\x01\x01\x01\x11\x00")  # 8-bit, 1x1, 1 component
    + _jpeg_segment(0xC4, b"\x00" + _ONE_CODE_TABLE)  # DC table 0
    + _jpeg_segment(0xC4, b"\x10" + _ONE_CODE_TABLE)  # AC table 0
    + _jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")  # scan: component 1, tables 0/0
    + b"\x3f"  # bits "0" (DC) "0" (EOB), padded with ones
)


def _jpeg(seed: int, pad: int) -> bytes:
    comments = b"".join(_jpeg_segment(0xFE, part) for part in _spread(_label(seed), pad, 4, 65533))
    return b"\xff\xd8" + _JPEG_HEAD + comments + _JPEG_BODY + b"\xff\xd9"


def _gif(seed: int, pad: int) -> bytes:
    colors = (seed & 0xFFFFFF).to_bytes(3, "big") + b"\x00\x00\x00"
    blocks = b"".join(bytes([len(part)]) + part for part in _spread(_label(seed), pad, 1, 255))
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)  # 1x1, a global table of two colours
        + colors
        + b"\x21\xfe"
        + blocks
        + b"\x00"  # comment extension
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # image descriptor
        + b"\x02\x02\x44\x01\x00"  # LZW: min code size 2, codes clear, 0, end
        + b"\x3b"
    )


def _bmp(seed: int, pad: int) -> bytes:
    row = (seed % (1 << 64)).to_bytes(8, "little") + b"\x00" + b"\x00" * 3  # 3 px + row padding
    offset = 14 + 40 + pad
    info = struct.pack("<IiiHHIIiiII", 40, 3, 1, 1, 24, 0, len(row), 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(row), 0, 0, offset)
    return header + info + b"\x00" * pad + row


def _tiff(seed: int, pad: int, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    description = _label(seed) + b"\x00"
    description += b"\x00" * (len(description) % 2)  # keep later offsets on word boundaries
    data_start = 8 + 2 + 13 * 12 + 4
    xres = data_start + len(description)
    yres, pixel = xres + 8, xres + 16
    short, long_, ascii_, rational = 3, 4, 2, 5
    tags = [  # (tag, type, count, value or offset), in ascending tag order as TIFF requires
        (256, short, 1, 1),  # width
        (257, short, 1, 1),  # length
        (258, short, 1, 8),  # bits per sample
        (259, short, 1, 1),  # no compression
        (262, short, 1, 1),  # black is zero
        (270, ascii_, len(description), data_start),
        (273, long_, 1, pixel),  # strip offset
        (277, short, 1, 1),  # samples per pixel
        (278, short, 1, 1),  # rows per strip
        (279, long_, 1, 1),  # strip byte count
        (282, rational, 1, xres),
        (283, rational, 1, yres),
        (296, short, 1, 2),  # inches
    ]
    ifd = struct.pack(e + "H", len(tags))
    for tag, kind, count, value in tags:
        packed = struct.pack(e + "HH", value, 0) if kind == short else struct.pack(e + "I", value)
        ifd += struct.pack(e + "HHI", tag, kind, count) + packed
    ifd += struct.pack(e + "I", 0)
    header = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(e + "I", 8)
    resolution = struct.pack(e + "II", 72, 1) * 2
    return header + ifd + description + resolution + bytes([seed & 0xFF]) + b"\x00" * pad


_BUILDERS: dict[str, Callable[[int, int], bytes]] = {
    "png": _png,
    "jpeg": _jpeg,
    "gif": _gif,
    "bmp": _bmp,
    "tiff": _tiff,
}
