"""sd_notify over a real AF_UNIX datagram socket, standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.notify import Notifier, ping_watchdog


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket, as systemd's notify socket, and its path."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)  # a safety net only: every datagram is sent before recv is called
    with sock:
        yield sock, path


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_stopping_watchdog_arrive(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("scanning 2 folders")
    assert receive(sock) == "READY=1\nSTATUS=scanning 2 folders"
    notifier.ready()
    assert receive(sock) == "READY=1"
    notifier.status("queue 3\nuploaded 5")
    assert receive(sock) == "STATUS=queue 3 uploaded 5"
    notifier.stopping()
    assert receive(sock) == "STOPPING=1"
    notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    notifier.close()
    notifier.close()  # twice is harmless
    assert notifier.send("A=1", "B=2")  # a new socket after close
    assert receive(sock) == "A=1\nB=2"
    notifier.close()


def test_abstract_socket_name() -> None:
    name = f"syncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("READY=1")
        assert receive(sock) == "READY=1"
        notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.send("READY=1")
    notifier.ready("x")
    notifier.status("x")
    notifier.stopping()
    notifier.watchdog()
    assert notifier.watchdog_interval() is None
    notifier.close()


@pytest.mark.parametrize("raw", ["", "@", "relative/path", "vsock:2:1234"])
def test_unusable_socket_addresses_disable(raw: str) -> None:
    assert not Notifier({"NOTIFY_SOCKET": raw}).enabled


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "x.sock"))
    assert Notifier().enabled
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled


def test_send_to_a_missing_socket_returns_false(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-here.sock")})
    assert notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.ready("still fine")  # must not raise either
    notifier.close()


def test_send_to_a_closed_listener_returns_false(tmp_path: Path) -> None:
    path = str(tmp_path / "gone.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.send("READY=1") is False
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "expected"),
    [("60000000", 30.0), ("100000", 0.05), ("1", 0.0000005)],
)
def test_watchdog_interval_is_half_the_period(usec: str, expected: float) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval() == pytest.approx(expected)


@pytest.mark.parametrize("usec", ["", "0", "-5", "abc", "1.5"])
def test_watchdog_interval_invalid(usec: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval() is None


def test_watchdog_pid_must_be_ours() -> None:
    base = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000"}
    ours = Notifier({**base, "WATCHDOG_PID": str(os.getpid())})
    assert ours.watchdog_interval() == pytest.approx(1.0)
    theirs = Notifier({**base, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert theirs.watchdog_interval() is None


def test_watchdog_needs_a_socket() -> None:
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval() is None


@pytest.mark.asyncio
async def test_ping_watchdog_pings_until_stopped(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    stop = asyncio.Event()
    task = asyncio.create_task(ping_watchdog(notifier, stop))
    async with asyncio.timeout(10):
        pings = [(await loop.sock_recv(sock, 4096)).decode() for _ in range(3)]
    assert pings == ["WATCHDOG=1"] * 3
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    # A ping may have gone out between the third receive and stop.set(); nothing else did.
    leftovers = []
    while True:
        try:
            leftovers.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert set(leftovers) <= {"WATCHDOG=1"}
    assert len(leftovers) <= 1
    notifier.close()


@pytest.mark.asyncio
async def test_ping_watchdog_returns_at_once_without_watchdog() -> None:
    stop = asyncio.Event()  # never set: the call must return by itself
    await asyncio.wait_for(ping_watchdog(Notifier({}), stop), timeout=10)
    await asyncio.wait_for(ping_watchdog(Notifier({"NOTIFY_SOCKET": "/run/x"}), stop), timeout=10)
