"""Hostile files: what users, scripts and shares put in a watched folder.

Files that change or vanish between the scan and the upload, hard links, symlink loops,
FIFOs, sockets and device nodes (never opened: reading a FIFO would block a thread forever,
reading /dev/zero would never end), unreadable files, and a sparse 10 GB file that must be
refused from its size alone. Races are made deterministic with the engine's own hooks
(`on_hashed` runs before the first file is read; `on_queued`, for an upload that starts while
the scan still hashes, or else `on_planned`, after the files were hashed and before any upload),
driving the real engine against the real emulator over loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ACCOUNT, TOKEN, Run, SyncEnv, engine_pass
from daemon_proc import DaemonProc, wait_until
from images import jpeg_bytes, png_bytes, write_image

from syncd.engine import PassOptions
from syncd.filters import MAX_IMAGE_BYTES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

NOBODY = 65534


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _before_upload(action: Callable[[], None]) -> PassOptions:
    """Options that run `action` once, after the scan hashed the files and before any upload:
    an upload can start while the scan still hashes (`on_queued`) or after the plan."""
    hook = _once(action)
    return PassOptions(on_queued=hook, on_planned=hook)


def _once(action: Callable[[], None]) -> Callable[..., None]:
    done: list[bool] = []

    def hook(*_: Any) -> None:
        if not done:
            done.append(True)
            action()

    return hook


# -- changed or vanished between the scan and the upload ------------------------------------


def test_file_changed_after_hashing_uploads_the_final_bytes_only(env: SyncEnv) -> None:
    target = env.folder() / "changing.png"
    target.write_bytes(png_bytes(1))
    first = _md5(png_bytes(1))
    final = write_image(env.tmp / "final.png", "png", 2, size=5000).read_bytes()

    def rewrite() -> None:
        target.write_bytes(final)  # after the scan hashed it, before the upload reads it

    result = engine_pass(env, _before_upload(rewrite))
    assert result.report.ok, result.report
    images = env.images()
    assert [i["content_md5"] for i in images] == [_md5(final)], "uploaded bytes not hashed"
    assert first not in {i["content_md5"] for i in env.images(include_deleted=True)}
    assert len(env.requests("POST")) == 1
    rows = env.sql("SELECT md5, remote_hash FROM files")
    assert rows == [(_md5(final), images[0]["hash"])]


def test_file_vanishing_before_it_is_read_is_neither_uploaded_nor_gone(env: SyncEnv) -> None:
    folder = env.folder()
    paths = [write_image(folder / f"v{i}.jpg", "jpeg", i) for i in range(6)]
    doomed = paths[::2]

    def vanish() -> None:
        for path in doomed:  # listed by the walk, gone before the first read
            path.unlink()

    result = engine_pass(env, PassOptions(on_hashed=_once(vanish)))
    assert not result.report.failed, result.report
    assert sorted(i["name"] for i in env.images()) == ["v1.jpg", "v3.jpg", "v5.jpg"]
    assert env.requests("DELETE") == []
    again = env.reconcile()
    assert again.code == 0, again.output
    assert len(env.requests("POST")) == 3


def test_file_vanishing_between_plan_and_upload_is_skipped_then_forgotten(env: SyncEnv) -> None:
    folder = env.folder()
    write_image(folder / "stays.gif", "gif", 1)
    going = write_image(folder / "goes.gif", "gif", 2)
    result = engine_pass(env, _before_upload(going.unlink))
    assert result.report.ok, result.report
    assert [i["name"] for i in env.images()] == ["stays.gif"]
    assert [p for (p,) in env.sql("SELECT path FROM files")] == [b"stays.gif"]


def test_file_growing_too_large_before_upload_is_skipped_not_fatal(env: SyncEnv) -> None:
    folder = env.folder()
    write_image(folder / "fine.gif", "gif", 1)
    growing = write_image(folder / "grows.gif", "gif", 2)

    def grow() -> None:
        with growing.open("r+b") as f:
            f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: cheap to make, too big to upload

    result = engine_pass(env, _before_upload(grow))
    assert result.report.ok, result.report
    assert [i["name"] for i in env.images()] == ["fine.gif"]
    assert len(env.requests("POST")) == 1
    again = env.reconcile()
    assert again.code == 0, again.output
    reasons = {i["path"]: i["reason"] for i in env.status()["accounts"][0]["items"]}
    assert "too large" in reasons["grows.gif"], reasons


def test_file_replaced_by_a_fifo_before_upload_is_not_opened(env: SyncEnv) -> None:
    target = env.folder() / "swap.jpg"
    target.write_bytes(jpeg_bytes(3))

    def swap() -> None:
        target.unlink()
        os.mkfifo(target)  # a blocking open or read here would hang the pass

    started = time.monotonic()
    result = engine_pass(env, _before_upload(swap))
    assert time.monotonic() - started < 10
    assert env.requests("POST") == []
    assert not result.report.failed, result.report
    rows = env.sql("SELECT state, last_error FROM files")
    assert rows == [("skipped", "not a regular file (fifo)")]


# -- links ------------------------------------------------------------------------------------


def test_hard_links_are_one_content_one_upload(env: SyncEnv) -> None:
    folder = env.folder()
    original = write_image(folder / "one.png", "png", 4)
    (folder / "sub").mkdir()
    os.link(original, folder / "sub" / "two.png")
    os.link(original, folder / "three.PNG")
    result = env.reconcile()
    assert result.code == 0, result.output
    assert len(env.requests("POST")) == 1
    items = env.status()["accounts"][0]["items"]
    assert {i["path"] for i in items} == {"one.png", "sub/two.png", "three.PNG"}
    assert len({i["hash"] for i in items}) == 1
    assert {i["state"] for i in items} == {"synced"}


def test_symlink_loops_are_skipped_without_hanging(env: SyncEnv) -> None:
    folder = env.folder()
    write_image(folder / "real.png", "png", 5)
    os.symlink("self.jpg", folder / "self.jpg")
    os.symlink("b.png", folder / "a.png")
    os.symlink("a.png", folder / "b.png")
    os.symlink(".", folder / "here")  # a directory loop
    os.symlink("..", folder / "up.gif")
    (folder / "deep").mkdir()
    os.symlink("../deep", folder / "deep" / "again")
    result = env.run("--reconcile", timeout=30)
    assert result.code == 0, result.output
    assert [i["name"] for i in env.images()] == ["real.png"]
    reasons = {i["path"]: i["reason"] for i in env.status()["accounts"][0]["items"]}
    for loop in ("self.jpg", "a.png", "b.png"):
        assert reasons[loop] == "symlink loop", (loop, reasons)
    assert "not followed" in reasons["here"]
    assert "not followed" in reasons["deep/again"]


# -- special files ------------------------------------------------------------------------


@pytest.fixture
def specials(env: SyncEnv) -> dict[str, str]:
    """A FIFO, a socket and device nodes with image names, and the reason each must get."""
    folder = env.folder()
    os.mkfifo(folder / "pipe.jpg")
    expected = {"pipe.jpg": "not a regular file (fifo)"}
    sock_path = folder / "sock.png"
    if len(os.fsencode(sock_path)) < 100:  # AF_UNIX paths are limited to 107 bytes
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(sock_path))
        sock.close()  # the socket file stays
        expected["sock.png"] = "not a regular file (socket)"
    try:
        os.mknod(folder / "zero.png", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero
        os.mknod(folder / "null.gif", stat.S_IFCHR | 0o644, os.makedev(1, 3))  # /dev/null
        os.mknod(folder / "loop.tif", stat.S_IFBLK | 0o644, os.makedev(7, 0))
    except PermissionError:
        pass  # no CAP_MKNOD: FIFO and socket still covered
    else:
        expected["zero.png"] = "not a regular file (character device)"
        expected["null.gif"] = "not a regular file (character device)"
        expected["loop.tif"] = "not a regular file (block device)"
    return expected


def test_fifos_sockets_and_devices_are_skipped_never_opened(
    env: SyncEnv, specials: dict[str, str]
) -> None:
    write_image(env.folder() / "good.png", "png", 6)
    started = time.monotonic()
    result = env.run("--reconcile", timeout=30)
    assert time.monotonic() - started < 20
    assert result.code == 0, result.output
    assert [i["name"] for i in env.images()] == ["good.png"]
    items = {i["path"]: i for i in env.status()["accounts"][0]["items"]}
    for name, reason in specials.items():
        assert items[name]["state"] == "skipped", items[name]
        assert items[name]["reason"] == reason, items[name]


def test_daemon_skips_a_fifo_dropped_in_and_keeps_working(env: SyncEnv) -> None:
    env.sync.update(settle_seconds=0.1, observer="native", rescan_interval_seconds=3600.0)
    env.write_config()
    daemon = DaemonProc(env.config_path, env.token)
    try:
        daemon.wait_event("scan_complete")
        os.mkfifo(env.folder() / "live.jpg")
        daemon.wait_event("file_skipped", path="live.jpg")
        write_image(env.folder() / "after.png", "png", 7)
        wait_until(lambda: len(env.images()) == 1, what="the next file still uploads")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


# -- sizes -------------------------------------------------------------------------------------


def test_sparse_10_gb_file_is_refused_by_size_without_reading(env: SyncEnv) -> None:
    huge = env.folder() / "huge.png"
    with huge.open("wb") as out:
        out.write(png_bytes(8))  # a real PNG signature: only the size can refuse it
        out.truncate(10 * 1024**3)
    write_image(env.folder() / "small.png", "png", 9)
    started = time.monotonic()
    result = env.reconcile()
    elapsed = time.monotonic() - started
    assert result.code == 0, result.output
    assert elapsed < 10, f"{elapsed:.1f} s: the file was read"
    assert [i["name"] for i in env.images()] == ["small.png"]
    assert len(env.requests("POST")) == 1
    items = {i["path"]: i for i in env.status()["accounts"][0]["items"]}
    assert items["huge.png"]["state"] == "skipped"
    assert "too large" in items["huge.png"]["reason"]


def test_large_image_uploads_under_warnings_as_errors(env: SyncEnv) -> None:
    # aiohttp warns (ResourceWarning) about raw bytes bodies over 1 MiB; syncd runs here with
    # PYTHONWARNINGS=error, so a 3 MB upload proves the body is streamed.
    data = write_image(env.folder() / "big.jpg", "jpeg", 10, size=3 * 1024 * 1024).read_bytes()
    result = env.reconcile()
    assert result.code == 0, result.output
    assert [i["content_md5"] for i in env.images()] == [_md5(data)]


# -- unreadable files (needs a user root is not) ---------------------------------------------


@pytest.fixture
def nobody_world(env: SyncEnv) -> Iterator[tuple[SyncEnv, Path]]:
    """The env rebuilt under a world-traversable directory, state owned by uid 65534."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot run syncd as a non-root user")
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "true"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot switch users here: {probe.stderr.decode().strip()}")
    base = Path(tempfile.mkdtemp(prefix="syncd-nobody-"))
    base.chmod(0o755)  # pytest's own tmp_path is 0700: uid 65534 could not reach it
    try:
        world = SyncEnv(base, env.emu)
        world.add_account(ACCOUNT)
        (base / "state").mkdir()
        os.chown(base / "state", NOBODY, NOBODY)
        yield world, base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_as_nobody(world: SyncEnv, *args: str) -> Run:
    world.write_config()
    world.config_path.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env.update(PYTHONWARNINGS="error", SYNCD_ACCESS_TOKEN=TOKEN, HOME=str(world.tmp))
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-m",
            "syncd",
            "--config",
            str(world.config_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        cwd="/",
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def test_unreadable_files_are_not_uploaded_and_their_images_are_kept(
    nobody_world: tuple[SyncEnv, Path],
) -> None:
    world, _ = nobody_world
    folder = world.folder()
    kept = write_image(folder / "was-readable.png", "png", 11)
    write_image(folder / "fine.png", "png", 12)
    first = _run_as_nobody(world, "--reconcile")
    assert first.code == 0, first.output
    assert len(world.images()) == 2
    kept.chmod(0o000)  # its image must not look "gone" now (delete_grace_seconds = 0)
    secret = write_image(folder / "never-readable.jpg", "jpeg", 13)
    secret.chmod(0o000)
    locked = folder / "locked"
    locked.mkdir()
    write_image(locked / "inside.gif", "gif", 14)
    locked.chmod(0o000)
    second = _run_as_nobody(world, "--reconcile")
    assert "Traceback" not in second.output, second.output[-3000:]
    assert second.code in (0, 1), second.output
    assert world.requests("DELETE") == [], "deleted the image of a file it could not read"
    assert len(world.images()) == 2, "uploaded something it could not read"
    locked.chmod(0o755)
    kept.chmod(0o644)


def test_unreadable_files_are_reported_with_a_reason(nobody_world: tuple[SyncEnv, Path]) -> None:
    world, _ = nobody_world
    folder = world.folder()
    write_image(folder / "fine.png", "png", 15)
    secret = write_image(folder / "never-readable.jpg", "jpeg", 16)
    secret.chmod(0o000)
    result = _run_as_nobody(world, "--reconcile")
    assert result.code in (0, 1), result.output
    logged = [e for e in result.events() if e.get("path") == "never-readable.jpg"]
    status = _run_as_nobody(world, "status", "--json")
    shown = "never-readable.jpg" in status.stdout
    assert logged or shown, "the unreadable file is mentioned nowhere"
    secret.chmod(0o644)


def test_an_operator_who_cannot_write_the_manifest_can_still_read_it(
    nobody_world: tuple[SyncEnv, Path],
) -> None:
    # The service's state, written by its user (root here) and closed cleanly, so no -wal or
    # -shm file is left; the operator (uid 65534) may read the manifest, not write beside it.
    world, base = nobody_world
    state = base / "state"
    os.chown(state, 0, 0)
    state.chmod(0o755)
    write_image(world.folder() / "kept.png", "png", 41)
    assert world.reconcile().code == 0
    assert sorted(p.name for p in state.iterdir()) == ["manifest.sqlite3"]
    status = _run_as_nobody(world, "status", "--json")
    assert status.code == 0, status.output  # was: "attempt to write a readonly database"
    (account,) = json.loads(status.stdout)["accounts"]
    assert account["files"]["synced"] == 1
    dry = _run_as_nobody(world, "--reconcile", "--dry-run")
    assert dry.code == 0, dry.output
    assert sorted(p.name for p in state.iterdir()) == ["manifest.sqlite3"]  # nothing written


# -- least privilege: the daemon as an unprivileged user ---------------------------------


class NobodyDaemon(DaemonProc):
    """The daemon started through `setpriv` as uid/gid 65534, the token in its environment
    (as systemd's DynamicUser= would run it, minus the sandbox)."""

    def __init__(self, config: Path, token: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        env.update(PYTHONWARNINGS="error", SYNCD_ACCESS_TOKEN=token, HOME="/nonexistent")
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        cmd += [sys.executable, "-m", "syncd", "--config", str(config)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            cwd="/",
        )
        self.lines = []
        self.events = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under root: (uid, mode, size), to prove the daemon changed nothing there."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_uid, st.st_mode, st.st_size)
    return out


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[2])  # the effective uid
    raise AssertionError("no Uid line")


@pytest.mark.timeout(60)
def test_daemon_runs_as_nobody_reading_the_share_writing_only_its_state(
    nobody_world: tuple[SyncEnv, Path],
) -> None:
    world, _ = nobody_world
    world.sync.update(settle_seconds=0.1, observer="native", rescan_interval_seconds=3600.0)
    folder = world.folder()
    for i in range(3):
        write_image(folder / f"s{i}.png", "png", 20 + i)
    world.write_config()
    world.config_path.chmod(0o644)
    daemon = NobodyDaemon(world.config_path, TOKEN)
    try:
        daemon.wait_event("scan_complete")
        assert _uid_of(daemon.proc.pid) == NOBODY
        wait_until(lambda: len(world.images()) == 3, what="uploads as nobody")
        before = _tree(folder)
        write_image(folder / "late.jpg", "jpeg", 30)
        (folder / "s0.png").unlink()  # delete_grace_seconds = 0: its image goes
        before.pop("s0.png")
        before["late.jpg"] = _tree(folder)["late.jpg"]
        wait_until(
            lambda: {i["name"] for i in world.images()} == {"s1.png", "s2.png", "late.jpg"},
            what="the event path and the deletion as nobody",
        )
        assert daemon.stop() == 0, daemon.output[-3000:]
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    assert _tree(folder) == before, "the daemon changed something in the share"
    state = world.manifest.parent
    assert {p.stat().st_uid for p in [state, *state.iterdir()]} == {NOBODY}
    assert "Traceback" not in daemon.output


@pytest.mark.timeout(60)
def test_daemon_keeps_the_image_of_a_file_it_is_refused_a_look_at(
    nobody_world: tuple[SyncEnv, Path],
) -> None:
    """A folder's permissions change on the share: its files cannot be stat'ed any more. That
    is not a deletion (with delete_grace_seconds = 0 the image would go at once)."""
    world, _ = nobody_world
    world.sync.update(settle_seconds=0.1, observer="native", rescan_interval_seconds=3600.0)
    folder = world.folder()
    sub = folder / "sub"
    inside = write_image(sub / "a.png", "png", 50)
    write_image(folder / "b.png", "png", 51)
    world.write_config()
    world.config_path.chmod(0o644)
    daemon = NobodyDaemon(world.config_path, TOKEN)
    try:
        daemon.wait_event("scan_complete")
        wait_until(
            lambda: world.sql("SELECT COUNT(*) FROM files WHERE state = 'synced'") == [(2,)],
            what="both uploads recorded",
        )
        sub.chmod(0o700)  # root's own now: uid 65534 may not look inside
        os.utime(inside)  # an event for the file the daemon can no longer stat
        daemon.wait_event("file_unreadable", path="sub/a.png")
        (folder / "c.png").write_bytes(b"not an image")  # a later event, handled after it
        daemon.wait_event("file_skipped", path="c.png")
        assert world.requests("DELETE") == [], "deleted the image of a file it could not see"
        assert world.sql("SELECT path FROM files WHERE state = 'synced' ORDER BY path") == [
            (b"b.png",),
            (b"sub/a.png",),
        ]
        assert daemon.stop() == 0, daemon.output[-3000:]
    finally:
        sub.chmod(0o755)
        if daemon.proc.poll() is None:
            daemon.kill()
