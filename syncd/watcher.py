"""The folder watcher: watchdog's observer threads bridged into the event loop as `Change`s.

A thin, reliable bridge: it does not filter, hash or debounce (the service does). What it adds
to watchdog is the part watchdog leaves to its caller: choosing polling for network shares,
falling back to polling when inotify runs out of watches, polling with a lighter and paced
emitter of its own (syncd.polling), turning "events were lost" into RESCAN, and a health task
that notices the root vanishing (FOLDER_GONE), coming back (FOLDER_BACK) or the observer dying
(restart + RESCAN).

Moves of a directory: watchdog's inotify emitter follows a DirMovedEvent with synthetic
moved events for everything inside it, and the polling emitter reports those inner moves too
(it tracks inodes). Both are passed through, so in either mode the service gets DIR_MOVED
and one MOVED per file inside, in no guaranteed order. A directory moved in from outside
likewise comes with CHANGED for each file inside (besides DIR_CREATED, which asks for a scan).
When the root itself is deleted, inotify reports DELETED for its contents before FOLDER_GONE
(polling and unmounts give FOLDER_GONE alone): deletions are never final here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import structlog
from watchdog import events as ev
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from syncd.polling import PollingObserver

_log = structlog.get_logger("syncd.watcher")
_T = TypeVar("_T")
Mode = Literal["native", "polling"]

# Where watchdog reports a kernel queue overflow (and nothing else: handlers are not told).
_OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")
_OVERFLOW_PREFIX = "Inotify queue overflowed"
_LIMIT_HINTS = {
    errno.ENOSPC: "inotify watch limit reached: raise fs.inotify.max_user_watches "
    "(sysctl fs.inotify.max_user_watches=524288)",
    errno.EMFILE: "inotify instance limit reached: raise fs.inotify.max_user_instances "
    "(sysctl fs.inotify.max_user_instances=1024)",
}
# Kernel network file systems; the whole fuse family counts too (see is_network_filesystem).
_NETWORK_FS = {
    *("nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "sshfs", "9p", "afs", "coda"),
    *("ncpfs", "ceph", "glusterfs", "lustre", "gpfs", "davfs", "virtiofs", "vboxsf", "vmhgfs"),
}


class ChangeKind(enum.Enum):
    """What happened; see `Change`."""

    CHANGED = "changed"
    DELETED = "deleted"
    MOVED = "moved"
    DIR_CREATED = "dir_created"
    DIR_DELETED = "dir_deleted"
    DIR_MOVED = "dir_moved"
    RESCAN = "rescan"
    FOLDER_GONE = "folder_gone"
    FOLDER_BACK = "folder_back"


@dataclass(frozen=True, slots=True)
class Change:
    """One change under the root; `path`/`dest` are root-relative and "/"-separated."""

    kind: ChangeKind
    path: str = ""
    dest: str | None = None
    reason: str = ""


_OVERFLOWED = Change(ChangeKind.RESCAN, reason="inotify queue overflowed")
_SIMPLE_KINDS: dict[type[ev.FileSystemEvent], ChangeKind] = {
    ev.FileCreatedEvent: ChangeKind.CHANGED,
    ev.FileModifiedEvent: ChangeKind.CHANGED,
    ev.FileClosedEvent: ChangeKind.CHANGED,
    ev.FileAttribEvent: ChangeKind.CHANGED,
    ev.FileDeletedEvent: ChangeKind.DELETED,
    ev.DirCreatedEvent: ChangeKind.DIR_CREATED,
    ev.DirDeletedEvent: ChangeKind.DIR_DELETED,
}
# The events asked of the observer: those `change_from_event` maps, nothing more. Without a
# filter inotify also reports every open and close-without-write, so syncd's own reads of a
# file (signature, hash, upload) came back as events through watchdog's threads, each one
# costing GIL time on the way to being dropped; directory-modified events are never used.
_WANTED_EVENTS: list[type[ev.FileSystemEvent]] = [
    *_SIMPLE_KINDS,
    ev.FileMovedEvent,
    ev.DirMovedEvent,
]


def relative_path(path: bytes | str, root: str) -> str | None:
    """`path` relative to `root` ("" for the root itself), or None if it is outside or empty."""
    text = os.fsdecode(path)
    if not text:
        return None
    if text == root:
        return ""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return text[len(prefix) :].replace(os.sep, "/") if text.startswith(prefix) else None


def change_from_event(event: ev.FileSystemEvent, root: str) -> Change | None:
    """Map one watchdog event under `root` to a Change; None for noise and foreign paths."""
    src = relative_path(event.src_path, root)
    if isinstance(event, ev.FileSystemMovedEvent):
        return _moved(event.is_directory, src, relative_path(event.dest_path, root))
    if src == "":  # the root itself: only its deletion matters
        gone = isinstance(event, ev.DirDeletedEvent)
        return Change(ChangeKind.FOLDER_GONE, reason="folder deleted") if gone else None
    kind = _SIMPLE_KINDS.get(type(event))
    return Change(kind, src) if kind is not None and src is not None else None


def _moved(is_dir: bool, src: str | None, dest: str | None) -> Change | None:
    """A move seen from inside the root: a rename, a removal (out) or an arrival (in)."""
    if src and dest:
        return Change(ChangeKind.DIR_MOVED if is_dir else ChangeKind.MOVED, src, dest)
    if src:
        return Change(ChangeKind.DIR_DELETED if is_dir else ChangeKind.DELETED, src)
    if dest:
        return Change(ChangeKind.DIR_CREATED if is_dir else ChangeKind.CHANGED, dest)
    return None


def _read_mountinfo() -> str | None:
    try:
        return os.fsdecode(Path("/proc/self/mountinfo").read_bytes())
    except OSError:  # not Linux, or /proc not mounted
        return None


def _parse_mount(line: str) -> tuple[str, str] | None:
    """(mount point, fstype) from one mountinfo line (see proc(5)), None if malformed."""
    fields = line.split(" ")
    try:
        sep = fields.index("-", 6)  # optional fields end with a lone "-"
        fstype = fields[sep + 1]
    except (ValueError, IndexError):
        return None
    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
    return point, fstype


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the file system holding `path` (which need not exist), from mountinfo."""
    text = mountinfo if mountinfo is not None else _read_mountinfo()
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in (text or "").splitlines():
        entry = _parse_mount(line)
        if entry is None:
            continue
        point, fstype = entry
        inside = point == "/" or target == point or target.startswith(point.rstrip("/") + "/")
        # ">=": of stacked mounts on one point, the later line is the visible one.
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return best[1] if best else None


def is_network_filesystem(fstype: str) -> bool:
    """True for file systems whose changes inotify may never see (other clients' writes)."""
    name = fstype.lower()
    return name in _NETWORK_FS or name in ("fuse", "fuseblk") or name.startswith("fuse.")


def choose_mode(requested: str, root: Path, mountinfo: str | None = None) -> tuple[Mode, str]:
    """The observer to use for `root` and why; "auto" polls network file systems."""
    if requested in ("native", "polling"):
        return ("native" if requested == "native" else "polling"), f"observer = {requested}"
    fstype = filesystem_type(root, mountinfo)
    if fstype is None:
        return "native", "file system type unknown, assumed local"
    if is_network_filesystem(fstype):
        return "polling", f"{fstype} is a network file system"
    return "native", f"{fstype} is a local file system"


# What the root resolves to (realpath, st_dev, st_ino): when it changes (remounted,
# replaced), the watches are on a stale directory.
_Identity = tuple[str, int, int]


def _probe(root: Path) -> _Identity | None:
    """The root's identity if it is a readable directory, else None (blocking: NFS stat)."""
    try:
        real = os.path.realpath(root)
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or not os.access(real, os.R_OK | os.X_OK):
        return None
    return real, st.st_dev, st.st_ino


def _shutdown(observer: BaseObserver) -> None:
    """Stop an observer and join its threads (blocking); it may never have been started."""
    observer.stop()
    if observer.ident is not None:
        observer.join()


def _is_alive(observer: BaseObserver | None) -> bool:
    """Every thread of the observer still runs: dispatcher, emitters (one stops by itself when
    the root is deleted) and inotify's reader, which watchdog does not expose publicly."""
    if observer is None or not observer.emitters:
        return False
    reader = getattr(observer, "_inotify_fd", None)
    readers = [reader] if isinstance(reader, threading.Thread) else []
    return all(thread.is_alive() for thread in [observer, *observer.emitters, *readers])


async def _run_blocking(fn: Callable[[], _T]) -> _T:
    """Run `fn` in a worker thread and see it through even if we are cancelled meanwhile:
    it starts or joins observer threads, which must never be left half done."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved, so a failure is not reported as "never retrieved"
        raise


class _Bridge(ev.FileSystemEventHandler):
    """Runs on watchdog's dispatcher thread; hands each change to the loop."""

    def __init__(self, watcher: FolderWatcher, generation: int, root: str) -> None:
        self._watcher, self._generation, self._root = watcher, generation, root

    def dispatch(self, event: ev.FileSystemEvent) -> None:
        change = change_from_event(event, self._root)
        if change is not None:
            self._watcher._from_thread(self._generation, change)


class _OverflowHook(logging.Handler):
    """Turns watchdog's "Inotify queue overflowed" warnings into a callback."""

    def __init__(self, on_overflow: Callable[[bytes | None], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith(_OVERFLOW_PREFIX):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        paths = [a for a in args if isinstance(a, bytes | str)]
        self._on_overflow(os.fsencode(paths[0]) if paths else None)


class FolderWatcher:
    """Watches one folder recursively and calls `sink` with each Change, on the loop's thread."""

    def __init__(
        self,
        root: Path,
        mode: Literal["auto", "native", "polling"],
        sink: Callable[[Change], None],
        *,
        poll_interval: float = 5.0,
        health_interval: float = 2.0,
    ) -> None:
        self._root, self._requested, self._sink = root, mode, sink
        self._poll_interval, self._health_interval = poll_interval, health_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: BaseObserver | None = None
        self._identity: _Identity | None = None
        self._generation = 0  # events of an observer we replaced are dropped
        self._mode: Literal["native", "polling", "none"] = "none"
        self._reason = "not started"
        self._gone = False
        self._stopped = False
        self._overflow_pending = False
        self._hook = _OverflowHook(self._overflowed)
        self._health: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        """The observer in use: "native", "polling", or "none" (root missing, or stopped)."""
        return self._mode

    @property
    def reason(self) -> str:
        """Why that mode."""
        return self._reason

    async def start(self) -> None:
        """Start watching (in the running loop); a missing root is reported, not raised."""
        if self._loop is not None or self._stopped:
            raise RuntimeError("a FolderWatcher starts once")
        self._loop = asyncio.get_running_loop()
        self._attach_hook()
        identity = await asyncio.to_thread(_probe, self._root)
        if identity is None:
            self._emit_gone("folder missing or unreadable")
        elif not await self._start_observer(identity):
            self._emit_gone("folder could not be watched")
        self._health = self._loop.create_task(self._health_loop(), name=f"watch {self._root}")

    async def stop(self) -> None:
        """Stop the health task and the observer, joining its threads; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._health is not None:
            self._health.cancel()
            await asyncio.wait([self._health])
        for name in _OVERFLOW_LOGGERS:
            logging.getLogger(name).removeHandler(self._hook)
        await self._stop_observer()
        self._mode, self._reason = "none", "stopped"

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            try:
                await self._check_health()
            except Exception:  # the health task must outlive any one bad check
                _log.exception("watcher_health_failed", root=str(self._root))

    async def _check_health(self) -> None:
        # A stat on a hung NFS mount can block: never on the loop.
        identity = await asyncio.to_thread(_probe, self._root)
        if identity is None:
            await self._stop_observer()
            self._emit_gone("folder missing or unreadable")
        elif self._gone:
            if await self._start_observer(identity):
                self._gone = False
                _log.info("watcher_folder_back", root=str(self._root), mode=self._mode)
                self._sink(Change(ChangeKind.FOLDER_BACK, reason=f"watched again: {self._reason}"))
        elif identity != self._identity or not _is_alive(self._observer):
            moved = identity != self._identity
            reason = "folder replaced (remounted or recreated)" if moved else "observer restarted"
            _log.warning("watcher_restart", root=str(self._root), reason=reason)
            if await self._start_observer(identity):
                self._sink(Change(ChangeKind.RESCAN, reason=reason))
            else:
                self._emit_gone("observer could not be restarted")

    async def _start_observer(self, identity: _Identity) -> bool:
        """Replace any observer by a fresh one on the root; False if none could start."""
        await self._stop_observer()
        self._identity = identity
        mode, reason = choose_mode(self._requested, Path(identity[0]))
        return await self._launch(mode, reason, identity[0])

    async def _launch(self, mode: Mode, reason: str, real: str) -> bool:
        handler = _Bridge(self, self._generation, real)
        try:
            await _run_blocking(partial(self._spawn, mode, handler, real))
        except OSError as exc:
            if mode == "native":
                return await self._fall_back(exc, real)
            _log.warning("watcher_start_failed", root=str(self._root), error=str(exc))
            return False
        self._mode, self._reason = mode, reason
        return True

    async def _fall_back(self, exc: OSError, real: str) -> bool:
        """Native watching failed (inotify limits, mostly): poll instead, and say how to fix."""
        hint = _LIMIT_HINTS.get(exc.errno or 0, f"native watch failed ({exc})")
        _log.warning("watcher_fallback_polling", root=str(self._root), error=str(exc), hint=hint)
        if not await self._launch("polling", hint, real):
            return False
        self._sink(Change(ChangeKind.RESCAN, reason=hint))  # what inotify missed is unknown
        return True

    def _spawn(self, mode: Mode, handler: _Bridge, real: str) -> None:
        """Build, schedule and start an observer (blocking: polling takes a first snapshot)."""
        observer: BaseObserver = (
            PollingObserver(timeout=self._poll_interval) if mode == "polling" else Observer()
        )
        try:
            observer.schedule(handler, real, recursive=True, event_filter=_WANTED_EVENTS)
            observer.start()
        except BaseException:
            _shutdown(observer)
            raise
        self._observer = observer  # set here, so a cancelled caller cannot orphan it

    async def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        self._generation += 1
        if observer is not None:
            await _run_blocking(partial(_shutdown, observer))

    def _emit_gone(self, reason: str) -> None:
        """Report FOLDER_GONE once per outage; nothing else is reported until FOLDER_BACK."""
        if self._gone:
            return
        self._gone = True
        self._mode, self._reason = "none", reason
        _log.warning("watcher_folder_gone", root=str(self._root), reason=reason)
        self._sink(Change(ChangeKind.FOLDER_GONE, reason=reason))

    def _attach_hook(self) -> None:
        for name in _OVERFLOW_LOGGERS:
            logger = logging.getLogger(name)
            # A quiet root level (e.g. "error") would drop the warning before our handler.
            if not logger.isEnabledFor(logging.WARNING):
                logger.setLevel(logging.WARNING)
            logger.addHandler(self._hook)

    def _overflowed(self, path: bytes | None) -> None:
        """Any thread. Records without a path cannot be attributed: rescan to be safe."""
        identity = self._identity
        if self._mode != "native" or identity is None or self._overflow_pending:
            return
        if path is not None and path != os.fsencode(identity[0]):
            return
        # One overflow logs twice (inotify_c, then inotify); one RESCAN covers both. The
        # loop clears the flag before the sink runs, so no overflow goes uncovered.
        self._overflow_pending = True
        self._from_thread(None, _OVERFLOWED)

    def _from_thread(self, generation: int | None, change: Change) -> None:
        """Any thread: deliver `change` on the loop (None: whatever the generation)."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            self._loop.call_soon_threadsafe(self._deliver, generation, change)

    def _deliver(self, generation: int | None, change: Change) -> None:
        if change is _OVERFLOWED:
            self._overflow_pending = False
        if self._stopped or generation not in (None, self._generation):
            return
        if change.kind is ChangeKind.FOLDER_GONE:
            self._emit_gone(change.reason)
        elif not self._gone:
            self._sink(change)
