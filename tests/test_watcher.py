"""The folder watcher with real watchdog observers on real files in tmp_path."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from watchdog import events as ev
from watchdog.observers import Observer
from watchdog.observers.api import EventEmitter
from watchdog.observers.inotify_c import InotifyFD
from watchdog.utils import BaseThread

from syncd import watcher
from syncd.watcher import Change, ChangeKind, FolderWatcher

# watchdog's inotify reader warns when `mkdir -p` races its recursive watch setup (it
# re-registers a watch it already has: harmless); here warnings are errors, which would kill
# that thread.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id .* already exists:RuntimeWarning")
C = ChangeKind
MODES = ["native", "polling"]
MOUNTINFO = "\n".join(
    [
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
        "35 22 0:40 / /srv/share rw,relatime shared:20 - nfs4 nas:/export rw,vers=4.2",
        r"36 22 0:41 / /mnt/My\040Ads rw - cifs //nas/My\040Ads rw",
        "40 22 0:45 / /home/u/remote rw,nosuid shared:30 master:2 - fuse.sshfs u@h:/ rw",
        "41 22 0:46 / /srv/share/local rw - xfs /dev/sdb1 rw",
        "42 35 0:47 / /srv/share rw - ext4 /dev/sdc1 rw",  # stacked: the later one wins
        "garbage line",
    ]
)


class Recorder:
    """The sink: records changes and the thread each arrived on."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        self.seen: list[Change] = []
        self.threads: set[int] = set()

    def __call__(self, change: Change) -> None:
        self.threads.add(threading.get_ident())
        self.queue.put_nowait(change)

    async def wait_for(self, kind: ChangeKind, path: str = "", dest: str | None = None) -> Change:
        """The first change (seen before or arriving within 5 s) matching kind, path, dest."""

        def match(c: Change) -> bool:
            return c.kind is kind and c.path == path and (dest is None or c.dest == dest)

        try:
            async with asyncio.timeout(5):
                while not any(match(c) for c in self.seen):
                    self.seen.append(await self.queue.get())
        except TimeoutError:
            raise AssertionError(f"no {kind} {path!r} -> {dest!r}; saw {self.seen}") from None
        return next(c for c in self.seen if match(c))

    def count(self, kind: ChangeKind) -> int:
        while not self.queue.empty():
            self.seen.append(self.queue.get_nowait())
        return sum(c.kind is kind for c in self.seen)


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, BaseThread)]


@asynccontextmanager
async def watching(root: Path, mode: Any) -> AsyncIterator[tuple[FolderWatcher, Recorder]]:
    """A started watcher with fast polling and health checks, stopped (and checked) after."""
    rec = Recorder()
    w = FolderWatcher(root, mode, rec, poll_interval=0.1, health_interval=0.1)
    await w.start()
    try:
        yield w, rec
    finally:
        await w.stop()
    assert rec.threads <= {threading.get_ident()}  # the sink only ever ran on the loop
    assert watchdog_threads() == []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_file_created_renamed_deleted(root: Path, mode: str) -> None:
    async with watching(root, mode) as (w, rec):
        assert w.mode == mode
        (root / "a.jpg").write_bytes(b"x")
        await rec.wait_for(C.CHANGED, "a.jpg")
        (root / "a.jpg").rename(root / "b.jpg")
        await rec.wait_for(C.MOVED, "a.jpg", "b.jpg")
        (root / "b.jpg").unlink()
        await rec.wait_for(C.DELETED, "b.jpg")


@pytest.mark.asyncio
async def test_reading_files_reaches_no_handler(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # syncd reads every file it uploads: with inotify reporting opens and closes, each read
    # came back through watchdog's threads as events, only to be dropped.
    seen: list[ev.FileSystemEvent] = []
    real = watcher.change_from_event

    def counting(event: ev.FileSystemEvent, at: str) -> Change | None:
        seen.append(event)
        return real(event, at)

    monkeypatch.setattr(watcher, "change_from_event", counting)
    (root / "a.jpg").write_bytes(b"x")
    async with watching(root, "native") as (_, rec):
        for _ in range(20):
            (root / "a.jpg").read_bytes()
        (root / "b.jpg").write_bytes(b"y")  # a write still arrives, after the reads
        await rec.wait_for(C.CHANGED, "b.jpg")
    assert {os.path.basename(os.fsdecode(e.src_path)) for e in seen} == {"b.jpg"}
    assert not [e for e in seen if isinstance(e, ev.FileOpenedEvent | ev.FileClosedNoWriteEvent)]


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_undecodable_name_survives(root: Path, mode: str) -> None:
    async with watching(root, mode) as (_, rec):
        with open(os.path.join(os.fsencode(root), b"\xff.jpg"), "wb") as f:
            f.write(b"x")
        await rec.wait_for(C.CHANGED, "\udcff.jpg")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_file_in_new_deep_directory(root: Path, mode: str) -> None:
    async with watching(root, mode) as (_, rec):
        (root / "a" / "b" / "c").mkdir(parents=True)
        (root / "a" / "b" / "c" / "x.jpg").write_bytes(b"x")
        await rec.wait_for(C.CHANGED, "a/b/c/x.jpg")
        await rec.wait_for(C.DIR_CREATED, "a")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_directory_moved_in_from_outside(root: Path, mode: str) -> None:
    batch = root.parent / "outside" / "batch"
    batch.mkdir()
    (batch / "x.jpg").write_bytes(b"x")
    async with watching(root, mode) as (_, rec):
        batch.rename(root / "batch")
        await rec.wait_for(C.DIR_CREATED, "batch")
        await rec.wait_for(C.CHANGED, "batch/x.jpg")  # synthetic (native) or polled: both kept


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_directory_renamed_inside(root: Path, mode: str) -> None:
    (root / "old" / "sub").mkdir(parents=True)
    (root / "old" / "sub" / "x.jpg").write_bytes(b"x")
    async with watching(root, mode) as (_, rec):
        (root / "old").rename(root / "new")
        await rec.wait_for(C.DIR_MOVED, "old", "new")
        # Both modes also report what moved inside (inotify: synthetic sub-events).
        await rec.wait_for(C.MOVED, "old/sub/x.jpg", "new/sub/x.jpg")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_file_moved_out_is_deleted(root: Path, mode: str) -> None:
    (root / "x.jpg").write_bytes(b"x")
    (root / "d").mkdir()
    async with watching(root, mode) as (_, rec):
        (root / "x.jpg").rename(root.parent / "outside" / "x.jpg")
        (root / "d").rename(root.parent / "outside" / "d")
        await rec.wait_for(C.DELETED, "x.jpg")
        await rec.wait_for(C.DIR_DELETED, "d")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_root_removed_then_back(root: Path, mode: str) -> None:
    async with watching(root, mode) as (w, rec):
        shutil.rmtree(root)
        await rec.wait_for(C.FOLDER_GONE)
        assert w.mode == "none"
        await asyncio.sleep(0.5)  # several health checks while gone: not for correctness
        root.mkdir()
        await rec.wait_for(C.FOLDER_BACK)
        assert w.mode == mode
        (root / "again.jpg").write_bytes(b"x")
        await rec.wait_for(C.CHANGED, "again.jpg")
        assert rec.count(C.FOLDER_GONE) == 1


@pytest.mark.asyncio
async def test_missing_root_reported_once_then_watched(tmp_path: Path) -> None:
    root = tmp_path / "share"
    async with watching(root, "auto") as (w, rec):
        await rec.wait_for(C.FOLDER_GONE)
        assert w.mode == "none"
        root.mkdir()
        await rec.wait_for(C.FOLDER_BACK)
        assert w.mode in ("native", "polling")
        (root / "a.jpg").write_bytes(b"x")
        await rec.wait_for(C.CHANGED, "a.jpg")
        assert rec.count(C.FOLDER_GONE) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mode", "victim"),
    [("native", EventEmitter), ("polling", EventEmitter), ("native", InotifyFD)],
)
async def test_dead_observer_is_restarted_with_rescan(
    root: Path, mode: str, victim: type[BaseThread]
) -> None:
    async with watching(root, mode) as (_, rec):
        for thread in threading.enumerate():
            if isinstance(thread, victim):
                thread.stop()  # as if it had died
        change = await rec.wait_for(C.RESCAN)
        assert change.reason == "observer restarted"
        (root / "later.jpg").write_bytes(b"x")
        await rec.wait_for(C.CHANGED, "later.jpg")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_root_replaced_under_a_symlink(tmp_path: Path, mode: str) -> None:
    """A retargeted symlink stands in for a remount: the old watches are stale."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "share"
    link.symlink_to(tmp_path / "a")
    async with watching(link, mode) as (_, rec):
        (tmp_path / "a" / "one.jpg").write_bytes(b"x")
        await rec.wait_for(C.CHANGED, "one.jpg")  # events relative to the link, not its target
        (tmp_path / "next").symlink_to(tmp_path / "b")
        (tmp_path / "next").replace(link)
        change = await rec.wait_for(C.RESCAN)
        assert change.reason.startswith("folder replaced")
        (tmp_path / "b" / "two.jpg").write_bytes(b"x")
        await rec.wait_for(C.CHANGED, "two.jpg")


def test_filesystem_type_from_mountinfo() -> None:
    def fstype(path: str) -> str | None:
        return watcher.filesystem_type(Path(path), MOUNTINFO)

    assert fstype("/srv/share/ads/acme") == "ext4"  # the stacked mount hides nfs4
    assert fstype("/srv/share/local/x") == "xfs"
    assert fstype("/mnt/My Ads/acme") == "cifs"
    assert fstype("/mnt/My Adsx") == "ext4"  # a prefix, but not of a path component
    assert fstype("/home/u/remote") == "fuse.sshfs"
    assert fstype("/") == "ext4"
    assert watcher.filesystem_type(Path("/x"), "") is None


@pytest.mark.parametrize(
    ("fstype", "expected"),
    [
        ("nfs4", "polling"),
        ("cifs", "polling"),
        ("smb3", "polling"),
        ("fuse.sshfs", "polling"),
        ("fuseblk", "polling"),
        ("ext4", "native"),
        ("overlay", "native"),
        ("tmpfs", "native"),
    ],
)
def test_auto_mode_from_filesystem(fstype: str, expected: str) -> None:
    text = f"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:9 / /data rw - {fstype} src rw\n"
    mode, reason = watcher.choose_mode("auto", Path("/data/ads"), text)
    assert (mode, reason.split(" ")[0]) == (expected, fstype)
    assert watcher.choose_mode("native", Path("/data"), text)[0] == "native"


@pytest.mark.asyncio
@pytest.mark.parametrize(("fstype", "expected"), [("nfs4", "polling"), ("ext4", "native")])
async def test_auto_watcher_uses_mountinfo(
    root: Path, monkeypatch: pytest.MonkeyPatch, fstype: str, expected: str
) -> None:
    escaped = os.path.realpath(root).replace(" ", r"\040")
    text = f"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:9 / {escaped} rw - {fstype} s rw\n"
    monkeypatch.setattr(watcher, "_read_mountinfo", lambda: text)
    async with watching(root, "auto") as (w, rec):
        assert w.mode == expected
        assert w.reason.startswith(f"{fstype} is a ")
        (root / "a.jpg").write_bytes(b"x")
        await rec.wait_for(C.CHANGED, "a.jpg")


def _enospc(*args: object, **kwargs: object) -> Any:
    raise OSError(errno.ENOSPC, "inotify watch limit reached")


def _emfile(*args: object, **kwargs: object) -> Any:
    raise OSError(errno.EMFILE, "inotify instance limit reached")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("target", "name", "fail", "limit"),
    [
        (Observer, "schedule", _enospc, "max_user_watches"),
        (watcher, "Observer", _emfile, "max_user_instances"),
    ],
)
async def test_inotify_limits_fall_back_to_polling(
    root: Path, monkeypatch: pytest.MonkeyPatch, target: object, name: str, fail: Any, limit: str
) -> None:
    monkeypatch.setattr(target, name, fail)
    with capture_logs() as logs:
        async with watching(root, "native") as (w, rec):
            assert w.mode == "polling"
            assert limit in w.reason
            assert limit in (await rec.wait_for(C.RESCAN)).reason
            (root / "a.jpg").write_bytes(b"x")
            await rec.wait_for(C.CHANGED, "a.jpg")
    [log] = [e for e in logs if e["event"] == "watcher_fallback_polling"]
    assert log["log_level"] == "warning"
    assert f"fs.inotify.{limit}" in log["hint"]


@pytest.mark.asyncio
async def test_queue_overflow_log_becomes_rescan(root: Path) -> None:
    inotify = logging.getLogger("watchdog.observers.inotify")
    inotify_c = logging.getLogger("watchdog.observers.inotify_c")
    handlers = (list(inotify.handlers), list(inotify_c.handlers))
    rootlog = logging.getLogger()
    level = rootlog.level
    rootlog.setLevel(logging.ERROR)  # a quiet configuration must not hide the signal
    try:
        async with watching(root, "native") as (_, rec):
            msg = "Inotify queue overflowed; reconciling recursive watches below %r"
            inotify.warning(msg, b"/somewhere/else")  # another watcher's overflow
            inotify.warning("Unable to rebuild recursive inotify watches below %r", b"/x")
            (root / "a.jpg").write_bytes(b"x")
            await rec.wait_for(C.CHANGED, "a.jpg")
            assert rec.count(C.RESCAN) == 0
            inotify_c.warning("Inotify queue overflowed; filesystem events were lost")
            inotify.warning(msg, os.fsencode(os.path.realpath(root)))
            change = await rec.wait_for(C.RESCAN)
            assert change.reason == "inotify queue overflowed"
    finally:
        rootlog.setLevel(level)
    assert (list(inotify.handlers), list(inotify_c.handlers)) == handlers


@pytest.mark.asyncio
async def test_stop_is_idempotent_and_joins_threads(root: Path) -> None:
    never_started = FolderWatcher(root, "native", Recorder())
    await never_started.stop()
    rec = Recorder()
    w = FolderWatcher(root, "native", rec, health_interval=0.1)
    await w.start()
    assert watchdog_threads()
    await w.stop()
    await w.stop()
    assert watchdog_threads() == []
    assert w.mode == "none"
    (root / "late.jpg").write_bytes(b"x")
    assert rec.count(C.CHANGED) == 0
    with pytest.raises(RuntimeError):
        await w.start()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ev.FileCreatedEvent("/r/a.jpg"), Change(C.CHANGED, "a.jpg")),
        (ev.FileClosedEvent(b"/r/d/a.jpg"), Change(C.CHANGED, "d/a.jpg")),
        (ev.FileAttribEvent("/r/a.jpg"), Change(C.CHANGED, "a.jpg")),
        (ev.FileOpenedEvent("/r/a.jpg"), None),
        (ev.FileClosedNoWriteEvent("/r/a.jpg"), None),
        (ev.DirModifiedEvent("/r/d"), None),
        (ev.FileCreatedEvent("/rx/a.jpg"), None),  # outside, though a string prefix
        (ev.FileCreatedEvent(b"/r/\xff.jpg"), Change(C.CHANGED, "\udcff.jpg")),
        (ev.DirDeletedEvent("/r"), Change(C.FOLDER_GONE, reason="folder deleted")),
        (ev.FileMovedEvent("/r/a", "/r/b"), Change(C.MOVED, "a", "b")),
        (ev.FileMovedEvent("/r/a", "/elsewhere/a"), Change(C.DELETED, "a")),
        (ev.FileMovedEvent("/elsewhere/a", "/r/a"), Change(C.CHANGED, "a")),
        (ev.FileMovedEvent("", "/r/a"), Change(C.CHANGED, "a")),
        (ev.DirMovedEvent("/r/a", "/r/b", is_synthetic=True), Change(C.DIR_MOVED, "a", "b")),
        (ev.DirMovedEvent("/r/a", ""), Change(C.DIR_DELETED, "a")),
        (ev.DirMovedEvent("/e/a", "/r/a"), Change(C.DIR_CREATED, "a")),
        (ev.FileMovedEvent("/e/a", "/e/b"), None),
    ],
)
def test_change_from_event(event: ev.FileSystemEvent, expected: Change | None) -> None:
    assert watcher.change_from_event(event, "/r") == expected
