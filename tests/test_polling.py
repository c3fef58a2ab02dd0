"""Polling: snapshots and their differences on real files, and the paced emitter run by a real
watchdog observer. (FolderWatcher's polling mode, end to end, is in test_watcher.py.)"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog import events as ev

from syncd import polling
from syncd.polling import (
    POLL_DUTY,
    PollingEmitter,
    PollingObserver,
    Snapshot,
    poll_pause,
    snapshot_diff,
    take_snapshot,
)

# -- the pace ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "look", "duty", "expected"),
    [
        (5.0, 0.02, POLL_DUTY, 5.0),  # 1,000 files: the configured interval
        (5.0, 2.0, POLL_DUTY, 38.0),  # 100,000 files: looking is 5% of the time
        (0.01, 0.2, 0.5, 0.2),  # half the time looking: wait as long as a look took
        (5.0, 0.0, POLL_DUTY, 5.0),  # no look yet
    ],
)
def test_poll_pause(interval: float, look: float, duty: float, expected: float) -> None:
    assert poll_pause(interval, look, duty) == pytest.approx(expected)


# -- snapshots -----------------------------------------------------------------------------


def entry(path: Path, *, is_dir: bool = False) -> tuple[int, int, bool, int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino, is_dir, st.st_size, st.st_mtime_ns)


def test_snapshot_holds_every_entry_and_follows_links_to_files(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "a.jpg").write_bytes(b"aa")
    (tmp_path / "sub" / "deep" / "b.png").write_bytes(b"bbb")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "linked-dir").symlink_to(tmp_path / "sub")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere")
    snap = take_snapshot(str(tmp_path), True, {})
    assert snap[str(tmp_path / "a.jpg")] == entry(tmp_path / "a.jpg")
    assert snap[str(tmp_path / "sub")] == entry(tmp_path / "sub", is_dir=True)
    assert snap[str(tmp_path / "sub" / "deep" / "b.png")][3] == 3
    # A link counts by what it leads to: its target changing is a change at the link.
    assert snap[str(tmp_path / "link.jpg")] == entry(tmp_path / "a.jpg")
    # A symlinked directory is an entry, never descended (no loops, as in the scanner).
    assert snap[str(tmp_path / "linked-dir")][2] is False
    assert not any(p.startswith(str(tmp_path / "linked-dir") + os.sep) for p in snap)
    lst = (tmp_path / "dangling.jpg").lstat()
    assert snap[str(tmp_path / "dangling.jpg")][:2] == (lst.st_dev, lst.st_ino)
    assert len(snap) == 7
    flat = take_snapshot(str(tmp_path), False, {})
    assert str(tmp_path / "sub" / "deep") not in flat
    assert str(tmp_path / "sub") in flat


def test_snapshot_of_a_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        take_snapshot(str(tmp_path / "gone"), True, {})
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        take_snapshot(str(tmp_path / "file"), True, {})


def test_an_unlistable_directory_keeps_what_it_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    before = take_snapshot(str(tmp_path), True, {})
    real_scandir = os.scandir
    failure = errno.EACCES

    def scandir(path: str) -> object:  # root can list anything: the refusal is simulated
        if path == str(tmp_path / "locked"):
            raise OSError(failure, os.strerror(failure), path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    (tmp_path / "b.jpg").unlink()
    after = take_snapshot(str(tmp_path), True, before)
    assert str(tmp_path / "locked" / "a.jpg") in after  # not reported deleted
    assert str(tmp_path / "b.jpg") not in after  # the rest of the look is as it is
    assert snapshot_diff(before, after) == [ev.FileDeletedEvent(str(tmp_path / "b.jpg"))]
    failure = errno.ENOENT  # vanished between its parent's listing and its own
    assert str(tmp_path / "locked" / "a.jpg") not in take_snapshot(str(tmp_path), True, before)


# -- differences ---------------------------------------------------------------------------


def look(root: Path) -> Snapshot:
    return take_snapshot(str(root), True, {})


class Unstattable:
    """A directory entry whose stat fails, as a share may refuse one (root can stat anything)."""

    def __init__(self, real: os.DirEntry[str], failure: int) -> None:
        self._real = real
        self._failure = failure
        self.path = real.path

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._real.is_dir(follow_symlinks=follow_symlinks)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise OSError(self._failure, os.strerror(self._failure), self.path)


def test_an_entry_that_cannot_be_stated_keeps_what_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.jpg").write_bytes(b"x")
    (tmp_path / "c.jpg").write_bytes(b"x")
    before = take_snapshot(str(tmp_path), True, {})
    refused = {str(tmp_path / "a.jpg"), str(tmp_path / "d")}
    failure = errno.EACCES
    real_scandir = os.scandir

    @contextmanager
    def scandir(path: str) -> Iterator[list[object]]:
        with real_scandir(path) as entries:
            yield [Unstattable(e, failure) if e.path in refused else e for e in entries]

    monkeypatch.setattr(os, "scandir", scandir)
    (tmp_path / "c.jpg").unlink()
    after = take_snapshot(str(tmp_path), True, before)
    # The refused file and directory, and what the directory held, are as they were.
    assert snapshot_diff(before, after) == [ev.FileDeletedEvent(str(tmp_path / "c.jpg"))]
    assert str(tmp_path / "d" / "b.jpg") in after
    failure = errno.ENOENT  # vanished between the listing and the stat: gone
    assert sorted(take_snapshot(str(tmp_path), True, before)) == []


def test_diff_of_equal_snapshots_is_empty(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert snapshot_diff(look(tmp_path), look(tmp_path)) == []


def test_diff_reports_creations_deletions_and_modifications(tmp_path: Path) -> None:
    (tmp_path / "old.jpg").write_bytes(b"x")
    (tmp_path / "same.jpg").write_bytes(b"x")
    (tmp_path / "edit.jpg").write_bytes(b"x")
    (tmp_path / "gone-dir").mkdir()
    before = look(tmp_path)
    # Created before the deletions, so that no inode number is reused (see the next test).
    (tmp_path / "new.jpg").write_bytes(b"x")
    (tmp_path / "new-dir").mkdir()
    (tmp_path / "old.jpg").unlink()
    (tmp_path / "gone-dir").rmdir()
    (tmp_path / "edit.jpg").write_bytes(b"xy")
    p = str(tmp_path)
    assert snapshot_diff(before, look(tmp_path)) == [
        ev.DirDeletedEvent(f"{p}/gone-dir"),
        ev.FileDeletedEvent(f"{p}/old.jpg"),
        ev.DirCreatedEvent(f"{p}/new-dir"),
        ev.FileCreatedEvent(f"{p}/new.jpg"),
        ev.FileModifiedEvent(f"{p}/edit.jpg"),
    ]


def test_a_reused_inode_is_a_move_only_if_size_and_mtime_match_too() -> None:
    old: Snapshot = {"/r/old.jpg": (1, 42, False, 10, 100), "/r/d": (1, 7, True, 0, 5)}
    new: Snapshot = {"/r/new.jpg": (1, 42, False, 12, 300), "/r/e": (1, 7, True, 0, 9)}
    assert snapshot_diff(old, new) == [
        ev.DirDeletedEvent("/r/d"),
        ev.FileDeletedEvent("/r/old.jpg"),
        ev.DirCreatedEvent("/r/e"),
        ev.FileCreatedEvent("/r/new.jpg"),
    ]
    renamed: Snapshot = {"/r/new.jpg": (1, 42, False, 10, 100), "/r/e": (1, 7, True, 0, 5)}
    assert snapshot_diff(old, renamed) == [
        ev.DirMovedEvent("/r/d", "/r/e"),
        ev.FileMovedEvent("/r/old.jpg", "/r/new.jpg"),
    ]


def test_diff_reports_moves_by_inode_and_never_a_directory_modified(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "in.jpg").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "keep").mkdir()
    before = look(tmp_path)
    (tmp_path / "a.jpg").rename(tmp_path / "b.jpg")
    (tmp_path / "d").rename(tmp_path / "e")
    (tmp_path / "keep" / "new.jpg").write_bytes(b"x")  # changes the directory's mtime
    p = str(tmp_path)
    assert snapshot_diff(before, look(tmp_path)) == [
        ev.FileMovedEvent(f"{p}/a.jpg", f"{p}/b.jpg"),
        ev.DirMovedEvent(f"{p}/d", f"{p}/e"),
        ev.FileMovedEvent(f"{p}/d/in.jpg", f"{p}/e/in.jpg"),
        ev.FileCreatedEvent(f"{p}/keep/new.jpg"),
    ]


def test_diff_of_a_file_replaced_by_a_rename_over_it(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    before = look(tmp_path)
    (tmp_path / ".a.jpg.tmp").write_bytes(b"new")
    (tmp_path / ".a.jpg.tmp").replace(tmp_path / "a.jpg")  # an editor's safe save
    assert snapshot_diff(before, look(tmp_path)) == [ev.FileModifiedEvent(str(tmp_path / "a.jpg"))]


# -- the emitter ---------------------------------------------------------------------------


class Created(ev.FileSystemEventHandler):
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.seen = threading.Event()

    def on_created(self, event: ev.FileSystemEvent) -> None:
        self.paths.append(os.fsdecode(event.src_path))
        self.seen.set()


@contextmanager
def observing(root: Path, observer: PollingObserver, handler: Created) -> Iterator[PollingEmitter]:
    observer.schedule(handler, str(root), recursive=True)
    observer.start()  # takes the first look before returning
    try:
        [emitter] = observer.emitters
        assert isinstance(emitter, PollingEmitter)
        yield emitter
    finally:
        observer.stop()
        observer.join(timeout=5)
        assert not observer.is_alive()


SLOW_LOOK = 0.1


def test_slow_looks_stretch_the_wait_between_them(tmp_path: Path) -> None:
    looks: list[float] = []
    enough = threading.Event()

    def slow_look(root: str, recursive: bool, previous: Snapshot) -> Snapshot:
        looks.append(time.monotonic())
        if len(looks) >= 4:
            enough.set()
        time.sleep(SLOW_LOOK)
        return take_snapshot(root, recursive, previous)

    # Half the time looking: each wait is at least as long as the look before it, so looks
    # start at least 0.2 s apart. Unpaced, they would start 0.11 s apart (a look and the
    # 0.01 s interval).
    observer = PollingObserver(timeout=0.01, duty=0.5, look=slow_look)
    handler = Created()
    with observing(tmp_path, observer, handler):
        (tmp_path / "new.jpg").write_bytes(b"x")
        assert handler.seen.wait(timeout=10), "a file created while paced was never reported"
        assert enough.wait(timeout=10), f"only {len(looks)} looks"
    assert handler.paths == [str(tmp_path / "new.jpg")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(looks)]
    assert min(gaps) >= 2 * SLOW_LOOK - 0.005, gaps


class Events:
    """Stands in for the module's logger: records events, and says when one came."""

    def __init__(self) -> None:
        self.logged: list[dict[str, object]] = []
        self.came = threading.Event()

    def info(self, event: str, **fields: object) -> None:
        self.logged.append({"event": event, **fields})
        self.came.set()

    warning = info


def test_pace_is_logged_when_it_departs_from_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    looks = [0]

    def two_second_look(root: str, recursive: bool, previous: Snapshot) -> Snapshot:
        looks[0] += 1
        now[0] += 2.0
        return take_snapshot(root, recursive, previous)

    events = Events()
    monkeypatch.setattr(polling, "_log", events)
    observer = PollingObserver(timeout=5.0, clock=lambda: now[0], look=two_second_look)
    with observing(tmp_path, observer, Created()) as emitter:
        assert emitter.last_look == 2.0
        assert emitter.pause(5.0) == pytest.approx(38.0)
        assert events.came.wait(timeout=5)  # logged as its first wait begins
    assert events.logged == [
        {
            "event": "watcher_poll_paced",
            "root": str(tmp_path),
            "interval_seconds": 38.0,  # 2 s of looking is 5% of 40 s
            "look_seconds": 2.0,
            "configured_seconds": 5.0,
        }
    ]
    assert looks[0] == 1  # stopped during its 38 s wait: no second look


def test_a_quick_folder_keeps_the_configured_interval(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    handler = Created()
    # Each look takes 1 ms by this clock (26 ms would stretch a 0.5 s interval). The real
    # clock made this test fail whenever a loaded machine paused the thread mid-look.
    ticks = itertools.count()
    observer = PollingObserver(timeout=0.5, clock=lambda: next(ticks) / 1000)
    with capture_logs() as logs, observing(tmp_path, observer, handler) as em:
        assert em.last_look == pytest.approx(0.001)
        assert em.pause(0.5) == 0.5
        (tmp_path / "b.jpg").write_bytes(b"x")
        assert handler.seen.wait(timeout=5)
    assert handler.paths == [str(tmp_path / "b.jpg")]
    assert [e for e in logs if e["event"] == "watcher_poll_paced"] == []


def test_a_failing_look_keeps_the_last_one_and_reports_later(tmp_path: Path) -> None:
    failures = [0]

    def flaky_look(root: str, recursive: bool, previous: Snapshot) -> Snapshot:
        # The first two looks that would see the new file fail (a share's hiccup).
        if failures[0] < 2 and (Path(root) / "a.jpg").exists():
            failures[0] += 1
            raise OSError(errno.EIO, "Input/output error")
        return take_snapshot(root, recursive, previous)

    handler = Created()
    observer = PollingObserver(timeout=0.02, look=flaky_look)
    with capture_logs() as logs, observing(tmp_path, observer, handler):
        (tmp_path / "a.jpg").write_bytes(b"x")
        assert handler.seen.wait(timeout=5), "the file was lost with the failed looks"
    assert failures[0] == 2
    # Reported once, by the first look that worked; the failure logged once, not per look.
    assert handler.paths == [str(tmp_path / "a.jpg")]
    assert [e["event"] for e in logs].count("watcher_poll_failed") == 1
