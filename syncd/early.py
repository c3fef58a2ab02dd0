"""Uploads that start while the scan is still hashing: new content does not wait for the plan.

A pass used to hash every new file before its first POST; a folder of fresh images (a
campaign's worth of 100 KB files, or gigabytes of them) spent that time with the network
idle. Now each file the scan hashes is looked at once, on the event loop's thread, and
uploaded at once when it is plainly new content:

- no image in the manifest has its MD5 (that file is linked by the plan instead),
- no earlier run left an upload intent for it (the plan resolves those against the listing),
- it did not fail for good unchanged (not retried until it changes),
- and no other file with the same content was queued before it in this pass.

Nothing is deleted, forgotten or linked here: uploads cannot lose anything, and every other
decision is still the plan's, made once the whole scan is in. The uploads begin only after
the remote listing and the account check are done, so they are told apart from adoptions
exactly as the plan's own would be. When the scan ends, the pass waits for these uploads
and re-reads the rows they wrote, so the plan sees them as done and does not count them twice;
content tried here (failed, or changed under its upload) is not tried again in the same pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from syncd.channel import AccountChannel
from syncd.executor import Executor, PassReport, UploadContext, UploadQueue
from syncd.graph import upload_name
from syncd.manifest import SqliteManifest
from syncd.models import FileRecord, LocalFile, RemoteListing
from syncd.planner import Upload, failed_unchanged

ListingWait = Callable[[], Awaitable[RemoteListing | None]]


class EarlyUploads:
    """Feeds hashed files to an account's executor while the scan goes on."""

    def __init__(
        self,
        manifest: SqliteManifest,
        channel: AccountChannel,
        executor: Executor,
        ctx: UploadContext,
        report: PassReport,
        *,
        files: dict[str, FileRecord],
        intent_md5s: Collection[str],
        listing: ListingWait,
        on_queued: Callable[[Upload], None] | None = None,
    ) -> None:
        self._manifest = manifest
        self._channel = channel
        self._executor = executor
        self._ctx = ctx
        self._report = report
        self._files = files
        self._intent_md5s = intent_md5s
        self._listing = listing
        self._on_queued = on_queued
        self._queue = UploadQueue()
        self._seen: set[str] = set()  # contents queued in this pass
        self._paths: list[str] = []  # files queued: their rows are re-read at the end
        self._task: asyncio.Task[None] | None = None

    def offer(self, f: LocalFile) -> None:
        """A file the scan just hashed; queued for upload if it is plainly new content."""
        if f.md5 in self._seen or f.md5 in self._intent_md5s:
            return
        if failed_unchanged(self._files.get(f.path), f):
            return
        if self._manifest.image_for_md5(self._executor.account, f.md5) is not None:
            return
        self._seen.add(f.md5)
        self._paths.append(f.path)
        up = Upload(f.md5, (f,), upload_name(f.path))
        self._queue.put(up)
        if self._on_queued is not None:
            self._on_queued(up)
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        remote = await self._listing()
        if self._channel.auth_error is not None or self._executor.stopping:
            return  # the pass reports the refused token; nothing is sent
        known = {img.hash for img in self._manifest.images(self._executor.account, names=False)}
        self._ctx.preexisting.update(h for h in (remote or {}) if h not in known)
        await self._executor.upload_queued(self._queue, self._ctx, self._report)

    async def finish(self) -> None:
        """The scan is over: wait for the queued uploads, then bring the pass's copy of the
        manifest rows up to date with what they wrote (uploaded, failed)."""
        self._queue.close()
        if self._task is not None:
            await self._task
        for path in self._paths:
            row = self._manifest.file(self._executor.account, path)
            if row is not None:
                self._files[path] = row

    def not_tried(self, uploads: list[Upload]) -> list[Upload]:
        """The plan's uploads of contents not already tried in this pass: one that failed
        or changed during the scan waits for the next pass, as a planned one would."""
        return [up for up in uploads if up.md5 not in self._seen]

    def cancel(self) -> None:
        """The pass is being abandoned: stop feeding (uploads in flight are cancelled)."""
        self._queue.close()
        if self._task is not None:
            self._task.cancel()
