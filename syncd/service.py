"""The daemon's lifecycle: start-up, signals, systemd notifications, staged shutdown.

Signal handlers only set flags (uvicorn's way). Shutdown is staged: stop intake (watchers,
passes, queues), drain in-flight uploads for at most `drain_seconds`, cancel what is left
(a cancelled upload is pending, not failed: its intent makes the next start converge), close
the session and the manifest, log one summary line, exit 0. A second SIGINT skips the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterable

import structlog
from aiohttp import web

from syncd.channel import AccountChannel
from syncd.config import Config
from syncd.daemon import AccountDaemon
from syncd.engine import Runtime
from syncd.executor import PassReport
from syncd.metrics import Metrics, reason_label, standard_metrics, start_metrics_server
from syncd.notify import Notifier, ping_watchdog
from syncd.reconcile import EXIT_AUTH, EXIT_OK
from syncd.secrets import Secrets

log = structlog.get_logger("syncd.service")

STATUS_EVERY = 5.0  # seconds between STATUS= updates to systemd
EXIT_FORCED = 130


class Service:
    """Runs every account's daemon until a signal says stop."""

    def __init__(self, config: Config, secrets: Secrets, notifier: Notifier | None = None) -> None:
        self.config = config
        self.secrets = secrets
        self.notifier = notifier or Notifier()
        self.metrics = standard_metrics()
        self.accounts: list[AccountDaemon] = []
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._started = time.monotonic()

    def request_stop(self, signame: str = "signal") -> None:
        """First SIGTERM/SIGINT: graceful stop; a second SIGINT: skip the drain."""
        if self._stop.is_set():
            log.warning("forced_stop", signal=signame)
            self._force.set()
            return
        log.info("stopping", signal=signame, drain_seconds=self.config.sync.drain_seconds)
        self._stop.set()

    def request_rescan(self) -> None:
        """SIGHUP: rescan every folder now."""
        log.info("rescan_requested", reason="SIGHUP")
        for account in self.accounts:
            account.request_rescan()

    async def run(self) -> int:
        """Run until stopped; the exit code follows the contract."""
        self._install_signals()
        async with Runtime.open(self.config, self.secrets) as rt:
            runner = await self._start_metrics()
            try:
                return await self._serve(rt)
            finally:
                if runner is not None:
                    await runner.cleanup()
                self.notifier.close()

    async def _serve(self, rt: Runtime) -> int:
        first_scans = []
        for acct in self.config.accounts:
            daemon = AccountDaemon(rt, acct, self._on_report)
            self.accounts.append(daemon)
            started = asyncio.Event()
            first_scans.append(started)
            await daemon.start(started)
        await asyncio.gather(*(e.wait() for e in first_scans))
        self.notifier.ready(self._status_text())
        log.info("daemon_ready", accounts=len(self.accounts))
        self._register_gauges(rt)
        helpers = [
            asyncio.create_task(ping_watchdog(self.notifier, self._stop)),
            asyncio.create_task(self._status_loop()),
        ]
        await self._wait_for_stop()
        self.notifier.stopping()
        forced = await self._shutdown()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        self._log_summary(forced)
        if forced:
            return EXIT_FORCED
        if self.accounts and all(a.stopped_for_auth for a in self.accounts):
            return EXIT_AUTH
        return EXIT_OK

    async def _wait_for_stop(self) -> None:
        while not self._stop.is_set():
            if self.accounts and all(a.stopped_for_auth for a in self.accounts):
                log.error("all_accounts_stopped", reason="every account's token was refused")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    async def _shutdown(self) -> bool:
        """Stop intake, drain (bounded), cancel. True if the drain was cut short."""
        await asyncio.gather(*(a.stop_intake() for a in self.accounts))
        drain: asyncio.Future[object] = asyncio.ensure_future(self._drain_all())
        force: asyncio.Future[object] = asyncio.ensure_future(self._force.wait())
        await asyncio.wait(
            [drain, force],
            timeout=self.config.sync.drain_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        drained = drain.done() and not drain.cancelled()
        force.cancel()
        if not drained:
            drain.cancel()
            log.warning("drain_cut_short", in_flight=sum(a.queue_depth for a in self.accounts))
        await asyncio.gather(*(a.cancel() for a in self.accounts))
        return self._force.is_set()

    async def _drain_all(self) -> None:
        await asyncio.gather(*(a.drain() for a in self.accounts))

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.request_rescan)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY)
            self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        queued = sum(a.queue_depth for a in self.accounts)
        up = sum(a.counters.uploaded for a in self.accounts)
        deleted = sum(a.counters.deleted for a in self.accounts)
        failed = sum(a.counters.failed for a in self.accounts)
        return f"{queued} queued, {up} uploaded, {deleted} deleted, {failed} failed"

    def _on_report(self, report: PassReport) -> None:
        m, labels = self.metrics, {"account": report.account}
        if report.uploaded:
            m.inc("uploads", report.uploaded, **labels)
            m.inc("upload_bytes", report.uploaded_bytes, **labels)
        if report.deleted:
            m.inc("deletions", report.deleted, **labels)
        for _, reason in [*report.failed, *report.delete_failed]:
            m.inc("failures", 1, reason=reason_label(reason), **labels)

    def _register_gauges(self, rt: Runtime) -> None:
        m: Metrics = self.metrics
        accts = self.accounts
        m.gauge(
            "queue_depth",
            "Files waiting to settle or upload",
            lambda: [({}, float(sum(a.queue_depth for a in accts)))],
        )
        m.gauge(
            "oldest_pending_age_seconds",
            "Age of the oldest pending file",
            lambda: [({}, max((a.oldest_pending_age() for a in accts), default=0.0))],
        )
        m.gauge(
            "tokens_available",
            "Tokens in each account's bucket",
            lambda: _per(rt, lambda c: c.bucket.tokens),
        )
        m.gauge(
            "throttled_seconds",
            "Seconds each account spent paused",
            lambda: _per(rt, lambda c: c.bucket.throttled_seconds),
        )
        m.gauge(
            "last_complete_scan_timestamp_seconds",
            "When each folder was last fully scanned",
            lambda: [({"account": a.account}, a.counters.last_complete_scan or 0.0) for a in accts],
        )

    async def _start_metrics(self) -> web.AppRunner | None:
        listen = self.config.metrics.listen
        if listen is None:
            return None
        runner = await start_metrics_server(self.metrics, listen)
        log.info("metrics_listening", listen=listen)
        return runner

    def _log_summary(self, forced: bool) -> None:
        log.info(
            "daemon_stopped",
            forced=forced,
            uptime_seconds=round(time.monotonic() - self._started, 1),
            uploaded=sum(a.counters.uploaded for a in self.accounts),
            deleted=sum(a.counters.deleted for a in self.accounts),
            failed=sum(a.counters.failed for a in self.accounts),
            skipped=sum(a.counters.skipped for a in self.accounts),
        )


def _per(
    rt: Runtime, read: Callable[[AccountChannel], float]
) -> Iterable[tuple[dict[str, str], float]]:
    return [({"account": a}, float(read(c))) for a, c in rt.channels.items()]


def run_daemon(config: Config, secrets: Secrets) -> int:
    """`syncd --config FILE`: run in the foreground until SIGTERM/SIGINT."""
    return asyncio.run(Service(config, secrets).run())
