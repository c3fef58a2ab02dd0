"""The command line: parse, validate everything, then hand over to one command.

Exit codes (CONTRACT): 0 success; 1 reconcile finished with failures; 2 bad usage or bad
configuration, with one line on stderr naming the key or flag, before anything is touched;
3 the Graph API refused the token.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence

from syncd import __version__
from syncd.config import Config, config_path_from, load_config
from syncd.errors import ConfigError, ManifestError
from syncd.logs import configure_logging, get_logger
from syncd.reconcile import EXIT_FAILED, EXIT_USAGE, missing_folders, run_reconcile
from syncd.secrets import Secrets, load_secrets


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; `--config` is accepted before or after a sub-command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="configuration file (TOML); SYNCD_CONFIG may stand in",
    )
    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Keep folders of ad images in sync with Facebook ad accounts.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.add_argument("--reconcile", action="store_true", help="one full pass, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="with --reconcile: print the plan, change nothing"
    )
    parser.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="with --reconcile: delete even when the mass-deletion guard would stop it",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser("status", parents=[common], help="what the manifest says")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    demo = sub.add_parser("demo", help="run against the bundled emulator on a temporary folder")
    demo.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    emu = sub.add_parser("emulator", help="run the bundled Graph API emulator")
    emu.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    emu.add_argument("--port", type=int, default=8765, help="port to bind (0: any free port)")
    return parser


GC_THRESHOLD = 50_000  # allocations between young-generation collections (default 700)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `syncd` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None and (args.dry_run or args.allow_mass_delete) and not args.reconcile:
        parser.error("--dry-run and --allow-mass-delete go with --reconcile")
    if args.command is not None and (args.reconcile or args.dry_run or args.allow_mass_delete):
        parser.error(
            f"--reconcile, --dry-run and --allow-mass-delete do not go with {args.command}"
        )
    _tune_gc()
    try:
        return _dispatch(args)
    except ConfigError as exc:
        return _usage_error(str(exc))
    except KeyboardInterrupt:
        return 130


def _tune_gc() -> None:
    """Collect cycles less eagerly than CPython's default (every 700 allocations).

    A pass over 100,000 files makes a million small objects, none of them in a cycle; at the
    default thresholds the collector re-scans the whole growing heap again and again on the
    way. Everything loaded so far (modules, config) lives as long as the process: frozen,
    it is never scanned again.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "emulator":
        return _emulator(args.host, args.port)
    if args.command == "demo":
        from syncd.demo import run_demo

        return run_demo(args.seconds)
    config = _load(getattr(args, "config", None))
    if args.command == "status":
        return _status(config, args.json)
    if args.reconcile:
        return _reconcile(config, args.dry_run, args.allow_mass_delete)
    return _daemon(config)


def _load(arg: str | None) -> Config:
    path = config_path_from(arg, os.environ)
    if path is None:
        raise ConfigError("config error: no configuration: pass --config FILE or set SYNCD_CONFIG")
    return load_config(path)


def _secrets_and_logs(config: Config, to_stderr: bool) -> Secrets:
    secrets = load_secrets(config.graph, os.environ)
    stream = sys.stderr if to_stderr else sys.stdout
    configure_logging(
        level=config.log.level, fmt=config.log.format, stream=stream, redactor=secrets.redactor()
    )
    for warning in secrets.warnings:
        get_logger("syncd.secrets").warning("secret_file_permissions", detail=warning)
    return secrets


def _reconcile(config: Config, dry_run: bool, allow_mass_delete: bool) -> int:
    problems = missing_folders(config)
    if problems:
        return _usage_error(problems[0])
    secrets = _secrets_and_logs(config, to_stderr=dry_run)
    _check_manifest(config, readonly=dry_run)
    progress = None
    if sys.stderr.isatty() and not dry_run:
        from syncd.progress import Progress

        progress = Progress(sys.stderr)
    try:
        return asyncio.run(
            run_reconcile(
                config,
                secrets,
                dry_run=dry_run,
                allow_mass_delete=allow_mass_delete,
                progress=progress,
            )
        )
    except ManifestError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _check_manifest(config: Config, *, readonly: bool) -> None:
    """Open the manifest once up front: a bad one is a usage error, before any request."""
    from syncd.manifest import SqliteManifest

    try:
        SqliteManifest.open(config.manifest.path, readonly=readonly).close()
    except ManifestError as exc:
        raise ConfigError(f"manifest.path: {exc}") from None


def _status(config: Config, as_json: bool) -> int:
    from syncd.manifest import SqliteManifest
    from syncd.status import gather, render_json, render_text

    try:
        manifest = SqliteManifest.open(config.manifest.path, readonly=True)
    except ManifestError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        statuses = gather(config, manifest)
    finally:
        manifest.close()
    (render_json if as_json else render_text)(statuses, sys.stdout)
    return 0


def _daemon(config: Config) -> int:
    from syncd.service import run_daemon

    secrets = _secrets_and_logs(config, to_stderr=False)
    _check_manifest(config, readonly=False)
    return run_daemon(config, secrets)


def _emulator(host: str, port: int) -> int:
    from syncd.emulator import run_emulator

    if host not in ("127.0.0.1", "::1", "localhost"):
        return _usage_error(f"--host: {host} is not a loopback address (127.0.0.1 or ::1)")
    run_emulator(host, port)
    return 0


def _usage_error(message: str) -> int:
    line = message.splitlines()[0] if message else "bad usage"
    print(f"syncd: {line}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
