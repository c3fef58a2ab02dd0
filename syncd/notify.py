"""systemd's notify protocol (`sd_notify`), with the standard library only.

Under `Type=notify` systemd hands the service a datagram socket in `NOTIFY_SOCKET` and waits
for `READY=1` before it counts the service as started; `STATUS=` is what `systemctl status`
shows, `STOPPING=1` announces the drain, and with `WatchdogSec=` set it expects `WATCHDOG=1`
at least every `WATCHDOG_USEC` microseconds or it kills and restarts the service.

Nothing here ever raises at the caller: a daemon must not die because its supervisor went
away, and outside systemd (a terminal, the tests, `--reconcile`) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Ping at half the watchdog period, as sd_watchdog_enabled(3) advises: one late ping (a slow
# scan step, a GC pause) must not be mistaken for a hung daemon.
_WATCHDOG_FRACTION = 0.5


def _socket_address(raw: str | None) -> str | None:
    """The address to send to: a filesystem path, or `@name` as Linux's abstract `\\0name`."""
    if not raw:
        return None
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # systemd also speaks vsock ("vsock:CID:PORT"), used only for whole VMs: not for us.
    log.debug("notify_socket_unsupported")
    return None


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC as a positive integer, when it is meant for this very process."""
    # systemd sets WATCHDOG_PID so that a child that inherited the environment does not
    # think the watchdog is its own (sd_watchdog_enabled(3) checks it the same way).
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.strip() != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """Sends notify messages to systemd; every method is a harmless no-op without it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = _watchdog_usec(env, os.getpid())
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when systemd (or a test) gave us a socket to notify."""
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send `lines` as one datagram ("A=1\\nB=2"); True when it went out, never raises."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            sock = self._socket()
            sock.sendto(payload, self._address)
        except OSError as exc:
            # The supervisor being gone or busy is not the daemon's failure: log and go on.
            log.debug("notify_failed: %s", exc.strerror or type(exc).__name__)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        """Tell systemd the service is up (and optionally what it is doing)."""
        if status is None:
            self.send("READY=1")
        else:
            self.send("READY=1", _status_line(status))

    def status(self, text: str) -> None:
        """Set the one-line status `systemctl status` shows."""
        self.send(_status_line(text))

    def stopping(self) -> None:
        """Tell systemd a stop has begun (the drain), so it shows "deactivating"."""
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """Keep-alive ping for `WatchdogSec=`."""
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC); None when no watchdog is ours."""
        if self._watchdog_usec is None or self._address is None:
            return None
        return self._watchdog_usec / 1_000_000 * _WATCHDOG_FRACTION

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Non-blocking: a full queue at systemd's end must not stall the event loop; the
            # send fails (EAGAIN, an OSError) and the next status or ping tries again.
            sock.setblocking(False)
            self._sock = sock
        return self._sock


def _status_line(text: str) -> str:
    """STATUS= takes one line: a newline would start a new (bogus) assignment."""
    return "STATUS=" + " ".join(text.splitlines()).strip()


async def ping_watchdog(notifier: Notifier, stop: asyncio.Event) -> None:
    """Send WATCHDOG=1 every `watchdog_interval()` until `stop` is set.

    The pings come from the event loop itself, not a thread: if the loop hangs, the pings
    stop and systemd restarts the service, which is the whole point of the watchdog.
    Returns at once when there is no watchdog to feed.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while not stop.is_set():
        notifier.watchdog()
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            continue
