"""The folder walk over real files in tmp_path: what is a candidate, what is skipped and why."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from images import bmp_bytes, gif_bytes, jpeg_bytes, png_bytes, tiff_bytes, write_image

from syncd.filters import MAX_IMAGE_BYTES
from syncd.models import FolderState, display_path
from syncd.scanner import (
    EntryKind,
    Known,
    ScanResult,
    examine_paths,
    folder_state,
    scan_folder,
    walk,
)

LATER = time.time() + 3600  # "now" for scans that are not about settling: every file is old


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


async def scan(
    root: Path,
    known: Mapping[str, Known] | None = None,
    *,
    now: float = LATER,
    settle: float = 2.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    result = await asyncio.wait_for(
        scan_folder(root, known or {}, now=now, settle_seconds=settle, on_progress=on_progress),
        timeout=30,  # a hang (FIFO opened, symlink loop followed) fails fast and clearly
    )
    return result


def md5s(result: ScanResult) -> dict[str, str]:
    return {f.path: f.md5 for f in result.files}


def reasons(result: ScanResult) -> dict[str, str]:
    return {s.path: s.reason for s in result.skips}


def known_from(result: ScanResult) -> dict[str, Known]:
    return {f.path: Known(f.size, f.mtime_ns, f.md5) for f in result.files}


def put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.asyncio
async def test_candidates_skips_and_reasons(tmp_path: Path) -> None:
    images = {
        "a.jpg": jpeg_bytes(1),
        "b.png": png_bytes(2),
        "sub/c.gif": gif_bytes(3),
        "sub/deeper/D.JPG": jpeg_bytes(4),
        "sub/e.jpeg": jpeg_bytes(5),
        "f.bmp": bmp_bytes(6),
        "g.tif": tiff_bytes(7),
        "h.TIFF": tiff_bytes(8, big_endian=True),
    }
    for rel, data in images.items():
        put(tmp_path, rel, data)
    others = {
        ".hidden.jpg": jpeg_bytes(9),
        "sub/~$lock.jpg": jpeg_bytes(10),
        "upload.tmp": b"x",
        "UPLOAD2.TMP": b"x",
        "photo.jpg.part": b"x",
        "photo.png.crdownload": b"x",
        "Thumbs.db": b"x",
        "sub/.DS_Store": b"x",
        "notes.txt": b"hello",
        "README": b"hello",
        "fake.jpg": png_bytes(11),
        "text.png": b"not an image at all",
        "empty.gif": b"",
    }
    for rel, data in others.items():
        put(tmp_path, rel, data)
    put(tmp_path, ".git/objects/x.jpg", jpeg_bytes(12))
    put(tmp_path, "sub/.Trash-1000/files/y.jpg", jpeg_bytes(13))

    result = await scan(tmp_path)

    assert result.folder_state is FolderState.OK
    assert md5s(result) == {rel: md5(data) for rel, data in images.items()}
    assert reasons(result) == {
        ".hidden.jpg": "hidden file",
        "sub/~$lock.jpg": "editor lock file",
        "upload.tmp": "temporary file",
        "UPLOAD2.TMP": "temporary file",
        "photo.jpg.part": "temporary file",
        "photo.png.crdownload": "temporary file",
        "Thumbs.db": "system file",
        "sub/.DS_Store": "system file",
        "notes.txt": "not an image extension (.txt)",
        "README": "no extension",
        "fake.jpg": "content does not match extension .jpg: looks like png",
        "text.png": "content is not a PNG image",
        "empty.gif": "empty file",
        ".git": "hidden directory not descended",
        "sub/.Trash-1000": "hidden directory not descended",
    }
    assert result.errors == []
    assert result.unsettled == []
    assert not result.incomplete
    assert result.device == os.stat(tmp_path).st_dev
    sizes = {f.path: f.size for f in result.files}
    assert sizes == {rel: len(data) for rel, data in images.items()}
    assert result.hashed_bytes >= sum(sizes.values())
    assert repr(result).startswith("ScanResult(folder_state=ok, files=8, skips=15,")


@pytest.mark.asyncio
async def test_huge_sparse_file_is_skipped_without_reading(tmp_path: Path) -> None:
    for name, size in (("huge.jpg", 10 * 1024**3), ("just_over.png", MAX_IMAGE_BYTES + 1)):
        with (tmp_path / name).open("wb") as f:
            f.truncate(size)  # sparse: never written, and must never be read
    result = await scan(tmp_path)
    assert reasons(result) == {
        "huge.jpg": f"too large ({10 * 1024**3} bytes > 30 MiB)",
        "just_over.png": f"too large ({MAX_IMAGE_BYTES + 1} bytes > 30 MiB)",
    }
    assert result.hashed_bytes == 0
    assert result.files == []


@pytest.mark.asyncio
async def test_file_at_the_size_limit_is_a_candidate(tmp_path: Path) -> None:
    path = write_image(tmp_path / "max.png", "png", 1, size=MAX_IMAGE_BYTES)
    result = await scan(tmp_path)
    assert md5s(result) == {"max.png": md5(path.read_bytes())}


@pytest.mark.asyncio
async def test_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = put(tmp_path, "outside/secret.jpg", jpeg_bytes(1))
    target = put(root, "real/photo.png", png_bytes(2))
    (root / "link.png").symlink_to(target)
    (root / "relative.png").symlink_to("real/photo.png")
    (root / "escape.jpg").symlink_to(outside)
    (root / "dotdot.jpg").symlink_to("../outside/secret.jpg")
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "self.jpg").symlink_to("self.jpg")
    (root / "outdir").symlink_to(outside.parent)
    (root / "real" / "up").symlink_to("..")  # a directory loop: root/real/up/real/up/...
    (root / "real" / "loop").symlink_to(root / "real")
    os.mkfifo(root / "real" / "pipe.jpg")
    (root / "fifo_link.jpg").symlink_to(root / "real" / "pipe.jpg")

    result = await scan(root)

    photo = md5(png_bytes(2))
    assert md5s(result) == {"real/photo.png": photo, "link.png": photo, "relative.png": photo}
    assert reasons(result) == {
        "escape.jpg": "symlink leads outside the folder",
        "dotdot.jpg": "symlink leads outside the folder",
        "dangling.jpg": "dangling symlink",
        "self.jpg": "symlink loop",
        "outdir": "symlinked directory not followed",
        "real/up": "symlinked directory not followed",
        "real/loop": "symlinked directory not followed",
        "real/pipe.jpg": "not a regular file (fifo)",
        "fifo_link.jpg": "not a regular file (fifo)",
    }
    assert result.errors == []


@pytest.mark.asyncio
async def test_a_symlinked_root_is_followed(tmp_path: Path) -> None:
    put(tmp_path, "share/a.gif", gif_bytes(1))
    (tmp_path / "mount").symlink_to(tmp_path / "share")
    (tmp_path / "share" / "b.gif").symlink_to(tmp_path / "share" / "a.gif")
    result = await scan(tmp_path / "mount")
    assert set(md5s(result)) == {"a.gif", "b.gif"}


@pytest.mark.asyncio
async def test_fifos_and_sockets_are_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    # AF_UNIX paths are short: a long tmp_path cannot hold one, and the socket part is skipped.
    with socket.socket(socket.AF_UNIX) as sock, contextlib.suppress(OSError):
        sock.bind(str(tmp_path / "sock.png"))
    put(tmp_path, "ok.jpg", jpeg_bytes(1))
    result = await scan(tmp_path)  # would hang on a blocking open of the FIFO
    expected = {"pipe.jpg": "not a regular file (fifo)"}
    if (tmp_path / "sock.png").exists():
        expected["sock.png"] = "not a regular file (socket)"
    assert reasons(result) == expected
    assert set(md5s(result)) == {"ok.jpg"}


@pytest.mark.asyncio
async def test_undecodable_names_survive(tmp_path: Path) -> None:
    raw = b"caf\xe9 \xff.jpg"
    try:
        with open(os.path.join(os.fsencode(tmp_path), raw), "wb") as f:
            f.write(jpeg_bytes(1))
    except OSError:
        pytest.skip("this file system refuses names that are not valid UTF-8")
    result = await scan(tmp_path)
    assert md5s(result) == {os.fsdecode(raw): md5(jpeg_bytes(1))}
    assert os.fsencode(result.files[0].path) == raw
    assert display_path(result.files[0].path) == "caf\\xe9 \\xff.jpg"


@pytest.mark.asyncio
async def test_newlines_and_unicode_in_names(tmp_path: Path) -> None:
    data = {
        "line\nbreak.png": png_bytes(1),
        "café/日本語.gif": gif_bytes(2),
        "emoji 🎉/Ünïcödé.JPEG": jpeg_bytes(3),
        " spaced .bmp": bmp_bytes(4),
    }
    for rel, content in data.items():
        put(tmp_path, rel, content)
    result = await scan(tmp_path)
    assert md5s(result) == {rel: md5(content) for rel, content in data.items()}


@pytest.mark.asyncio
async def test_long_nested_path_is_found(tmp_path: Path) -> None:
    parts = [f"{i:02d}" + "d" * 180 for i in range(15)]  # about 2,800 characters deep
    rel = "/".join([*parts, "photo.png"])
    put(tmp_path, rel, png_bytes(1))
    result = await scan(tmp_path)
    assert md5s(result) == {rel: md5(png_bytes(1))}


def make_deeper_than_path_max(root: Path, depth: int) -> None:
    """Directories nested beyond PATH_MAX, made relative to directory fds."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("n" * 250, dir_fd=fd)
            child = os.open("n" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(png_bytes(2))
    finally:
        os.close(fd)


@pytest.mark.asyncio
async def test_path_beyond_path_max_is_reported_not_crashed_on(tmp_path: Path) -> None:
    put(tmp_path, "shallow.png", png_bytes(1))
    make_deeper_than_path_max(tmp_path, 20)  # about 5,000 characters
    result = await scan(tmp_path)
    assert set(md5s(result)) == {"shallow.png"}
    assert result.incomplete  # a partial walk: nothing below may be taken as gone
    assert [e.reason for e in result.errors] == ["path too long"]


@pytest.mark.asyncio
async def test_known_unchanged_file_is_not_read(tmp_path: Path) -> None:
    path = put(tmp_path, "a.png", png_bytes(1))
    put(tmp_path, "b.gif", gif_bytes(2))
    first = await scan(tmp_path)
    assert first.hashed_bytes > 0

    # Same size, same mtime, different bytes: only a scan that reads the file would notice.
    before = path.stat()
    path.write_bytes(png_bytes(9))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = await scan(tmp_path, known_from(first))

    assert again.hashed_bytes == 0
    by_path = sorted(again.files, key=lambda f: f.path)
    assert by_path == sorted(first.files, key=lambda f: f.path)


@pytest.mark.asyncio
async def test_known_but_changed_or_unhashed_file_is_read(tmp_path: Path) -> None:
    a = put(tmp_path, "a.png", png_bytes(1))
    b = put(tmp_path, "b.png", png_bytes(2))
    st_a, st_b = a.stat(), b.stat()
    known = {
        "a.png": Known(st_a.st_size, st_a.st_mtime_ns + 1, "0" * 32),  # mtime moved
        "b.png": Known(st_b.st_size, st_b.st_mtime_ns, None),  # seen, never hashed
    }
    result = await scan(tmp_path, known)
    assert md5s(result) == {"a.png": md5(png_bytes(1)), "b.png": md5(png_bytes(2))}


@pytest.mark.asyncio
async def test_recent_files_are_unsettled_and_not_read(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    fresh = put(tmp_path, "fresh.jpg", jpeg_bytes(1))
    old = put(tmp_path, "old.jpg", jpeg_bytes(2))
    edge = put(tmp_path, "edge.jpg", jpeg_bytes(3))
    future = put(tmp_path, "future.jpg", jpeg_bytes(4))
    os.utime(fresh, (now - 1, now - 1))
    os.utime(old, (now - 60, now - 60))
    os.utime(edge, (now - 2, now - 2))  # exactly settle_seconds old counts as settled
    os.utime(future, (now + 30, now + 30))

    result = await scan(tmp_path, now=now, settle=2.0)

    assert sorted(result.unsettled) == ["fresh.jpg", "future.jpg"]
    assert set(md5s(result)) == {"old.jpg", "edge.jpg"}
    # The two settled files were read once each (signature, then MD5); the others not at all.
    assert result.hashed_bytes == 2 * len(jpeg_bytes(2))


@pytest.mark.asyncio
async def test_known_unchanged_file_is_reused_even_if_recent(tmp_path: Path) -> None:
    path = put(tmp_path, "a.png", png_bytes(1))
    st = path.stat()
    known = {"a.png": Known(st.st_size, st.st_mtime_ns, "f" * 32)}
    result = await scan(tmp_path, known, now=st.st_mtime_ns / 1e9, settle=60)
    assert md5s(result) == {"a.png": "f" * 32}
    assert result.unsettled == []


@pytest.mark.asyncio
async def test_missing_root(tmp_path: Path) -> None:
    result = await scan(tmp_path / "not-there")
    assert result.folder_state is FolderState.MISSING
    assert result.device is None
    assert result.incomplete
    assert result.files == []
    assert result.skips == result.errors == []
    assert folder_state(tmp_path / "not-there") is FolderState.MISSING


@pytest.mark.asyncio
async def test_root_that_is_a_file_is_missing(tmp_path: Path) -> None:
    put(tmp_path, "file.jpg", jpeg_bytes(1))
    assert (await scan(tmp_path / "file.jpg")).folder_state is FolderState.MISSING
    assert folder_state(tmp_path) is FolderState.OK


def refuse_listing(monkeypatch: pytest.MonkeyPatch, refused: Path) -> None:
    """Make os.scandir fail with EACCES for one directory (works even when running as root)."""
    real_scandir = os.scandir

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        if os.fspath(path) == str(refused):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.asyncio
async def test_unlistable_subdirectory_makes_the_scan_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(tmp_path, "ok.png", png_bytes(1))
    put(tmp_path, "locked/hidden_from_us.png", png_bytes(2))
    refuse_listing(monkeypatch, tmp_path / "locked")
    result = await scan(tmp_path)
    assert set(md5s(result)) == {"ok.png"}
    assert result.incomplete
    assert [(e.path, e.reason) for e in result.errors] == [("locked", "permission denied")]
    assert result.folder_state is FolderState.OK


@pytest.mark.asyncio
async def test_unlistable_root_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(tmp_path, "ok.png", png_bytes(1))
    refuse_listing(monkeypatch, tmp_path)
    assert folder_state(tmp_path) is FolderState.UNREADABLE
    result = await scan(tmp_path)
    assert result.folder_state is FolderState.UNREADABLE
    assert result.incomplete
    assert result.device == os.stat(tmp_path).st_dev


@pytest.mark.asyncio
async def test_unreadable_file_and_directory_without_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything; the monkeypatched tests cover this")
    put(tmp_path, "ok.png", png_bytes(1))
    secret = put(tmp_path, "secret.png", png_bytes(2))
    locked = put(tmp_path, "locked/x.png", png_bytes(3)).parent
    secret.chmod(0)
    locked.chmod(0)
    try:
        result = await scan(tmp_path)
    finally:
        locked.chmod(0o755)
        secret.chmod(0o644)
    assert set(md5s(result)) == {"ok.png"}
    errors = {e.path: e.reason for e in result.errors}
    assert errors == {"secret.png": "permission denied", "locked": "permission denied"}
    assert result.incomplete


@pytest.mark.asyncio
async def test_file_vanishing_or_growing_mid_scan(tmp_path: Path) -> None:
    gone = put(tmp_path, "gone.png", png_bytes(1))
    growing = put(tmp_path, "growing.png", png_bytes(2))
    put(tmp_path, "steady.png", png_bytes(3))
    calls: list[tuple[int, int]] = []

    def on_progress(done: int, total: int) -> None:
        if not calls:  # listed, not read yet: change the files under the scanner's feet
            gone.unlink()
            with growing.open("ab") as f:
                f.write(b"more bytes")
        calls.append((done, total))

    result = await scan(tmp_path, on_progress=on_progress)

    assert set(md5s(result)) == {"steady.png"}
    assert [(e.path, e.reason) for e in result.errors] == [("gone.png", "file vanished")]
    assert result.unsettled == ["growing.png"]
    assert not result.incomplete  # a file that could not be read is not a partial walk
    assert calls[0] == (0, 3)
    assert calls[-1] == (3, 3)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


@pytest.mark.asyncio
async def test_concurrency_setting(tmp_path: Path) -> None:
    for i in range(12):
        put(tmp_path, f"d{i % 3}/f{i}.gif", gif_bytes(i))
    one = await scan_folder(tmp_path, {}, now=LATER, settle_seconds=0, hash_concurrency=1)
    many = await scan_folder(tmp_path, {}, now=LATER, settle_seconds=0, hash_concurrency=8)
    assert md5s(one) == md5s(many)
    assert len(one.files) == 12
    with pytest.raises(ValueError, match="hash_concurrency"):
        await scan_folder(tmp_path, {}, now=LATER, settle_seconds=0, hash_concurrency=0)


def test_walk_reports_kinds_without_reading(tmp_path: Path) -> None:
    put(tmp_path, "a/b.png", png_bytes(1))
    put(tmp_path, "notes.txt", b"x")
    put(tmp_path, ".cache/c.png", png_bytes(2))
    entries = {e.path: e for e in walk(str(tmp_path))}
    assert set(entries) == {"a/b.png", "notes.txt", ".cache"}
    assert entries["a/b.png"].kind is EntryKind.CANDIDATE
    assert entries["a/b.png"].size == len(png_bytes(1))
    assert entries["notes.txt"].kind is EntryKind.SKIPPED
    assert entries[".cache"].reason == "hidden directory not descended"


def test_walk_of_a_missing_root_and_a_stopped_walk(tmp_path: Path) -> None:
    [entry] = list(walk(tmp_path / "nope"))
    assert (entry.path, entry.kind, entry.reason) == ("", EntryKind.UNLISTED, "file vanished")
    put(tmp_path, "a.png", png_bytes(1))
    stop = threading.Event()
    stop.set()
    assert list(walk(tmp_path, stop=stop)) == []


@pytest.mark.asyncio
async def test_examine_paths_applies_the_walks_rules_to_named_paths(tmp_path: Path) -> None:
    put(tmp_path, "a.jpg", jpeg_bytes(1))
    put(tmp_path, "notes.txt", b"x")
    put(tmp_path, ".git/x.jpg", jpeg_bytes(2))
    put(tmp_path, "new/b.png", png_bytes(3))
    put(tmp_path, "new/deeper/c.gif", gif_bytes(4))
    put(tmp_path, "new/.cache/d.png", png_bytes(5))
    put(tmp_path, "real/e.png", png_bytes(6))
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "f.png").symlink_to(tmp_path / "real" / "e.png")
    paths = [
        "a.jpg",
        "a.jpg",  # named twice, reported once
        "notes.txt",
        ".git/x.jpg",  # under a hidden directory: the walk never goes there
        "linked/e.png",  # under a symlinked directory: neither
        "gone.jpg",  # deleted since the event: absent, not an error
        "new",  # a directory: walked whole
        "new/b.png",  # also named on its own: still reported once
        "f.png",
        "../escape.jpg",
    ]
    result = await asyncio.wait_for(
        examine_paths(tmp_path, paths, {}, now=LATER, settle_seconds=2), timeout=30
    )
    assert sorted(f.path for f in result.files) == [
        "a.jpg",
        "f.png",
        "new/b.png",
        "new/deeper/c.gif",
    ]
    assert md5s(result) == {
        "a.jpg": md5(jpeg_bytes(1)),
        "new/b.png": md5(png_bytes(3)),
        "new/deeper/c.gif": md5(gif_bytes(4)),
        "f.png": md5(png_bytes(6)),
    }
    assert reasons(result) == {
        "notes.txt": "not an image extension (.txt)",
        "new/.cache": "hidden directory not descended",
    }
    assert [(e.path, e.reason) for e in result.errors] == [
        ("../escape.jpg", "not a path inside the folder")
    ]
    assert not result.incomplete


@pytest.mark.asyncio
async def test_examine_paths_reuses_known_md5_and_settles(tmp_path: Path) -> None:
    path = put(tmp_path, "a.png", png_bytes(1))
    fresh = put(tmp_path, "fresh.png", png_bytes(2))
    st = path.stat()
    now = fresh.stat().st_mtime_ns / 1e9
    known = {"a.png": Known(st.st_size, st.st_mtime_ns, "a" * 32)}
    result = await examine_paths(tmp_path, ["a.png", "fresh.png"], known, now=now, settle_seconds=5)
    assert md5s(result) == {"a.png": "a" * 32}
    assert result.unsettled == ["fresh.png"]
    assert result.hashed_bytes == 0
    missing = await examine_paths(tmp_path / "nope", ["a.png"], {}, now=now)
    assert missing.folder_state is FolderState.MISSING
