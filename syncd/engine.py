"""One sync pass for one account: scan (new content uploading as it is hashed) and list remote,
then plan, then execute.

`--reconcile` runs one pass per account; the daemon runs the same pass at start-up and on every
rescan, so changes made while it was down are caught by exactly the code that reconcile tests.
`Runtime` holds what the process owns once: the HTTP session, the manifest, the channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog

from syncd.backoff import Backoff
from syncd.channel import AccountChannel
from syncd.config import AccountConfig, Config
from syncd.early import EarlyUploads
from syncd.errors import AuthError, GraphError
from syncd.executor import Executor, PassReport, UploadContext
from syncd.graph import GraphClient, list_fields
from syncd.manifest import SqliteManifest
from syncd.models import (
    FileRecord,
    FolderState,
    ImageOrigin,
    ImageRecord,
    RemoteImage,
    RemoteListing,
    UploadIntent,
)
from syncd.planner import AccountView, Plan, Policy, Upload, claim_intents, plan_account
from syncd.ratelimit import TokenBucket
from syncd.scanner import ScanResult, examine_paths, scan_folder
from syncd.secrets import Secrets

log = structlog.get_logger("syncd.engine")

MAX_SETTLE_ROUNDS = 30  # reconcile waits at most this many settle periods for busy writers
MAX_PASSES = 3  # re-plans for files that changed while their upload was being prepared


@dataclass(slots=True)
class Runtime:
    """What the process owns once: the session, the manifest, one channel per account."""

    config: Config
    manifest: SqliteManifest
    session: aiohttp.ClientSession
    channels: dict[str, AccountChannel]
    executors: dict[str, Executor]

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, config: Config, secrets: Secrets, *, readonly: bool = False
    ) -> AsyncIterator[Runtime]:
        """Create everything in the running loop; close it all on the way out."""
        manifest = SqliteManifest.open(config.manifest.path, readonly=readonly)
        channels: dict[str, AccountChannel] = {}

        def observe(account: str, headers: Mapping[str, str]) -> None:
            channel = channels.get(account)
            if channel is not None:
                channel.observe_headers(headers)

        connector = aiohttp.TCPConnector(limit=max(8, config.sync.workers * 2))
        session = aiohttp.ClientSession(connector=connector, trust_env=False)
        try:
            client = GraphClient(
                session,
                base_url=config.graph.base_url,
                api_version=config.graph.api_version,
                token=secrets.token,
                app_secret=secrets.app_secret,
                timeout=config.graph.timeout_seconds,
                on_headers=observe,
            )
            gate = asyncio.Semaphore(config.sync.workers)
            backoff = Backoff(max_attempts=config.sync.max_attempts)
            for acct in config.accounts:
                bucket = TokenBucket(acct.rate_per_second, acct.burst)
                channels[acct.id] = AccountChannel(acct.id, client, bucket, backoff, gate=gate)
            executors = {
                a: Executor(manifest, ch, workers=config.sync.workers) for a, ch in channels.items()
            }
            yield cls(config, manifest, session, channels, executors)
        finally:
            await session.close()
            manifest.close()


@dataclass(slots=True)
class PassResult:
    """A pass's plan (for dry runs) and report (for everything else)."""

    report: PassReport
    plan: Plan | None = None
    skips: list[tuple[str, str]] = field(default_factory=list)
    in_use: set[str] = field(default_factory=set)  # due deletions a creative still uses
    unsettled: list[str] = field(default_factory=list)  # files still being written
    # Hashes the account held at the listing that the manifest did not know and no upload of
    # the pass answered with: images syncd did not put there. None without a listing.
    foreign: set[str] | None = None


@dataclass(frozen=True, slots=True)
class PassOptions:
    """How a pass behaves: reconcile and the daemon differ only here."""

    dry_run: bool = False
    allow_mass_delete: bool = False
    wait_for_settle: bool = True  # reconcile waits for files being written; the daemon queues
    on_hashed: Callable[[int, int], None] | None = None
    on_planned: Callable[[Plan], None] | None = None
    on_queued: Callable[[Upload], None] | None = None  # queued before the plan (syncd.early)
    on_uploaded: Callable[[Upload], None] | None = None


def policy_for(config: Config, allow_mass_delete: bool) -> Policy:
    """The deletion policy the config asks for."""
    return Policy(
        delete_grace_seconds=config.sync.delete_grace_seconds,
        max_delete_fraction=config.sync.max_delete_fraction,
        allow_mass_delete=allow_mass_delete,
    )


async def sync_account(rt: Runtime, acct: AccountConfig, opts: PassOptions) -> PassResult:
    """One full pass for one account. Auth failures stop the account and are reported."""
    result = PassResult(PassReport(acct.id))
    channel = rt.channels[acct.id]
    try:
        await channel.check()
    except AuthError as exc:
        result.report.auth_failed = exc.reason
        return result
    except GraphError as exc:
        result.report.folder_error = f"account check failed: {exc.reason}"
        log.error("account_check_failed", account=acct.id, reason=exc.reason)
        return result
    for _ in range(MAX_PASSES):
        changed = await _one_pass(rt, acct, opts, result)
        if not changed or opts.dry_run or result.report.auth_failed:
            break
        result.report.changed.clear()
    if not opts.dry_run:
        rt.manifest.note_scan(acct.id, time.time(), result.report.folder_error)
    return result


async def _one_pass(
    rt: Runtime, acct: AccountConfig, opts: PassOptions, result: PassResult
) -> bool:
    channel = rt.channels[acct.id]
    # Intents are taken before the listing: only uploads begun before it can be found in it.
    intents = rt.manifest.intents(acct.id)
    # The remote listing (network-bound) runs while the folder is scanned (disk-bound).
    listed_at = time.time()
    fields = list_fields(names=opts.dry_run, created=bool(intents))
    listing = asyncio.create_task(_list_remote(channel, fields))
    early: EarlyUploads | None = None
    try:
        files = rt.manifest.files(acct.id)  # read once per pass: the biggest read there is
        if not opts.dry_run:
            early = _early(rt, acct, opts, result, files, intents, listing)
        scan = await _settled_scan(rt, acct, opts, files, early)
        if early is not None:
            await early.finish()
    except BaseException:
        listing.cancel()
        if early is not None:
            early.cancel()
        raise
    report = result.report
    if scan.folder_state is not FolderState.OK:
        report.folder_error = f"folder {acct.folder} is {scan.folder_state.value}"
        log.error(
            "folder_unavailable",
            account=acct.id,
            folder=str(acct.folder),
            state=scan.folder_state.value,
        )
    remote = await listing
    if channel.auth_error is not None:
        report.auth_failed = channel.auth_error.reason
        return False
    manifest = rt.manifest
    images = manifest.images(acct.id, names=False)
    if remote is not None:
        await _confirm_missing(channel, images, remote, listed_at)
        if channel.auth_error is not None:
            report.auth_failed = channel.auth_error.reason
            return False
    if not opts.dry_run and scan.folder_state is FolderState.OK:
        images = _resolve_intents(rt, acct.id, scan, intents, remote, images)
    view = _view(acct.id, scan, files, images, remote, listed_at)
    plan = _named(manifest, plan_account(view, policy_for(rt.config, opts.allow_mass_delete)))
    if early is not None:
        plan.uploads = early.not_tried(plan.uploads)
    result.plan = plan
    result.skips = [(s.path, s.reason) for s in scan.skips]
    result.unsettled = list(scan.unsettled)
    if opts.on_planned is not None:
        opts.on_planned(plan)
    if opts.dry_run:
        await _dry_run_check(rt, plan, result)
        return False
    known = {img.hash for img in images}
    ctx = UploadContext(
        root=acct.folder,
        preexisting={h for h in (remote or {}) if h not in known},
        intent_md5s={i.md5 for i in intents},
        on_uploaded=opts.on_uploaded,
    )
    await rt.executors[acct.id].run(plan, ctx, report)
    if remote is not None:
        result.foreign = ctx.preexisting  # each upload's answer was taken out of it
    return bool(report.changed)


async def _settled_scan(
    rt: Runtime,
    acct: AccountConfig,
    opts: PassOptions,
    known: Mapping[str, FileRecord],
    early: EarlyUploads | None,
) -> ScanResult:
    """Scan; in reconcile, wait for files being written until they have settled.

    A file counts as settled when its mtime is older than `settle_seconds`, or when its size
    and mtime did not change across a whole settle period (a copy that kept a timestamp from
    the future, or a server whose clock runs ahead, would otherwise never settle).
    """
    settle = rt.config.sync.settle_seconds
    on_file = early.offer if early is not None else None
    scan = await scan_folder(
        acct.folder,
        known,
        now=time.time(),
        settle_seconds=settle,
        on_progress=opts.on_hashed,
        on_file=on_file,
    )
    for _ in range(MAX_SETTLE_ROUNDS):
        if not scan.unsettled or not opts.wait_for_settle:
            return scan
        log.info("waiting_for_writers", account=acct.id, files=len(scan.unsettled))
        before = await asyncio.to_thread(_stats, acct.folder, scan.unsettled)
        await asyncio.sleep(settle)
        after = await asyncio.to_thread(_stats, acct.folder, scan.unsettled)
        still = [p for p in scan.unsettled if before[p] is None or before[p] != after[p]]
        quiet = [p for p in scan.unsettled if p not in still]
        # Judged settled by observation, whatever their mtime says: "now" is put past it.
        latest = max((st[1] / 1e9 for p in quiet if (st := after[p]) is not None), default=0.0)
        extra = await examine_paths(
            acct.folder, quiet, known, now=max(time.time(), latest + 1), on_file=on_file
        )
        scan.files.extend(extra.files)
        scan.skips.extend(extra.skips)
        scan.errors.extend(extra.errors)
        scan.unsettled = [*still, *extra.unsettled]
    return scan


def _early(
    rt: Runtime,
    acct: AccountConfig,
    opts: PassOptions,
    result: PassResult,
    files: dict[str, FileRecord],
    intents: list[UploadIntent],
    listing: asyncio.Task[RemoteListing | None],
) -> EarlyUploads:
    """Uploads of new content that start while the scan still hashes (see syncd.early)."""
    intent_md5s = {i.md5 for i in intents}
    ctx = UploadContext(
        root=acct.folder,
        preexisting=set(),
        intent_md5s=intent_md5s,
        on_uploaded=opts.on_uploaded,
    )
    return EarlyUploads(
        rt.manifest,
        rt.channels[acct.id],
        rt.executors[acct.id],
        ctx,
        result.report,
        files=files,
        intent_md5s=intent_md5s,
        listing=lambda: asyncio.shield(listing),
        on_queued=opts.on_queued,
    )


def _stats(root: Path, paths: list[str]) -> dict[str, tuple[int, int] | None]:
    out: dict[str, tuple[int, int] | None] = {}
    for path in paths:
        try:
            st = (root / path).stat()
        except OSError:
            out[path] = None
            continue
        out[path] = (st.st_size, st.st_mtime_ns)
    return out


async def _list_remote(channel: AccountChannel, fields: str) -> RemoteListing | None:
    try:
        return await channel.list_all(fields)
    except GraphError as exc:
        # Without the listing the pass still uploads and deletes safely; it only cannot
        # notice images deleted remotely or adopt existing ones.
        log.warning("remote_listing_failed", account=channel.account, reason=exc.reason)
        return None


async def _confirm_missing(
    channel: AccountChannel,
    images: list[ImageRecord],
    remote: RemoteListing,
    listed_at: float,
) -> None:
    """Ask for the manifest's images the listing did not show, by hash, before the plan takes
    them for deleted remotely: it would forget them, upload their content again, and record
    an adopted image as syncd's own (deletable) from a listing a page short or answered empty.
    Those the account still has are put in the listing. Nothing is missing in a steady state,
    so this costs no call then."""
    status = remote.status
    missing = sorted(
        {
            img.hash  # several contents can map to one hash: asked for once
            for img in images
            if img.uploaded_at < listed_at and status(img.hash) in (None, "DELETED")
        }
    )
    if not missing:
        return
    try:
        fresh = await channel.read(missing)
    except GraphError as exc:
        # Unconfirmed: kept as present for this pass (nothing forgotten, nothing re-uploaded).
        log.warning("listing_unconfirmed", account=channel.account, reason=exc.reason)
        remote.update(RemoteImage(h) for h in missing)
        return
    found = [img for img in fresh.values() if img.status != "DELETED"]
    if found:
        log.warning(
            "listing_incomplete",
            account=channel.account,
            missing=len(missing),
            still_there=len(found),
        )
        remote.update(found)


def _resolve_intents(
    rt: Runtime,
    account: str,
    scan: ScanResult,
    intents: list[UploadIntent],
    remote: Mapping[str, RemoteImage] | None,
    images: list[ImageRecord],
) -> list[ImageRecord]:
    if not intents:
        return images
    held = {f.md5 for f in scan.files}
    claimed, dropped = claim_intents(intents, held, remote, {i.hash for i in images})
    now = time.time()
    for intent, image in claimed:
        record = ImageRecord(
            account,
            image.hash,
            intent.md5,
            ImageOrigin.UPLOADED,
            intent.started_at,
            gone_since=now,
            name=image.name,
        )
        rt.manifest.finish_upload(record, [])
        log.warning("intent_claimed", account=account, hash=image.hash, name=image.name)
    for intent in dropped:
        rt.manifest.abandon_upload(account, intent.md5)
        log.info("intent_dropped", account=account, name=intent.upload_name)
    return rt.manifest.images(account, names=False)


def _named(manifest: SqliteManifest, plan: Plan) -> Plan:
    """The plan with its deletions' names, which the pass's image rows were read without."""
    if plan.deletions:
        names = manifest.image_names(plan.account, [d.hash for d in plan.deletions])
        plan.deletions = [
            dataclasses.replace(d, name=names.get(d.hash, d.name)) for d in plan.deletions
        ]
    return plan


def _view(
    account: str,
    scan: ScanResult,
    files: Mapping[str, FileRecord],
    images: list[ImageRecord],
    remote: Mapping[str, RemoteImage] | None,
    listed_at: float,
) -> AccountView:
    return AccountView(
        account=account,
        folder_state=scan.folder_state,
        local=scan.files,
        files=files,
        images=images,
        now=time.time(),
        skips=scan.skips,
        unsure=[*scan.unsettled, *(e.path for e in scan.errors)],
        scan_complete=not scan.incomplete,
        remote=remote,
        remote_as_of=listed_at,
        rows_as_of=listed_at,  # `files` is read just after the listing starts
        unreadable=scan.errors,
    )


async def _dry_run_check(rt: Runtime, plan: Plan, result: PassResult) -> None:
    """A dry run still reads creatives, so its plan says which deletions would really happen."""
    if not plan.deletions:
        return
    try:
        fresh = await rt.channels[plan.account].read([d.hash for d in plan.deletions])
    except GraphError:
        return
    result.in_use = {h for h, img in fresh.items() if img.in_use}
