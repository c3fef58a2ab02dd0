"""`syncd --reconcile`: one pass over every account, then an exit code.

Accounts run concurrently and independently: one account's auth failure, throttling or
missing folder never stops the others. The exit code sums them up: 3 if any account's token
was refused, else 1 if anything failed or a deletion was withheld by the guard, else 0.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

import structlog

from syncd.config import AccountConfig, Config
from syncd.engine import PassOptions, PassResult, Runtime, sync_account
from syncd.executor import PassReport
from syncd.models import display_path
from syncd.planner import Plan
from syncd.progress import Progress
from syncd.secrets import Secrets

log = structlog.get_logger("syncd.reconcile")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3


def missing_folders(config: Config) -> list[str]:
    """Config errors for account folders that do not exist (reconcile needs them all)."""
    problems = []
    for i, acct in enumerate(config.accounts):
        if not acct.folder.is_dir():
            what = "does not exist" if not acct.folder.exists() else "is not a directory"
            problems.append(f"config error: accounts[{i}].folder: {acct.folder} {what}")
    return problems


async def run_reconcile(
    config: Config,
    secrets: Secrets,
    *,
    dry_run: bool,
    allow_mass_delete: bool,
    out: TextIO = sys.stdout,
    progress: Progress | None = None,
) -> int:
    """Reconcile every account; print the plan on a dry run; return the exit code."""
    async with Runtime.open(config, secrets, readonly=dry_run) as rt:
        results = await asyncio.gather(
            *(_one(rt, acct, dry_run, allow_mass_delete, progress) for acct in config.accounts)
        )
    if progress is not None:
        progress.finish()
    if dry_run:
        for acct, result in zip(config.accounts, results, strict=True):
            print_plan(acct, result, out)
    for result in results:
        _log_summary(result.report, dry_run)
    return exit_code([r.report for r in results], dry_run)


async def _one(
    rt: Runtime,
    acct: AccountConfig,
    dry_run: bool,
    allow_mass_delete: bool,
    progress: Progress | None,
) -> PassResult:
    opts = PassOptions(
        dry_run=dry_run,
        allow_mass_delete=allow_mass_delete,
        on_hashed=progress.hashed if progress else None,
        on_planned=progress.planned if progress else None,
        on_queued=progress.queued if progress else None,
        on_uploaded=progress.uploaded if progress else None,
    )
    return await sync_account(rt, acct, opts)


def exit_code(reports: list[PassReport], dry_run: bool) -> int:
    """3 for any refused token, else 1 for any failure or withheld deletion, else 0."""
    if any(r.auth_failed for r in reports):
        return EXIT_AUTH
    if dry_run:
        return EXIT_OK if all(r.folder_error is None for r in reports) else EXIT_FAILED
    if any(not r.ok or r.guard for r in reports):
        return EXIT_FAILED
    return EXIT_OK


def _log_summary(r: PassReport, dry_run: bool) -> None:
    fields = {
        "account": r.account,
        "uploaded": r.uploaded,
        "adopted": r.adopted,
        "linked": r.linked,
        "deleted": r.deleted,
        "kept_in_use": r.kept_in_use,
        "waiting_grace": r.waiting,
        "skipped": r.skipped,
        "failed": len(r.failed),
        "delete_failed": len(r.delete_failed),
        "dry_run": dry_run,
    }
    if r.auth_failed:
        log.error("reconcile_account_stopped", reason=r.auth_failed, **fields)
    elif r.folder_error:
        log.error("reconcile_account_failed", reason=r.folder_error, **fields)
    elif not r.ok or r.guard:
        log.warning("reconcile_account_incomplete", guard=r.guard, **fields)
    else:
        log.info("reconcile_account_done", **fields)


def print_plan(acct: AccountConfig, result: PassResult, out: TextIO) -> None:
    """The dry run's plan, one line per action, readable and greppable."""
    plan = result.plan
    report = result.report
    print(f"account {acct.id} ({acct.folder})", file=out)
    if report.auth_failed:
        print(f"  stopped: authentication failed: {report.auth_failed}", file=out)
        return
    if plan is None:
        print(f"  nothing planned: {report.folder_error or 'no plan'}", file=out)
        return
    _print_actions(plan, result, out)


def _print_actions(plan: Plan, result: PassResult, out: TextIO) -> None:
    for up in plan.uploads:
        extra = f" (+{len(up.files) - 1} identical)" if len(up.files) > 1 else ""
        verb = "adopt " if up.adopt else "upload"
        print(f"  {verb}  {display_path(up.path)} ({up.size} bytes){extra}", file=out)
    for d in plan.deletions:
        if d.hash in result.in_use:
            print(f"  keep    {d.hash} {d.name!r}: used by a creative", file=out)
        else:
            print(f"  delete  {d.hash} {d.name!r}: no local file holds it", file=out)
    for image_hash, left in plan.waiting:
        print(f"  wait    {image_hash}: deleted in {left:.0f}s unless it comes back", file=out)
    for path, reason in sorted(result.skips):
        print(f"  skip    {display_path(path)}: {reason}", file=out)
    for path in plan.unchanged_failures:
        print(f"  failed  {display_path(path)}: unchanged since it failed; not retried", file=out)
    if plan.guard:
        print(f"  withheld deletions: {plan.guard} (--allow-mass-delete to proceed)", file=out)
    total = len(plan.uploads) + len(plan.deletions)
    print(
        f"  {len(plan.uploads)} to upload, {len(plan.deletions)} to delete, "
        f"{len(result.skips)} skipped, {total} changes",
        file=out,
    )
