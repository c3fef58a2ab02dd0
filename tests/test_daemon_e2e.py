"""The real daemon as a subprocess, real files, real watchdog observers, the emulator."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ACCOUNT, SyncEnv, set_faults
from daemon_proc import DaemonProc, wait_until
from images import jpeg_bytes, png_bytes, write_image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def daemon_env(env: SyncEnv) -> SyncEnv:
    env.sync.update(
        settle_seconds=0.3, observer="native", drain_seconds=10.0, rescan_interval_seconds=3600.0
    )
    return env


@pytest.fixture
def daemon(daemon_env: SyncEnv) -> Iterator[DaemonProc]:
    proc = start(daemon_env)
    yield proc
    if proc.proc.poll() is None:
        proc.kill()


def start(env: SyncEnv, **extra_env: str) -> DaemonProc:
    env.write_config()
    proc = DaemonProc(env.config_path, env.token, extra_env)
    proc.wait_event("daemon_ready")
    proc.wait_event("scan_complete")
    return proc


def names(env: SyncEnv) -> list[str]:
    return sorted(str(i["name"]) for i in env.images())


def test_dropped_files_are_uploaded(daemon_env: SyncEnv, daemon: DaemonProc) -> None:
    folder = daemon_env.folder()
    (folder / "a.jpg").write_bytes(jpeg_bytes(1))
    (folder / "deep" / "er").mkdir(parents=True)
    (folder / "deep" / "er" / "b.png").write_bytes(png_bytes(2))
    wait_until(lambda: len(daemon_env.images()) == 2, what="two uploads")
    assert names(daemon_env) == ["a.jpg", "b.png"]
    assert daemon.stop() == 0
    assert "daemon_stopped" in daemon.output


def test_files_present_at_start_are_synced(daemon_env: SyncEnv) -> None:
    (daemon_env.folder() / "old.png").write_bytes(png_bytes(9))
    proc = start(daemon_env)
    wait_until(lambda: len(daemon_env.images()) == 1, what="start-up upload")
    assert proc.stop() == 0


def test_slow_writer_gives_one_upload_of_the_final_bytes(daemon_env: SyncEnv) -> None:
    # Settled means unchanged for settle_seconds: the writer's 0.15 s pauses must stay well
    # under it even on a busy machine (at 0.3 s, one wake-up 0.15 s late uploads a part).
    daemon_env.sync.update(settle_seconds=1.0)
    daemon = start(daemon_env)
    try:
        full = write_image(daemon_env.tmp / "src.png", "png", 3, size=200_000).read_bytes()
        target = daemon_env.folder() / "slow.png"
        with target.open("wb") as out:  # a valid image, written in pieces
            for start_at in range(0, len(full), len(full) // 8):
                out.write(full[start_at : start_at + len(full) // 8])
                out.flush()
                time.sleep(0.15)  # the writer is slow on purpose: the scenario under test
        wait_until(lambda: len(daemon_env.images()) == 1, what="the upload")
        time.sleep(1.5)  # a second, wrong upload would come within a settle period
        images = daemon_env.images()
        assert len(daemon_env.requests("POST")) == 1
        assert images[0]["content_md5"] == hashlib.md5(full).hexdigest()
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


def test_files_stamped_in_the_future_are_uploaded(daemon_env: SyncEnv) -> None:
    """A camera set a year ahead: settled by observation, as reconcile does, not by waiting
    for the clock to pass the stamp (found at start, and dropped in while watching)."""
    folder = daemon_env.folder()
    ahead = time.time() + 365 * 24 * 3600
    (folder / "early.jpg").write_bytes(jpeg_bytes(7))
    os.utime(folder / "early.jpg", (ahead, ahead))
    proc = start(daemon_env)
    try:
        (folder / "late.png").write_bytes(png_bytes(8))
        os.utime(folder / "late.png", (ahead, ahead))
        wait_until(lambda: len(daemon_env.images()) == 2, what="both uploaded")
        assert names(daemon_env) == ["early.jpg", "late.png"]
    finally:
        assert proc.stop() == 0


def test_link_to_a_file_stamped_in_the_future_is_uploaded(daemon_env: SyncEnv) -> None:
    """A symlink takes the scanner's full rules, not the fast path: they too settle a future
    stamp by observation instead of waiting a year (at start, and dropped in while watching)."""
    folder = daemon_env.folder()
    store = folder / ".store"  # hidden: its files are not candidates, the links to them are
    store.mkdir()
    ahead = time.time() + 365 * 24 * 3600
    for name, data in (("a.jpg", jpeg_bytes(21)), ("b.png", png_bytes(22))):
        (store / name).write_bytes(data)
        os.utime(store / name, (ahead, ahead))
    os.symlink(store / "a.jpg", folder / "first.jpg")
    proc = start(daemon_env)
    try:
        os.symlink(store / "b.png", folder / "second.png")
        wait_until(lambda: len(daemon_env.images()) == 2, what="both links uploaded")
        assert names(daemon_env) == ["first.jpg", "second.png"]
    finally:
        assert proc.stop() == 0


def test_part_file_renamed_gives_one_upload(daemon_env: SyncEnv, daemon: DaemonProc) -> None:
    part = daemon_env.folder() / "x.jpg.part"
    part.write_bytes(jpeg_bytes(4))
    part.rename(daemon_env.folder() / "x.jpg")
    wait_until(lambda: len(daemon_env.images()) == 1, what="upload")
    assert names(daemon_env) == ["x.jpg"]
    assert len(daemon_env.requests("POST")) == 1


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_rename_and_directory_move_inside_upload_nothing(
    daemon_env: SyncEnv, observer: str
) -> None:
    # No grace, so nothing but the daemon's own care keeps an image whose file moved: polling
    # sees a move only by comparing two looks (inode, size and mtime; syncd.polling).
    daemon_env.sync.update(observer=observer, poll_interval_seconds=0.2, delete_grace_seconds=0.0)
    daemon = start(daemon_env)
    try:
        _rename_and_move_inside(daemon_env)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


def _rename_and_move_inside(daemon_env: SyncEnv) -> None:
    folder = daemon_env.folder()
    (folder / "d").mkdir()
    (folder / "d" / "a.jpg").write_bytes(jpeg_bytes(1))
    (folder / "b.png").write_bytes(png_bytes(2))
    # Recorded, not only stored: the daemon writes its rows once the emulator has answered,
    # and a move inside that window is a different scenario (a path with no row yet).
    wait_until(
        lambda: (
            len(daemon_env.images()) == 2
            and daemon_env.sql("SELECT COUNT(*) FROM files WHERE state = 'synced'") == [(2,)]
            and daemon_env.sql("SELECT COUNT(*) FROM intents") == [(0,)]
        ),
        what="uploads recorded",
    )
    posts = len(daemon_env.requests("POST"))
    (folder / "b.png").rename(folder / "b-renamed.png")
    (folder / "d").rename(folder / "e")
    wait_until(
        lambda: (
            {i["path"] for i in daemon_env.status()["accounts"][0]["items"]}
            == {"b-renamed.png", "e/a.jpg"}
        ),
        what="manifest follows the moves",
    )
    assert len(daemon_env.requests("POST")) == posts
    assert daemon_env.requests("DELETE") == []


def test_directory_moved_in_uploads_each_image(daemon_env: SyncEnv, daemon: DaemonProc) -> None:
    outside = daemon_env.tmp / "incoming"
    (outside / "sub").mkdir(parents=True)
    for i in range(3):
        write_image(outside / "sub" / f"i{i}.png", "png", 10 + i)
    shutil.move(str(outside), str(daemon_env.folder() / "incoming"))
    wait_until(lambda: len(daemon_env.images()) == 3, what="three uploads")
    assert len(daemon_env.requests("POST")) == 3


def test_deleted_file_image_deleted_after_grace(daemon_env: SyncEnv) -> None:
    daemon_env.sync.update(delete_grace_seconds=1.0)
    folder = daemon_env.folder()
    for i in range(4):
        write_image(folder / f"f{i}.png", "png", i)
    proc = start(daemon_env)
    wait_until(lambda: len(daemon_env.images()) == 4, what="uploads")
    (folder / "f0.png").unlink()
    proc.wait_event("image_deleted", timeout=15)
    assert len(daemon_env.images()) == 3
    assert proc.stop() == 0


def test_a_file_whose_image_was_already_on_the_account_is_adopted_and_never_deleted(
    daemon_env: SyncEnv,
) -> None:
    """Dropped in while the daemon runs, with content already on the account (put there by
    hand, or by another tool): the daemon's upload answers with that image's hash, which
    syncd did not create, so removing the file must not delete it."""
    folder = daemon_env.folder()
    write_image(folder / "by-hand.png", "png", 60)
    assert daemon_env.reconcile().code == 0  # the image goes onto the account...
    for path in [*daemon_env.manifest.parent.iterdir(), folder / "by-hand.png"]:
        path.unlink()  # ...and syncd forgets it ever saw it
    proc = start(daemon_env)  # delete_grace_seconds = 0
    try:
        write_image(folder / "dropped-in.png", "png", 60)
        wait_until(
            lambda: daemon_env.sql("SELECT origin FROM images") == [("adopted",)],
            what="the upload recorded as adopted",
        )
        (folder / "dropped-in.png").unlink()
        proc.wait_event("image_grace_started")
        time.sleep(2.0)  # the sweep comes a quiet second later: a wrong DELETE would be sent
        assert daemon_env.requests("DELETE") == [], "deleted an image syncd did not create"
        assert daemon_env.sql("SELECT origin FROM images") == [("adopted",)]
        assert proc.stop() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()


def test_a_mass_removal_seen_in_slices_deletes_nothing(daemon_env: SyncEnv) -> None:
    """Six of ten files removed in two moments, 1.5 s apart (a sync client, an `rm -r` over
    a share): their graces end apart too. Each slice is under max_delete_fraction = 0.5, the
    whole is over it, so the sweep that meets the first slice due withholds everything."""
    daemon_env.sync.update(delete_grace_seconds=5.0, max_delete_fraction=0.5)
    folder = daemon_env.folder()
    for i in range(10):
        write_image(folder / f"f{i}.png", "png", i)
    proc = start(daemon_env)
    try:
        wait_until(
            lambda: (
                daemon_env.sql("SELECT COUNT(*) FROM files WHERE state = 'synced'") == [(10,)]
                and daemon_env.sql("SELECT COUNT(*) FROM intents") == [(0,)]
            ),
            what="ten uploads recorded",
        )
        for i in range(3):
            (folder / f"f{i}.png").unlink()
        time.sleep(1.5)  # the second slice is seen gone later: the scenario under test
        for i in range(3, 6):
            (folder / f"f{i}.png").unlink()
        withheld = proc.wait_event("deletions_withheld", timeout=30)
        assert "would delete 6 of 10 images" in withheld["reason"]
        # Past the second slice's grace too: it is withheld as well.
        wait_until(lambda: proc.count("deletions_withheld") >= 2, timeout=60, what="recheck")
        assert daemon_env.requests("DELETE") == []
        assert len(daemon_env.images()) == 10
        assert proc.stop() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()


def test_delete_then_restore_within_grace_deletes_nothing(daemon_env: SyncEnv) -> None:
    # The restored copy is linked within a settle period (0.3 s); the grace leaves room for
    # a busy machine to be seconds late with that.
    daemon_env.sync.update(delete_grace_seconds=4.0)
    folder = daemon_env.folder()
    for i in range(4):
        write_image(folder / f"f{i}.png", "png", i)
    proc = start(daemon_env)
    wait_until(lambda: len(daemon_env.images()) == 4, what="uploads")
    data = (folder / "f0.png").read_bytes()
    (folder / "f0.png").unlink()
    proc.wait_event("image_grace_started")
    (folder / "restored.png").write_bytes(data)
    time.sleep(5.5)  # past the grace period: a wrong deletion would have happened by now
    assert daemon_env.requests("DELETE") == []
    assert proc.stop() == 0


def test_removed_folder_deletes_nothing_and_resumes(daemon_env: SyncEnv) -> None:
    daemon_env.sync.update(delete_grace_seconds=0.0)
    folder = daemon_env.folder()
    for i in range(3):
        write_image(folder / f"f{i}.png", "png", i)
    proc = start(daemon_env)
    wait_until(lambda: len(daemon_env.images()) == 3, what="uploads")
    moved = daemon_env.tmp / "away"
    folder.rename(moved)
    proc.wait_event("folder_unavailable")
    moved.rename(folder)
    proc.wait_event("folder_back")
    (folder / "new.jpg").write_bytes(jpeg_bytes(7))
    wait_until(lambda: len(daemon_env.images()) == 4, what="upload after the folder returned")
    assert daemon_env.requests("DELETE") == []
    assert proc.stop() == 0


def test_polling_observer(daemon_env: SyncEnv) -> None:
    daemon_env.sync.update(observer="polling", poll_interval_seconds=0.2)
    proc = start(daemon_env)
    (daemon_env.folder() / "p.png").write_bytes(png_bytes(5))
    wait_until(lambda: len(daemon_env.images()) == 1, what="polled upload")
    assert any(e.get("observer") == "polling" for e in proc.events)
    assert proc.stop() == 0


def test_sigterm_during_uploads_exits_0_and_restart_converges(daemon_env: SyncEnv) -> None:
    set_faults(daemon_env.emu, latency_min_ms=200.0, latency_max_ms=300.0)
    proc = start(daemon_env)
    for i in range(30):
        write_image(daemon_env.folder() / f"f{i}.png", "png", i)
    wait_until(lambda: len(daemon_env.images()) >= 2, what="some uploads")
    began = time.monotonic()
    assert proc.stop() == 0
    assert time.monotonic() - began < 10 + 5  # drain_seconds plus start-up slack
    set_faults(daemon_env.emu, latency_min_ms=0.0, latency_max_ms=0.0)
    again = start(daemon_env)
    wait_until(lambda: len(daemon_env.images()) == 30, what="convergence")
    assert again.stop() == 0
    assert all(i["upload_count"] == 1 for i in daemon_env.images())


def test_kill_9_during_uploads_then_restart_converges(daemon_env: SyncEnv) -> None:
    set_faults(daemon_env.emu, latency_min_ms=50.0, latency_max_ms=150.0)
    proc = start(daemon_env)
    for i in range(30):
        write_image(daemon_env.folder() / f"f{i}.png", "png", i)
    wait_until(lambda: len(daemon_env.images()) >= 5, what="some uploads")
    proc.kill()
    set_faults(daemon_env.emu, latency_min_ms=0.0, latency_max_ms=0.0)
    again = start(daemon_env)
    wait_until(lambda: len(daemon_env.images()) == 30, what="convergence")
    assert again.stop() == 0
    assert daemon_env.requests("DELETE") == []
    # Content-addressed: a re-POST after a kill gives the same image, never a duplicate.
    assert len({i["hash"] for i in daemon_env.images()}) == 30
    rows = daemon_env.sql("SELECT COUNT(*), COUNT(DISTINCT path) FROM files WHERE state='synced'")
    assert rows == [(30, 30)]


def test_sd_notify_messages(daemon_env: SyncEnv, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    try:
        proc = start(daemon_env, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
        seen: list[str] = []
        while not any("WATCHDOG=1" in m for m in seen) or not any("READY=1" in m for m in seen):
            seen.append(sock.recv(4096).decode())
        assert any("STATUS=" in m for m in seen)
        assert proc.stop() == 0
        while not any("STOPPING=1" in m for m in seen):
            seen.append(sock.recv(4096).decode())
    finally:
        sock.close()


def test_metrics_are_served(daemon_env: SyncEnv) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon_env.write_config()
    text = daemon_env.config_path.read_text() + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    daemon_env.config_path.write_text(text)
    proc = DaemonProc(daemon_env.config_path, daemon_env.token)
    try:
        proc.wait_event("daemon_ready")
        (daemon_env.folder() / "m.png").write_bytes(png_bytes(1))
        wait_until(lambda: len(daemon_env.images()) == 1, what="upload")
        wait_until(
            lambda: f'syncd_uploads_total{{account="{ACCOUNT}"}} 1' in _scrape(port), what="metrics"
        )
        body = _scrape(port)
        assert "syncd_queue_depth" in body
        assert "syncd_tokens_available" in body
        assert daemon_env.token not in body
    finally:
        assert proc.stop() == 0


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: str = resp.read().decode()
        return body


def test_sighup_rescans(daemon_env: SyncEnv, daemon: DaemonProc) -> None:
    before = daemon.count("scan_complete")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.count("scan_complete") > before, what="a rescan")


def test_missing_folder_at_start_waits_for_it(daemon_env: SyncEnv) -> None:
    folder = daemon_env.folder()
    shutil.rmtree(folder)
    daemon_env.write_config()
    proc = DaemonProc(daemon_env.config_path, daemon_env.token)
    try:
        proc.wait_event("folder_unavailable")
        folder.mkdir()
        (folder / "late.png").write_bytes(png_bytes(1))
        wait_until(lambda: len(daemon_env.images()) == 1, what="upload once the share mounts")
    finally:
        assert proc.stop() == 0


def test_demo_runs_and_exits_0(tmp_path: Path) -> None:
    from conftest import run_syncd

    result = run_syncd(
        ["demo", "--seconds", "8"], token=None, timeout=60, env={"TMPDIR": str(tmp_path)}
    )
    assert result.code == 0, result.output
    assert "now holds 3 images" in result.stdout
    assert os.listdir(tmp_path) == []


def test_second_sigint_forces_exit_without_waiting_for_the_drain(daemon_env: SyncEnv) -> None:
    daemon_env.sync.update(drain_seconds=60.0)
    set_faults(daemon_env.emu, latency_min_ms=5000.0, latency_max_ms=5000.0)
    proc = start(daemon_env)
    for i in range(4):
        write_image(daemon_env.folder() / f"f{i}.png", "png", i)
    # An intent is committed just before its POST and closed once it is answered: while one
    # is open, a POST is on the wire with most of its 5 s still to go. (The emulator records
    # a request only once it has answered it, so waiting for one there meant waiting for an
    # upload that was over, and the others could be over too: nothing left to drain.)
    wait_until(
        lambda: daemon_env.sql("SELECT COUNT(*) FROM intents") != [(0,)],
        what="an upload in flight",
        timeout=30,
    )
    proc.signal(signal.SIGINT)
    proc.wait_event("stopping")
    began = time.monotonic()
    proc.signal(signal.SIGINT)
    assert proc.proc.wait(timeout=20) == 130
    assert time.monotonic() - began < 10
    proc.stop()


def test_file_rewritten_during_its_upload_ends_with_the_final_content_only(
    daemon_env: SyncEnv, daemon: DaemonProc
) -> None:
    set_faults(daemon_env.emu, latency_min_ms=1500.0, latency_max_ms=1500.0)
    target = daemon_env.folder() / "c.png"
    first = png_bytes(1)
    final = write_image(daemon_env.tmp / "final.png", "png", 2, size=5000).read_bytes()
    target.write_bytes(first)
    # The intent is committed once the bytes are read and hashed, right before the POST.
    wait_until(lambda: daemon_env.sql("SELECT md5 FROM intents") != [], what="upload started")
    target.write_bytes(final)  # the file changes while its earlier bytes are on the wire
    # The daemon records a deletion once the DELETE is answered: the manifest is waited for
    # too, or the check could fall between the two.
    wait_until(
        lambda: (
            [i["content_md5"] for i in daemon_env.images()] == [_md5(final)]
            and daemon_env.sql("SELECT md5 FROM images") == [(_md5(final),)]
        ),
        timeout=40,
        what="final content uploaded, earlier content deleted after its grace",
    )
    uploaded = {i["content_md5"] for i in daemon_env.images(include_deleted=True)}
    assert uploaded == {_md5(first), _md5(final)}  # each POST sent bytes that were hashed
    assert daemon_env.sql("SELECT md5 FROM files") == [(_md5(final),)]
    assert daemon.stop() == 0


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_file_deleted_during_its_upload_leaves_no_row_and_its_image_goes(
    daemon_env: SyncEnv, daemon: DaemonProc
) -> None:
    folder = daemon_env.folder()
    (folder / "stays.png").write_bytes(png_bytes(10))  # an empty folder would hold deletions
    wait_until(
        lambda: (
            daemon_env.sql("SELECT path, state FROM files") == [(b"stays.png", "synced")]
            and daemon_env.sql("SELECT path FROM intents") == []
        ),
        what="first file uploaded and recorded",
    )
    set_faults(daemon_env.emu, latency_min_ms=1500.0, latency_max_ms=1500.0)
    target = folder / "brief.png"
    target.write_bytes(png_bytes(11))
    # The intent is committed once the bytes are read and hashed, right before the POST.
    wait_until(
        lambda: daemon_env.sql("SELECT path FROM intents") == [(b"brief.png",)],
        what="upload started",
    )
    target.unlink()  # gone while its bytes are on the wire
    wait_until(lambda: len(daemon_env.images(include_deleted=True)) == 2, what="upload done")
    # The upload's row must not outlive the file: the content is gone, so after the grace
    # (0 s here) its image is deleted, without waiting for the next full pass (an hour away).
    wait_until(
        lambda: len(daemon_env.requests("DELETE")) == 1,
        timeout=30,
        what="image deleted after its grace",
    )
    assert names(daemon_env) == ["stays.png"]
    assert daemon_env.sql("SELECT path FROM files") == [(b"stays.png",)]
    assert daemon.stop() == 0
