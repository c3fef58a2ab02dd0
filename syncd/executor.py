"""Carries out one account's plan: manifest updates, uploads, then deletions.

Uploads run `workers` at a time. The bytes uploaded are the bytes hashed: each upload re-reads
the file (or takes the bytes its caller read and hashed in one go) and compares their MD5 with
the plan's; a file changed since the scan is left for the next pass instead. Every POST is
bracketed by an intent in the manifest (see manifest.py). Deletions re-read each image's
creatives first and delete only what nothing uses.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from structlog.typing import FilteringBoundLogger

from syncd.channel import AccountChannel
from syncd.errors import AuthError, GraphError, ManifestError, PermanentError
from syncd.filters import MAX_IMAGE_BYTES
from syncd.hashing import FileTooLargeError, Hashed, read_and_hash
from syncd.manifest import Manifest
from syncd.models import (
    FileRecord,
    FileState,
    ImageOrigin,
    ImageRecord,
    UploadIntent,
    display_path,
)
from syncd.planner import Deletion, Plan, Upload, confirm_deletions, synced_record

log = structlog.get_logger("syncd.executor")

Clock = Callable[[], float]

# Files up to this size are read while the upload before them is on the wire (upload_all).
READ_AHEAD_BYTES = 1 << 20

_Read = Hashed | str  # a file's bytes and their MD5, or why it cannot be read now


@dataclass(slots=True)
class PassReport:
    """What one pass did for one account; the CLI, status and metrics read it."""

    account: str
    uploaded: int = 0
    adopted: int = 0
    uploaded_bytes: int = 0
    linked: int = 0
    deleted: int = 0
    kept_in_use: int = 0
    skipped: int = 0
    waiting: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    delete_failed: list[tuple[str, str]] = field(default_factory=list)  # (hash, reason)
    changed: list[str] = field(default_factory=list)  # paths that changed under the upload
    guard: str | None = None
    auth_failed: str | None = None
    folder_error: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing failed (withheld deletions and files still waiting are not failures)."""
        return not (self.failed or self.delete_failed or self.auth_failed or self.folder_error)


@dataclass(slots=True)
class UploadContext:
    """What an upload needs to know besides the plan."""

    root: Path
    preexisting: set[str]  # hashes the remote had that the manifest did not map
    intent_md5s: set[str]  # contents whose POST an earlier run started (so it was ours)
    on_uploaded: Callable[[Upload], None] | None = None


class UploadQueue:
    """Uploads for `Executor.upload_queued`: filled all at once (a plan), or bit by bit while
    the scan still hashes (`syncd.early`), and closed when nothing more will come."""

    def __init__(self, uploads: Iterable[Upload] = ()) -> None:
        self._items = collections.deque(uploads)
        self._closed = False
        self._more = asyncio.Event()

    def put(self, up: Upload) -> None:
        """One more upload; the queue must still be open."""
        if self._closed:
            raise RuntimeError("put on a closed upload queue")
        self._items.append(up)
        self._more.set()

    def close(self) -> None:
        """Nothing more will come: workers end once the queue is empty."""
        self._closed = True
        self._more.set()

    async def get(self) -> Upload | None:
        """The next upload, waiting for one while the queue is open; None once it is done."""
        while not self._items:
            if self._closed:
                return None
            self._more.clear()
            await self._more.wait()
        return self._items.popleft()

    def pop_ready(self, max_size: int) -> Upload | None:
        """The next upload if one is already queued and at most `max_size` bytes, else None."""
        if self._items and self._items[0].size <= max_size:
            return self._items.popleft()
        return None


class Executor:
    """Applies plans for one account through its channel and the manifest."""

    def __init__(
        self,
        manifest: Manifest,
        channel: AccountChannel,
        *,
        workers: int,
        clock: Clock = time.time,
    ) -> None:
        self._manifest = manifest
        self._channel = channel
        self._workers = workers
        self._clock = clock
        self.account = channel.account
        # Contents being uploaded right now: a second file with the same content (or a rescan
        # racing a live event) waits for that upload and links to its hash instead of POSTing.
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self.stopping = False  # set at shutdown: finish what is in flight, start nothing new

    def apply_records(self, plan: Plan) -> None:
        """The manifest-only part of a plan: links, skips, forgotten rows, grace clocks."""
        m = self._manifest
        since = plan.rows_as_of
        m.record_files([*plan.link, *plan.record, *plan.unreadable], unchanged_since=since)
        m.forget_files(self.account, plan.forget, unchanged_since=since)
        m.drop_images(self.account, plan.stale)
        m.set_gone(self.account, plan.start_grace, self._clock())
        m.set_gone(self.account, plan.cancel_grace, None)
        for record in plan.record:
            log.info("file_skipped", **self._fields(record), reason=record.last_error)
        for record in plan.unreadable:
            log.warning("file_unreadable", **self._fields(record), reason=record.last_error)
        for record in plan.link:
            log.debug("file_linked", **self._fields(record), hash=record.remote_hash)

    def _fields(self, record: FileRecord) -> dict[str, str]:
        return {"account": self.account, "path": display_path(record.path)}

    async def run(self, plan: Plan, ctx: UploadContext, report: PassReport) -> None:
        """Apply the whole plan: records first, then uploads, then deletions."""
        self.apply_records(plan)
        report.linked += len(plan.link)
        report.skipped += len(plan.record)
        report.waiting = len(plan.waiting)
        report.guard = plan.guard
        report.failed.extend(plan.still_unreadable)
        failed_now = {path for path, _ in report.failed}  # by uploads begun during the scan
        for path in plan.unchanged_failures:
            if path in failed_now:
                continue  # failed in this very pass: reported once, with its own reason
            # Not retried, but still not in sync: the exit code and the log say so.
            report.failed.append((path, "failed earlier and unchanged since; not retried"))
            log.info("file_still_failed", account=self.account, path=display_path(path))
        if plan.guard:
            log.error("deletions_withheld", account=self.account, reason=plan.guard)
        await self.upload_all(plan.uploads, ctx, report)
        if report.auth_failed is None and not self.stopping:
            await self.delete_due(plan.deletions, report)

    async def upload_all(
        self, uploads: Sequence[Upload], ctx: UploadContext, report: PassReport
    ) -> None:
        """Upload a plan's uploads with `workers` tasks (see `upload_queued`)."""
        if not uploads:
            return
        queue = UploadQueue(uploads)
        queue.close()
        await self.upload_queued(queue, ctx, report)

    async def upload_queued(
        self, queue: UploadQueue, ctx: UploadContext, report: PassReport
    ) -> None:
        """Upload what the queue gives until it is closed and empty, `workers` at a time; an
        auth failure stops the rest of this account.

        Each worker reads its next file while the current one is on the wire, so the read
        (a hop to a worker thread and back, a tenth of a small upload's time) is off the
        critical path. Only files up to READ_AHEAD_BYTES are read ahead: the memory this
        costs is at most one such file per worker.
        """

        async def worker() -> None:
            ahead: tuple[Upload, asyncio.Task[_Read]] | None = None
            try:
                while report.auth_failed is None and not self.stopping:
                    read: asyncio.Task[_Read] | None = None
                    if ahead is not None:
                        (up, read), ahead = ahead, None
                    elif (got := await queue.get()) is not None:
                        up = got
                    else:
                        return
                    if (nxt := queue.pop_ready(READ_AHEAD_BYTES)) is not None:
                        ahead = (nxt, asyncio.create_task(_read(ctx.root / nxt.path)))
                    await self.upload_one(up, ctx, report, ahead=read)
            finally:
                if ahead is not None:
                    ahead[1].cancel()  # stopping: the thread's read finishes unobserved

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self._workers):
                    group.create_task(worker())
        except* ManifestError as group_error:
            # One clear error (the CLI prints it in one line), not a group traceback.
            raise group_error.exceptions[0] from None

    async def upload_one(
        self,
        up: Upload,
        ctx: UploadContext,
        report: PassReport,
        content: Hashed | None = None,
        *,
        ahead: asyncio.Task[_Read] | None = None,
    ) -> None:
        """Upload one content once: concurrent requests for it share one POST.

        `content`, when given, is the file as the caller read and hashed it (the daemon reads
        a new file once): sent if its MD5 is `up.md5`, and the file is not read again.
        `ahead` is a read of the file already under way (see upload_all).
        """
        try:
            await self._upload_once(up, ctx, report, content, ahead)
        finally:
            if ahead is not None:
                ahead.cancel()  # not needed after all (linked, or failed): drop it

    async def _upload_once(
        self,
        up: Upload,
        ctx: UploadContext,
        report: PassReport,
        content: Hashed | None,
        ahead: asyncio.Task[_Read] | None,
    ) -> None:
        while (pending := self._inflight.get(up.md5)) is not None:
            await asyncio.shield(pending)
        existing = self._manifest.image_for_md5(self.account, up.md5)
        if existing is not None:
            self.link(up, existing.hash)
            report.linked += len(up.files)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[up.md5] = done
        try:
            await self._post(up, ctx, report, content, ahead)
        finally:
            del self._inflight[up.md5]
            done.set_result(None)

    def link(self, up: Upload, image_hash: str) -> None:
        """Record files whose content already has a hash; their content is no longer gone."""
        self._manifest.record_files(synced_record(self.account, f, image_hash) for f in up.files)
        self._manifest.set_gone(self.account, [up.md5], None)

    async def _post(
        self,
        up: Upload,
        ctx: UploadContext,
        report: PassReport,
        given: Hashed | None,
        ahead: asyncio.Task[_Read] | None,
    ) -> None:
        """Read (unless given or read ahead), verify, POST and record one content."""
        bound = log.bind(account=self.account, path=display_path(up.path))
        data = await self._verified(up, ctx, given, ahead, bound)
        if data is None:
            report.changed.append(up.path)
            return
        intent = UploadIntent(self.account, up.md5, up.path, up.name, self._clock())
        self._manifest.begin_upload(intent)
        try:
            uploaded = await self._channel.upload(up.name, data)
        except AuthError as exc:
            self._manifest.abandon_upload(self.account, up.md5)
            report.auth_failed = exc.reason
            return
        except PermanentError as exc:
            self._manifest.abandon_upload(self.account, up.md5)
            self._fail(up, exc, FileState.FAILED, report)
            return
        except GraphError as exc:
            # Transient or throttled past the retries: the POST may have reached Meta, so the
            # intent stays; the next pass uploads again and gets the same hash.
            self._fail(up, exc, FileState.PENDING, report)
            return
        origin = self._origin(uploaded.hash, up.md5, ctx)
        image = ImageRecord(
            self.account, uploaded.hash, up.md5, origin, self._clock(), name=uploaded.name
        )
        self._manifest.finish_upload(
            image, [synced_record(self.account, f, uploaded.hash) for f in up.files]
        )
        report.uploaded += 1
        report.uploaded_bytes += len(data)
        if origin is ImageOrigin.ADOPTED:
            report.adopted += 1
        ctx.preexisting.discard(uploaded.hash)
        bound.info("file_uploaded", hash=uploaded.hash, bytes=len(data), origin=origin.value)
        if ctx.on_uploaded is not None:
            ctx.on_uploaded(up)

    async def _verified(
        self,
        up: Upload,
        ctx: UploadContext,
        given: Hashed | None,
        ahead: asyncio.Task[_Read] | None,
        bound: FilteringBoundLogger,
    ) -> bytes | None:
        """The bytes to send, whose MD5 is the plan's; None (logged) when the file changed."""
        got: _Read = given if given is not None else await (ahead or _read(ctx.root / up.path))
        if isinstance(got, str):
            bound.info("file_changed", reason=got)
            return None
        if got.md5 != up.md5:
            # The file changed after it was hashed: upload nothing now, the next pass will.
            bound.info("file_changed", reason="content changed since the scan")
            return None
        return got.data

    def _origin(self, image_hash: str, md5: str, ctx: UploadContext) -> ImageOrigin:
        if image_hash in ctx.preexisting and md5 not in ctx.intent_md5s:
            return ImageOrigin.ADOPTED
        return ImageOrigin.UPLOADED

    def _fail(self, up: Upload, exc: GraphError, state: FileState, report: PassReport) -> None:
        records = [
            FileRecord(
                self.account,
                f.path,
                f.size,
                f.mtime_ns,
                f.md5,
                state,
                None,
                exc.reason,
                attempts=1,
            )
            for f in up.files
        ]
        self._manifest.record_files(records)
        for f in up.files:
            report.failed.append((f.path, exc.reason))
        log.error(
            "file_failed",
            account=self.account,
            path=display_path(up.path),
            reason=exc.reason,
            retry="when the file changes" if state is FileState.FAILED else "next pass",
        )

    async def delete_due(
        self,
        due: Sequence[Deletion],
        report: PassReport,
        still_gone: Callable[[Deletion], bool] | None = None,
    ) -> None:
        """Re-read the due images, delete what no creative uses, keep the rest for later."""
        if not due:
            return
        try:
            fresh = await self._channel.read([d.hash for d in due])
        except GraphError as exc:
            report.delete_failed.extend((d.hash, exc.reason) for d in due)
            log.error("deletion_check_failed", account=self.account, reason=exc.reason)
            return
        delete, in_use, gone = confirm_deletions(due, fresh)
        self._manifest.drop_images(self.account, _md5s(gone))
        for d in in_use:
            report.kept_in_use += 1
            log.info("image_kept_in_use", account=self.account, hash=d.hash, name=d.name)
        for d in delete:
            if self.stopping or report.auth_failed:
                return
            if self._held(d) or (still_gone is not None and not still_gone(d)):
                # A file with this content appeared since the plan was made (a live event
                # racing a pass): the image is in use again, not gone.
                log.info("image_deletion_cancelled", account=self.account, hash=d.hash)
                continue
            await self._delete_one(d, report)

    def _held(self, d: Deletion) -> bool:
        return any(self._manifest.paths_with_md5(self.account, m) for m in d.md5s)

    async def _delete_one(self, d: Deletion, report: PassReport) -> None:
        try:
            await self._channel.delete(d.hash)
        except PermanentError as exc:
            # Meta's refusal for an image in use is undocumented: keep it, re-check later.
            report.kept_in_use += 1
            log.info("image_kept", account=self.account, hash=d.hash, reason=exc.reason)
            return
        except AuthError as exc:
            report.auth_failed = exc.reason
            return
        except GraphError as exc:
            report.delete_failed.append((d.hash, exc.reason))
            log.error("image_delete_failed", account=self.account, hash=d.hash, reason=exc.reason)
            return
        self._manifest.drop_images(self.account, d.md5s)
        report.deleted += 1
        log.info(
            "image_deleted",
            account=self.account,
            hash=d.hash,
            name=d.name,
            gone_for=round(self._clock() - d.gone_since, 1),
        )


async def _read(path: Path) -> _Read:
    """The file's bytes and MD5, or why they cannot be had now (the next pass looks again).

    A file that grew past the size limit since the scan is "changed" too: the next scan skips
    it with that reason, where an exception here would have ended the whole pass.
    """
    try:
        data, md5 = await read_and_hash(path, max_bytes=MAX_IMAGE_BYTES)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    except FileTooLargeError as exc:
        return str(exc)
    return Hashed(data, md5)  # read_and_hash took the MD5 of these very bytes


def _md5s(deletions: Iterable[Deletion]) -> list[str]:
    return [m for d in deletions for m in d.md5s]
