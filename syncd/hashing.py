"""MD5 of local files, computed in worker threads so the event loop never waits on the disk.

The MD5 is syncd's local content key (which remote hash the API gave these bytes); it is not a
security measure. Files are opened with O_NONBLOCK and checked with fstat before any read, so a
FIFO or device node that took a file's place is refused instead of blocking a thread forever.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from syncd.errors import SyncdError
from syncd.filters import file_kind

if TYPE_CHECKING:
    from hashlib import _Hash

CHUNK = 1 << 20
BATCH_FILES = 16  # files read and hashed in one worker-thread hop, at most
BATCH_BYTES = 1 << 20  # ...and no more bytes than this (a bigger file goes alone)

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class FileChangedError(SyncdError):
    """The file's size was not what the caller saw in stat: it changed while being read."""


class FileTooLargeError(SyncdError):
    """The file holds more bytes than the caller is willing to read into memory."""


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or directory; it was not read.

    An OSError, so callers that already treat unreadable files as "cannot read now" cover it.
    """


def md5_bytes(data: bytes) -> str:
    """The hex MD5 of `data`."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class Hashed:
    """Bytes and their MD5, computed from those very bytes (make one with `Hashed.of`).

    An upload handed one sends `data` without hashing it again: re-hashing the same buffer
    proves nothing, and for the daemon's burst of new files it was a quarter of a millisecond
    per file on the event loop's thread.
    """

    data: bytes
    md5: str

    @classmethod
    def of(cls, data: bytes) -> Hashed:
        return cls(data, md5_bytes(data))


async def md5_file(path: Path | str, *, expected_size: int | None = None) -> str:
    """The hex MD5 of the file at `path`, read CHUNK bytes at a time in a worker thread.

    Raises FileChangedError when `expected_size` is given and the bytes read differ from it,
    NotRegularFileError for anything but a regular file, OSError when it cannot be read.
    """
    return await asyncio.to_thread(_md5_file_sync, os.fspath(path), expected_size)


class Outcome(enum.Enum):
    """How reading one file of a `hash_files` batch ended."""

    HASHED = "hashed"  # `md5` is set
    REJECTED = "rejected"  # the head check refused it (`reason`); it was not hashed
    CHANGED = "changed"  # its size changed while being read: look again later
    UNREADABLE = "unreadable"  # vanished, permission, not a regular file (`reason`)


@dataclass(frozen=True, slots=True)
class FileRead:
    """One file's result from `hash_files`."""

    path: str
    outcome: Outcome
    md5: str = ""
    reason: str = ""
    bytes_read: int = 0


async def hash_files(
    root: str,
    files: Sequence[tuple[str, int]],
    *,
    check_head: Callable[[str, bytes, int], str | None],
    head_bytes: int,
    concurrency: int,
    on_progress: Callable[[int, int], None] | None = None,
    on_read: Callable[[FileRead], None] | None = None,
) -> list[FileRead]:
    """Hash files under `root`, given as (relative path, expected size) pairs, at most
    `concurrency` at a time, each read in a worker thread.

    The first `head_bytes` of each file go to `check_head(path, head, size)` first; a file it
    gives a reason for is REJECTED and not hashed. A file that fails is that file's outcome,
    never an exception. `on_progress(done, total)` is called before the first read and after
    each batch of files; `on_read(read)` with each file's result as soon as it is known.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    reads: list[FileRead] = []
    todo = _batches(files)  # shared by the workers: each takes the next batch when it is free
    if on_progress is not None:
        on_progress(0, len(files))

    async def worker() -> None:
        for batch in todo:
            done = await asyncio.to_thread(_hash_batch_sync, root, batch, check_head, head_bytes)
            reads.extend(done)
            if on_read is not None:
                for read in done:
                    on_read(read)
            if on_progress is not None:
                on_progress(len(reads), len(files))

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(files))):
                group.create_task(worker())
    except* Exception as group_error:
        # A callback's error (the manifest it consulted is damaged, say) surfaces as itself,
        # so the caller's handling and the CLI's one-line message apply, not a group traceback.
        raise group_error.exceptions[0] from None
    return reads


def _batches(files: Sequence[tuple[str, int]]) -> Iterator[list[tuple[str, int]]]:
    """Files in runs of BATCH_FILES, or fewer once they add up to BATCH_BYTES; in order.

    Every worker-thread hop is a hand-off the event loop waits on, about a third of a
    millisecond here: for a folder of small images, that was more than reading and hashing them.
    """
    batch: list[tuple[str, int]] = []
    total = 0
    for path, size in files:
        batch.append((path, size))
        total += size
        if total >= BATCH_BYTES or len(batch) >= BATCH_FILES:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _hash_batch_sync(
    root: str,
    batch: list[tuple[str, int]],
    check: Callable[[str, bytes, int], str | None],
    n: int,
) -> list[FileRead]:
    return [_hash_one_sync(os.path.join(root, path), path, size, check, n) for path, size in batch]


def _hash_one_sync(
    abs_path: str, path: str, size: int, check: Callable[[str, bytes, int], str | None], n: int
) -> FileRead:
    """Open once; check the head; hash the head and the rest, exactly `size` bytes."""
    read = 0
    try:
        fd = _open_regular(abs_path)
        with os.fdopen(fd, "rb", buffering=0) as f:
            head = read_up_to(fd, min(size, n))
            read = len(head)
            if read < min(size, n):
                raise FileChangedError("file shrank since it was listed")
            reason = check(path, head, size)
            if reason is not None:
                return FileRead(path, Outcome.REJECTED, reason=reason, bytes_read=read)
            digest = hashlib.md5(head, usedforsecurity=False)
            total = read + _hash_rest(f, digest, size + 1 - read)  # one byte past: did it grow?
    except FileChangedError as exc:
        return FileRead(path, Outcome.CHANGED, reason=str(exc), bytes_read=read)
    except OSError as exc:
        return FileRead(path, Outcome.UNREADABLE, reason=read_error_reason(exc), bytes_read=read)
    if total != size:
        what = "grew" if total > size else "shrank"
        reason = f"file {what} while reading: expected {size} bytes"
        return FileRead(path, Outcome.CHANGED, reason=reason, bytes_read=total)
    return FileRead(path, Outcome.HASHED, md5=digest.hexdigest(), bytes_read=size)


def read_up_to(fd: int, size: int) -> bytes:
    """Up to `size` bytes from `fd` (fewer only at the end of the file)."""
    parts: list[bytes] = []
    got = 0
    while got < size:  # a raw read may return less than asked for before the end
        chunk = os.read(fd, size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _hash_rest(f: io.FileIO, digest: _Hash, limit: int | None) -> int:
    """Feed up to `limit` more bytes (None: all there is) to `digest`; how many there were."""
    total = 0
    # Small files are the common case: a buffer sized to them avoids zeroing a whole CHUNK.
    view = memoryview(bytearray(CHUNK if limit is None else min(CHUNK, max(limit, 1))))
    while limit is None or total < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - total)
        n = f.readinto(view[:want])
        if not n:
            break
        digest.update(view[:n])  # hashlib releases the GIL for large updates
        total += n
    return total


async def read_and_hash(path: Path | str, *, max_bytes: int) -> tuple[bytes, str]:
    """The whole content of the file at `path` and its hex MD5, read in a worker thread.

    The upload path sends exactly these bytes, so what is uploaded is what was hashed.
    Raises FileTooLargeError beyond `max_bytes`, NotRegularFileError, or OSError.
    """
    return await asyncio.to_thread(_read_and_hash_sync, os.fspath(path), max_bytes)


def _open_regular(path: str) -> int:
    """An fd open for reading on the regular file at `path`; never blocks on a FIFO."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            # No path in the message: it becomes a reason shown next to the path.
            raise NotRegularFileError(f"not a regular file ({file_kind(mode)})")
        # Back to blocking reads: O_NONBLOCK only had to protect the open itself.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_error_reason(exc: OSError) -> str:
    """A short reason for a file or directory that cannot be read right now (not "gone")."""
    if isinstance(exc, NotRegularFileError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "file vanished"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ENAMETOOLONG:
        return "path too long"
    return f"cannot read: {exc.strerror or type(exc).__name__}"


def _md5_file_sync(path: str, expected_size: int | None) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    # Reading one byte past the expected size is enough to know the file grew; a file that
    # keeps growing is not read to its end.
    limit = None if expected_size is None else expected_size + 1
    fd = _open_regular(path)
    with os.fdopen(fd, "rb", buffering=0) as f:
        total = _hash_rest(f, digest, limit)
    if expected_size is not None and total > expected_size:
        raise FileChangedError(f"file grew while reading: expected {expected_size} bytes")
    if expected_size is not None and total < expected_size:
        raise FileChangedError(
            f"file shrank while reading: expected {expected_size} bytes, read {total}"
        )
    return digest.hexdigest()


def _read_and_hash_sync(path: str, max_bytes: int) -> tuple[bytes, str]:
    fd = _open_regular(path)
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise FileTooLargeError(f"file too large: {size} bytes > {max_bytes} bytes")
        parts: list[bytes] = []
        total = 0
        while total <= max_bytes:  # the file may grow after fstat; stop one chunk past the limit
            chunk = f.read(min(CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
    if total > max_bytes:
        raise FileTooLargeError(f"file too large: more than {max_bytes} bytes")
    data = b"".join(parts)
    return data, md5_bytes(data)
