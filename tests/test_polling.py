"""Paced polling: real watchdog polling emitters on real files in tmp_path."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog import events as ev
from watchdog.observers.api import BaseObserver

from syncd.polling import POLL_DUTY, PacedPollingEmitter, PacedPollingObserver, poll_pause

SLOW_STAT = 0.05  # seconds each stat takes in the slow-folder tests


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


class Created(ev.FileSystemEventHandler):
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.seen = threading.Event()

    def on_created(self, event: ev.FileSystemEvent) -> None:
        self.paths.append(os.fsdecode(event.src_path))
        self.seen.set()


@contextmanager
def observing(root: Path, observer: BaseObserver, handler: Created) -> Iterator[None]:
    observer.schedule(handler, str(root), recursive=True)
    observer.start()  # takes the first look before returning
    try:
        yield
    finally:
        observer.stop()
        observer.join(timeout=5)
        assert not observer.is_alive()


def slow_stat(
    looks: list[float], root: Path, enough: threading.Event
) -> Callable[[str], os.stat_result]:
    """os.stat taking SLOW_STAT seconds; notes when each look (a stat of the root) began,
    and sets `enough` at the fourth."""

    def stat(path: str) -> os.stat_result:
        if os.fsdecode(path) == str(root):
            looks.append(time.monotonic())
            if len(looks) >= 4:
                enough.set()
        time.sleep(SLOW_STAT)
        return os.stat(path)

    return stat


def test_slow_looks_stretch_the_wait_between_them(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    looks: list[float] = []
    enough = threading.Event()
    # Half the time looking: each wait is at least as long as the look before it, and a
    # look is four slow stats (the folder and three files), so looks start >= 0.4 s apart.
    # Unpaced, they would start 0.21 s apart (a look and the 0.01 s interval).
    observer = BaseObserver(
        PacedPollingEmitter, timeout=0.01, duty=0.5, stat=slow_stat(looks, tmp_path, enough)
    )
    handler = Created()
    with observing(tmp_path, observer, handler):
        (tmp_path / "new.jpg").write_bytes(b"x")
        assert handler.seen.wait(timeout=10), "a file created while paced was never reported"
        assert enough.wait(timeout=10), f"only {len(looks)} looks"
    assert str(tmp_path / "new.jpg") in handler.paths
    gaps = [later - earlier for earlier, later in itertools.pairwise(looks)]
    assert min(gaps) >= 8 * SLOW_STAT - 0.01, gaps


def test_pace_is_logged_when_it_departs_from_the_interval(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    now = [0.0]
    calls = [0]
    logged = threading.Event()

    def clock() -> float:
        # Two calls time the first look (at start); the emitter thread's next call comes
        # just after it has logged its pace, as its first wait begins.
        calls[0] += 1
        if calls[0] >= 3:
            logged.set()
        return now[0]

    def stat(path: str) -> os.stat_result:
        now[0] += 1.0  # a look at the folder and its one file "takes" 2 s
        return os.stat(path)

    observer = BaseObserver(PacedPollingEmitter, timeout=5.0, clock=clock, stat=stat)
    with capture_logs() as logs, observing(tmp_path, observer, Created()):
        [emitter] = observer.emitters
        assert isinstance(emitter, PacedPollingEmitter)
        assert emitter.last_look == 2.0
        assert logged.wait(timeout=5)
    [log] = logs
    assert log["event"] == "watcher_poll_paced"
    assert log["interval_seconds"] == 38.0  # 2 s of looking is 5% of 40 s
    assert log["look_seconds"] == 2.0
    assert log["configured_seconds"] == 5.0
    assert log["root"] == str(tmp_path)


def test_a_quick_folder_keeps_the_configured_interval(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    handler = Created()
    observer = PacedPollingObserver(timeout=0.05)
    with capture_logs() as logs, observing(tmp_path, observer, handler):
        [emitter] = observer.emitters
        assert isinstance(emitter, PacedPollingEmitter)
        assert emitter.pause(0.05) == 0.05  # a one-file look takes well under 2.5 ms
        (tmp_path / "b.jpg").write_bytes(b"x")
        assert handler.seen.wait(timeout=5)
    assert [e for e in logs if e["event"] == "watcher_poll_paced"] == []
