"""A bare no-change pass: the reads a reconcile cannot skip, done at once, and one comparison.

Run as `python -m syncd.bench.bare_pass BASE_URL ACCOUNT FOLDER MANIFEST` with the token in
SYNCD_ACCESS_TOKEN. In one process, as a reconcile must: walk and `stat` the folder (a
thread), read the manifest's file and image rows (a second thread), and list every image of
the account through aiohttp (the event loop) — all three at once. Then, for each file, the
row with the same path, size and mtime; for each image row, its hash in the listing. It
prints the counts. No filters, hashing, planning, logging, checks or writes; of syncd it
imports only the bare lister.

Timed from spawn to exit beside the bare walk, it is a floor for the scan benchmark's ratio:
the work every no-change reconcile of this tree does, in Python, with nothing else.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys

from syncd.bench.bare_lister import list_statuses

Rows = dict[bytes, tuple[int, int]]


def walk(root: str) -> Rows:
    """Every file under `root` by its path relative to it (bytes, as the manifest keeps it)."""
    out: Rows = {}
    start = len(os.fsencode(root)) + 1
    for folder, _, names in os.walk(os.fsencode(root)):
        for name in names:
            path = os.path.join(folder, name)
            st = os.stat(path)
            out[path[start:]] = (st.st_size, st.st_mtime_ns)
    return out


def manifest_rows(path: str, account: str) -> tuple[Rows, list[str]]:
    """The account's file rows (path -> size, mtime) and its images' hashes."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        files = {
            row[0]: (row[1], row[2])
            for row in conn.execute(
                "SELECT path, size, mtime_ns FROM files WHERE account = ?", (account,)
            )
        }
        hashes = [
            row[0] for row in conn.execute("SELECT hash FROM images WHERE account = ?", (account,))
        ]
    return files, hashes


async def gather(base_url: str, account: str, folder: str, manifest: str) -> tuple[int, int]:
    """Walk, read the manifest and list the account at once; (files unchanged, images listed)."""
    url = f"{base_url}/v21.0/act_{account}/adimages"
    (local, (rows, hashes), statuses) = await asyncio.gather(
        asyncio.to_thread(walk, folder),
        asyncio.to_thread(manifest_rows, manifest, account),
        list_statuses(url),
    )
    unchanged = sum(1 for path, seen in local.items() if rows.get(path) == seen)
    listed = sum(1 for h in hashes if statuses.get(h) == "ACTIVE")
    return unchanged, listed


def main(argv: list[str]) -> int:
    """One bare pass; print the counts."""
    base_url, account, folder, manifest = argv
    print(*asyncio.run(gather(base_url, account, folder, manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
