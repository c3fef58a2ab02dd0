"""Tiny image-byte builders for tests: distinct content per `seed`, real format structure.

The PNG, GIF and BMP are fully valid images; the JPEG and TIFF carry real headers, frame
sizes and end markers but no decodable pixels (enough for any signature or size check).
"""

from __future__ import annotations

import struct
import zlib


def png_bytes(width: int = 3, height: int = 2, seed: int = 0) -> bytes:
    """A valid RGB PNG whose pixel colour depends on `seed`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    pixel = bytes([seed % 256, (seed // 256) % 256, 7])
    rows = b"".join(b"\x00" + pixel * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes(width: int = 4, height: int = 3, seed: int = 0) -> bytes:
    """SOI, JFIF APP0, a baseline frame header of the given size, a scan, EOI."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    components = b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + components
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    scan = struct.pack(">I", seed) + b"\x12\x34"
    return b"\xff\xd8" + app0 + sof0 + sos + scan + b"\xff\xd9"


def gif_bytes(width: int = 1, height: int = 1, seed: int = 0) -> bytes:
    """A GIF89a with a two-colour palette (colour from `seed`) and its 0x3B trailer."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0)
    palette = bytes([seed % 256, 0, 0, 255, 255, 255])
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    pixels = b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + palette + descriptor + pixels + b"\x3b"


def bmp_bytes(width: int = 2, height: int = 2, seed: int = 0) -> bytes:
    """A valid 24-bit BMP."""
    row = bytes([seed % 256, 1, 2]) * width
    row += b"\x00" * (-len(row) % 4)
    pixels = row * height
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 0, 0, 0, 0)
    size = 14 + len(info) + len(pixels)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, 14 + len(info)) + info + pixels


def tiff_bytes(width: int = 5, height: int = 6, seed: int = 0) -> bytes:
    """A little-endian TIFF header and first directory with ImageWidth and ImageLength."""
    entries = struct.pack("<HHII", 256, 3, 1, width) + struct.pack("<HHII", 257, 4, 1, height)
    ifd = struct.pack("<H", 2) + entries + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", seed)
