"""The reconcile plan: a pure function from what is known to what must happen.

Input is one account's local scan, its manifest rows, the remote listing and the time; output
is the uploads, the manifest updates, the deletions that are due and the reasons anything is
held back. No I/O, no clock: the executor carries the plan out, and the tests can feed it
anything.

The safety rules live here and only here:
- an image is deleted only if syncd uploaded it (origin UPLOADED in the manifest),
- only when no local file holds any content that maps to its hash,
- only after `delete_grace_seconds` counted from when syncd first saw it gone,
- never when the folder is missing, unreadable, looks unmounted, or was only partly read,
- never more than `max_delete_fraction` of the account's images in one pass, counting those
  still in their grace period (unless allowed),
- and, at execution time, never while a creative uses it (`confirm_deletions`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from syncd.graph import upload_name
from syncd.models import (
    FileRecord,
    FileState,
    FolderState,
    ImageOrigin,
    ImageRecord,
    LocalFile,
    RemoteImage,
    Skip,
    UploadIntent,
)

VANISHED_REASONS = frozenset({"file vanished", "vanished during scan"})  # the scanner's words
INTENT_CLOCK_SKEW = 300.0  # seconds of slack between our clock and Meta's created_time
# An interrupted POST created its image within this long after its intent (retries and
# throttling pauses included); a same-named image created later is someone else's upload.
INTENT_WINDOW = 3600.0


@dataclass(frozen=True, slots=True)
class Policy:
    """The deletion knobs of one pass."""

    delete_grace_seconds: float
    max_delete_fraction: float
    allow_mass_delete: bool = False


@dataclass(frozen=True, slots=True)
class AccountView:
    """Everything the planner may look at for one account."""

    account: str
    folder_state: FolderState
    local: Sequence[LocalFile]
    files: Mapping[str, FileRecord]
    images: Sequence[ImageRecord]
    now: float
    skips: Sequence[Skip] = ()
    # Paths that exist but could not be read, or are still being written: whatever content
    # the manifest last saw there still counts as held.
    unsure: Sequence[str] = ()
    scan_complete: bool = True  # False: a subfolder could not be listed
    unreadable: Sequence[Skip] = ()  # files or folders that exist but could not be read now
    remote: Mapping[str, RemoteImage] | None = None  # None: the listing was not available
    # When the listing began: an image recorded after that (a live upload racing the pass)
    # is simply not in it yet, and must not be taken for one deleted remotely.
    remote_as_of: float = math.inf
    # When `files` was read. A daemon's live events may rewrite rows while its full pass
    # plans: the plan's row writes skip any row written since (see Plan.rows_as_of).
    rows_as_of: float = math.inf


@dataclass(frozen=True, slots=True)
class Upload:
    """One content to POST, and every local file that holds it."""

    md5: str
    files: tuple[LocalFile, ...]
    name: str
    adopt: bool = False  # the remote seems to have it already: the POST should return its hash

    @property
    def path(self) -> str:
        return self.files[0].path

    @property
    def size(self) -> int:
        return self.files[0].size


@dataclass(frozen=True, slots=True)
class Deletion:
    """A remote image that is due for deletion, pending the creative check."""

    hash: str
    md5s: tuple[str, ...]
    name: str
    gone_since: float


@dataclass(slots=True)
class Plan:
    """What one pass must do for one account."""

    account: str
    uploads: list[Upload] = field(default_factory=list)
    link: list[FileRecord] = field(default_factory=list)  # files whose content has a hash
    record: list[FileRecord] = field(default_factory=list)  # skipped or failed rows to write
    forget: list[str] = field(default_factory=list)  # manifest rows of files no longer there
    # The rows `link`, `record`, `unreadable` and `forget` were decided from were read then:
    # a row written since is newer than the decision and is left as it is.
    rows_as_of: float = math.inf
    deletions: list[Deletion] = field(default_factory=list)
    start_grace: list[str] = field(default_factory=list)  # md5s now gone, clock starts
    cancel_grace: list[str] = field(default_factory=list)  # md5s back before their deletion
    waiting: list[tuple[str, float]] = field(default_factory=list)  # (hash, seconds left)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (hash, why it is never deleted)
    stale: list[str] = field(default_factory=list)  # md5s whose image the remote no longer has
    unchanged_failures: list[str] = field(default_factory=list)  # paths not retried
    unreadable: list[FileRecord] = field(default_factory=list)  # newly unreadable: record, log
    still_unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    guard: str | None = None  # why no deletion happens for this account in this pass

    @property
    def is_empty(self) -> bool:
        """Nothing to send to the Graph API."""
        return not self.uploads and not self.deletions


def plan_account(view: AccountView, policy: Policy) -> Plan:
    """The plan for one account. Pure: same input, same plan."""
    plan = Plan(account=view.account, rows_as_of=view.rows_as_of)
    if view.folder_state is not FolderState.OK:
        # Nothing can be learned from a folder we cannot see: no uploads, no forgetting,
        # no grace clocks, no deletions.
        plan.guard = f"folder {view.folder_state.value}"
        return plan
    live = _live_images(view, plan)
    # Built here and dropped before the deletions are planned: with 100,000 files, each of
    # the planner's lookup tables is megabytes, and a pass's peak memory is in the planner.
    _plan_files(view, {img.md5: img.hash for img in live}, plan)
    _plan_deletions(view, live, policy, plan)
    return plan


def _live_images(view: AccountView, plan: Plan) -> list[ImageRecord]:
    """Manifest images the remote still has; the others are stale (deleted by someone)."""
    if view.remote is None:
        return list(view.images)
    live: list[ImageRecord] = []
    for image in view.images:
        remote = view.remote.get(image.hash)
        if image.uploaded_at >= view.remote_as_of:
            live.append(image)
        elif remote is None or remote.status == "DELETED":
            plan.stale.append(image.md5)
        else:
            live.append(image)
    plan.stale.sort()
    return live


def _plan_files(view: AccountView, hash_of: Mapping[str, str], plan: Plan) -> None:
    by_md5: dict[str, list[LocalFile]] = defaultdict(list)
    files, synced = view.files, FileState.SYNCED
    with_rows = 0  # local files the manifest has a row for
    for f in view.local:
        row = files.get(f.path)
        with_rows += row is not None
        if (
            row is not None
            and row.state is synced
            and row.md5 == f.md5
            and row.size == f.size
            and row.mtime_ns == f.mtime_ns
            and row.remote_hash is not None
            and row.remote_hash == hash_of.get(f.md5)
        ):
            continue  # steady: recorded as synced to the hash its content maps to
        by_md5[f.md5].append(f)
    remote_names: set[str] | None = None  # made on the first upload: most passes have none
    # Groups are visited as they come and only what they produce is sorted (by md5, then
    # path), so the plan is the same as visiting them in order: a 100,000-file pass with
    # nothing to do should not sort 100,000 groups to find that out.
    links: list[tuple[str, list[FileRecord]]] = []
    failures: list[tuple[str, list[str]]] = []
    for md5, holders in by_md5.items():
        if len(holders) > 1:
            holders.sort(key=_path)
        image_hash = hash_of.get(md5)
        if image_hash is not None:
            if changed := _changed_links(view, holders, image_hash):
                links.append((md5, changed))
        elif _failed_unchanged(view, holders):
            failures.append((md5, [f.path for f in holders]))
        else:
            name = upload_name(holders[0].path)
            if remote_names is None:
                remote_names = _unclaimed_remote_names(view, hash_of)
            plan.uploads.append(Upload(md5, tuple(holders), name, adopt=name in remote_names))
    plan.uploads.sort(key=_md5)
    plan.link.extend(r for _, rows in sorted(links, key=_first) for r in rows)
    plan.unchanged_failures.extend(p for _, paths in sorted(failures, key=_first) for p in paths)
    _plan_unreadable(view, plan)
    for skip in view.skips:
        row = view.files.get(skip.path)
        if row is None or row.state is not FileState.SKIPPED or row.last_error != skip.reason:
            plan.record.append(_skip_record(view.account, skip))
    if view.scan_complete and with_rows < len(files):  # else every row's file is still here
        present = {f.path for f in view.local}
        present.update(s.path for s in view.skips)
        present.update(view.unsure)
        plan.forget.extend(sorted(p for p in files if p not in present))


def _image_md5(image: ImageRecord) -> str:
    return image.md5


def _path(f: LocalFile) -> str:
    return f.path


def _md5(up: Upload) -> str:
    return up.md5


def _first(pair: tuple[str, object]) -> str:
    return pair[0]


def _plan_unreadable(view: AccountView, plan: Plan) -> None:
    """Files that could not be read are pending, with the reason, until they can be.

    A synced file that turns unreadable stays synced (its image is fine); it is not re-read.
    """
    for entry in view.unreadable:
        if entry.reason in VANISHED_REASONS:
            continue  # gone between listing and reading: the next look decides, not a failure
        row = view.files.get(entry.path)
        if row is not None and row.state is FileState.SYNCED:
            continue
        plan.still_unreadable.append((entry.path, entry.reason))
        if row is None or row.state is not FileState.PENDING or row.last_error != entry.reason:
            plan.unreadable.append(
                FileRecord(
                    view.account, entry.path, entry.size, entry.mtime_ns,
                    row.md5 if row else None, FileState.PENDING, None, entry.reason,
                )
            )  # fmt: skip


def _unclaimed_remote_names(view: AccountView, hash_of: Mapping[str, str]) -> set[str]:
    if view.remote is None:
        return set()
    known = set(hash_of.values())
    return {img.name for img in view.remote.values() if img.hash not in known and img.name}


def _changed_links(
    view: AccountView, holders: Iterable[LocalFile], image_hash: str
) -> list[FileRecord]:
    """Synced rows for these files, only where the manifest does not already say so."""
    out: list[FileRecord] = []
    files, synced = view.files, FileState.SYNCED
    for f in holders:
        row = files.get(f.path)
        if (
            row is not None
            and row.state is synced
            and row.remote_hash == image_hash
            and row.size == f.size
            and row.mtime_ns == f.mtime_ns
            and row.md5 == f.md5
        ):
            continue
        out.append(synced_record(view.account, f, image_hash))
    return out


def _failed_unchanged(view: AccountView, holders: Sequence[LocalFile]) -> bool:
    return all(failed_unchanged(view.files.get(f.path), f) for f in holders)


def failed_unchanged(row: FileRecord | None, f: LocalFile) -> bool:
    """A permanent failure is not retried until the file changes (size, mtime or content)."""
    return (
        row is not None
        and row.state is FileState.FAILED
        and (row.size, row.mtime_ns, row.md5) == (f.size, f.mtime_ns, f.md5)
    )


def _plan_deletions(
    view: AccountView, live: Sequence[ImageRecord], policy: Policy, plan: Plan
) -> None:
    held = {f.md5 for f in view.local}
    held.update(row.md5 for p in view.unsure if (row := view.files.get(p)) and row.md5)
    # An image is held when any content that maps to its hash is. Held images (nearly all,
    # in a steady state) need nothing but their grace clocks stopped; only the rest are
    # grouped and visited, in hash order. Only hashes with an unheld row can be unheld, so
    # the sets stay as small as the changes.
    maybe = {image.hash for image in live if image.md5 not in held}
    held_hashes = {image.hash for image in live if image.hash in maybe and image.md5 in held}
    cancel: list[tuple[str, str]] = []
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for image in live:
        if image.hash in maybe and image.hash not in held_hashes:
            by_hash[image.hash].append(image)
        elif image.gone_since is not None:
            cancel.append((image.hash, image.md5))
    plan.cancel_grace.extend(md5 for _, md5 in sorted(cancel))
    due: list[Deletion] = []
    for image_hash in sorted(by_hash):
        rows = sorted(by_hash[image_hash], key=_image_md5)
        if not view.scan_complete:
            continue  # a partial walk cannot tell that a file is gone
        if any(r.origin is not ImageOrigin.UPLOADED for r in rows):
            plan.kept.append((image_hash, "not uploaded by syncd (adopted)"))
            continue
        deletion = _due(view, rows, policy, plan)
        if deletion is not None:
            due.append(deletion)
    _guard(view, live, due, policy, plan)


def _due(
    view: AccountView, rows: Sequence[ImageRecord], policy: Policy, plan: Plan
) -> Deletion | None:
    starts = [r.gone_since for r in rows if r.gone_since is not None]
    fresh = [r.md5 for r in rows if r.gone_since is None]
    plan.start_grace.extend(fresh)
    since = min(starts) if starts else view.now
    left = since + policy.delete_grace_seconds - view.now
    if left > 0:
        plan.waiting.append((rows[0].hash, left))
        return None
    md5s = tuple(sorted(r.md5 for r in rows))
    return Deletion(rows[0].hash, md5s, rows[0].name, since)


def _guard(
    view: AccountView,
    live: Sequence[ImageRecord],
    due: list[Deletion],
    policy: Policy,
    plan: Plan,
) -> None:
    """Withhold every due deletion when the folder looks wrong or too much of it is gone.

    The fraction counts the images still in their grace period with the due ones: the files
    of one mass removal are seen gone moments apart (a sync client, an `rm -r` over a share),
    so their graces end moments apart too, and the daemon's sweeps would otherwise meet them
    in slices, each under the fraction.
    """
    if not view.scan_complete:
        plan.guard = "part of the folder could not be read"
    elif due and not policy.allow_mass_delete:
        owned: dict[str, bool] = {}  # hash -> every row of it was uploaded by syncd
        for image in live:
            owned[image.hash] = owned.get(image.hash, True) and image.origin is ImageOrigin.UPLOADED
        total = sum(owned.values())
        going = len(due) + len(plan.waiting)
        nothing_local = not view.local and not view.skips and not view.unsure
        if nothing_local:
            plan.guard = "folder is empty (looks unmounted)"
        elif going > policy.max_delete_fraction * total:
            later = f" ({len(plan.waiting)} of them still in their grace period)"
            plan.guard = (
                f"would delete {going} of {total} images{later if plan.waiting else ''}, "
                f"more than max_delete_fraction={policy.max_delete_fraction:g}"
            )
    if plan.guard is None:
        plan.deletions = due


def confirm_deletions(
    due: Sequence[Deletion], fresh: Mapping[str, RemoteImage]
) -> tuple[list[Deletion], list[Deletion], list[Deletion]]:
    """Split due deletions by a fresh read of their images: (delete, in use, already gone)."""
    delete: list[Deletion] = []
    in_use: list[Deletion] = []
    gone: list[Deletion] = []
    for deletion in due:
        remote = fresh.get(deletion.hash)
        if remote is None or remote.status == "DELETED":
            gone.append(deletion)
        elif remote.in_use:
            in_use.append(deletion)
        else:
            delete.append(deletion)
    return delete, in_use, gone


def claim_intents(
    intents: Sequence[UploadIntent],
    held: set[str],
    remote: Mapping[str, RemoteImage] | None,
    known_hashes: set[str],
) -> tuple[list[tuple[UploadIntent, RemoteImage]], list[UploadIntent]]:
    """Resolve uploads a crash interrupted, from the remote listing, without guessing.

    An intent whose content is still local is left alone: the plan uploads it again and the
    content-addressed API answers with the same hash. For content no longer local, an image
    named as the intent's upload and created after it started is the one our POST made:
    it is claimed (and its grace starts). Anything else is dropped.
    Returns (claimed, dropped).
    """
    claimed: list[tuple[UploadIntent, RemoteImage]] = []
    dropped: list[UploadIntent] = []
    for intent in intents:
        if intent.md5 in held:
            continue
        match = _intent_match(intent, remote, known_hashes)
        if match is None:
            dropped.append(intent)
        else:
            claimed.append((intent, match))
    return claimed, dropped


def _intent_match(
    intent: UploadIntent, remote: Mapping[str, RemoteImage] | None, known: set[str]
) -> RemoteImage | None:
    if remote is None:
        return None
    found = [
        img
        for img in remote.values()
        if img.name == intent.upload_name
        and img.hash not in known
        and _created_within(
            img.created_time,
            intent.started_at - INTENT_CLOCK_SKEW,
            intent.started_at + INTENT_WINDOW + INTENT_CLOCK_SKEW,
        )
    ]
    return found[0] if len(found) == 1 else None


def _created_within(created_time: str, earliest: float, latest: float) -> bool:
    try:
        created = datetime.strptime(created_time, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return False
    return earliest <= created <= latest


def synced_record(account: str, f: LocalFile, image_hash: str) -> FileRecord:
    """The manifest row of a file whose content maps to `image_hash`."""
    return FileRecord(
        account=account,
        path=f.path,
        size=f.size,
        mtime_ns=f.mtime_ns,
        md5=f.md5,
        state=FileState.SYNCED,
        remote_hash=image_hash,
    )


def _skip_record(account: str, skip: Skip) -> FileRecord:
    return FileRecord(
        account=account,
        path=skip.path,
        size=skip.size,
        mtime_ns=skip.mtime_ns,
        md5=None,
        state=FileState.SKIPPED,
        last_error=skip.reason,
    )
