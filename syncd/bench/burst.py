"""Burst: many files dropped at once into a watched folder, against `--reconcile` of the same.

The files are written to a staging folder first. `--reconcile` syncs the staging folder
(fresh emulator, fresh manifest) and is timed from spawn to exit. A daemon watches an empty
folder (fresh emulator and manifest again), every file is renamed into it in one go (same
file system: each appears complete, at once), and the daemon is timed from the first rename
to its last `file_uploaded` event; the files are then renamed back. Its RSS is sampled during
the burst; the peak is the VmHWM that syncd.bench.procs samples until the process exits.

Order: reconcile, daemon, daemon, reconcile, and the ratio uses the means: one run of each
side, a minute and more apiece, let this machine's drift decide the ratio (single runs of the
same code measured it from 0.87 to 1.15). (Smoke: reconcile, daemon, once.)
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from syncd.bench import imagegen, procs
from syncd.bench.report import BenchResult
from syncd.bench.world import Context, emulator, fresh, image_count, request_log, write_config
from syncd.emulator import EmulatorThread


def run(ctx: Context) -> BenchResult:
    """Reconcile first, then the daemon, on the same files."""
    params: dict[str, Any] = {
        "files": ctx.pick(300, 20_000),
        "image_bytes": 20_000,
        "workers": 8,
        "settle_seconds": 1.0,
        "latency_ms": 20.0,
        "rate_limit": "none (emulator score model off; config rate 10000/s)",
        "layout": "one flat folder",
    }
    result = BenchResult("burst", params=params)
    work = ctx.workdir("burst")
    staging = work / "staging"
    count = int(params["files"])
    names = [f"burst{i:06d}.png" for i in range(count)]
    imagegen.write_tree(staging, names, params["image_bytes"], seed0=2_000_000)
    time.sleep(params["settle_seconds"])  # older than settle_seconds: reconcile need not wait
    sync = {"workers": params["workers"], "settle_seconds": params["settle_seconds"]}
    order = ["reconcile", "daemon", "daemon", "reconcile"] if ctx.full else ["reconcile", "daemon"]
    recs: list[dict[str, Any]] = []
    daemons: list[dict[str, Any]] = []
    with emulator(latency_ms=params["latency_ms"]) as emu:
        for i, who in enumerate(order):
            fresh(emu)
            if who == "reconcile":
                recs.append(_reconcile(emu, work / f"run-{i}", staging, sync, count))
            else:
                daemons.append(_daemon(emu, work / f"run-{i}", staging, names, sync, count))
    result.details = {"reconcile": recs, "daemon": daemons}
    _report(result, recs, daemons, count)
    return result


def _report(
    result: BenchResult, recs: list[dict[str, Any]], daemons: list[dict[str, Any]], count: int
) -> None:
    rec = statistics.mean(r["uploads_per_second"] for r in recs)
    daemon = statistics.mean(d["uploads_per_second"] for d in daemons)
    result.add("reconcile uploads/s", rec, "/s")
    result.add("daemon uploads/s", daemon, "/s")
    result.add("daemon / reconcile throughput", daemon / rec, "x", at_least=0.9)
    result.add("daemon peak RSS", max(d["maxrss_mb"] for d in daemons), "MB", at_most=200)
    result.add("reconcile peak RSS", max(r["maxrss_mb"] for r in recs), "MB")
    every = all(d["images"] == count for d in daemons)
    result.add("daemon: all uploaded", float(every), "", at_least=1)
    result.add("daemon full passes during the burst", max(d["extra_passes"] for d in daemons), "")


def _reconcile(
    emu: EmulatorThread, work: Path, folder: Path, sync: dict[str, Any], count: int
) -> dict[str, Any]:
    work.mkdir()
    config = write_config(
        work / "syncd-reconcile.toml",
        emu,
        manifest=work / "manifest-reconcile.sqlite3",
        folder=folder,
        sync=sync,
    )
    done = procs.reconcile(config, timeout=count / 20 + 300)
    images = image_count(emu)
    if done.code != 0 or images != count:
        raise RuntimeError(f"reconcile exit {done.code}, {images} of {count} images")
    posts = [r["at"] for r in request_log(emu) if r["method"] == "POST"]
    return {
        "wall_seconds": round(done.wall, 2),
        "uploads_per_second": count / done.wall,
        "post_phase_seconds": round(posts[-1] - posts[0], 2),
        "maxrss_mb": round(done.maxrss_mb, 1),
        "cpu_seconds": round(done.cpu, 1),
        "images": images,
    }


def _daemon(
    emu: EmulatorThread,
    work: Path,
    staging: Path,
    names: list[str],
    sync: dict[str, Any],
    count: int,
) -> dict[str, Any]:
    watched = work / "watched"
    watched.mkdir(parents=True)
    config = write_config(
        work / "syncd-daemon.toml",
        emu,
        manifest=work / "manifest-daemon.sqlite3",
        folder=watched,
        sync={**sync, "observer": "native"},
    )
    proc = procs.SyncdProcess(["--config", str(config)])
    rss: list[tuple[float, float]] = []
    try:
        proc.wait_event("scan_complete", timeout=60)
        dropped = time.time()
        for name in names:
            os.rename(staging / name, watched / name)
        rename_seconds = time.time() - dropped
        deadline = time.monotonic() + count / 20 + 300
        while proc.count("file_uploaded") < count and time.monotonic() < deadline:
            rss.append((round(time.time() - dropped, 1), round(proc.memory_mb()[0], 1)))
            time.sleep(0.5)
        passes = proc.count("scan_complete")
    finally:
        done = proc.stop()
        for name in names:  # back for the next run (a file still in staging was never moved)
            if (watched / name).exists():
                os.rename(watched / name, staging / name)
    uploads = [procs.event_time(e) for e in done.events if e.get("event") == "file_uploaded"]
    last = max(uploads) if uploads else float("nan")
    return {
        "rename_seconds": round(rename_seconds, 2),
        "seconds_to_last_upload": round(last - dropped, 2),
        "uploads_per_second": len(uploads) / (last - dropped) if uploads else 0.0,
        "uploaded_events": len(uploads),
        "images": image_count(emu),
        "maxrss_mb": round(done.maxrss_mb, 1),
        "cpu_seconds": round(done.cpu, 1),
        "extra_passes": passes - 1,
        "rss_samples_mb": rss,
        "exit_code": done.code,
    }
