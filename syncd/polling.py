"""Polling for folders that send no events (network shares): cheap looks, paced.

watchdog's polling emitter keeps an `os.stat_result` per entry (86 MB for 100,000 files) and
compares two snapshots path by path through method calls, whether anything changed or not:
a look at 100,000 files cost about 3 s of CPU (1.6 s to take the snapshot, 1.3 s to compare),
and at the default 5 s interval the daemon spent 37.5% of a core on it for as long as it ran.
Here a snapshot holds five integers per entry, two snapshots that are equal (nearly every
look) are found so in one dictionary comparison, and only a changed look is compared entry
by entry. The events are watchdog's own, so the watcher's bridge takes them as it takes
inotify's.

The wait after a look also stretches so that looking takes at most `POLL_DUTY` of the time:
small folders are looked at every `poll_interval_seconds`, a very large share less often,
and over NFS or SMB the file server is spared a constant stream of stats. Nothing is missed
either way: every look is compared with the one before.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from watchdog import events as ev
from watchdog.observers.api import BaseObserver, EventEmitter

_log = structlog.get_logger("syncd.watcher")

POLL_DUTY = 0.05  # looking at the folder takes at most this share of the time
_VANISHED = (errno.ENOENT, errno.ENOTDIR)

# One entry as a look sees it: (st_dev, st_ino, is a directory, st_size, st_mtime_ns). A
# symlink counts by what it leads to (a link to a file that changes has changed), but a
# symlinked directory is not descended, as the scanner never follows one.
Entry = tuple[int, int, bool, int, int]
Snapshot = dict[str, Entry]  # by absolute path; the root itself is not in it
Look = Callable[[str, bool, Snapshot], Snapshot]


def poll_pause(interval: float, last_look: float, duty: float = POLL_DUTY) -> float:
    """Seconds to wait before the next look: at least `interval`, and long enough that a look
    as long as the last one takes at most `duty` of the time."""
    return max(interval, last_look * (1 - duty) / duty)


def take_snapshot(root: str, recursive: bool, previous: Snapshot) -> Snapshot:
    """Every entry under `root`.

    Raises FileNotFoundError or NotADirectoryError when `root` is gone, and OSError when it
    cannot be listed. What cannot be looked at below it (a directory that cannot be listed,
    an entry that cannot be stat'ed: permissions, a share's hiccup) keeps what `previous`
    held there: it must not look deleted, which would start its content's way to deletion.
    """
    snapshot: Snapshot = {}
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                found = [_entry(e) for e in entries]
        except OSError as exc:
            if directory == root:
                raise
            if exc.errno not in _VANISHED:
                _keep_under(snapshot, previous, directory)
            continue
        for path, entry in found:
            if entry is _GONE:
                continue  # gone between the listing and its stat
            if entry is _UNKNOWN:
                if (last := previous.get(path)) is not None:
                    snapshot[path] = last
                    if last[2]:
                        _keep_under(snapshot, previous, path)
                continue
            snapshot[path] = entry
            if entry[2] and recursive:
                stack.append(path)
    return snapshot


def _keep_under(snapshot: Snapshot, previous: Snapshot, directory: str) -> None:
    prefix = directory + os.sep
    snapshot.update((p, e) for p, e in previous.items() if p.startswith(prefix))


# What `_entry` says of an entry it could not stat: gone (ENOENT) or not known this time.
_GONE: Entry = (-1, -1, False, -1, -1)
_UNKNOWN: Entry = (-2, -2, False, -2, -2)


def _entry(dirent: os.DirEntry[str]) -> tuple[str, Entry]:
    try:
        is_dir = dirent.is_dir(follow_symlinks=False)
        try:
            st = dirent.stat()
        except OSError:
            st = dirent.stat(follow_symlinks=False)  # a dangling link: the link itself
    except OSError as exc:
        return dirent.path, _GONE if exc.errno in _VANISHED else _UNKNOWN
    return dirent.path, (st.st_dev, st.st_ino, is_dir, st.st_size, st.st_mtime_ns)


def snapshot_diff(old: Snapshot, new: Snapshot) -> list[ev.FileSystemEvent]:
    """The events that take `old` to `new`: moves, then deletions, creations and modifications.

    A move is an entry gone from one path that turns up unchanged at a new one: the same
    inode, size and mtime, which a rename keeps. The inode alone is not enough: a deleted
    file's inode number is soon reused, and the daemon takes a moved file's record along and
    checks the new path by size and mtime only. A directory renamed while its entries changed
    is a deletion and a creation, and its files still come as moves one by one. A directory's
    own mtime and size change with its entries, so it is never reported as modified.
    """
    if old == new:
        return []
    gone = old.keys() - new.keys()
    came = new.keys() - old.keys()
    arrived = {new[p]: p for p in came}
    events: list[ev.FileSystemEvent] = []
    for path in sorted(gone):
        dest = arrived.pop(old[path], None)
        if dest is None:
            continue
        gone.discard(path)
        came.discard(dest)
        moved = ev.DirMovedEvent if old[path][2] else ev.FileMovedEvent
        events.append(moved(path, dest))
    events.extend(_simple(sorted(gone), old, ev.DirDeletedEvent, ev.FileDeletedEvent))
    events.extend(_simple(sorted(came), new, ev.DirCreatedEvent, ev.FileCreatedEvent))
    changed = sorted(p for p in old.keys() & new.keys() if old[p] != new[p] and not new[p][2])
    events.extend(ev.FileModifiedEvent(p) for p in changed)
    return events


def _simple(
    paths: Iterable[str],
    snapshot: Snapshot,
    for_dir: type[ev.FileSystemEvent],
    for_file: type[ev.FileSystemEvent],
) -> Iterable[ev.FileSystemEvent]:
    return ((for_dir if snapshot[p][2] else for_file)(p) for p in paths)


class PollingEmitter(EventEmitter):
    """Looks at the watched folder every `poll_pause`, and queues what changed between looks."""

    def __init__(
        self,
        *args: Any,
        duty: float = POLL_DUTY,
        clock: Callable[[], float] = time.monotonic,
        look: Look = take_snapshot,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._duty, self._clock, self._look = duty, clock, look
        self._snapshot: Snapshot = {}
        self.last_look = 0.0  # seconds the latest look took (the first: at start)
        self._paced = False
        self._failing = False

    def pause(self, interval: float) -> float:
        """The wait before the next look (see `poll_pause`)."""
        return poll_pause(interval, self.last_look, self._duty)

    def on_thread_start(self) -> None:
        # The first look, which later ones are compared with, before the thread starts (as
        # watchdog's emitter does): a root that cannot be listed fails the start.
        self._snapshot = self._timed_look()

    def queue_events(self, timeout: float) -> None:
        pause = self.pause(timeout)
        self._note_pace(timeout, pause)
        if self.stopped_event.wait(pause):
            return
        try:
            snapshot = self._timed_look()
        except (FileNotFoundError, NotADirectoryError):
            self.queue_event(ev.DirDeletedEvent(self.watch.path))
            self.stop()
            return
        except OSError as exc:
            # A share briefly unreachable (EIO, ESTALE): keep the last look and try again,
            # so what changes meanwhile is still reported once it answers.
            if not self._failing:
                self._failing = True
                _log.warning("watcher_poll_failed", root=self.watch.path, error=str(exc))
            return
        self._failing = False
        for event in snapshot_diff(self._snapshot, snapshot):
            self.queue_event(event)
        self._snapshot = snapshot

    def _timed_look(self) -> Snapshot:
        started = self._clock()
        try:
            return self._look(self.watch.path, self.watch.is_recursive, self._snapshot)
        finally:
            self.last_look = self._clock() - started

    def _note_pace(self, interval: float, pause: float) -> None:
        """Say so when the pace departs from the configured interval, and when it is back."""
        paced = pause > interval
        if paced != self._paced:
            self._paced = paced
            _log.info(
                "watcher_poll_paced" if paced else "watcher_poll_unpaced",
                root=self.watch.path,
                interval_seconds=round(pause, 1),
                look_seconds=round(self.last_look, 2),
                configured_seconds=interval,
            )


class PollingObserver(BaseObserver):
    """An observer whose emitters poll (`PollingEmitter`)."""

    def __init__(self, *, timeout: float, **emitter_options: Any) -> None:
        super().__init__(PollingEmitter, timeout=timeout, **emitter_options)
