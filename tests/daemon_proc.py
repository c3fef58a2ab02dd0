"""The real daemon as a subprocess: its JSON log lines collected, conditions awaited."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class DaemonProc:
    """`syncd --config FILE` running in the background, as systemd would run it."""

    def __init__(self, config: Path, token: str, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        full_env.update({"SYNCD_ACCESS_TOKEN": token, "PYTHONWARNINGS": "error", **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            text=True,
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        self.events.append(json.loads(line))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_event(self, name: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        """Block until a log event with this name (and these fields) appears."""

        def found() -> dict[str, Any] | None:
            for event in self.events:
                if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        deadline = time.monotonic() + timeout
        with self._changed:
            while (hit := found()) is None:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {name} event {fields}; output:\n{self.output[-4000:]}"
                    )
                self._changed.wait(min(left, 0.5))
            return hit

    def count(self, name: str) -> int:
        with self._changed:
            return sum(1 for e in self.events if e.get("event") == name)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll a condition on the outside world (the emulator's state) until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
