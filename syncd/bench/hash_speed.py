"""Hashing: syncd's `hashing.md5_file` against coreutils `md5sum` on the same files.

Both read the same warm files (written just before, so the page cache holds them: this is
MD5 and read-path speed, not disk speed), one file at a time, in alternating rounds; the
figure compares median throughputs. While syncd hashes, a ticker task on the same event loop
measures how late its 5 ms sleeps wake up: the worst lag is the loop's worst stall. The
scanner's own path (`scan_folder`, signature check then hash, 4 at a time) is measured too.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from syncd.bench import imagegen
from syncd.bench.report import BenchResult
from syncd.bench.world import Context
from syncd.hashing import md5_file
from syncd.scanner import scan_folder

TICK = 0.005
FILE_BYTES = 8 * 1024 * 1024


def run(ctx: Context) -> BenchResult:
    """Write the files, then alternate md5sum and syncd rounds."""
    total = int(ctx.pick(64, 1024)) * 1024 * 1024
    rounds = int(ctx.pick(2, 3))
    params: dict[str, Any] = {
        "total_bytes": total,
        "file_bytes": FILE_BYTES,
        "files": total // FILE_BYTES,
        "rounds": rounds,
        "cache": "warm (files written just before; RAM holds them)",
        "ticker_seconds": TICK,
    }
    result = BenchResult("hashing", params=params)
    folder = ctx.workdir("hashing") / "share"
    paths = [folder / p for p in imagegen.tree_paths(total // FILE_BYTES, 4)]
    imagegen.write_tree(folder, [str(p.relative_to(folder)) for p in paths], FILE_BYTES)
    md5sum = shutil.which("md5sum")
    if md5sum is None:
        result.error = "md5sum (coreutils) is not installed"
        return result
    theirs, ours, scans = [], [], []
    # The machine's own noise floor: the same ticker with nothing else running.
    baseline = asyncio.run(_with_ticker(lambda: asyncio.sleep(2.0)))
    for _ in range(rounds):
        theirs.append(_md5sum(md5sum, paths))
        ours.append(asyncio.run(_with_ticker(lambda: _md5_each(paths))))
        scans.append(asyncio.run(_with_ticker(lambda: _scan(folder, len(paths)))))
    result.details = {
        "md5sum_seconds": theirs,
        "syncd": ours,
        "scan_folder": scans,
        "idle_baseline": baseline,
    }
    mb = total / 1e6
    md5sum_rate = mb / statistics.median(theirs)
    our_rate = mb / statistics.median(r["seconds"] for r in ours)
    scan_rate = mb / statistics.median(r["seconds"] for r in scans)
    result.add("md5sum throughput", md5sum_rate, "MB/s")
    result.add("syncd md5_file throughput", our_rate, "MB/s")
    result.add("syncd / md5sum throughput", our_rate / md5sum_rate, "x", at_least=0.9)
    result.add("worst loop lag while hashing", max(r["lag_ms"] for r in ours), "ms", at_most=50)
    result.add("scan_folder (4 at a time) throughput", scan_rate, "MB/s")
    result.add("worst loop lag while scanning", max(r["lag_ms"] for r in scans), "ms", at_most=50)
    result.add("p99 loop lag while scanning", max(r["p99_ms"] for r in scans), "ms")
    result.add("worst loop lag, idle loop (noise floor)", baseline["lag_ms"], "ms")
    return result


def _md5sum(md5sum: str, paths: list[Path]) -> float:
    started = time.monotonic()
    subprocess.run(  # noqa: S603 - coreutils md5sum on our own files
        [md5sum, *map(str, paths)], check=True, stdout=subprocess.DEVNULL, timeout=600
    )
    return time.monotonic() - started


async def _md5_each(paths: list[Path]) -> None:
    for path in paths:
        await md5_file(path)


async def _scan(folder: Path, expected: int) -> None:
    result = await scan_folder(folder, {}, now=time.time() + 3600, settle_seconds=0.0)
    if len(result.files) != expected:
        raise RuntimeError(f"scan_folder hashed {len(result.files)} of {expected} files")


async def _with_ticker(work: Callable[[], Awaitable[None]]) -> dict[str, float]:
    """Run `work` while a ticker measures loop lag: seconds, worst and p99 lag."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    lags: list[float] = []

    async def tick() -> None:
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(TICK)
            lags.append(loop.time() - before - TICK)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    started = time.monotonic()
    try:
        await work()
    finally:
        seconds = time.monotonic() - started
        done.set()
        await ticker
    lags.sort()
    worst = lags[-1] if lags else 0.0
    p99 = lags[min(len(lags) - 1, len(lags) * 99 // 100)] if lags else 0.0
    return {
        "seconds": round(seconds, 3),
        "lag_ms": round(worst * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "ticks": len(lags),
    }
