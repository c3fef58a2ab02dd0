"""`syncd --reconcile` as a subprocess against the bundled emulator over real loopback HTTP."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import ACCOUNT, ACCOUNT_B, TOKEN, SyncEnv, set_faults, set_tokens, throttle
from images import gif_bytes, jpeg_bytes, png_bytes, write_image

from syncd.manifest import SqliteManifest
from syncd.models import UploadIntent

pytestmark = pytest.mark.e2e


def populate(folder: Path) -> dict[str, bytes]:
    files = {
        "a.jpg": jpeg_bytes(1),
        "b.png": png_bytes(2),
        "sub/c.gif": gif_bytes(3),
        "sub/deeper/d.JPG": jpeg_bytes(4),
        "e.jpeg": jpeg_bytes(5),
    }
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_first_sync_then_second_run_sends_nothing(env: SyncEnv) -> None:
    files = populate(env.folder())
    first = env.reconcile()
    assert first.code == 0, first.output
    images = env.images()
    assert len(images) == len(files)
    assert sorted(i["upload_count"] for i in images) == [1] * len(files)
    status = env.status()["accounts"][0]
    assert status["files"]["synced"] == len(files)
    by_path = {item["path"]: item for item in status["items"]}
    remote_hashes = {i["hash"] for i in images}
    assert {by_path[p]["hash"] for p in files} == remote_hashes

    posts, deletes = len(env.requests("POST")), len(env.requests("DELETE"))
    second = env.reconcile()
    assert second.code == 0, second.output
    assert len(env.requests("POST")) == posts
    assert len(env.requests("DELETE")) == deletes


def test_identical_content_uploaded_once(env: SyncEnv) -> None:
    data = png_bytes(7)
    for rel in ("one.png", "two.png", "deep/three.png"):
        (env.folder() / rel).parent.mkdir(parents=True, exist_ok=True)
        (env.folder() / rel).write_bytes(data)
    assert env.reconcile().code == 0
    assert len(env.requests("POST")) == 1
    items = env.status()["accounts"][0]["items"]
    assert len({i["hash"] for i in items}) == 1
    assert len(items) == 3


def test_renames_and_moves_upload_and_delete_nothing(env: SyncEnv) -> None:
    populate(env.folder())
    assert env.reconcile().code == 0
    posts = len(env.requests("POST"))
    folder = env.folder()
    (folder / "a.jpg").rename(folder / "renamed.jpg")
    (folder / "moved").mkdir()
    (folder / "sub" / "c.gif").rename(folder / "moved" / "c.gif")
    shutil.move(str(folder / "sub" / "deeper"), str(folder / "moved" / "deeper"))
    result = env.reconcile()
    assert result.code == 0, result.output
    assert len(env.requests("POST")) == posts
    assert env.requests("DELETE") == []
    paths = {i["path"] for i in env.status()["accounts"][0]["items"]}
    assert "renamed.jpg" in paths
    assert "a.jpg" not in paths
    assert "moved/deeper/d.JPG" in paths


def test_removed_file_deleted_only_after_grace(env: SyncEnv) -> None:
    env.sync.update(delete_grace_seconds=600.0)
    populate(env.folder())
    assert env.reconcile().code == 0
    (env.folder() / "b.png").unlink()
    first = env.reconcile()
    assert first.code == 0, first.output
    assert env.requests("DELETE") == []  # the grace period has only just started
    # Let the grace period pass by moving the recorded start back, not by sleeping.
    gone = env.sql("SELECT hash, gone_since FROM images WHERE gone_since IS NOT NULL")
    assert len(gone) == 1
    env.sql("UPDATE images SET gone_since = ?", (time.time() - 601,))
    env.sql("UPDATE images SET gone_since = NULL WHERE hash != ?", (gone[0][0],))
    second = env.reconcile()
    assert second.code == 0, second.output
    deletes = env.requests("DELETE")
    assert len(deletes) == 1
    assert gone[0][0] in deletes[0]["query"] or deletes[0]["status"] == 200
    assert {i["hash"] for i in env.images()} == {
        i["hash"] for i in env.images() if i["hash"] != gone[0][0]
    }
    assert gone[0][0] not in {i["hash"] for i in env.images()}


def test_in_use_image_kept_then_deleted_when_free(env: SyncEnv) -> None:
    populate(env.folder())
    assert env.reconcile().code == 0
    victim = next(i for i in env.images() if i["name"] == "b.png")
    env.emu.call(env.emu.state.set_creatives, ACCOUNT, victim["hash"], ["creative-1"])
    (env.folder() / "b.png").unlink()
    kept = env.reconcile()
    assert kept.code == 0, kept.output
    assert env.requests("DELETE") == []
    assert any(e.get("event") == "image_kept_in_use" for e in kept.events())
    env.emu.call(env.emu.state.set_creatives, ACCOUNT, victim["hash"], [])
    freed = env.reconcile()
    assert freed.code == 0, freed.output
    assert len(env.requests("DELETE")) == 1
    assert victim["hash"] not in {i["hash"] for i in env.images()}


def test_images_syncd_did_not_upload_are_never_deleted(env: SyncEnv) -> None:
    foreign = env.emu.call(env.emu.state.upload, ACCOUNT, "foreign.png", png_bytes(99))
    (env.folder() / "mine.jpg").write_bytes(jpeg_bytes(1))
    (env.folder() / "stays.jpg").write_bytes(jpeg_bytes(2))
    assert env.reconcile().code == 0
    (env.folder() / "mine.jpg").unlink()
    result = env.reconcile()
    assert result.code == 0, result.output
    remaining = {i["hash"] for i in env.images()}
    foreign_hash = foreign["hash"]
    assert foreign_hash in remaining
    assert len(env.requests("DELETE")) == 1  # only syncd's own image


def test_same_content_as_a_foreign_image_is_adopted_not_owned(env: SyncEnv) -> None:
    env.emu.call(env.emu.state.upload, ACCOUNT, "x.png", png_bytes(5))
    (env.folder() / "x.png").write_bytes(png_bytes(5))
    (env.folder() / "y.png").write_bytes(png_bytes(6))
    dry = env.reconcile("--dry-run")  # the listing's names show which upload would adopt
    assert "adopt   x.png" in dry.stdout
    assert "upload  y.png" in dry.stdout
    assert env.reconcile().code == 0
    (env.folder() / "x.png").unlink()
    result = env.reconcile()
    assert result.code == 0, result.output
    assert env.requests("DELETE") == []
    assert len(env.images()) == 2


def test_guard_missing_folder_exits_2_and_touches_nothing(env: SyncEnv) -> None:
    populate(env.folder())
    assert env.reconcile().code == 0
    requests_before = len(env.requests())
    shutil.rmtree(env.folder())
    result = env.reconcile()
    assert result.code == 2
    assert "accounts[0].folder" in result.stderr
    assert len(env.requests()) == requests_before


def test_guard_emptied_folder_then_allow_mass_delete(env: SyncEnv) -> None:
    files = populate(env.folder())
    assert env.reconcile().code == 0
    for child in env.folder().iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    blocked = env.reconcile()
    assert blocked.code == 1, blocked.output
    assert env.requests("DELETE") == []
    assert any(e.get("event") == "deletions_withheld" for e in blocked.events())
    allowed = env.reconcile("--allow-mass-delete")
    assert allowed.code == 0, allowed.output
    assert len(env.requests("DELETE")) == len(files)


def test_guard_fraction(env: SyncEnv) -> None:
    env.sync.update(max_delete_fraction=0.25)
    folder = env.folder()
    for i in range(8):
        write_image(folder / f"f{i}.png", "png", i)
    assert env.reconcile().code == 0
    for i in range(3):
        (folder / f"f{i}.png").unlink()
    blocked = env.reconcile()
    assert blocked.code == 1
    assert env.requests("DELETE") == []
    assert "max_delete_fraction" in blocked.output


def test_bad_inputs_skipped_with_reasons_while_good_files_sync(
    env: SyncEnv, tmp_path: Path
) -> None:
    folder = env.folder()
    (folder / "good.jpg").write_bytes(jpeg_bytes(1))
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "fake.jpg").write_bytes(b"this is text pretending to be a jpeg")
    (folder / "corrupt.png").write_bytes(png_bytes(3)[:40])  # right signature, truncated
    long_name = "x" * 150 + ".png"
    (folder / long_name).write_bytes(png_bytes(4))
    unicode_name = "caf\u00e9 \u2013 \u00e9t\u00e9.gif"
    (folder / unicode_name).write_bytes(gif_bytes(5))
    (folder / ".hidden.jpg").write_bytes(jpeg_bytes(6))
    (folder / "~$lock.jpg").write_bytes(jpeg_bytes(7))
    (folder / "upload.jpg.part").write_bytes(jpeg_bytes(8))
    (folder / "x.tmp").write_bytes(jpeg_bytes(9))
    (folder / "Thumbs.db").write_bytes(b"\0" * 10)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg_bytes(10))
    os.symlink(outside, folder / "link-out.jpg")
    result = env.reconcile()
    assert result.code == 1, result.output  # corrupt.png failed permanently
    names = {i["name"] for i in env.images()}
    assert "good.jpg" in names
    assert unicode_name in names
    assert any(len(n) == 100 and n.endswith(".png") for n in names)
    assert len(names) == 3
    items = {i["path"]: i for i in env.status()["accounts"][0]["items"]}
    for path in ("notes.txt", "empty.png", "fake.jpg", "link-out.jpg"):
        assert items[path]["state"] == "skipped", path
        assert items[path]["reason"], path
    assert items["corrupt.png"]["state"] == "failed"
    assert "1487197" in items["corrupt.png"]["reason"]
    # A permanent failure is not retried until the file changes.
    posts = len(env.requests("POST"))
    assert env.reconcile().code == 1
    assert len(env.requests("POST")) == posts
    (folder / "corrupt.png").write_bytes(png_bytes(3))
    assert env.reconcile().code == 0
    assert len(env.requests("POST")) == posts + 1


def test_invalid_token_exits_3_after_few_requests(env: SyncEnv) -> None:
    set_tokens(env.emu, {"the-only-valid-token"})
    populate(env.folder())
    result = env.reconcile()
    assert result.code == 3, result.output
    assert len(env.requests()) <= 3
    assert env.requests("POST") == []


def test_token_never_appears_anywhere(env: SyncEnv) -> None:
    populate(env.folder())
    (env.folder() / "bad.png").write_bytes(png_bytes(1)[:30])
    runs = [
        env.reconcile(),
        env.reconcile("--dry-run"),
        env.run("status"),
        env.run("status", "--json"),
    ]
    set_tokens(env.emu, {"another"})
    runs.append(env.reconcile())
    for run in runs:
        assert TOKEN not in run.output
    assert TOKEN.encode() not in env.manifest.read_bytes()
    for wal in env.manifest.parent.glob("*"):
        assert TOKEN.encode() not in wal.read_bytes()
    assert not any(r["token_in_url"] for r in env.requests())


def test_throttled_account_does_not_slow_another(env: SyncEnv) -> None:
    folder_b = env.add_account(ACCOUNT_B)
    for i in range(6):
        write_image(env.folder() / f"a{i}.png", "png", i)
        write_image(folder_b / f"b{i}.png", "png", 100 + i)
    throttle(env.emu, ACCOUNT, 120.0)
    env.write_config()
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "--config", str(env.config_path), "--reconcile"],
        env={**os.environ, "SYNCD_ACCESS_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        start = time.monotonic()
        while len(env.images(ACCOUNT_B)) < 6 and time.monotonic() - start < 20:
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        assert len(env.images(ACCOUNT_B)) == 6
        assert elapsed < 10
        assert env.images(ACCOUNT) == []
        assert len(env.requests(account=ACCOUNT)) <= 3  # paused, not hammering
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_transient_faults_still_converge(env: SyncEnv) -> None:
    set_faults(env.emu, error_rate=0.15, seed=11)
    for i in range(20):
        write_image(env.folder() / f"f{i}.png", "png", i)
    result = env.reconcile(timeout=120)
    set_faults(env.emu, error_rate=0.0)
    if result.code != 0:  # a file whose retries all failed stays pending: the next run finishes
        assert env.reconcile().code == 0
    images = env.images()
    assert len(images) == 20
    assert all(i["upload_count"] <= 6 for i in images)


def test_dry_run_changes_nothing(env: SyncEnv) -> None:
    populate(env.folder())
    result = env.reconcile("--dry-run")
    assert result.code == 0, result.output
    assert "upload  a.jpg" in result.stdout
    assert env.requests("POST") == []
    assert env.requests("DELETE") == []
    assert not env.manifest.exists()
    assert env.reconcile().code == 0
    (env.folder() / "a.jpg").unlink()
    before = env.manifest.read_bytes()
    dry = env.reconcile("--dry-run")
    assert "'a.jpg': no local file holds it" in dry.stdout  # named, though read without names
    assert env.requests("DELETE") == []
    assert env.manifest.read_bytes() == before


def test_status_lists_states_and_reasons(env: SyncEnv) -> None:
    populate(env.folder())
    (env.folder() / "readme.txt").write_text("x")
    assert env.reconcile().code == 0
    text = env.run("status")
    assert text.code == 0
    assert "5 synced" in text.stdout
    assert "1 skipped" in text.stdout
    assert "readme.txt" in text.stdout


def test_bad_config_exits_2_naming_the_key(env: SyncEnv) -> None:
    env.sync.update(wokers=3)
    result = env.reconcile()
    assert result.code == 2
    assert "sync.wokers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not env.manifest.exists()


def test_settling_waits_for_writers_and_accepts_future_mtimes(env: SyncEnv) -> None:
    env.sync.update(settle_seconds=0.5)
    recent = env.folder() / "recent.png"
    recent.write_bytes(png_bytes(1))
    future = env.folder() / "future.png"
    future.write_bytes(png_bytes(2))
    ahead = time.time() + 3600  # a copy that kept a clock-skewed timestamp
    os.utime(future, (ahead, ahead))
    result = env.reconcile()
    assert result.code == 0, result.output
    assert sorted(i["name"] for i in env.images()) == ["future.png", "recent.png"]
    assert any(e.get("event") == "waiting_for_writers" for e in result.events())


def test_an_interrupted_upload_of_a_file_since_removed_is_claimed(env: SyncEnv) -> None:
    """A crash after the POST, before its answer was recorded, and the file is gone since:
    the image named as the intent and created after it is claimed as syncd's own, so it is
    deleted like any image whose file went (grace 0 here). It is found through the listing's
    `created_time`, which is asked for only when there are intents."""
    data = png_bytes(7)
    md5 = hashlib.md5(data).hexdigest()
    env.manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest = SqliteManifest.open(env.manifest)
    manifest.begin_upload(UploadIntent(ACCOUNT, md5, "gone.png", "gone.png", time.time() - 5))
    manifest.close()
    image_hash = env.emu.call(env.emu.state.upload, ACCOUNT, "gone.png", data)["hash"]
    (env.folder() / "kept.png").write_bytes(png_bytes(8))
    run = env.reconcile()
    assert run.code == 0, run.stderr
    assert '"event": "intent_claimed"' in run.stdout
    active = {i["hash"] for i in env.emu.call(env.emu.state.images, ACCOUNT)}
    assert image_hash not in active
    assert len(active) == 1  # kept.png
    assert env.sql("SELECT COUNT(*) FROM intents") == [(0,)]
