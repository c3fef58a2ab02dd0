"""Polling that paces itself: a poll may take at most a set share of the time.

watchdog's polling observer looks at the whole tree every `poll_interval_seconds`, however
long a look takes. One look at 100,000 files takes about 2 s (a walk, a stat per file and a
comparison of two snapshots, all in Python), so at 5 s the daemon spent 37.5% of a core on
it, for as long as it ran; over NFS or SMB each look also costs the file server 100,000
stats. Here the wait after a look is stretched so that looking takes at most `POLL_DUTY` of
the time: small folders are still polled every `poll_interval_seconds` (1,000 files take
20 ms), and a 100,000-file share is looked at about every 40 s instead of pinning a core.
Nothing is missed either way: every look compares against the one before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingEmitter

_log = structlog.get_logger("syncd.watcher")

POLL_DUTY = 0.05  # looking at the folder takes at most this share of the time


def poll_pause(interval: float, last_look: float, duty: float = POLL_DUTY) -> float:
    """Seconds to wait before the next look: at least `interval`, and long enough that a look
    as long as the last one takes at most `duty` of the time."""
    return max(interval, last_look * (1 - duty) / duty)


class PacedPollingEmitter(PollingEmitter):
    """watchdog's polling emitter, waiting `poll_pause` between looks instead of `timeout`."""

    def __init__(
        self,
        *args: Any,
        duty: float = POLL_DUTY,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._duty, self._clock = duty, clock
        self.last_look = 0.0  # seconds the latest look took (the first: at start)
        self._paced = False

    def pause(self, interval: float) -> float:
        """The wait before the next look (see `poll_pause`)."""
        return poll_pause(interval, self.last_look, self._duty)

    def on_thread_start(self) -> None:
        started = self._clock()
        super().on_thread_start()  # the first look, which later ones are compared with
        self.last_look = self._clock() - started

    def queue_events(self, timeout: float) -> None:
        pause = self.pause(timeout)
        self._note_pace(timeout, pause)
        started = self._clock()
        super().queue_events(pause)  # waits `pause` (or until stopped), then looks
        if not self.stopped_event.is_set():
            self.last_look = max(0.0, self._clock() - started - pause)

    def _note_pace(self, interval: float, pause: float) -> None:
        """Say so when the pace changes from the configured interval, and back."""
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


class PacedPollingObserver(BaseObserver):
    """A polling observer whose emitters pace themselves (`PacedPollingEmitter`)."""

    def __init__(self, *, timeout: float, duty: float = POLL_DUTY) -> None:
        super().__init__(PacedPollingEmitter, timeout=timeout, duty=duty)
