"""Daemon latency and idle cost.

Latency: the real daemon (native observer) watches an empty folder; files are written one by
one under a hidden temporary name and renamed into place, so "complete" is the rename. The
upload is done at the daemon's own `file_uploaded` event timestamp (same wall clock). The
figure is that difference minus `settle_seconds`, which the daemon must wait by design.

Idle: the daemon watches the shared large synced tree; after its start-up scan and the work
that follows it (reported as the "tail"), its CPU time (/proc/PID/stat, all threads) is
sampled over a window, natively and with polling at the default interval. Polling paces
itself on a big tree (syncd.polling): its window then spans several looks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from syncd.bench import imagegen, procs
from syncd.bench.bigtree import big_tree
from syncd.bench.report import BenchResult
from syncd.bench.world import Context, emulator, write_config
from syncd.config import SyncConfig
from syncd.emulator import EmulatorThread

QUIET_PCT = 2.0
TAIL_MAX = 300.0
POLL_PERIODS = 3  # a paced polling window spans this many looks


def run(ctx: Context) -> BenchResult:
    """Latency first (small folder), then idle CPU on the large tree, native then polling."""
    params: dict[str, Any] = {
        "files": ctx.pick(20, 200),
        "image_bytes": 100_000,
        "settle_seconds": ctx.pick(0.5, SyncConfig().settle_seconds),
        "write_interval_seconds": 0.1,
        "latency_ms": 20.0,
        "workers": SyncConfig().workers,
        "idle_window_seconds": ctx.pick(1.5, 30.0),
        "poll_interval_seconds": SyncConfig().poll_interval_seconds,
    }
    result = BenchResult("latency", params=params)
    work = ctx.workdir("latency")
    with emulator(latency_ms=params["latency_ms"]) as emu:
        lat = _latency(emu, work, params)
        tree = big_tree(ctx, emu)
        params["idle_tree_files"] = len(tree.paths)
        window = params["idle_window_seconds"]
        native = _idle(
            emu,
            work,
            tree.manifest_copy(work / "m-native.sqlite3"),
            tree.root,
            "native",
            window,
            None,
        )
        # Polling never goes quiet, so it is given the tail the native daemon needed.
        polling = _idle(
            emu,
            work,
            tree.manifest_copy(work / "m-polling.sqlite3"),
            tree.root,
            "polling",
            window,
            native["tail_seconds"] + 1.0,
        )
        idle = {"native": native, "polling": polling}
    result.details = {"latency": lat, "idle": idle}
    lats = sorted(lat["latencies_ms"])
    result.add("p50 file complete -> uploaded, minus settle", _pct(lats, 50), "ms")
    result.add("p99 file complete -> uploaded, minus settle", _pct(lats, 99), "ms", at_most=250)
    result.add("max", lats[-1] if lats else float("nan"), "ms")
    result.add("start-up tail after scan_complete (native)", native["tail_seconds"], "s")
    result.add("CPU in that tail", native["tail_cpu_seconds"], "s")
    result.add(f"idle CPU, native, {len(tree.paths)} files", native["cpu_pct"], "%", at_most=1.0)
    result.add(
        f"idle CPU, polling (every {params['poll_interval_seconds']:g}s or paced)",
        idle["polling"]["cpu_pct"],
        "%",
    )
    period = idle["polling"]["poll_period_seconds"]
    result.add("polling: seconds from one look to the next", period or float("nan"), "s")
    return result


def _poll_period(proc: procs.SyncdProcess) -> float | None:
    """Seconds from one look to the next when the daemon paced its polling, else None."""
    paced = proc.named("watcher_poll_paced")
    if not paced:
        return None
    return float(paced[-1]["interval_seconds"]) + float(paced[-1]["look_seconds"])


def _pct(values: list[float], q: int) -> float:
    """The q-th percentile by nearest rank (p99 of 200 samples is the 198th)."""
    if not values:
        return float("nan")
    rank = max(1, -(-q * len(values) // 100))
    return values[rank - 1]


def _latency(emu: EmulatorThread, work: Path, params: dict[str, Any]) -> dict[str, Any]:
    folder = work / "watched"
    folder.mkdir()
    config = write_config(
        work / "syncd-latency.toml",
        emu,
        manifest=work / "manifest-latency.sqlite3",
        folder=folder,
        sync={
            "observer": "native",
            "settle_seconds": params["settle_seconds"],
            "workers": params["workers"],
        },
    )
    proc = procs.SyncdProcess(["--config", str(config)])
    count = int(params["files"])
    complete: dict[str, float] = {}
    try:
        proc.wait_event("scan_complete", timeout=60)
        for i in range(count):
            name = f"img{i:04d}.png"
            tmp = folder / f".{name}.part"
            tmp.write_bytes(imagegen.png_bytes(50_000 + i, params["image_bytes"]))
            os.rename(tmp, folder / name)
            complete[name] = time.time()
            time.sleep(params["write_interval_seconds"])
        proc.wait_for(lambda: proc.count("file_uploaded") >= count, 120, "all uploads")
    finally:
        done = proc.stop()
    settle_ms = params["settle_seconds"] * 1000
    lat = [
        (procs.event_time(e) - complete[str(e["path"])]) * 1000 - settle_ms
        for e in done.events
        if e.get("event") == "file_uploaded"
    ]
    return {
        "uploaded": len(lat),
        "latencies_ms": [round(x, 1) for x in lat],
        "maxrss_mb": round(done.maxrss_mb, 1),
    }


def _quiet(proc: procs.SyncdProcess, since: float) -> dict[str, float]:
    """Wait out the work that follows `scan_complete` (the deletion sweep reads the whole
    manifest): until one second passes with under QUIET_PCT % of a core, at most TAIL_MAX."""
    cpu_start = proc.cpu_seconds()
    before = cpu_start
    while time.monotonic() - since < TAIL_MAX:
        time.sleep(1.0)
        now = proc.cpu_seconds()
        if now - before < QUIET_PCT / 100:
            break
        before = now
    return {
        "tail_seconds": round(time.monotonic() - since, 1),
        "tail_cpu_seconds": round(proc.cpu_seconds() - cpu_start, 2),
    }


def _idle(
    emu: EmulatorThread,
    work: Path,
    manifest: Path,
    root: Path,
    mode: str,
    window: float,
    tail: float | None,
) -> dict[str, Any]:
    config = write_config(
        work / f"syncd-idle-{mode}.toml",
        emu,
        manifest=manifest,
        folder=root,
        sync={"observer": mode},
    )
    proc = procs.SyncdProcess(["--config", str(config)])
    try:
        event = proc.wait_event("scan_complete", timeout=1800)
        startup = event[procs.ARRIVED] - proc.started
        if tail is None:
            waited = _quiet(proc, event[procs.ARRIVED])
        else:
            time.sleep(max(0.0, tail - (time.monotonic() - event[procs.ARRIVED])))
            waited = {"tail_seconds": tail, "tail_cpu_seconds": float("nan")}
        period = _poll_period(proc)
        if period is not None:
            # Paced polling looks every `period` seconds: a window of whole periods holds as
            # many looks as it should, where a shorter one could hold none.
            window = max(window, POLL_PERIODS * period)
        cpu0, t0 = proc.cpu_seconds(), time.monotonic()
        time.sleep(window)
        cpu1, t1 = proc.cpu_seconds(), time.monotonic()
        watching = proc.named("account_watching")
    finally:
        done = proc.stop()
    return {
        "observer": watching[0].get("observer") if watching else None,
        "poll_period_seconds": period,
        "startup_seconds": round(startup, 2),
        **waited,
        "cpu_seconds": round(cpu1 - cpu0, 3),
        "window_seconds": round(t1 - t0, 2),
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        "maxrss_mb": round(done.maxrss_mb, 1),
    }
