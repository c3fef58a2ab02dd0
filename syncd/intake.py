"""The daemon's per-file fast path: a settled file is checked, read and hashed in ONE thread hop.

A burst of new files is the daemon's busiest moment. Going through `examine_paths` for each one
cost three worker-thread hops (walk, signature, hash) and the upload then read the file a
second time; every hop costs GIL hand-offs that the event loop (HTTP, manifest) waits on. Here
the common case, a regular image file in a plain directory, is opened once, its bytes read
whole, its signature checked and its MD5 taken from those same bytes; the upload sends exactly
them. Anything unusual (a symlink, a directory, an ignored or hidden directory on the way, an
error) is handed back as ASK_SCANNER, and the caller applies `examine_paths`' full rules.
"""

from __future__ import annotations

import asyncio
import enum
import os
import stat
from dataclasses import dataclass

from syncd.filters import (
    MAX_IMAGE_BYTES,
    SIGNATURE_BYTES,
    ignore_reason,
    is_image_name,
    signature_reason,
)
from syncd.hashing import Hashed, read_up_to
from syncd.models import LocalFile
from syncd.scanner import KnownLike

# O_NOFOLLOW: a symlink is the scanner's business (it follows links that stay in the folder).
# O_NONBLOCK: a FIFO that took the file's place must not block the open.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class Verdict(enum.Enum):
    """What the fast path made of one settled file."""

    READY = "ready"  # an upload candidate: `file`, and `data` when it was read
    SKIPPED = "skipped"  # its content is not the image its name says (`reason`)
    UNSETTLED = "unsettled"  # it changed while being read, or its mtime is ahead: settle again
    ASK_SCANNER = "ask_scanner"  # not the common case: let `examine_paths` decide


@dataclass(frozen=True, slots=True)
class Intake:
    """One file's outcome. `content` is None for READY when the manifest's MD5 still holds
    (same size and mtime: a rename, say), so nothing was read."""

    verdict: Verdict
    file: LocalFile | None = None
    content: Hashed | None = None
    reason: str = ""


_ASK = Intake(Verdict.ASK_SCANNER)
_UNSETTLED = Intake(Verdict.UNSETTLED)


async def take_in(root: str, path: str, known: KnownLike | None) -> Intake:
    """`take_in_sync` in a worker thread."""
    return await asyncio.to_thread(take_in_sync, root, path, known)


def take_in_sync(root: str, path: str, known: KnownLike | None) -> Intake:
    """Check, read and hash the file at `path` (relative to `root`, "/"-separated), blocking.

    `known` is the manifest's row for the path, if any: a file whose size and mtime match it
    is not read again. Never raises for a file's sake: any OSError asks the scanner.

    The caller has seen the file unchanged for `settle_seconds` (the settle tracker): that
    observation is the settle rule here, whatever the mtime says. A copy that kept a
    timestamp from the future (a camera with the wrong date, a server whose clock runs
    ahead) would otherwise wait for the clock to catch up; reconcile settles such files by
    observation too. A write during the read still sends the file back to settling.
    """
    parts = path.split("/")
    if not is_image_name(parts[-1]) or {"", ".", ".."} & set(parts):
        return _ASK  # the scanner gives the skip reason, or refuses the path
    if any(ignore_reason(name, is_dir=True) is not None for name in parts[:-1]):
        return _ASK  # the walk never goes into such a directory
    try:
        fd = _open_beneath(root, parts)
    except OSError:
        return _ASK  # vanished, a symlink (ELOOP), permission: the scanner's rules apply
    try:
        return _read_open(fd, path, parts[-1], known)
    except OSError:
        return _ASK
    finally:
        os.close(fd)


def _open_beneath(root: str, parts: list[str]) -> int:
    """The file at `parts` under `root`, opened one directory at a time by descriptor, none
    of them followed if it is a symlink (the walk never enters a symlinked directory).

    Checking the directories first and then opening the whole path left a window in which a
    directory swapped for a symlink would have sent the open outside the folder.
    """
    here = os.open(root, _DIR_FLAGS)
    try:
        for name in parts[:-1]:
            below = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=here)
            os.close(here)
            here = below
        return os.open(parts[-1], _OPEN_FLAGS, dir_fd=here)
    finally:
        os.close(here)


def _read_open(fd: int, path: str, name: str, known: KnownLike | None) -> Intake:
    st = os.fstat(fd)
    size, mtime_ns = st.st_size, st.st_mtime_ns
    if not stat.S_ISREG(st.st_mode) or not 0 < size <= MAX_IMAGE_BYTES:
        return _ASK  # a FIFO, device, empty or oversized file: the scanner says why
    if known is not None and known.md5 and (known.size, known.mtime_ns) == (size, mtime_ns):
        return Intake(Verdict.READY, LocalFile(path, size, mtime_ns, known.md5))
    return _read_new(fd, path, name, size, mtime_ns)


def _read_new(fd: int, path: str, name: str, size: int, mtime_ns: int) -> Intake:
    os.set_blocking(fd, True)  # O_NONBLOCK only had to protect the open
    data = _read_exactly(fd, size)
    after = os.fstat(fd)
    if data is None or (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
        return _UNSETTLED  # written to while we read: its final bytes come later
    reason = signature_reason(name, data[:SIGNATURE_BYTES], size)
    if reason is not None:
        return Intake(Verdict.SKIPPED, LocalFile(path, size, mtime_ns, ""), reason=reason)
    content = Hashed.of(data)
    return Intake(Verdict.READY, LocalFile(path, size, mtime_ns, content.md5), content)


def _read_exactly(fd: int, size: int) -> bytes | None:
    """The file's `size` bytes, or None if it holds more or fewer (it is being written)."""
    data = read_up_to(fd, size + 1)  # one byte past `size` is enough to know the file grew
    return data if len(data) == size else None
