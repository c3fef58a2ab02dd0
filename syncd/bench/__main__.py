"""`python -m syncd.bench [--size smoke|full] [--only NAME,...] [--json PATH]`."""

from __future__ import annotations

import argparse
import compileall
import importlib
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from syncd.bench.report import BenchResult, table, write_json
from syncd.bench.world import Context

# Run in this order, one at a time: the machine has two cores, so nothing overlaps.
BENCHMARKS = {
    "ratelimit": "syncd.bench.ratelimit",
    "peer": "syncd.bench.peer",
    "scan": "syncd.bench.scan",
    "latency": "syncd.bench.latency",
    "hashing": "syncd.bench.hash_speed",
    "burst": "syncd.bench.burst",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m syncd.bench", description=__doc__)
    parser.add_argument("--size", choices=("smoke", "full"), default="smoke")
    parser.add_argument("--only", default="", help=f"comma list of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, default=Path("bench-results/bench.json"))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    args.names = names
    return args


def run_one(name: str, ctx: Context) -> BenchResult:
    """Run one benchmark; a crash becomes an error entry, never the end of the suite."""
    print(f"== {name} ({ctx.size})", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        result: BenchResult = importlib.import_module(BENCHMARKS[name]).run(ctx)
    except Exception as exc:
        traceback.print_exc()
        result = BenchResult(name, error=f"{type(exc).__name__}: {exc}")
    result.seconds = round(time.monotonic() - started, 1)
    print(f"   {name} took {result.seconds:.0f}s", file=sys.stderr, flush=True)
    return result


def compile_syncd() -> bool:
    """Byte-compile syncd as an install does, so no timed run compiles it from source.

    An editable install has no .pyc files, and PYTHONDONTWRITEBYTECODE (set on some machines)
    keeps the interpreter from writing them, so every syncd process would compile its modules
    from source: 0.1 s a start, which the peer (the SDK, installed compiled by pip) does not
    pay. A read-only install is already compiled; failing to write here only costs the timing.
    """
    package = Path(__file__).resolve().parent.parent
    return bool(compileall.compile_dir(package, quiet=2))


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks in order, print the table, write the JSON."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    header = {
        "size": args.size,
        "started_at": datetime.now(UTC).isoformat(),
        "python": sys.version.split()[0],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    header["bytecode_compiled"] = compile_syncd()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as scratch:
        ctx = Context(args.size, Path(scratch))
        results = [run_one(name, ctx) for name in args.names]
    header["seconds"] = round(time.monotonic() - started, 1)
    print(table(results))
    write_json(args.json, header, results)
    print(f"\n{args.size} run took {header['seconds']:.0f}s; figures written to {args.json}")
    if args.size == "smoke":
        print("(smoke sizes are too small for the targets to mean much: only errors fail it)")
        return 1 if any(r.error for r in results) else 0
    failed = any(r.error or any(f.passed is False for f in r.figures) for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
