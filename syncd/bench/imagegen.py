"""Valid PNG files of an exact size with distinct content, and trees of them.

The emulator checks what Meta checks (signature, IHDR, IEND), so every file is a whole PNG:
the padding sits inside a tEXt chunk, and the seed makes each file's content unique.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
_FILLER = bytes(range(32, 127)) * 64  # printable, so the tEXt chunk stays text


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(seed: int, pad: int) -> bytes:
    label = f"syncd bench image {seed} ".encode()
    filler = (_FILLER * (pad // len(_FILLER) + 1))[:pad]
    rgb = (seed & 0xFFFFFF).to_bytes(3, "big")
    return (
        _SIGNATURE
        + _chunk(b"IHDR", _IHDR)
        + _chunk(b"tEXt", b"Comment\x00" + label + filler)
        + _chunk(b"IDAT", zlib.compress(b"\x00" + rgb))
        + _chunk(b"IEND", b"")
    )


def png_bytes(seed: int, size: int | None = None) -> bytes:
    """A 1x1 PNG unique to `seed`, padded to exactly `size` bytes when given."""
    base = _png(seed, 0)
    if size is None or size <= len(base):
        return base
    data = _png(seed, size - len(base))
    assert len(data) == size
    return data


def tree_paths(files: int, folders: int) -> list[str]:
    """Relative paths of `files` images spread evenly over `folders` folders."""
    return [f"d{i % folders:04d}/img{i:06d}.png" for i in range(files)]


def write_tree(root: Path, paths: list[str], size: int | None, seed0: int = 0) -> list[bytes]:
    """Write one PNG per path (seeded by its index from `seed0`); return their contents."""
    contents: list[bytes] = []
    made: set[str] = set()
    for i, rel in enumerate(paths):
        parent = os.path.dirname(rel)
        if parent not in made:
            (root / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        data = png_bytes(seed0 + i, size)
        with open(root / rel, "wb") as f:
            f.write(data)
        contents.append(data)
    return contents
