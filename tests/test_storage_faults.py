"""Storage faults under the manifest: read-only, full, damaged, deleted.

Whatever happens to the manifest, syncd must say so clearly (one line naming the file, an
exit code from the contract, no traceback) and must never delete a remote image on the word
of a manifest it could not read or write. A lost manifest is rebuilt by `--reconcile`: local
content is POSTed again (the content-addressed API answers with the hash it already has) and
recorded as adopted, which is never deleted; that run deletes nothing.

We run as root, so "read-only" is made with `chattr +i` or a read-only bind mount, and "disk
full" with a small tmpfs; each test skips, saying why, where the container does not allow it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Run, SyncEnv, run_syncd
from daemon_proc import DaemonProc, wait_until
from images import write_image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SEED = 7


def _populate(env: SyncEnv, count: int = 6, start: int = 0) -> list[Path]:
    return [write_image(env.folder() / f"f{i}.png", "png", i) for i in range(start, start + count)]


def _synced(env: SyncEnv, count: int = 6) -> None:
    _populate(env, count)
    first = env.reconcile()
    assert first.code == 0, first.output


def _one_clear_line(run: Run, *words: str) -> str:
    """stderr is one `syncd: ...` line holding these words; no traceback anywhere."""
    assert "Traceback" not in run.output, run.output[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("syncd: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)


@contextlib.contextmanager
def _manifest_immutable(env: SyncEnv) -> Iterator[None]:
    """The manifest, its WAL files and its directory made immutable for the block."""
    parent = env.manifest.parent
    paths = [parent, env.manifest, *parent.glob("*-wal"), *parent.glob("*-shm")]
    with contextlib.ExitStack() as stack:
        for path in paths:
            stack.enter_context(_immutable(path))
        yield


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made = _sh("chattr", "+i", str(path))
    if made.returncode != 0:
        pytest.skip(f"chattr +i not permitted here: {made.stderr.strip()}")
    try:
        yield
    finally:
        _sh("chattr", "-i", str(path))


@contextlib.contextmanager
def _read_only_bind(path: Path) -> Iterator[None]:
    bound = _sh("mount", "--bind", str(path), str(path))
    if bound.returncode != 0:
        pytest.skip(f"bind mounts not permitted here: {bound.stderr.strip()}")
    try:
        ro = _sh("mount", "-o", "remount,ro,bind", str(path))
        if ro.returncode != 0:
            pytest.skip(f"read-only remount not permitted here: {ro.stderr.strip()}")
        yield
    finally:
        _sh("umount", str(path))


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = _sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        _sh("umount", "-l", str(path))


def _no_graph_writes(env: SyncEnv, posts_before: int) -> None:
    assert len(env.requests("POST")) == posts_before, "a POST went out unrecorded"
    assert env.requests("DELETE") == [], "a deletion on the word of a broken manifest"


# -- a manifest directory that cannot be written ------------------------------------------


@pytest.mark.parametrize("how", ["chattr", "read_only_bind"])
def test_unwritable_manifest_directory_is_exit_2_and_touches_nothing(
    env: SyncEnv, how: str
) -> None:
    _synced(env)
    (env.folder() / "f0.png").unlink()  # a deletion would be due
    write_image(env.folder() / "new.png", "png", 100)  # and an upload
    posts = len(env.requests("POST"))
    guard: Callable[[Path], contextlib.AbstractContextManager[None]] = (
        _immutable if how == "chattr" else _read_only_bind
    )
    with guard(env.manifest.parent):
        result = env.reconcile()
        assert result.code == 2, result.output
        _one_clear_line(result, "manifest.path", str(env.manifest))
        env.write_config()
        daemon = DaemonProc(env.config_path, env.token)
        code = daemon.proc.wait(timeout=30)
        daemon.kill()
        assert code == 2, daemon.output
        assert "manifest.path" in daemon.output
        assert "Traceback" not in daemon.output
    _no_graph_writes(env, posts)
    again = env.reconcile()  # writable again: everything catches up
    assert again.code == 0, again.output
    assert len(env.requests("DELETE")) == 1


def test_manifest_path_under_a_file_is_exit_2(env: SyncEnv) -> None:
    _populate(env)
    blocker = env.tmp / "not-a-directory"
    blocker.write_text("a file where the manifest's directory should be")
    env.write_config()
    text = env.config_path.read_text().replace(
        f'path = "{env.manifest}"', f'path = "{blocker / "manifest.sqlite3"}"'
    )
    env.config_path.write_text(text)
    run = run_syncd(["--config", str(env.config_path), "--reconcile"], env.token)
    assert run.code == 2, run.output
    _one_clear_line(run, "manifest.path", "not-a-directory")
    daemon = DaemonProc(env.config_path, env.token)
    code = daemon.proc.wait(timeout=30)
    daemon.kill()
    assert code == 2, daemon.output
    assert "not-a-directory" in daemon.output
    assert "Traceback" not in daemon.output
    assert env.requests() == [], "a Graph call before the manifest was known to work"


# -- a full disk ------------------------------------------------------------------------


def _fill(directory: Path) -> Path:
    """Fill the file system under `directory` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def _disk_full_reconcile(env: SyncEnv) -> tuple[Run, int]:
    """Synced, then a big pass on a disk with room to open the manifest but not to record
    the pass; returns the run and the POSTs it sent. Leaves the disk full."""
    env.accounts[0].update(rate_per_second=1000.0, burst=100)
    _synced(env)
    filler = _fill(env.manifest.parent)
    # Room to open the manifest (its -shm and first WAL pages), not to record a big pass.
    os.truncate(filler, filler.stat().st_size - 96 * 1024)
    for i in range(6, 200):
        write_image(env.folder() / "more" / f"{'m' * 80}{i}.png", "png", i)
    (env.folder() / "f1.png").unlink()  # one deletion due
    posts = len(env.requests("POST"))
    result = env.reconcile()
    return result, len(env.requests("POST")) - posts


def test_disk_full_loses_nothing_and_deletes_nothing(env: SyncEnv) -> None:
    with _tmpfs(env.manifest.parent, "8m"):  # the WAL alone may grow to 4 MB
        result, sent = _disk_full_reconcile(env)
        assert result.code in (1, 2), result.output
        assert "database or disk is full (no space left for the manifest)" in result.stderr
        assert env.requests("DELETE") == [], "deleted while the manifest could not record it"
        (env.manifest.parent / "filler").unlink()
        assert _integrity(env.manifest) == "ok"
        # Every POST that went out had its intent recorded first.
        recorded = env.sql("SELECT COUNT(*) FROM intents")[0][0]
        recorded += env.sql("SELECT COUNT(*) FROM images")[0][0] - 6
        assert sent <= recorded, (sent, recorded)
        print(f"disk full: exit {result.code}, {sent} POSTs before the manifest filled up")
        again = env.reconcile()
        assert again.code == 0, again.output
    remote = env.images()
    assert len(remote) == 6 + 194 - 1
    assert max(int(i["upload_count"]) for i in remote) <= 2  # at most one answer lost per file
    assert len(env.requests("DELETE")) == 1


def test_disk_full_mid_pass_is_one_clear_line(env: SyncEnv) -> None:
    with _tmpfs(env.manifest.parent, "8m"):
        result, _ = _disk_full_reconcile(env)
    assert result.code == 1, result.output
    line = _one_clear_line(result, str(env.manifest))
    assert "full" in line, line


# -- a damaged manifest -----------------------------------------------------------------


def test_garbage_manifest_is_exit_2_for_every_command(env: SyncEnv) -> None:
    _synced(env)
    (env.folder() / "f0.png").unlink()
    requests = len(env.requests())
    env.manifest.write_bytes(random.Random(SEED).randbytes(64 * 1024))
    result = env.reconcile()
    assert result.code == 2, result.output
    _one_clear_line(result, "manifest.path", "damaged")
    status = env.run("status")
    assert status.code != 0
    _one_clear_line(status, "damaged")
    daemon = DaemonProc(env.config_path, env.token)
    code = daemon.proc.wait(timeout=30)
    daemon.kill()
    assert code == 2, daemon.output
    assert "damaged" in daemon.output
    assert "Traceback" not in daemon.output
    assert len(env.requests()) == requests, "a Graph call with a damaged manifest"


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _corrupt(path: Path, how: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return
    pages = len(data) // page
    for _ in range(3):
        start = rng.randrange(1, pages) * page  # keep page 1 (the header and schema root)
        if how == "zeroed_page":
            data[start : start + page] = bytes(page)
        else:  # flipped bytes inside b-tree pages
            for offset in rng.sample(range(start, start + page), 64):
                data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


COUNT = 150


@pytest.mark.parametrize("how", ["truncated", "zeroed_page", "flipped_bytes"])
def test_partly_damaged_manifest_never_deletes(env: SyncEnv, how: str) -> None:
    # Enough rows for several pages, nothing removed locally: any DELETE is a wrong one.
    env.accounts[0].update(rate_per_second=1000.0, burst=100)
    for i in range(COUNT):
        write_image(env.folder() / f"d{i // 50}" / f"{'x' * 60}{i}.png", "png", i)
    first = env.reconcile(timeout=120)
    assert first.code == 0, first.output
    _corrupt(env.manifest, how, random.Random(f"{SEED}-{how}"))
    result = env.reconcile(timeout=120)
    assert "Traceback" not in result.output, result.output[-3000:]
    assert result.code in (0, 1, 2), result.output[-3000:]
    if result.code != 0:
        _one_clear_line(result, str(env.manifest))
    assert env.requests("DELETE") == [], f"{how}: deleted on a damaged manifest"
    assert len(env.images()) == COUNT
    print(f"{how}: exit {result.code}: {result.stderr.strip()[:200]}")


# -- a lost manifest --------------------------------------------------------------------


def test_lost_manifest_is_rebuilt_by_adoption_and_deletes_nothing(env: SyncEnv) -> None:
    _synced(env, 6)
    before = {str(i["hash"]): int(i["upload_count"]) for i in env.images()}
    (env.folder() / "f0.png").unlink()  # its image can no longer be proved ours
    for leftover in env.manifest.parent.iterdir():
        leftover.unlink()
    rebuilt = env.reconcile()
    assert rebuilt.code == 0, rebuilt.output
    assert env.requests("DELETE") == []
    after = {str(i["hash"]): int(i["upload_count"]) for i in env.images()}
    assert set(after) == set(before), "the rebuild created or lost images"
    # The five local contents were POSTed again (same hash back), the removed one was not.
    assert sum(after.values()) - sum(before.values()) == 5
    status = env.status()["accounts"][0]
    assert status["files"]["synced"] == 5
    assert status["adopted_images"] == 5
    rows = env.sql("SELECT origin, COUNT(*) FROM images GROUP BY origin")
    assert rows == [("adopted", 5)]
    # Adopted images are never deleted, even once their files are gone.
    (env.folder() / "f1.png").unlink()
    later = env.reconcile()
    assert later.code == 0, later.output
    assert env.requests("DELETE") == []
    assert len(env.images()) == 6


# -- the manifest turning unwritable under a running daemon -----------------------------


def test_manifest_unwritable_under_the_daemon_then_recovers(env: SyncEnv) -> None:
    env.sync.update(settle_seconds=0.1, observer="native", rescan_interval_seconds=3600.0)
    _synced(env, 3)
    env.write_config()
    daemon = DaemonProc(env.config_path, env.token)
    try:
        daemon.wait_event("scan_complete")
        with _manifest_immutable(env):
            posts = len(env.requests("POST"))
            write_image(env.folder() / "while-readonly.png", "png", 50)
            daemon.wait_event("file_processing_error", timeout=20)
            assert len(env.requests("POST")) == posts, "a POST whose intent was not written"
            assert daemon.proc.poll() is None, "the daemon died on a manifest error"
        write_image(env.folder() / "after.png", "png", 51)
        wait_until(lambda: len(env.images()) == 4, what="the daemon uploads again")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    assert env.requests("DELETE") == []
    assert _integrity(env.manifest) == "ok"


def test_daemon_rescans_again_after_a_manifest_error_in_a_full_pass(env: SyncEnv) -> None:
    env.sync.update(settle_seconds=0.1, observer="native", rescan_interval_seconds=3600.0)
    _synced(env, 3)
    env.write_config()
    daemon = DaemonProc(env.config_path, env.token)
    try:
        daemon.wait_event("scan_complete")
        # The event path fails on the manifest, then a SIGHUP pass fails on it too.
        with _manifest_immutable(env):
            write_image(env.folder() / "during.png", "png", 60)
            daemon.wait_event("file_processing_error", timeout=20)  # the event path failed
            daemon.signal(signal.SIGHUP)  # and so does the full pass
            daemon.wait_event("account_stage_failed", stage="full_pass", timeout=20)
        passes = daemon.count("scan_complete")
        daemon.signal(signal.SIGHUP)
        wait_until(
            lambda: daemon.count("scan_complete") > passes,
            timeout=15,
            what="a full pass after the manifest is writable again",
        )
        wait_until(lambda: len(env.images()) == 4, what="the missed file uploaded")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
