"""The folder walk: which files under an account's folder are upload candidates, with their MD5.

`walk` (os.scandir, iterative, run in one worker thread) applies every rule that needs no
file content. `scan_folder` then reuses the manifest's MD5 for files whose size and mtime are
unchanged, sets aside files changed too recently, and reads the rest (signature, then MD5).

Nothing here ever reports a file as gone: entries that cannot be read go to `errors`, and a
directory that cannot be listed makes the result `incomplete`.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import Protocol

from syncd.filters import (
    MAX_IMAGE_BYTES,
    SIGNATURE_BYTES,
    entry_reason,
    ignore_reason,
    is_image_name,
    signature_reason,
)
from syncd.hashing import FileRead, Outcome, hash_files, read_error_reason
from syncd.models import FolderState, LocalFile, Skip


@dataclass(frozen=True, slots=True)
class Known:
    """What the manifest already knows of a path, so an unchanged file is not read again."""

    size: int
    mtime_ns: int
    md5: str | None


class KnownLike(Protocol):
    """Anything with a known file's size, mtime and MD5 (a `Known`, or a manifest row as it
    is: a 100,000-file pass should not copy every row just to compare three fields)."""

    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def md5(self) -> str | None: ...


@dataclass(slots=True, repr=False)
class ScanResult:
    """Everything one scan found. Paths are relative to the folder, with "/" separators."""

    folder_state: FolderState  # OK, MISSING (absent / not a directory), UNREADABLE
    files: list[LocalFile] = field(default_factory=list)  # upload candidates with their MD5
    skips: list[Skip] = field(default_factory=list)  # not candidates, with the reason
    unsettled: list[str] = field(default_factory=list)  # changed too recently: wait, rescan
    errors: list[Skip] = field(default_factory=list)  # could not be read now: NOT gone
    hashed_bytes: int = 0  # file content actually read (signatures and hashes)
    device: int | None = None  # st_dev of the folder, to notice a share that got unmounted
    incomplete: bool = False  # some directory could not be listed: never infer "gone"

    def __repr__(self) -> str:
        # Counts, not contents: a result can hold 100,000 files, and asyncio formats the repr
        # of a task's result behind the scenes (Python 3.11's asyncio.run does, on every run).
        counts = ", ".join(f"{k}={len(getattr(self, k))}" for k in _LISTS)
        return (
            f"ScanResult(folder_state={self.folder_state.value}, {counts}, hashed_bytes="
            f"{self.hashed_bytes}, device={self.device}, incomplete={self.incomplete})"
        )


_LISTS = ("files", "skips", "unsettled", "errors")


class EntryKind(enum.Enum):
    """What `walk` says of one directory entry."""

    CANDIDATE = "candidate"  # a regular image file by name, type and size
    SKIPPED = "skipped"  # not an upload candidate; `reason` says why
    ERROR = "error"  # could not be examined now (vanished, permission)
    UNLISTED = "unlisted"  # a directory that could not be listed; "" is the root itself


@dataclass(frozen=True, slots=True)
class WalkEntry:
    """One entry found by `walk`; `size` and `mtime_ns` are 0 when no stat was needed."""

    path: str
    kind: EntryKind
    reason: str = ""
    size: int = 0
    mtime_ns: int = 0


def folder_state(root: Path | str) -> FolderState:
    """Whether `root` exists as a directory that can be listed (a quick check, no walk)."""
    return _root_check(os.fspath(root))[0]


def walk(root: Path | str, *, stop: threading.Event | None = None) -> Iterator[WalkEntry]:
    """Every entry under `root` worth reporting, depth first, without following directories.

    Hidden and ignored directories and symlinked directories are reported once and not
    descended; symlinks to regular files inside `root` count under the link's path. Entries
    come directory by directory as the walk goes on. Setting `stop` ends the walk early.
    """
    for candidates, others in _walk_batches(os.fspath(root), stop):
        for path, size, mtime_ns in candidates:
            yield WalkEntry(path, EntryKind.CANDIDATE, "", size, mtime_ns)
        yield from others


async def scan_folder(
    root: Path | str,
    known: Mapping[str, KnownLike],
    *,
    now: float,
    settle_seconds: float,
    on_progress: Callable[[int, int], None] | None = None,
    on_file: Callable[[LocalFile], None] | None = None,
    hash_concurrency: int = 4,
) -> ScanResult:
    """Scan `root`: candidates with their MD5, skips, unsettled files and read errors.

    `now` is the wall-clock time (compared with file mtimes). `on_progress(done, total)` is
    called as files are hashed: `total` files needed reading, `done` of them are finished.
    `on_file(file)` is called with each candidate as soon as it has been read and hashed
    (not for files whose MD5 came from `known`), while the scan goes on.
    """
    return await examine_paths(
        root,
        None,
        known,
        now=now,
        settle_seconds=settle_seconds,
        on_progress=on_progress,
        on_file=on_file,
        hash_concurrency=hash_concurrency,
    )


async def examine_paths(
    root: Path | str,
    paths: Iterable[str] | None,
    known: Mapping[str, KnownLike],
    *,
    now: float,
    settle_seconds: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
    on_file: Callable[[LocalFile], None] | None = None,
    hash_concurrency: int = 4,
) -> ScanResult:
    """`scan_folder`'s rules applied to just `paths` (relative, "/"-separated, as file-system
    events name them; None for the whole folder). A directory among them is scanned whole.

    A path that no longer exists, or that the walk would never reach (under a hidden or a
    symlinked directory), is absent from the result. Nothing else is looked at, so the result
    says nothing about other files.
    """
    if hash_concurrency < 1:
        raise ValueError("hash_concurrency must be at least 1")
    folder, wanted = os.fspath(root), None if paths is None else list(paths)
    stop = threading.Event()
    try:
        result, pending = await asyncio.to_thread(
            _survey, folder, wanted, known, now, settle_seconds, stop
        )
    except asyncio.CancelledError:
        stop.set()  # the thread cannot be cancelled; make it give up at the next directory
        raise
    if pending:
        await _hash_all(folder, pending, result, on_progress, on_file, hash_concurrency)
    return result


def _root_check(root: str) -> tuple[FolderState, int | None]:
    """The folder's state and st_dev (None when it could not be stat'ed)."""
    device = None
    try:
        st = os.stat(root)
        device = st.st_dev
        if not S_ISDIR(st.st_mode):
            return FolderState.MISSING, None
        with os.scandir(root):
            pass
    except (FileNotFoundError, NotADirectoryError):
        return FolderState.MISSING, None
    except OSError:
        # Permission, or a share gone bad (ESTALE, ENOTCONN, EIO): it exists but says nothing.
        return FolderState.UNREADABLE, device
    return FolderState.OK, device


# One directory's listing: candidates as plain (path, size, mtime_ns) tuples, because the hot
# path makes one per file and a tuple costs a fraction of a dataclass; everything else as entries.
_Listing = tuple[list[tuple[str, int, int]], list[WalkEntry]]
_Stack = list[tuple[str, str]]  # directories still to list: (absolute path, relative prefix)


def _walk_batches(
    root: str, stop: threading.Event | None, paths: list[str] | None = None
) -> Iterator[_Listing]:
    """The walk, one listing per directory (iterative, depth first)."""
    inside = os.path.realpath(root).rstrip(os.sep) + os.sep
    stack: _Stack = []
    if paths is None:
        stack.append((root, ""))
    else:  # one listing for the paths themselves; the directories among them are walked
        listing: _Listing = ([], [])
        wanted = dict.fromkeys(paths)
        for rel in wanted:
            # A path inside another one named here comes with that directory's walk.
            ancestors = accumulate(rel.split("/")[:-1], lambda a, b: f"{a}/{b}")
            if not any(a in wanted for a in ancestors):
                _add(_examine_path(root, rel, inside, stack), listing)
        yield listing
    while stack:
        if stop is not None and stop.is_set():
            return
        abs_dir, prefix = stack.pop()
        yield _list_dir(abs_dir, prefix, inside, stack)


def _list_dir(abs_dir: str, prefix: str, inside: str, stack: _Stack) -> _Listing:
    """One directory's entries; subdirectories to descend are pushed onto `stack`.

    The hot path: a plain image file costs a name check and the one stat its DirEntry makes.
    """
    listing: _Listing = ([], [])
    try:
        with os.scandir(abs_dir) as it:
            for entry in it:
                name, rel = entry.name, prefix + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        _add(_enter_dir(entry.path, rel, name, stack), listing)
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    listing[1].append(WalkEntry(rel, EntryKind.ERROR, read_error_reason(exc)))
                    continue
                if (
                    S_ISREG(st.st_mode)
                    and 0 < st.st_size <= MAX_IMAGE_BYTES
                    and is_image_name(name)
                ):
                    listing[0].append((rel, st.st_size, st.st_mtime_ns))
                else:
                    _add(_classify(entry.path, rel, name, st, inside), listing)
    except OSError as exc:  # entries handle their own errors: this is the listing failing
        listing[1].append(WalkEntry(prefix[:-1], EntryKind.UNLISTED, read_error_reason(exc)))
    return listing


def _examine_path(root: str, rel: str, inside: str, stack: _Stack) -> WalkEntry | None:
    """Classify one relative path as the walk would if it came across it."""
    parts = rel.split("/")
    if {"", ".", ".."} & set(parts):
        return WalkEntry(rel, EntryKind.ERROR, "not a path inside the folder")
    abs_path = os.path.join(root, *parts)
    try:
        for depth in range(1, len(parts)):
            # The walk goes down neither ignored nor symlinked directories.
            parent = os.lstat(os.path.join(root, *parts[:depth]))
            if ignore_reason(parts[depth - 1], is_dir=True) or not S_ISDIR(parent.st_mode):
                return None
        st = os.lstat(abs_path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # gone: a walk would not list it either
    except OSError as exc:
        return WalkEntry(rel, EntryKind.ERROR, read_error_reason(exc))
    if S_ISDIR(st.st_mode):
        return _enter_dir(abs_path, rel, parts[-1], stack)
    return _classify(abs_path, rel, parts[-1], st, inside)


def _enter_dir(abs_path: str, rel: str, name: str, stack: _Stack) -> WalkEntry | None:
    """Push a directory onto the walk's stack, unless its name says to leave it alone."""
    reason = ignore_reason(name, is_dir=True)
    if reason is not None:
        return WalkEntry(rel, EntryKind.SKIPPED, reason + " not descended")
    stack.append((abs_path, rel + "/"))
    return None


def _classify(abs_path: str, rel: str, name: str, st: os.stat_result, inside: str) -> WalkEntry:
    """What a file (by its lstat) is, when it is not a plain image file of a plausible size."""
    if S_ISLNK(st.st_mode) and ignore_reason(name) is None:
        try:
            target = _follow_link(abs_path, inside)
        except OSError as exc:
            return WalkEntry(rel, EntryKind.ERROR, read_error_reason(exc))
        if isinstance(target, str):
            return WalkEntry(rel, EntryKind.SKIPPED, target)
        st = target
    reason = entry_reason(name, st.st_mode, st.st_size)
    kind = EntryKind.CANDIDATE if reason is None else EntryKind.SKIPPED
    return WalkEntry(rel, kind, reason or "", st.st_size, st.st_mtime_ns)


def _follow_link(link: str, inside: str) -> os.stat_result | str:
    """The stat of what a symlink leads to, or why it is not followed."""
    try:
        st = os.stat(link)
    except FileNotFoundError:
        return "dangling symlink"
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return "symlink loop"
    if S_ISDIR(st.st_mode):
        return "symlinked directory not followed"  # never descended: no loops, ever
    if not os.path.realpath(link).startswith(inside):
        return "symlink leads outside the folder"
    return st


def _add(found: WalkEntry | None, listing: _Listing) -> None:
    if found is not None and found.kind is EntryKind.CANDIDATE:
        listing[0].append((found.path, found.size, found.mtime_ns))
    elif found is not None:
        listing[1].append(found)


def _survey(
    root: str,
    paths: list[str] | None,
    known: Mapping[str, KnownLike],
    now: float,
    settle_seconds: float,
    stop: threading.Event,
) -> tuple[ScanResult, list[tuple[str, int, int]]]:
    """The walk, in a worker thread: a result so far, and the files still to read."""
    state, device = _root_check(root)
    if state is not FolderState.OK:
        return ScanResult(state, device=device, incomplete=True), []
    result = ScanResult(state, device=device)
    pending: list[tuple[str, int, int]] = []  # (path, size, mtime_ns) of files to read
    # An mtime after the cutoff means "changed less than settle_seconds ago".
    cutoff_ns = int(now * 1e9) - int(settle_seconds * 1e9)
    files, unsettled = result.files, result.unsettled
    for candidates, others in _walk_batches(root, stop, paths):
        for path, size, mtime_ns in candidates:
            prior = known.get(path)
            if (
                prior is not None
                and prior.md5
                and prior.size == size
                and prior.mtime_ns == mtime_ns
            ):
                # Unchanged: built from the manifest's own objects (a row's path when it has
                # one), so the walk's copies are freed: 100,000 files hold one of each, not two.
                row_path = getattr(prior, "path", None)
                if isinstance(row_path, str) and row_path == path:
                    path = row_path
                files.append(LocalFile(path, prior.size, prior.mtime_ns, prior.md5))
            elif mtime_ns > cutoff_ns:
                unsettled.append(path)
            else:
                pending.append((path, size, mtime_ns))
        for entry in others:
            _record_other(result, entry)
    return result, pending


def _record_other(result: ScanResult, entry: WalkEntry) -> None:
    """File a skipped, unreadable or unlisted entry into `result`."""
    if entry.kind is EntryKind.SKIPPED:
        result.skips.append(Skip(entry.path, entry.reason, entry.size, entry.mtime_ns))
        return
    result.errors.append(Skip(entry.path or ".", entry.reason, entry.size, entry.mtime_ns))
    if entry.kind is EntryKind.UNLISTED:
        result.incomplete = True
        if entry.path == "":  # the root went away or shut us out after the first check
            result.folder_state = FolderState.UNREADABLE


async def _hash_all(
    root: str,
    pending: list[tuple[str, int, int]],
    result: ScanResult,
    on_progress: Callable[[int, int], None] | None,
    on_file: Callable[[LocalFile], None] | None,
    concurrency: int,
) -> None:
    """Check the signature of every pending file, then hash it; file each outcome."""
    stats = {path: (size, mtime_ns) for path, size, mtime_ns in pending}

    def hashed(read: FileRead) -> None:
        if on_file is not None and read.outcome is Outcome.HASHED:
            on_file(LocalFile(read.path, *stats[read.path], read.md5))

    reads = await hash_files(
        root,
        [(path, size) for path, size, _ in pending],
        check_head=lambda path, head, size: signature_reason(path.rpartition("/")[2], head, size),
        head_bytes=SIGNATURE_BYTES,
        concurrency=concurrency,
        on_progress=on_progress,
        on_read=hashed if on_file is not None else None,
    )
    for read in reads:
        result.hashed_bytes += read.bytes_read
        path, (size, mtime_ns) = read.path, stats[read.path]
        if read.outcome is Outcome.HASHED:
            result.files.append(LocalFile(path, size, mtime_ns, read.md5))
        elif read.outcome is Outcome.CHANGED:
            result.unsettled.append(path)  # being written: the caller waits and rescans
        elif read.outcome is Outcome.REJECTED:
            result.skips.append(Skip(path, read.reason, size, mtime_ns))
        else:
            result.errors.append(Skip(path, read.reason, size, mtime_ns))
