"""The manifest's WAL is checkpointed in a thread of its own, and stays bounded."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from syncd.checkpoint import WalCheckpointer
from syncd.manifest import SqliteManifest
from syncd.models import FileRecord, FileState, ImageOrigin, ImageRecord, UploadIntent

ACCOUNT = "1234567890"


def _upload(manifest: SqliteManifest, i: int) -> None:
    """One upload's two commits, as the executor makes them."""
    md5 = f"{i:032x}"
    manifest.begin_upload(UploadIntent(ACCOUNT, md5, f"d/f{i}.png", f"f{i}.png", time.time()))
    manifest.finish_upload(
        ImageRecord(ACCOUNT, f"h{i:031x}", md5, ImageOrigin.UPLOADED, time.time()),
        [FileRecord(ACCOUNT, f"d/f{i}.png", 100, 1, md5, FileState.SYNCED, f"h{i:031x}")],
    )


def _checkpointer(manifest: SqliteManifest, every: int) -> WalCheckpointer:
    checkpointer = manifest._checkpointer  # private: waited on, for a deterministic test
    assert checkpointer is not None
    checkpointer._every = every
    return checkpointer


def _checkpoint_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("syncd-checkpoint")]


def _images_in_the_database_file_alone(db: Path, scratch: Path) -> int:
    """Rows a checkpoint has copied into the database file (the WAL left out)."""
    alone = scratch / "alone.sqlite3"
    shutil.copyfile(db, alone)
    conn = sqlite3.connect(alone)
    try:
        return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.OperationalError:  # not even the schema has been checkpointed
        return 0
    finally:
        conn.close()


@pytest.mark.parametrize("every", [50, 10**9])
def test_checkpoints_run_in_their_own_thread(tmp_path: Path, every: int) -> None:
    db = tmp_path / "m.sqlite3"
    manifest = SqliteManifest.open(db)
    checkpointer = _checkpointer(manifest, every)
    # Only the thread checkpoints here: the commits stay far below the automatic threshold.
    manifest._conn.execute("PRAGMA wal_autocheckpoint = 1000000")
    for i in range(120):
        _upload(manifest, i)
    checkpointer.wait()
    copied = _images_in_the_database_file_alone(db, tmp_path)
    if every == 50:
        assert copied >= 50  # at least the rows of the first 100 commits
    else:
        assert copied == 0  # the control: nothing else would have copied them
    manifest.close()
    assert _checkpoint_threads() == []
    reopened = SqliteManifest.open(db)
    assert len(reopened.images(ACCOUNT)) == 120
    reopened.close()


def test_the_wal_stays_bounded_under_steady_writing(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite3"
    manifest = SqliteManifest.open(db)
    sizes = []
    try:
        for batch in range(6):
            for i in range(batch * 200, batch * 200 + 200):
                _upload(manifest, i)
            sizes.append(Path(f"{db}-wal").stat().st_size)
    finally:
        manifest.close()  # also when failing: its checkpoint thread must not outlive the test
    # 1,200 uploads write about 40 MB of pages; the WAL starts over instead of holding them.
    # Where it starts over depends on when the commits and the checkpoint thread meet: it
    # peaks at 4.3-5.1 MB as a rule, and once, in CI, reached 14.3 MB.
    assert max(sizes) < 20 * 1024 * 1024, sizes
    assert not Path(f"{db}-wal").exists()  # closing checkpointed the rest and removed it


def test_a_failing_checkpoint_is_logged_and_loses_nothing(tmp_path: Path) -> None:
    checkpointer = WalCheckpointer(tmp_path / "no such dir" / "m.sqlite3", every=1)
    with capture_logs() as logs:
        checkpointer.committed()
        checkpointer.wait()
    checkpointer.close()
    (event,) = logs
    assert event["event"] == "manifest_checkpoint_failed"
    assert "unable to open" in event["reason"]
    assert _checkpoint_threads() == []
