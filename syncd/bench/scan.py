"""Scan at scale: a no-change `--reconcile` of a large synced tree against a bare walk.

The baseline is `os.walk` + `os.stat` of every file in a fresh `python -c` process, so both
sides pay an interpreter start; it is also timed in-process. Rounds alternate (walk,
reconcile) after one warm-up walk, and medians are compared. The remote listing of every
image is part of a reconcile and not of a walk; its share is reported. Each round also times,
spawn to exit, a bare aiohttp listing of the same account (syncd.bench.bare_lister) and a bare
pass (syncd.bench.bare_pass: walk, manifest rows and listing at once, then one comparison):
what the listing alone costs here, and the floor of a no-change pass in Python. Then the
daemon's start-up scan on the same tree: spawn to the first `scan_complete`, and its RSS then.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from syncd.bench import procs
from syncd.bench.bigtree import BigTree, big_tree
from syncd.bench.report import BenchResult
from syncd.bench.world import ACCOUNT, Context, emulator, request_log, write_config
from syncd.emulator import EmulatorThread

WALK = """
import os, sys
n = 0
for d, _, names in os.walk(sys.argv[1]):
    for name in names:
        os.stat(os.path.join(d, name))
        n += 1
print(n)
"""


def run(ctx: Context) -> BenchResult:
    """Walk and reconcile alternately, then the daemon's start-up scan."""
    rounds = int(ctx.pick(1, 3))
    result = BenchResult("scan")
    work = ctx.workdir("scan")
    with emulator(latency_ms=0.0) as emu:
        tree = big_tree(ctx, emu)
        result.params = {
            "files": len(tree.paths),
            "folders": tree.folders,
            "rounds": rounds,
            "latency_ms": 0.0,
            "seeding": "direct (see syncd/bench/bigtree.py); checked: no POST, nothing hashed",
            "seed_seconds": {k: round(v, 1) for k, v in tree.seconds.items()},
        }
        _walk_subprocess(tree.root)  # warm the dentry and inode caches for both sides
        walks, lists, bares, recs = [], [], [], []
        for i in range(rounds):
            walks.append(_walk_subprocess(tree.root))
            lists.append(_bare_listing(emu, len(tree.paths)))
            bares.append(_bare_pass(emu, tree, work))
            recs.append(_reconcile(emu, tree, work, i))
        inproc = _walk_in_process(tree.root)
        daemon = _daemon_startup(emu, tree, work)
        manifest_bytes = _manifest_bytes(work / "manifest-0.sqlite3")
    result.details = {
        "walk_seconds": walks,
        "bare_listing_seconds": lists,
        "bare_pass_seconds": bares,
        "reconciles": recs,
        "daemon": daemon,
    }
    _report(result, tree, (walks, lists, bares, inproc), recs, daemon, manifest_bytes)
    return result


def _walk_subprocess(root: Path) -> float:
    started = time.monotonic()
    subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", WALK, str(root)], check=True, capture_output=True, timeout=600
    )
    return time.monotonic() - started


def _bare_listing(emu: EmulatorThread, images: int) -> float:
    args = ["syncd.bench.bare_lister", emu.base_url, ACCOUNT]
    return _bare("bare listing", args, f"{images}")


def _bare_pass(emu: EmulatorThread, tree: BigTree, work: Path) -> float:
    manifest = tree.manifest_copy(work / "manifest-bare.sqlite3")
    args = ["syncd.bench.bare_pass", emu.base_url, ACCOUNT, str(tree.root), str(manifest)]
    count = len(tree.paths)
    return _bare("bare pass", args, f"{count} {count}")  # every file unchanged, every image listed


def _bare(who: str, args: list[str], expected: str) -> float:
    """`python -m ARGS`, timed from spawn to exit; it must print `expected`."""
    wall, printed = procs.run_module(who, args, timeout=600)
    if printed.strip() != expected:
        raise RuntimeError(f"the {who} printed {printed[-200:]!r}, not {expected!r}")
    return wall


def _walk_in_process(root: Path) -> float:
    started = time.monotonic()
    for folder, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(folder, name))
    return time.monotonic() - started


def _reconcile(emu: EmulatorThread, tree: BigTree, work: Path, i: int) -> dict[str, Any]:
    manifest = tree.manifest_copy(work / f"manifest-{i}.sqlite3")
    config = write_config(work / f"syncd-{i}.toml", emu, manifest=manifest, folder=tree.root)
    before = len(request_log(emu))
    done = procs.reconcile(config, timeout=1800)
    log = request_log(emu)[before:]
    lists = [r["at"] for r in log if r["method"] == "GET" and "hashes" not in r["query"]]
    summary = next((e for e in done.events if e.get("event") == "reconcile_account_done"), {})
    changed = {k: summary.get(k) for k in ("uploaded", "linked", "deleted", "failed")}
    if done.code != 0 or any(changed.values()) or any(r["method"] != "GET" for r in log):
        raise RuntimeError(f"the no-change reconcile changed something: {changed}")
    return {
        "wall_seconds": round(done.wall, 3),
        "maxrss_mb": round(done.maxrss_mb, 1),
        "cpu_seconds": round(done.cpu, 2),
        "list_pages": len(lists),
        "listing_seconds": round(lists[-1] - lists[0], 3) if lists else 0.0,
        "summary": changed,
    }


def _daemon_startup(emu: EmulatorThread, tree: BigTree, work: Path) -> dict[str, Any]:
    manifest = tree.manifest_copy(work / "manifest-daemon.sqlite3")
    config = write_config(
        work / "syncd-daemon.toml",
        emu,
        manifest=manifest,
        folder=tree.root,
        sync={"observer": "native"},
    )
    proc = procs.SyncdProcess(["--config", str(config)])
    try:
        event = proc.wait_event("scan_complete", timeout=1800)
        rss, hwm = proc.memory_mb()
    finally:
        done = proc.stop()
    return {
        "seconds_to_scan_complete": round(event[procs.ARRIVED] - proc.started, 3),
        "rss_mb_at_scan_complete": round(rss, 1),
        "peak_rss_mb_at_scan_complete": round(hwm, 1),
        "peak_rss_mb_whole_life": round(done.maxrss_mb, 1),
        "uploaded": event.get("uploaded"),
        "exit_code": done.code,
    }


def _manifest_bytes(path: Path) -> int:
    extra = [Path(f"{path}{s}") for s in ("-wal", "-shm")]
    return path.stat().st_size + sum(p.stat().st_size for p in extra if p.exists())


def _report(
    result: BenchResult,
    tree: BigTree,
    baselines: tuple[list[float], list[float], list[float], float],
    recs: list[dict[str, Any]],
    daemon: dict[str, Any],
    manifest_bytes: int,
) -> None:
    walks, lists, bares, inproc = baselines
    walk = statistics.median(walks)
    bare_listing = statistics.median(lists)
    bare_pass = statistics.median(bares)
    rec = statistics.median(r["wall_seconds"] for r in recs)
    listing = statistics.median(r["listing_seconds"] for r in recs)
    result.add("bare walk+stat (python -c)", walk, "s")
    result.add("bare walk+stat (in-process)", inproc, "s")
    result.add("no-change reconcile", rec, "s")
    result.add("reconcile / bare walk", rec / walk, "x", at_most=2.0)
    result.add("  of which remote listing (emulator)", listing, "s")
    result.add("reconcile minus listing / bare walk", (rec - listing) / walk, "x")
    result.add("bare aiohttp listing (python -m)", bare_listing, "s")
    result.add("bare listing / bare walk", bare_listing / walk, "x")
    result.add("bare pass: walk, rows, listing, compared (python -m)", bare_pass, "s")
    result.add("bare pass / bare walk", bare_pass / walk, "x")
    result.add("reconcile / bare pass", rec / bare_pass, "x")
    result.add("reconcile peak RSS", max(r["maxrss_mb"] for r in recs), "MB", at_most=150)
    result.add("daemon start-up scan", daemon["seconds_to_scan_complete"], "s")
    result.add("daemon start-up scan / bare walk", daemon["seconds_to_scan_complete"] / walk, "x")
    result.add(
        "daemon RSS peak at scan_complete",
        daemon["peak_rss_mb_at_scan_complete"],
        "MB",
        at_most=150,
    )
    result.add("manifest bytes per file", manifest_bytes / len(tree.paths), "B")
