"""One account in the long-running daemon: watch, settle, upload, and delete after the grace.

Data flows one way: watcher -> settle tracker -> bounded work queue -> workers (channel ->
Graph) -> manifest. Full passes (start-up, rescans, lost events, SIGHUP) reuse the reconcile
engine; between them, file-system events are handled one path at a time: a settled file is
read, checked and hashed in one go (intake.py) and those very bytes are uploaded. The manifest
is the daemon's model of the folder: a deleted file's row goes, and when no row holds its
content any more the image's grace clock starts; the deletion sweep re-checks everything
before deleting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from syncd.config import AccountConfig
from syncd.engine import PassOptions, Runtime, policy_for, sync_account
from syncd.errors import ManifestError
from syncd.executor import READ_AHEAD_BYTES, PassReport, UploadContext
from syncd.graph import upload_name
from syncd.hashing import Hashed, read_error_reason
from syncd.intake import Intake, Verdict, take_in
from syncd.models import FileRecord, FileState, FolderState, LocalFile, display_path
from syncd.planner import AccountView, Deletion, Upload, failed_unchanged, plan_account
from syncd.scanner import Known, examine_paths, folder_state
from syncd.settle import SettleTracker
from syncd.watcher import Change, ChangeKind, FolderWatcher

log = structlog.get_logger("syncd.daemon")

QUEUE_FACTOR = 4  # work queue length per worker: enough to keep workers busy, bounded
SWEEP_RECHECK_SECONDS = 600.0  # images kept because a creative uses them are looked at again
# Deletion events arrive one file at a time (`rm -r` on a share, a folder being unmounted):
# the sweep waits for them to stop so the mass-deletion guard judges the whole burst at once.
SWEEP_QUIET_SECONDS = 1.0
ERROR_PAUSE_SECONDS = 5.0  # after an unexpected error in a loop, before its next iteration

_Ahead = tuple[str, asyncio.Task[Intake] | None]  # a claimed path and its read, if started


@dataclass(slots=True)
class Counters:
    """Running totals for STATUS=, metrics and the shutdown summary."""

    uploaded: int = 0
    deleted: int = 0
    failed: int = 0
    skipped: int = 0
    passes: int = 0
    last_complete_scan: float | None = None


class AccountDaemon:
    """Keeps one account's folder in sync until stopped."""

    def __init__(self, rt: Runtime, acct: AccountConfig, on_report: Callable[[PassReport], None]):
        self.rt = rt
        self.acct = acct
        self.account = acct.id
        self.counters = Counters()
        self.stopped_for_auth: str | None = None
        self._on_report = on_report
        sync = rt.config.sync
        self._settle = SettleTracker(sync.settle_seconds)
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=sync.workers * QUEUE_FACTOR)
        self._queued: dict[str, int] = {}  # queued paths and their size when they settled
        self._busy: set[str] = set()  # paths a worker is processing right now
        self._again: set[str] = set()  # ... that changed again meanwhile
        self._wake_settle = asyncio.Event()
        self._wake_sweep = asyncio.Event()
        self._rescan = asyncio.Event()
        self._dirty: set[str] = set()
        self._folder_ok = True
        self._last_gone = 0.0
        self._foreign: set[str] = set()  # images on the account syncd did not put there
        self._refused: set[str] = set()  # paths whose stat was refused (logged once)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._watcher = FolderWatcher(
            acct.folder, sync.observer, self._on_change, poll_interval=sync.poll_interval_seconds
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._pass_task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, first_scan_started: asyncio.Event) -> None:
        """Check the token, start watching, run the start-up pass, then follow events."""
        await self._watcher.start()
        if self._watcher.mode == "polling":
            # On a polled share a write is seen only at the next poll: settle across two.
            self._settle.settle_seconds = max(
                self.rt.config.sync.settle_seconds, 2 * self.rt.config.sync.poll_interval_seconds
            )
        log.info(
            "account_watching",
            account=self.account,
            folder=str(self.acct.folder),
            observer=self._watcher.mode,
            why=self._watcher.reason,
        )
        first_scan_started.set()
        self._rescan.set()
        spawn = asyncio.create_task
        self._pass_task = spawn(self._pass_loop())
        self._tasks = [spawn(self._settle_loop()), spawn(self._sweep_loop())]
        self._workers = [spawn(self._worker()) for _ in range(self.rt.config.sync.workers)]

    async def stop_intake(self) -> None:
        """Stage 1 of shutdown: no new events, no new passes, no new uploads or deletions."""
        self._stopping = True
        self.rt.executors[self.account].stopping = True
        self._rescan.set()  # wakes the pass loop so it sees the flag and ends
        await self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            self._queued.pop(self._queue.get_nowait(), None)

    async def drain(self) -> None:
        """Stage 2: wait for uploads in flight, live or in a pass (the caller bounds it)."""
        if self._pass_task is not None:
            await asyncio.wait([self._pass_task])
        await self._idle.wait()

    async def cancel(self) -> None:
        """Stage 3: cancel whatever is left (cancelled uploads stay pending, never failed)."""
        tasks = [*self._workers, *([self._pass_task] if self._pass_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def request_rescan(self) -> None:
        """SIGHUP, a lost-event signal or the timer: a full pass soon."""
        self._rescan.set()

    @property
    def queue_depth(self) -> int:
        """Files waiting to settle or to be uploaded."""
        return len(self._settle) + self._queue.qsize() + self._in_flight

    def oldest_pending_age(self) -> float:
        """Seconds the longest-waiting file has waited."""
        return self._settle.oldest_age(time.time())

    async def _guarded(self, stage: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run one iteration of a loop; an unexpected error (a full disk under the manifest,
        say) is logged and retried after a pause instead of silently ending the loop."""
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "account_stage_failed",
                account=self.account,
                stage=stage,
                error=type(exc).__name__,
                retry_in=ERROR_PAUSE_SECONDS,
            )
            await asyncio.sleep(ERROR_PAUSE_SECONDS)

    # -- events --------------------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        """Called on the loop thread for every watcher change; never blocks."""
        kind = change.kind
        if kind is ChangeKind.CHANGED:
            self._dirty.add(change.path)
            self._wake_settle.set()
        elif kind is ChangeKind.DELETED:
            self._forget_path(change.path)
        elif kind is ChangeKind.MOVED and change.dest is not None:
            self._move_path(change.path, change.dest)
        elif kind is ChangeKind.DIR_MOVED and change.dest is not None:
            self._move_dir(change.path, change.dest)
        elif kind is ChangeKind.DIR_CREATED:
            self._look_inside(change.path)
        elif kind is ChangeKind.DIR_DELETED:
            self._recheck_busy_under(change.path)
            for row in self.rt.manifest.files_under(self.account, change.path):
                self._forget_path(row.path)
        elif kind is ChangeKind.FOLDER_GONE:
            self._folder_ok = False
            log.error(
                "folder_unavailable",
                account=self.account,
                folder=str(self.acct.folder),
                reason=change.reason or "folder vanished; deletions paused",
            )
        elif kind in (ChangeKind.RESCAN, ChangeKind.FOLDER_BACK):
            if kind is ChangeKind.FOLDER_BACK:
                self._folder_ok = True
                log.info("folder_back", account=self.account, folder=str(self.acct.folder))
            self._rescan.set()

    def _forget_path(self, path: str) -> None:
        self._refused.discard(path)
        self._recheck_if_busy(path)
        self._settle.forget(path)
        row = self.rt.manifest.file(self.account, path)
        if row is None:
            return
        self.rt.manifest.forget_files(self.account, [path])
        self._content_maybe_gone(row.md5)

    def _content_maybe_gone(self, md5: str | None) -> None:
        if md5 is None or self.rt.manifest.paths_with_md5(self.account, md5):
            return
        image = self.rt.manifest.image_for_md5(self.account, md5)
        self._last_gone = time.monotonic()
        if image is not None and image.gone_since is None:
            self.rt.manifest.set_gone(self.account, [md5], time.time())
            log.info(
                "image_grace_started",
                account=self.account,
                hash=image.hash,
                grace_seconds=self.rt.config.sync.delete_grace_seconds,
            )
            self._wake_sweep.set()

    def _move_path(self, src: str, dest: str) -> None:
        self._recheck_if_busy(src)
        row = self.rt.manifest.file(self.account, src)
        self._settle.forget(src)
        if row is not None and row.state is FileState.SKIPPED:
            self.rt.manifest.forget_files(self.account, [src])
        elif row is not None:
            self.rt.manifest.move_files(self.account, [(row, dest)])
        # Either way dest is looked at: a known row is confirmed cheaply (size and mtime match,
        # nothing is read); no row ("x.jpg.part" renamed to "x.jpg") makes it a new file.
        self._dirty.add(dest)
        self._wake_settle.set()

    def _recheck_if_busy(self, path: str) -> None:
        """A file deleted or moved away while a worker uploads it: once that upload has
        written its row, the path is looked at again, so the row goes and the content's grace
        clock starts (the row would otherwise hold the content until the next full pass)."""
        if path in self._busy:
            self._again.add(path)

    def _recheck_busy_under(self, directory: str) -> None:
        prefix = directory + "/"
        for path in self._busy:
            if path.startswith(prefix):
                self._again.add(path)

    def _move_dir(self, src: str, dest: str) -> None:
        self._recheck_busy_under(src)
        rows = self.rt.manifest.files_under(self.account, src)
        moves = [(r, dest + r.path[len(src) :]) for r in rows]
        self.rt.manifest.move_files(self.account, moves)
        self._look_inside(dest)  # files the manifest did not know there, if any

    def _look_inside(self, directory: str) -> None:
        """A directory appeared (created, or moved in from outside, when the OS may send no
        event for its files): every file in it goes through settling like any new file."""
        task = asyncio.create_task(self._list_into_dirty(directory))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _list_into_dirty(self, directory: str) -> None:
        paths = await asyncio.to_thread(_files_under, str(self.acct.folder), directory)
        self._dirty.update(paths)
        self._wake_settle.set()

    # -- settling and uploading ----------------------------------------------------------

    async def _settle_loop(self) -> None:
        while True:
            deadline = self._settle.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_settle.wait(), timeout)
            self._wake_settle.clear()
            await self._guarded("settle", self._look_at_dirty)
            await self._guarded("settle", self._confirm_due)

    async def _look_at_dirty(self) -> None:
        if not self._dirty:
            return
        paths, self._dirty = list(self._dirty), set()
        stats = await asyncio.to_thread(_stat_all, str(self.acct.folder), paths)
        now = time.time()
        for path, stat in zip(paths, stats, strict=True):
            if stat is None:
                self._forget_path(path)
            elif isinstance(stat, str):
                # Refused (permissions, a share's ESTALE or EIO), not gone: its row, if any,
                # keeps holding its content; the next event or rescan looks again.
                if path not in self._refused:  # said once, not at every event
                    self._refused.add(path)
                    log.warning(
                        "file_unreadable",
                        account=self.account,
                        path=display_path(path),
                        reason=stat,
                    )
            else:
                self._refused.discard(path)
                self._settle.touch(path, now, stat)

    async def _confirm_due(self) -> None:
        due = self._settle.due(time.time())
        if not due:
            return
        stats = await asyncio.to_thread(_stat_all, str(self.acct.folder), due)
        now = time.time()
        for path, got in zip(due, stats, strict=True):
            # Refused now (a str): not settled; the next event or rescan brings it back.
            stat = None if isinstance(got, str) else got
            if self._settle.confirm(path, stat, now) and path not in self._queued:
                self._queued[path] = stat[0] if stat is not None else 0
                await self._queue.put(path)  # bounded: a burst waits here, memory stays flat

    async def _worker(self) -> None:
        """Take settled files one at a time; the next one is claimed and read while this one's
        upload is on the wire (`_take_next`)."""
        ahead: _Ahead | None = None
        try:
            while True:
                if ahead is not None:
                    (path, read), ahead = ahead, None
                else:
                    path, read = await self._queue.get(), None
                    self._queued.pop(path, None)
                    if not self._claim(path):
                        continue
                if self._stopping:  # shutting down: nothing new starts
                    self._release(path, read)
                    continue
                ahead = self._take_next()
                await self._handle(path, read)
        finally:
            if ahead is not None:
                self._release(*ahead)

    def _claim(self, path: str) -> bool:
        """Mark a queued path as this worker's; False when another worker has it."""
        if path in self._busy:
            # Changed again while another worker uploads its earlier content: look again
            # once that is recorded, so the replaced content's grace clock starts.
            self._again.add(path)
            return False
        self._busy.add(path)
        self._in_flight += 1
        self._idle.clear()
        return True

    def _take_next(self) -> _Ahead | None:
        """Claim the next queued file now and start reading it, so that read (a hop to a
        worker thread and back) overlaps the upload in flight instead of delaying its own.
        A file over READ_AHEAD_BYTES is claimed but read when its turn comes: memory stays at
        one such file per worker."""
        while not self._queue.empty():
            path = self._queue.get_nowait()
            size = self._queued.pop(path, None)
            if not self._claim(path):
                continue
            if size is None or size > READ_AHEAD_BYTES or self.stopped_for_auth:
                return path, None
            try:
                known = _known(self.rt.manifest.file(self.account, path))
            except ManifestError:
                return path, None  # read in its turn, where the error is logged for the file
            return path, asyncio.create_task(take_in(str(self.acct.folder), path, known))
        return None

    def _release(self, path: str, read: asyncio.Task[Intake] | None) -> None:
        """Give up a claimed file unprocessed (shutdown): its read, if any, is dropped."""
        if read is not None:
            read.cancel()
        self._done_with(path)

    async def _handle(self, path: str, read: asyncio.Task[Intake] | None) -> None:
        try:
            await self._process(path, read)
        except asyncio.CancelledError:
            if read is not None:
                read.cancel()
            raise
        except Exception as exc:  # one bad file must never stop the worker
            log.exception(
                "file_processing_error",
                account=self.account,
                path=display_path(path),
                error=type(exc).__name__,
            )
        finally:
            self._done_with(path)

    def _done_with(self, path: str) -> None:
        self._busy.discard(path)
        if path in self._again:
            self._again.discard(path)
            self._dirty.add(path)
            self._wake_settle.set()
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def _process(self, path: str, read: asyncio.Task[Intake] | None = None) -> None:
        """One settled file: upload, link or skip it. `read` is its intake already under way
        (read ahead); the manifest row is read now either way, since it is what the outcome
        is recorded against."""
        if self.stopped_for_auth:
            if read is not None:
                read.cancel()
            return
        row = self.rt.manifest.file(self.account, path)
        known = _known(row)
        got = await (read if read is not None else take_in(str(self.acct.folder), path, known))
        if got.verdict is Verdict.ASK_SCANNER:
            await self._examine(path, row, known)
            return
        report = PassReport(self.account)
        if got.verdict is Verdict.UNSETTLED:
            self._dirty.add(path)
            self._wake_settle.set()
        elif got.file is not None and got.verdict is Verdict.SKIPPED:
            self._record_skip(row, path, got.reason, got.file.size, got.file.mtime_ns)
        elif got.file is not None and not failed_unchanged(row, got.file):
            await self._upload_or_link(got.file, row, report, got.content)
        self._absorb(report)

    async def _examine(self, path: str, row: FileRecord | None, known: Known | None) -> None:
        """The scanner's full rules for one path the fast path (`take_in`) left to them."""
        now = time.time()
        stat = (await asyncio.to_thread(_stat_all, str(self.acct.folder), [path]))[0]
        if isinstance(stat, tuple) and stat[1] / 1e9 >= now:
            # Stamped in the future (a camera set a year ahead, a link to such a file): the
            # scanner's mtime rule would wait for the clock. The settle tracker has just seen
            # the file unchanged, which is the rule here, as in take_in: "now" goes past it.
            now = stat[1] / 1e9 + 1
        scan = await examine_paths(
            self.acct.folder, [path], {path: known} if known else {}, now=now
        )
        report = PassReport(self.account)
        for skip in scan.skips:
            self._record_skip(row, skip.path, skip.reason, skip.size, skip.mtime_ns)
        for f in scan.files:
            if not failed_unchanged(row, f):
                await self._upload_or_link(f, row, report)
        for err in scan.errors:
            self._record_unreadable(row, err.path, err.reason, err.size, err.mtime_ns)
        for unsure in scan.unsettled:
            self._dirty.add(unsure)
            self._wake_settle.set()
        self._absorb(report)

    async def _upload_or_link(
        self,
        f: LocalFile,
        row: FileRecord | None,
        report: PassReport,
        content: Hashed | None = None,
    ) -> None:
        """`content`: the file's bytes when they were just read and hashed (sent, not re-read)."""
        executor = self.rt.executors[self.account]
        up = Upload(f.md5, (f,), upload_name(f.path))
        # Content whose image was already on the account at the last full pass is adopted,
        # as reconcile does: syncd did not create that image and never deletes it.
        ctx = UploadContext(root=self.acct.folder, preexisting=self._foreign, intent_md5s=set())
        await executor.upload_one(up, ctx, report, content)
        if row is not None and row.md5 and row.md5 != f.md5:
            self._content_maybe_gone(row.md5)  # the file was overwritten with new content

    def _record_skip(
        self, row: FileRecord | None, path: str, reason: str, size: int, mtime: int
    ) -> None:
        if row is not None and row.state is FileState.SKIPPED and row.last_error == reason:
            return
        record = FileRecord(self.account, path, size, mtime, None, FileState.SKIPPED, None, reason)
        self.rt.manifest.record_files([record])
        self.counters.skipped += 1
        log.info("file_skipped", account=self.account, path=display_path(path), reason=reason)
        if row is not None:
            self._content_maybe_gone(row.md5)

    def _record_unreadable(
        self, row: FileRecord | None, path: str, reason: str, size: int, mtime: int
    ) -> None:
        """Pending with the reason (status shows it); the next event or rescan retries it."""
        if row is not None and (row.state is FileState.SYNCED or row.last_error == reason):
            return
        md5 = row.md5 if row else None
        record = FileRecord(self.account, path, size, mtime, md5, FileState.PENDING, None, reason)
        self.rt.manifest.record_files([record])
        log.warning("file_unreadable", account=self.account, path=display_path(path), reason=reason)

    def _absorb(self, report: PassReport) -> None:
        self.counters.uploaded += report.uploaded
        self.counters.deleted += report.deleted
        self.counters.failed += len(report.failed) + len(report.delete_failed)
        if report.auth_failed and not self.stopped_for_auth:
            self.stopped_for_auth = report.auth_failed
            log.error("account_stopped", account=self.account, reason=report.auth_failed)
        self._on_report(report)

    # -- full passes and deletions -------------------------------------------------------

    async def _pass_loop(self) -> None:
        interval = self.rt.config.sync.rescan_interval_seconds
        while not self.stopped_for_auth and not self._stopping:
            timeout = interval * random.uniform(0.9, 1.1)  # jitter: accounts do not align
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rescan.wait(), timeout)
            if self._stopping:
                return
            self._rescan.clear()
            await self._guarded("full_pass", self._full_pass)

    async def _full_pass(self) -> None:
        state = await asyncio.to_thread(folder_state, self.acct.folder)
        if state is not FolderState.OK:
            if self._folder_ok:
                log.error(
                    "folder_unavailable",
                    account=self.account,
                    folder=str(self.acct.folder),
                    state=state.value,
                )
            self._folder_ok = False
            return
        self._folder_ok = True
        opts = PassOptions(wait_for_settle=False)
        result = await sync_account(self.rt, self.acct, opts)
        if result.foreign is not None:
            self._foreign = result.foreign
        self.counters.passes += 1
        self._absorb(result.report)
        if result.report.folder_error is None and not result.report.auth_failed:
            self.counters.last_complete_scan = time.time()
        for path in result.report.changed:
            self._dirty.add(path)
        for path in result.unsettled:
            self._dirty.add(path)
        self._wake_settle.set()
        self._wake_sweep.set()
        log.info(
            "scan_complete",
            account=self.account,
            uploaded=result.report.uploaded,
            deleted=result.report.deleted,
            waiting_grace=result.report.waiting,
        )

    async def _sweep_loop(self) -> None:
        while not self.stopped_for_auth:
            timeout = self._next_sweep_in()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_sweep.wait(), timeout)
            self._wake_sweep.clear()
            # A debounce on a timestamp the event handlers move: sleeping is the point here.
            while (quiet := time.monotonic() - self._last_gone) < SWEEP_QUIET_SECONDS:  # noqa: ASYNC110
                await asyncio.sleep(SWEEP_QUIET_SECONDS - quiet)
            await self._guarded("deletion_sweep", self._sweep)

    def _next_sweep_in(self) -> float:
        """Until the next image comes due; images already due but kept (in use, or withheld
        by the guard) are looked at again every SWEEP_RECHECK_SECONDS, not in a hot loop."""
        grace = self.rt.config.sync.delete_grace_seconds
        now = time.time()
        start = self.rt.manifest.earliest_gone(self.account, after=now - grace)
        if start is None:
            return SWEEP_RECHECK_SECONDS
        return max(0.01, min(SWEEP_RECHECK_SECONDS, start + grace - now))

    async def _sweep(self) -> None:
        """Delete images whose grace has run out, with the same rules as reconcile."""
        if not self._folder_ok or self.rt.manifest.earliest_gone(self.account) is None:
            return  # nothing is waiting for deletion: no need to plan over every row
        state = await asyncio.to_thread(folder_state, self.acct.folder)
        if state is not FolderState.OK:
            return
        view = self._manifest_view(state)
        plan = plan_account(view, policy_for(self.rt.config, allow_mass_delete=False))
        self.rt.manifest.set_gone(self.account, plan.cancel_grace, None)
        if plan.guard and (plan.waiting or plan.deletions or _has_due(view)):
            log.error("deletions_withheld", account=self.account, reason=plan.guard)
            return
        if not plan.deletions:
            return
        report = PassReport(self.account)
        await self.rt.executors[self.account].delete_due(plan.deletions, report, self._still_gone)
        self._absorb(report)

    def _manifest_view(self, state: FolderState) -> AccountView:
        """The folder as the manifest knows it: what the deletion rules are applied to."""
        files = self.rt.manifest.files(self.account)
        local = [
            LocalFile(r.path, r.size, r.mtime_ns, r.md5)
            for r in files.values()
            if r.md5 and r.state is not FileState.SKIPPED
        ]
        return AccountView(
            account=self.account,
            folder_state=state,
            local=local,
            files=files,
            images=self.rt.manifest.images(self.account),
            now=time.time(),
        )

    def _still_gone(self, d: Deletion) -> bool:
        """Right before a DELETE: no file holds the content, none is about to."""
        return not any(self.rt.manifest.paths_with_md5(self.account, m) for m in d.md5s)


def _known(row: FileRecord | None) -> Known | None:
    """What the intake may trust of a file's manifest row (its MD5, for the same size and mtime)."""
    return Known(row.size, row.mtime_ns, row.md5) if row and row.md5 else None


def _has_due(view: AccountView) -> bool:
    return any(i.gone_since is not None for i in view.images)


def _files_under(root: str, directory: str) -> list[str]:
    """Relative paths of the files (and links) below `directory`, for settling."""
    found: list[str] = []
    for here, dirs, files in os.walk(os.path.join(root, directory)):
        rel = os.path.relpath(here, root).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(prefix + name for name in files)
    return found


def _stat_all(root: str, paths: list[str]) -> list[tuple[int, int] | str | None]:
    """(size, mtime_ns) of each path; None for one that is gone, why for one that is refused."""
    out: list[tuple[int, int] | str | None] = []
    for path in paths:
        try:
            st = os.stat(os.path.join(root, path))
        except OSError as exc:
            gone = isinstance(exc, FileNotFoundError | NotADirectoryError)
            out.append(None if gone else read_error_reason(exc))
            continue
        out.append((st.st_size, st.st_mtime_ns))
    return out
