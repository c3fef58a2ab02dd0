"""What the emulator knows about image bytes: format, soundness, dimensions, and its hash.

Formats are recognised by magic bytes only. A file is "corrupt" when its format's end marker
is missing (PNG without IEND, JPEG without FFD9, GIF without the 0x3B trailer, BMP shorter
than its declared size, TIFF whose first IFD lies past the end): that is what a truncated
upload or a half-written file looks like. Dimensions are read when cheap, else 0.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff"})

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers that carry the frame size (not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE})
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})

CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}


# Meta's subcodes for refused uploads (FACTS.md), with the title it shows users.
SUBCODE_PROCESSING = 1487197
SUBCODE_FILE_TYPE = 1487411
SUBCODE_BASE64 = 1487242
_TITLES = {
    SUBCODE_PROCESSING: "Error processing image",
    SUBCODE_FILE_TYPE: "File Type Not Supported",
    SUBCODE_BASE64: "Invalid Image Bytes",
}


class InvalidImage(ValueError):
    """An upload the API refuses; the message says why, `subcode` is Meta's."""

    def __init__(self, reason: str, subcode: int = SUBCODE_PROCESSING) -> None:
        super().__init__(reason)
        self.reason = reason
        self.subcode = subcode

    @property
    def title(self) -> str:
        """The short title Meta puts in `error_user_title`."""
        return _TITLES.get(self.subcode, "Invalid Image")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """The format and size of accepted image bytes."""

    format: str
    width: int
    height: int


def has_image_extension(filename: str) -> bool:
    """True when the name ends in an image extension (any case), as Meta requires."""
    _, dot, ext = filename.rpartition(".")
    return bool(dot) and ext.lower() in IMAGE_EXTENSIONS


def emulator_hash(data: bytes) -> str:
    """The emulator's image hash: content-derived, deliberately NOT the content's MD5.

    Meta does not document its algorithm; a client that computes or assumes it is wrong,
    and against this emulator such a client fails its tests. SHA-1 of a salted content, not
    SHA-256: it is half the emulator's cost per upload on machines without SHA extensions,
    and only has to differ from the MD5 (no adversary picks the images).
    """
    digest = hashlib.sha1(b"syncd-emulator:", usedforsecurity=False)
    digest.update(data)
    return digest.hexdigest()[:32]


def detect_format(data: bytes) -> str | None:
    """The format named by the magic bytes, or None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def check_upload(filename: str | None, data: bytes, max_bytes: int) -> ImageInfo:
    """Everything the API checks on one uploaded file (no filename: a `bytes` upload)."""
    if filename is not None and not has_image_extension(filename):
        raise InvalidImage(
            f"the file name {filename[:100]!r} has no image extension such as .jpg or .png",
            SUBCODE_FILE_TYPE,
        )
    if len(data) > max_bytes:
        raise InvalidImage(f"the image is larger than the maximum of {max_bytes} bytes")
    return inspect_image(data)


def inspect_image(data: bytes) -> ImageInfo:
    """Check the bytes are a whole image of a known format; raise `InvalidImage` if not."""
    if not data:
        raise InvalidImage("the image file is empty")
    fmt = detect_format(data)
    if fmt is None:
        raise InvalidImage("the file is not a JPEG, PNG, GIF, BMP or TIFF image")
    width, height = _INSPECTORS[fmt](data)
    return ImageInfo(fmt, width, height)


def _png(data: bytes) -> tuple[int, int]:
    if len(data) < 8 + 25 + 12 or data[-8:-4] != b"IEND":
        raise InvalidImage("the PNG image is truncated (no IEND chunk)")
    if data[12:16] != b"IHDR":
        raise InvalidImage("the PNG image has no IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _gif(data: bytes) -> tuple[int, int]:
    if len(data) < 14 or data[-1] != 0x3B:
        raise InvalidImage("the GIF image is truncated (no trailer)")
    width, height = struct.unpack("<HH", data[6:10])
    return int(width), int(height)


def _jpeg(data: bytes) -> tuple[int, int]:
    # Some writers pad after the end marker; a missing marker means a truncated file.
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InvalidImage("the JPEG image is truncated (no end-of-image marker)")
    return _jpeg_frame_size(data)


def _jpeg_frame_size(data: bytes) -> tuple[int, int]:
    """Walk the marker segments up to the first start-of-frame; (0, 0) if none is found."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: entropy data follows, no frame header seen
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + int(length)
    return 0, 0


def _bmp(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise InvalidImage("the BMP image is truncated")
    (declared,) = struct.unpack("<I", data[2:6])
    if declared > len(data):
        raise InvalidImage("the BMP image is shorter than its declared size")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(int(width)), abs(int(height))


def _tiff(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise InvalidImage("the TIFF image is truncated")
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd < 8 or ifd + 2 > len(data):
        raise InvalidImage("the TIFF image is truncated (no image directory)")
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    sizes: dict[int, int] = {}
    for index in range(int(count)):
        entry = data[ifd + 2 + 12 * index : ifd + 14 + 12 * index]
        if len(entry) < 12:
            raise InvalidImage("the TIFF image directory is truncated")
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            fmt = order + ("H" if kind == 3 else "I")
            sizes[int(tag)] = int(struct.unpack(fmt, entry[8 : 8 + struct.calcsize(fmt)])[0])
    return sizes.get(256, 0), sizes.get(257, 0)


_INSPECTORS = {"png": _png, "gif": _gif, "jpeg": _jpeg, "bmp": _bmp, "tiff": _tiff}
