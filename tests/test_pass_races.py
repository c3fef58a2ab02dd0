"""A full pass and the daemon's live events write the same rows.

A daemon's full pass reads the manifest's rows once, plans from them, and writes its
decisions (links, skips, forgotten rows) at the end. Meanwhile the daemon's events keep
writing rows: a file removed and put back, a file finished after the scan saw it empty. A
decision made from an older row must not undo a newer one: a forgotten or overwritten row
stops holding its content, and the content's image is then deleted while a file holds it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ACCOUNT, SyncEnv, engine_pass
from images import png_bytes

from syncd.engine import PassOptions
from syncd.manifest import SqliteManifest
from syncd.models import FileRecord, FileState
from syncd.planner import Plan

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def _row(manifest: Path, path: str) -> FileRecord | None:
    m = SqliteManifest.open(manifest)
    try:
        return m.file(ACCOUNT, path)
    finally:
        m.close()


def test_a_row_written_during_the_pass_is_not_forgotten_by_it(env: SyncEnv) -> None:
    banner = env.folder() / "banner.png"
    banner.write_bytes(png_bytes(1))
    (env.folder() / "stays.png").write_bytes(png_bytes(4))  # not an empty folder: no guard
    engine_pass(env, PassOptions())
    synced = _row(env.manifest, "banner.png")
    assert synced is not None
    banner.unlink()

    def put_back(plan: Plan) -> None:
        # What the daemon does while the pass plans: the file is back, its row written anew.
        assert plan.forget == ["banner.png"]
        banner.write_bytes(png_bytes(1))
        m = SqliteManifest.open(env.manifest)
        try:
            m.record_files([synced])
        finally:
            m.close()

    engine_pass(env, PassOptions(on_planned=put_back))  # delete_grace_seconds = 0
    assert env.requests("DELETE") == [], "deleted the image of a file that is there"
    assert _row(env.manifest, "banner.png") == synced


def test_a_pass_does_not_overwrite_a_newer_row(env: SyncEnv) -> None:
    early = env.folder() / "early.png"
    early.write_bytes(b"")  # caught empty by the scan: skipped, without waiting to settle

    def finished(plan: Plan) -> None:
        [skip] = plan.record
        assert (skip.path, skip.state) == ("early.png", FileState.SKIPPED)
        time.sleep(0.01)  # the daemon's row is written after the pass read the rows
        m = SqliteManifest.open(env.manifest)
        try:
            m.record_files(
                [FileRecord(ACCOUNT, "early.png", 10, 1, "m" * 32, FileState.SYNCED, "h1")]
            )
        finally:
            m.close()

    engine_pass(env, PassOptions(on_planned=finished))
    row = _row(env.manifest, "early.png")
    assert row is not None
    assert row.state is FileState.SYNCED  # the newer row stands


def test_rows_written_before_the_pass_are_still_forgotten(env: SyncEnv) -> None:
    gone = env.folder() / "gone.png"
    gone.write_bytes(png_bytes(2))
    (env.folder() / "stays.png").write_bytes(png_bytes(3))
    engine_pass(env, PassOptions())
    gone.unlink()
    engine_pass(env, PassOptions())
    assert _row(env.manifest, "gone.png") is None
    assert len(env.requests("DELETE")) == 1  # delete_grace_seconds = 0, nothing holds it
