"""Burst: many files dropped at once into a watched folder, against `--reconcile` of the same.

The files are written to a staging folder first. `--reconcile` syncs the staging folder
(fresh emulator, fresh manifest) and is timed from spawn to exit. Then a daemon watches an
empty folder (fresh emulator and manifest again), every file is renamed into it in one go
(same file system: each appears complete, at once), and the daemon is timed from the first
rename to its last `file_uploaded` event. Its RSS is sampled during the burst; the peak is
`ru_maxrss` from `wait4` once it stopped.
"""

from __future__ import annotations

import os
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
    with emulator(latency_ms=params["latency_ms"]) as emu:
        rec = _reconcile(emu, work, staging, sync, count)
        fresh(emu)
        daemon = _daemon(emu, work, staging, names, sync, count)
    result.details = {"reconcile": rec, "daemon": daemon}
    result.add("reconcile uploads/s", rec["uploads_per_second"], "/s")
    result.add("daemon uploads/s", daemon["uploads_per_second"], "/s")
    result.add(
        "daemon / reconcile throughput",
        daemon["uploads_per_second"] / rec["uploads_per_second"],
        "x",
        at_least=0.9,
    )
    result.add("daemon peak RSS", daemon["maxrss_mb"], "MB", at_most=200)
    result.add("reconcile peak RSS", rec["maxrss_mb"], "MB")
    result.add("daemon: all uploaded", float(daemon["images"] == count), "", at_least=1)
    result.add("daemon full passes during the burst", daemon["extra_passes"], "")
    return result


def _reconcile(
    emu: EmulatorThread, work: Path, folder: Path, sync: dict[str, Any], count: int
) -> dict[str, Any]:
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
    watched.mkdir()
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
