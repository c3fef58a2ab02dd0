"""`syncd status [--json]`: what the manifest says, per account and per file.

Reads the manifest read-only (it never creates one), so it is safe to run beside the daemon.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

from syncd.config import Config
from syncd.manifest import SqliteManifest
from syncd.models import FileState, ImageOrigin, display_path


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """One account's summary and rows, ready to print."""

    account: str
    folder: str
    counts: dict[str, int]
    images: int
    adopted: int
    pending_deletions: int
    last_scan: float | None
    last_error: str | None
    files: list[dict[str, Any]]


def gather(config: Config, manifest: SqliteManifest) -> list[AccountStatus]:
    """Every configured account's status, from the manifest only."""
    out = []
    for acct in config.accounts:
        files = manifest.files(acct.id)
        images = manifest.images(acct.id)
        counts = Counter(r.state.value for r in files.values())
        last_scan, last_error = manifest.last_scan(acct.id)
        rows = [
            {
                "path": display_path(r.path),
                "state": r.state.value,
                "hash": r.remote_hash,
                "reason": r.last_error,
                "size": r.size,
            }
            for r in sorted(files.values(), key=lambda r: r.path)
        ]
        out.append(
            AccountStatus(
                account=acct.id,
                folder=str(acct.folder),
                counts={s.value: counts.get(s.value, 0) for s in FileState},
                images=len({i.hash for i in images}),
                adopted=len({i.hash for i in images if i.origin is ImageOrigin.ADOPTED}),
                pending_deletions=len({i.hash for i in images if i.gone_since is not None}),
                last_scan=last_scan,
                last_error=last_error,
                files=rows,
            )
        )
    return out


def render_json(statuses: list[AccountStatus], out: TextIO) -> None:
    """The machine-readable form: every file, with state, hash and reason."""
    doc = {
        "accounts": [
            {
                "id": s.account,
                "folder": s.folder,
                "files": s.counts,
                "images": s.images,
                "adopted_images": s.adopted,
                "pending_deletions": s.pending_deletions,
                "last_scan": s.last_scan,
                "last_error": s.last_error,
                "items": s.files,
            }
            for s in statuses
        ]
    }
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")


def render_text(statuses: list[AccountStatus], out: TextIO) -> None:
    """The human form: counts, then every file that is not synced, with its reason."""
    for s in statuses:
        c = s.counts
        print(
            f"account {s.account} ({s.folder}): {c['synced']} synced, {c['pending']} pending, "
            f"{c['failed']} failed, {c['skipped']} skipped; {s.images} images"
            f"{f', {s.pending_deletions} awaiting deletion' if s.pending_deletions else ''}",
            file=out,
        )
        if s.last_error:
            print(f"  error: {s.last_error}", file=out)
        for row in s.files:
            if row["state"] != FileState.SYNCED.value:
                print(f"  {row['state']:8} {row['path']}: {row['reason'] or ''}", file=out)
