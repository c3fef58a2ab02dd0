"""syncd as a subprocess: its JSON events as they come, its CPU time and its peak RSS.

Peak RSS is the process's VmHWM (/proc/PID/status), sampled every 20 ms until it exits.
`ru_maxrss` from wait4 or RUSAGE_CHILDREN cannot be used: Linux carries the parent's
high-water mark into the child across fork/vfork and exec, so a child of this (large)
benchmark process would report this process's peak, not its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from syncd.bench.world import child_env

Event = dict[str, Any]
SAMPLE_SECONDS = 0.02
ARRIVED = "_arrived"  # added to each event: when this process read it (time.monotonic)
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Exit:
    """How a process ended and what it cost."""

    code: int
    wall: float  # seconds from spawn to exit
    maxrss_mb: float  # peak VmHWM seen by the sampler
    cpu: float  # user + system seconds (wait4 rusage: CPU time is not inherited)
    events: list[Event] = field(default_factory=list)


def event_time(event: Event) -> float:
    """The event's own timestamp (wall clock, ISO 8601 UTC) as epoch seconds."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


class SyncdProcess:
    """`python -m syncd ARGS` with its stdout read line by line in a thread."""

    def __init__(self, args: Sequence[str], *, cwd: Path | None = None) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "syncd", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            cwd=cwd,
        )
        self.pid = self.proc.pid
        self.events: list[Event] = []
        self.other_lines: list[str] = []
        self._cond = threading.Condition()
        self._exit: Exit | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.peak_mb = 0.0
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while self._exit is None:
            try:
                self.peak_mb = max(self.peak_mb, self.memory_mb()[1])
            except (OSError, ValueError):
                return  # gone (a zombie has no memory lines; a reaped pid has no file)
            time.sleep(SAMPLE_SECONDS)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            try:
                event = json.loads(line) if line.startswith("{") else None
            except ValueError:
                event = None
            with self._cond:
                if isinstance(event, dict):
                    event[ARRIVED] = time.monotonic()
                    self.events.append(event)
                else:
                    self.other_lines.append(line)
                self._cond.notify_all()

    def _wait(self) -> None:
        _, status, usage = os.wait4(self.pid, 0)
        ended = time.monotonic()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        with self._cond:
            self._exit = Exit(
                self.proc.returncode,
                ended - self.started,
                0.0,  # set from the sampler once it has stopped
                usage.ru_utime + usage.ru_stime,
            )
            self._cond.notify_all()

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Block until `check()` holds (re-checked on each new line), or raise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0 or (self._exit is not None and not self._reader.is_alive()):
                    tail = "".join(self.other_lines[-20:])[-2000:]
                    raise RuntimeError(f"syncd: no {what} after {timeout:.0f}s\n{tail}")
                self._cond.wait(min(left, 0.5))

    def wait_event(self, name: str, timeout: float, **fields: Any) -> Event:
        """The first event with this name (and these field values), waiting for it."""
        found: list[Event] = []

        def check() -> bool:
            found[:] = [e for e in self.events if _matches(e, name, fields)][:1]
            return bool(found)

        self.wait_for(check, timeout, f"{name} event")
        return found[0]

    def count(self, name: str) -> int:
        """How many events with this name so far."""
        with self._cond:
            return sum(1 for e in self.events if e.get("event") == name)

    def named(self, name: str) -> list[Event]:
        """The events with this name so far."""
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, every thread included (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) now, in MB: the resident set and its peak so far."""
        values: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)

    def finish(self, timeout: float) -> Exit:
        """Wait for the process to exit by itself (killed after `timeout`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._exit is not None, timeout)
        if self._exit is None:
            self.proc.send_signal(signal.SIGKILL)
            self._waiter.join()
            self._reader.join(5)
            raise RuntimeError(f"syncd did not finish within {timeout:.0f}s (killed)")
        self._reader.join(10)
        self._sampler.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._exit.maxrss_mb = self.peak_mb
        self._exit.events = list(self.events)
        return self._exit

    def stop(self, timeout: float = 60.0) -> Exit:
        """SIGTERM (the graceful stop), then wait for the exit."""
        if self._exit is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout)


def _matches(event: Event, name: str, fields: dict[str, Any]) -> bool:
    return event.get("event") == name and all(event.get(k) == v for k, v in fields.items())


def reconcile(config: Path, timeout: float) -> Exit:
    """`syncd --config FILE --reconcile` to its end."""
    return SyncdProcess(["--config", str(config), "--reconcile"]).finish(timeout)


def run_module(who: str, args: Sequence[str], *, timeout: float) -> tuple[float, str]:
    """`python -m ARGS` (a benchmark's peer or bare baseline) in syncd's environment.

    Returns the seconds from spawn to exit and what it printed; raises, naming `who`, if it
    failed.
    """
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the {who} failed: {done.stderr[-2000:]}")
    return wall, done.stdout
