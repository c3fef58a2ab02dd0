"""Versus the peer: syncd `--reconcile` against the sequential facebook-business SDK script.

Both are subprocesses timed from spawn to exit (interpreter start and imports included, as a
user meets them), each against a fresh emulator (20 ms latency, no rate limit) and the same
folder of ~100 KB images. Order: peer, syncd w=8, bare, the worker curve, syncd w=8, bare,
peer, so drift on this shared machine hits every side; the ratios use the means. (Smoke: w=1,
w=8 and the bare client, once.)

The bare client (syncd.bench.bare_client) is aiohttp and nothing else: every image read into
memory first, then 8 POSTs at a time, no scan, manifest, log or retry. peer / bare shows how
near to the target the plainest concurrent aiohttp script comes on this machine.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from syncd.bench import imagegen, procs
from syncd.bench.report import BenchResult
from syncd.bench.world import (
    ACCOUNT,
    Context,
    emulator,
    fresh,
    image_count,
    request_log,
    write_config,
)
from syncd.emulator import EmulatorThread

CURVE = (1, 2, 4, 8, 16)
PEER = 0  # in the run order: the SDK peer
BARE = -1  # in the run order: the bare aiohttp client


def run(ctx: Context) -> BenchResult:
    """Peer twice, syncd at every worker count (w=8 twice), fresh emulator state each."""
    params: dict[str, Any] = {
        "images": ctx.pick(40, 500),
        "image_bytes": 100_000,
        "latency_ms": 20.0,
        "rate_limit": "none (emulator score model off; config rate 10000/s, burst 10000)",
        "workers_curve": list(CURVE) if ctx.full else [1, 8],
        "peer": "facebook-business SDK, AdImage(parent_id=...).remote_create() per file",
        "bare": "aiohttp client, every image in memory first, 8 POSTs at a time",
    }
    result = BenchResult("peer", params=params)
    work = ctx.workdir("peer")
    folder = work / "share"
    count = int(params["images"])
    imagegen.write_tree(folder, imagegen.tree_paths(count, 5), params["image_bytes"])
    runs: list[dict[str, Any]] = []
    with emulator(latency_ms=params["latency_ms"]) as emu:
        curve = CURVE if ctx.full else (1, 8)  # smoke: two points, each once, to stay short
        order: list[int] = [PEER, 8, BARE, *(w for w in curve if w != 8)]
        order += [8, BARE, PEER] if ctx.full else []
        for i, workers in enumerate(order):
            fresh(emu)
            if workers == PEER:
                runs.append(_peer(emu, folder, count))
            elif workers == BARE:
                runs.append(_bare(emu, folder, count))
            else:
                runs.append(_syncd(emu, work, folder, workers, i, count))
    result.details = {"runs": runs}
    _report(result, runs, count)
    return result


def _peer(emu: EmulatorThread, folder: Path, count: int) -> dict[str, Any]:
    args = ["syncd.bench.sdk_peer", emu.base_url, ACCOUNT, str(folder)]
    return _script("peer", args, emu, count)


def _bare(emu: EmulatorThread, folder: Path, count: int) -> dict[str, Any]:
    args = ["syncd.bench.bare_client", emu.base_url, ACCOUNT, str(folder), "8"]
    return _script("bare client", args, emu, count)


def _script(who: str, args: list[str], emu: EmulatorThread, count: int) -> dict[str, Any]:
    """`python -m ARGS`, timed from spawn to exit."""
    wall, _ = procs.run_module(who, args, timeout=30 + count)
    return _run_facts(who, wall, emu, count, 0)


def _syncd(
    emu: EmulatorThread, work: Path, folder: Path, workers: int, i: int, count: int
) -> dict[str, Any]:
    config = write_config(
        work / f"syncd-{i}.toml",
        emu,
        manifest=work / f"manifest-{i}.sqlite3",
        folder=folder,
        sync={"workers": workers},
    )
    done = procs.reconcile(config, timeout=30 + count)
    facts = _run_facts(f"syncd w={workers}", done.wall, emu, count, done.code)
    facts.update(workers=workers, maxrss_mb=round(done.maxrss_mb, 1), cpu=round(done.cpu, 2))
    return facts


def _run_facts(who: str, wall: float, emu: EmulatorThread, count: int, code: int) -> dict[str, Any]:
    posts = [r["at"] for r in request_log(emu) if r["method"] == "POST" and r["status"] == 200]
    uploaded = image_count(emu)
    if uploaded != count:
        raise RuntimeError(f"{who} left {uploaded} of {count} images on the emulator")
    return {
        "who": who,
        "wall_seconds": round(wall, 3),
        "post_phase_seconds": round(posts[-1] - posts[0], 3) if posts else None,
        "posts": len(posts),
        "images_on_emulator": uploaded,
        "exit_code": code,
    }


def _report(result: BenchResult, runs: list[dict[str, Any]], count: int) -> None:
    peer = statistics.mean(r["wall_seconds"] for r in runs if r["who"] == "peer")
    peer_posts = statistics.mean(r["post_phase_seconds"] for r in runs if r["who"] == "peer")
    result.add("peer wall time", peer, "s")
    result.add("peer uploads/s", count / peer, "/s")
    for workers in CURVE:
        mine = [r for r in runs if r.get("workers") == workers]
        if not mine:
            continue
        wall = statistics.mean(r["wall_seconds"] for r in mine)
        if workers == 8:
            result.add("peer time / syncd time (w=8)", peer / wall, "x", at_least=6)
            posts = statistics.mean(r["post_phase_seconds"] for r in mine)
            result.add("upload phase only, peer / syncd (w=8)", peer_posts / posts, "x")
        else:
            result.add(f"peer time / syncd time (w={workers})", peer / wall, "x")
    worst = max(r["wall_seconds"] for r in runs if r.get("workers") == 8)
    result.add("syncd w=8 wall time (worst run)", worst, "s")
    bare = statistics.mean(r["wall_seconds"] for r in runs if r["who"] == "bare client")
    mine = statistics.mean(r["wall_seconds"] for r in runs if r.get("workers") == 8)
    result.add("bare aiohttp client (8 at a time) wall time", bare, "s")
    result.add("peer time / bare client time", peer / bare, "x")
    result.add("syncd w=8 time / bare client time", mine / bare, "x")
