"""Rate-limit efficiency: how close syncd runs to an account's allowance without throttling.

Part A: the emulator's ads_management score model allows exactly what the config says
(`decay = max_score / decay_seconds` = `rate_per_second` points/s; a write costs 3 points),
so syncd should upload at rate/3 per second and never be throttled. Part B: the emulator
allows half the configured rate; the bucket must adapt (usage headers, throttle answers)
and settle near what the emulator allows. Part C (full size only: it costs a minute): the
account is already blocked when syncd starts (another client spent its quota), to see how
long syncd waits against the emulator's `block_seconds`. Rates come from the request log.
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
    request_log,
    set_limits,
    throttles,
    write_config,
)
from syncd.emulator import AccountLimits, EmulatorThread, RequestRecord

WRITE_COST = 3.0
MAX_SCORE = 15.0  # the emulator's score ceiling: room for the config's burst and then some


def run(ctx: Context) -> BenchResult:
    """Both parts, one emulator, fresh state (and a fresh manifest) for each."""
    rate = float(ctx.pick(30.0, 5.0))  # smoke runs 6x faster so CI stays well under a minute
    params: dict[str, Any] = {
        "rate_per_second": rate,
        "burst": 5,
        "workers": 4,
        "latency_ms": 20.0,
        "uploads_a": ctx.pick(20, 300),
        "uploads_b": ctx.pick(20, 150),
        "uploads_c": 5,
        "emulator_max_score": MAX_SCORE,
        "emulator_points_per_second_a": rate,
        "emulator_points_per_second_b": rate / 2,
        "block_seconds": ctx.pick(3.0, 15.0),
        "image_bytes": 20_000,
    }
    result = BenchResult("ratelimit", params=params)
    work = ctx.workdir("ratelimit")
    with emulator(latency_ms=params["latency_ms"]) as emu:
        part_a = _part(ctx, work, emu, "a", rate, params)
        _report_a(result, part_a, rate)
        part_b = _part(ctx, work, emu, "b", rate / 2, params)
        _report_b(result, part_b, rate / 2)
        result.details = {"a": part_a, "b": part_b}
        if ctx.full:
            part_c = _part(ctx, work, emu, "c", rate / 2, params, blocked=True)
            _report_c(result, part_c)
            result.details["c"] = part_c
    return result


def _part(
    ctx: Context,
    work: Path,
    emu: EmulatorThread,
    tag: str,
    allowed: float,
    params: dict[str, Any],
    *,
    blocked: bool = False,
) -> dict[str, Any]:
    fresh(emu)
    limits = AccountLimits(
        max_score=MAX_SCORE,
        decay_seconds=MAX_SCORE / allowed,
        block_seconds=params["block_seconds"],
        enabled=True,
    )
    set_limits(emu, limits)
    if blocked:  # one call over the maximum blocks the account for block_seconds
        emu.call(emu.state.scores.charge, ACCOUNT, MAX_SCORE + 1, limits)
    folder = work / f"share-{tag}"
    count = int(params[f"uploads_{tag}"])
    imagegen.write_tree(folder, imagegen.tree_paths(count, 1), params["image_bytes"], seed0=0)
    config = write_config(
        work / f"syncd-{tag}.toml",
        emu,
        manifest=work / f"manifest-{tag}.sqlite3",
        folder=folder,
        sync={"workers": params["workers"]},
        account={"rate_per_second": params["rate_per_second"], "burst": params["burst"]},
    )
    expected = count * WRITE_COST / allowed
    done = procs.reconcile(config, timeout=2 * expected + 900)
    log = request_log(emu)
    posts = [r["at"] for r in log if r["method"] == "POST" and r["status"] == 200]
    return {
        "exit_code": done.code,
        "wall_seconds": round(done.wall, 2),
        "uploads": len(posts),
        "throttle_errors": throttles(emu),
        "post_times": [round(t - posts[0], 3) for t in posts] if posts else [],
        "throttled_at": _throttled_at(log, posts[0] if posts else 0.0),
        "syncd_pauses": [
            {"pause_seconds": e.get("pause_seconds"), "call": e.get("call")}
            for e in done.events
            if e.get("event") == "account_throttled"
        ],
        "resume_gaps": _resume_gaps(log),
    }


def _throttled_at(log: list[RequestRecord], origin: float) -> list[float]:
    return [round(r["at"] - origin, 3) for r in log if r["code"] == 80004]


def _resume_gaps(log: list[RequestRecord]) -> list[float]:
    """Seconds from each run of throttle answers to the next call the emulator served."""
    gaps, last_refused = [], None
    for r in log:
        if r["code"] == 80004:
            last_refused = r["at"]
        elif last_refused is not None and r["status"] == 200:
            gaps.append(round(r["at"] - last_refused, 2))
            last_refused = None
    return gaps


def _rate(times: list[float]) -> float:
    """Uploads per second between the first and last of `times` (n-1 intervals)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan")
    return (len(times) - 1) / (times[-1] - times[0])


def _report_a(result: BenchResult, part: dict[str, Any], points: float) -> None:
    allowed = points / WRITE_COST
    # From the third upload on: the bucket starts full, so the first two can come early.
    achieved = _rate(part["post_times"][2:])
    part["achieved_uploads_per_second"] = achieved
    part["allowed_uploads_per_second"] = allowed
    result.add("A achieved/allowed upload rate", achieved / allowed, "x", at_least=0.97)
    result.add("A throttle errors", part["throttle_errors"], "", at_most=0)
    result.add("A all uploaded (exit 0)", float(part["exit_code"] == 0), "", at_least=1)


def _report_b(result: BenchResult, part: dict[str, Any], points: float) -> None:
    allowed = points / WRITE_COST
    times = part["post_times"]
    settled = times[len(times) // 2 :]  # the second half: after the bucket has adapted
    achieved = _rate(settled)
    part["settled_uploads_per_second"] = achieved
    part["whole_run_uploads_per_second"] = _rate(times)
    part["allowed_uploads_per_second"] = allowed
    result.add("B settled achieved/allowed", achieved / allowed, "x", at_least=0.9)
    result.add("B whole-run achieved/allowed", _rate(times) / allowed, "x")
    result.add("B throttle errors", part["throttle_errors"], "", at_most=3)
    result.add("B all uploaded (exit 0)", float(part["exit_code"] == 0), "", at_least=1)


def _report_c(result: BenchResult, part: dict[str, Any]) -> None:
    pauses = [p["pause_seconds"] for p in part["syncd_pauses"] if p["pause_seconds"]]
    result.add("C emulator block_seconds (blocked at start)", result.params["block_seconds"], "s")
    result.add(
        "C syncd pause after the throttle answer",
        statistics.median(pauses) if pauses else float("nan"),
        "s",
        note="the business usage header gives whole minutes; X-Ad-Account-Usage gives seconds",
    )
    gaps = part["resume_gaps"]
    result.add("C throttle answer -> next served call", max(gaps) if gaps else float("nan"), "s")
    result.add("C throttle errors", part["throttle_errors"], "")
    result.add("C all uploaded (exit 0)", float(part["exit_code"] == 0), "", at_least=1)
