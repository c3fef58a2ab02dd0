"""Which directory entries are upload candidates: pure rules over names, sizes and leading bytes.

Nothing here touches the disk. The scanner asks `entry_reason` (ignored names, file type,
extension, size) of every entry, and `signature_reason` once it has read the first
`SIGNATURE_BYTES`. Every function returns None for "fine" or a short human reason, and none
of them raises on any input (names may hold surrogate escapes or control characters).
Nothing is ever guessed or renamed: a `.jpg` holding PNG bytes is skipped, not uploaded as PNG.
"""

from __future__ import annotations

import stat

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff"})
MAX_IMAGE_BYTES = 30 * 1024 * 1024
SIGNATURE_BYTES = 16  # how many leading bytes signature_reason needs

# Windows users expect these names to match in any case (Explorer does), so compare lowercased.
_SYSTEM_NAMES = frozenset({"thumbs.db", ".ds_store"})
_TEMP_SUFFIXES = (".tmp", ".part", ".crdownload")

# The format each extension promises, and how a reason names it.
_EXTENSION_FORMAT = {
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "png": "png",
    "gif": "gif",
    "bmp": "bmp",
    "tif": "tiff",
    "tiff": "tiff",
}
_FORMAT_LABEL = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}

# (format, signatures); order matters only in that no signature is a prefix of another's.
_SIGNATURES: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("jpeg", (b"\xff\xd8\xff",)),
    ("png", (b"\x89PNG\r\n\x1a\n",)),
    ("gif", (b"GIF87a", b"GIF89a")),
    ("bmp", (b"BM",)),
    ("tiff", (b"II*\x00", b"MM\x00*")),
)


def ignore_reason(name: str, *, is_dir: bool = False) -> str | None:
    """Why a file (or, with `is_dir`, a directory) BASENAME is ignored outright, else None.

    Covers hidden entries (`.*`), Office lock files (`~$*`), temporary and partial downloads
    (`*.tmp`, `*.part`, `*.crdownload`, any case) and OS litter (`Thumbs.db`, `.DS_Store`).
    """
    what = "directory" if is_dir else "file"
    lowered = name.lower()
    if lowered in _SYSTEM_NAMES:
        return f"system {what}"
    if name.startswith("."):
        return f"hidden {what}"
    if name.startswith("~$"):
        return f"editor lock {what}"
    if lowered.endswith(_TEMP_SUFFIXES):
        return f"temporary {what}"
    return None


def extension_of(name: str) -> str:
    """The lowercased extension of a basename without the dot; "" when it has none."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return ""  # "photo" and ".jpg" both have no extension in the sense that matters here
    return ext.lower()


def extension_reason(name: str) -> str | None:
    """None when the basename's extension is an image extension (any case), else why not."""
    ext = extension_of(name)
    if not ext:
        return "no extension"
    if ext in IMAGE_EXTENSIONS:
        return None
    return f"not an image extension (.{_printable(ext)})"


def is_image_name(name: str) -> bool:
    """The fast path for the common case: True exactly when a FILE basename passes both
    `ignore_reason` and `extension_reason` (every ignored name has a non-image extension or
    starts with "." or "~$")."""
    dot = name.rfind(".")
    return (
        dot > 0
        and name[dot + 1 :].lower() in IMAGE_EXTENSIONS
        and name[0] != "."
        and not name.startswith("~$")
    )


def size_reason(size: int) -> str | None:
    """Why a file of `size` bytes cannot be an upload candidate (decided from stat alone)."""
    if size <= 0:
        return "empty file"
    if size > MAX_IMAGE_BYTES:
        return f"too large ({size} bytes > 30 MiB)"
    return None


def entry_reason(name: str, mode: int, size: int) -> str | None:
    """Why a file that is not a directory or symlink (by name, `st_mode` and size) is not an
    upload candidate, before any byte of it is read; None when it is one."""
    reason = ignore_reason(name)
    if reason is None and not stat.S_ISREG(mode):
        reason = f"not a regular file ({file_kind(mode)})"
    return reason or extension_reason(name) or size_reason(size)


def detect_format(head: bytes) -> str | None:
    """The image format the leading bytes announce: "jpeg", "png", "gif", "bmp", "tiff" or None."""
    for fmt, signatures in _SIGNATURES:
        if head.startswith(signatures):
            return fmt
    return None


def signature_reason(name: str, head: bytes, size: int) -> str | None:
    """None when `head` (the file's first bytes) matches the format the extension names.

    `size` is the file's size from stat; emptiness and the size limit are judged from it alone.
    """
    too_big_or_empty = size_reason(size)
    if too_big_or_empty is not None:
        return too_big_or_empty
    ext = extension_of(name)
    expected = _EXTENSION_FORMAT.get(ext)
    if expected is None:
        return extension_reason(name) or "not an image extension"
    actual = detect_format(head)
    if actual == expected:
        return None
    if actual is None:
        return f"content is not a {_FORMAT_LABEL[expected]} image"
    return f"content does not match extension .{ext}: looks like {actual}"


def file_kind(mode: int) -> str:
    """A short name for the file type in an `st_mode`: "regular file", "fifo", "socket", ..."""
    kinds = (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    for test, name in kinds:
        if test(mode):
            return name
    return "special file"


def _printable(text: str, limit: int = 20) -> str:
    """`text` made safe for logs and UTF-8 storage: escapes surrogates and control characters."""
    # backslashreplace also covers lone surrogates, which neither UTF-8 nor os.fsencode accepts.
    safe = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in safe)
    return shown + ("..." if len(text) > limit else "")
