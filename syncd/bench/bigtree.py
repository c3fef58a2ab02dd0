"""A large, already-synced tree, built once per run and shared by the scan and idle benchmarks.

Seeding is direct, and says so: the files are written, each one's real MD5 is computed from
the bytes written, the emulator stores every image through `EmulatorState.upload` (its own
validation and hash, no HTTP), and the manifest gets the very rows a reconcile would write
(`SqliteManifest.finish_upload`: image row plus synced file row with the size and mtime from
stat). A real reconcile would need 100,000 POSTs first; the benchmark checks afterwards that
syncd found nothing to do (no POST, no read of file content, nothing linked).
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from syncd.bench import imagegen
from syncd.bench.world import ACCOUNT, Context, seed_images
from syncd.emulator import EmulatorThread
from syncd.manifest import SqliteManifest
from syncd.models import FileRecord, FileState, ImageOrigin, ImageRecord


@dataclass
class BigTree:
    """The tree, the manifest that describes it, and what the emulator must hold."""

    root: Path
    template: Path  # the seeded manifest; copy it before use (`manifest_copy`)
    paths: list[str]
    contents: list[bytes]
    hashes: list[str] = field(default_factory=list)
    folders: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def seed(self, emu: EmulatorThread) -> None:
        """Give an emulator the images; the hashes must be the ones the manifest holds."""
        names = [p.rpartition("/")[2] for p in self.paths]
        hashes = seed_images(emu, names, self.contents)
        if self.hashes and hashes != self.hashes:
            raise RuntimeError("the emulator gave different hashes for the same bytes")
        self.hashes = hashes

    def manifest_copy(self, dest: Path) -> Path:
        """A private copy of the seeded manifest."""
        shutil.copyfile(self.template, dest)
        return dest


def big_tree(ctx: Context, emu: EmulatorThread) -> BigTree:
    """The run's shared tree (built on first use), seeded into `emu`."""
    tree = ctx.shared.get("big_tree")
    if not isinstance(tree, BigTree):
        tree = _build(ctx, emu)
        ctx.shared["big_tree"] = tree
        # The tree (300,000 objects) lives as long as the run, in the process whose threads
        # host the emulator for every later benchmark. Left to the collector, its full
        # collections stalled that emulator for up to half a second (the latency benchmark's
        # p99 went from 31 ms to 506 ms in one full run; reproduced with any such heap, and
        # gone when it is frozen). Frozen, it is never scanned again, as syncd's own CLI does.
        gc.collect()
        gc.freeze()
    else:
        tree.seed(emu)
    return tree


def _build(ctx: Context, emu: EmulatorThread) -> BigTree:
    files, folders = int(ctx.pick(3_000, 100_000)), int(ctx.pick(30, 1_000))
    base = ctx.workdir("bigtree")
    root = base / "share"
    paths = imagegen.tree_paths(files, folders)
    started = time.monotonic()
    contents = imagegen.write_tree(root, paths, size=None, seed0=1_000_000)
    tree = BigTree(root, base / "manifest.sqlite3", paths, contents, folders=folders)
    tree.seconds["write_files"] = time.monotonic() - started
    started = time.monotonic()
    tree.seed(emu)
    tree.seconds["seed_emulator"] = time.monotonic() - started
    started = time.monotonic()
    _write_manifest(tree)
    tree.seconds["seed_manifest"] = time.monotonic() - started
    return tree


def _write_manifest(tree: BigTree) -> None:
    manifest = SqliteManifest.open(tree.template)
    try:
        now = time.time()
        for rel, data, image_hash in zip(tree.paths, tree.contents, tree.hashes, strict=True):
            st = os.stat(tree.root / rel)
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            name = rel.rpartition("/")[2]
            image = ImageRecord(ACCOUNT, image_hash, md5, ImageOrigin.UPLOADED, now, name=name)
            row = FileRecord(
                ACCOUNT, rel, st.st_size, st.st_mtime_ns, md5, FileState.SYNCED, image_hash
            )
            manifest.finish_upload(image, [row])
        manifest.note_scan(ACCOUNT, now, None)
    finally:
        manifest.close()
