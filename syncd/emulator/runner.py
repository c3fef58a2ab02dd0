"""Running the emulator: in a background thread for tests, or in the foreground for the CLI.

Both bind first and announce the real address only once the socket listens (port 0 picks a
free port), and both stop in stages: stop listening, let in-flight answers finish briefly,
then close.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ParamSpec, TypeVar

from aiohttp import web

from syncd.emulator.app import create_app
from syncd.emulator.config import EmulatorConfig
from syncd.emulator.state import EmulatorState

P = ParamSpec("P")
T = TypeVar("T")

# In-flight handlers (for example an injected latency) get this long at shutdown.
SHUTDOWN_SECONDS = 1.0
START_TIMEOUT_SECONDS = 30.0


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Serving:
    """A started emulator: its runner, its listening socket and the port it got."""

    runner: web.AppRunner
    sock: socket.socket
    port: int

    async def close(self) -> None:
        """Stop accepting, let just-accepted connections attach, then shut down.

        Python 3.11's asyncio leaks the transport of a connection accepted in the same loop
        turn as its server closes (an AssertionError in Server._attach, swallowed), which
        surfaces later as a ResourceWarning. So accepting stops first, and accepts already
        under way get two loop turns to attach before the server closes.
        """
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for _ in range(2):
            await asyncio.sleep(0)
        await self.runner.cleanup()


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_server(state: EmulatorState, host: str, port: int) -> Serving:
    """Bind and start serving; the caller must `close()` what it gets."""
    sock = _listen(host, port)
    runner = web.AppRunner(
        create_app(state), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS
    )
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    bound = int(sock.getsockname()[1])
    state.base_url = _url(host, bound)
    return Serving(runner, sock, bound)


class EmulatorThread:
    """The emulator on its own event loop in a background thread (a context manager).

    All state lives on that loop's thread; use `call` to read or change it from elsewhere.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.state = EmulatorState(config)
        self.host = host
        self.port = port
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, valid once started."""
        return _url(self.host, self.port)

    def start(self) -> None:
        """Start the thread and return once the socket listens (or raise why it could not)."""
        self._thread = threading.Thread(target=self._run, name="syncd-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("the emulator did not start in time")
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        """Stop serving, close every connection and join the thread."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            # The loop may close between the check and the call: it is stopping anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join()
        self._thread = None

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on the emulator's loop thread and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator is not running")
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the caller, who re-raises it
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=START_TIMEOUT_SECONDS)

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            serving = await start_server(self.state, self.host, self.port)
        except Exception as exc:  # reported to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self.port = serving.port
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await serving.close()


def run_emulator(host: str, port: int, config: EmulatorConfig | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (`syncd emulator`)."""
    asyncio.run(_serve_until_signal(host, port, config))


async def _serve_until_signal(host: str, port: int, config: EmulatorConfig | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)  # handlers only set a flag
    try:
        serving = await start_server(EmulatorState(config), host, port)
        try:
            print(f"emulator listening on {_url(host, serving.port)}", flush=True)
            await stop.wait()
        finally:
            await serving.close()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
