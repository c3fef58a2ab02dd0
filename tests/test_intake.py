"""The daemon's one-hop intake: real files, and the scanner's verdict as the reference."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest
from images import jpeg_bytes, png_bytes, write_image

import syncd.intake as intake
from syncd.hashing import Hashed
from syncd.intake import Intake, Verdict, take_in, take_in_sync
from syncd.models import LocalFile
from syncd.scanner import Known, examine_paths


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def local(root: Path, path: str, md5_hex: str) -> LocalFile:
    st = (root / path).stat()
    return LocalFile(path, st.st_size, st.st_mtime_ns, md5_hex)


def test_new_file_is_read_once_and_hashed_from_the_bytes_returned(tmp_path: Path) -> None:
    data = write_image(tmp_path / "deep" / "a.png", "png", 1, size=5000).read_bytes()
    got = take_in_sync(str(tmp_path), "deep/a.png", None)
    assert got == Intake(Verdict.READY, local(tmp_path, "deep/a.png", md5(data)), Hashed.of(data))


@pytest.mark.asyncio
async def test_take_in_runs_the_same_check_off_the_loop(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(2))
    got = await take_in(str(tmp_path), "a.jpg", None)
    assert got.verdict is Verdict.READY
    assert got.content == Hashed.of(jpeg_bytes(2))


def test_unchanged_known_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(1))
    st = (tmp_path / "a.png").stat()
    known = Known(st.st_size, st.st_mtime_ns, "f" * 32)  # not the real MD5: proves no read
    got = take_in_sync(str(tmp_path), "a.png", known)
    assert got == Intake(Verdict.READY, local(tmp_path, "a.png", "f" * 32), None)


def test_known_file_with_another_mtime_is_read_again(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(1))
    st = (tmp_path / "a.png").stat()
    known = Known(st.st_size, st.st_mtime_ns - 10**9, "f" * 32)
    got = take_in_sync(str(tmp_path), "a.png", known)
    assert got.file is not None
    assert got.file.md5 == md5(png_bytes(1))
    assert got.content == Hashed.of(png_bytes(1))


def test_content_that_is_not_its_extension_is_skipped_as_the_scanner_would(
    tmp_path: Path,
) -> None:
    (tmp_path / "fake.png").write_bytes(jpeg_bytes(1))
    got = take_in_sync(str(tmp_path), "fake.png", None)
    scan = asyncio.run(examine_paths(tmp_path, ["fake.png"], {}, now=time.time()))
    assert got.verdict is Verdict.SKIPPED
    assert [(s.path, s.reason) for s in scan.skips] == [("fake.png", got.reason)]
    assert got.content is None


def test_mtime_in_the_future_is_read_the_caller_saw_it_settle(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(1))
    ahead = time.time_ns() + 365 * 24 * 3600 * 10**9  # a camera set a year ahead
    os.utime(path, ns=(ahead, ahead))
    got = take_in_sync(str(tmp_path), "a.png", None)
    assert got.verdict is Verdict.READY
    assert got.content == Hashed.of(png_bytes(1))


def test_file_written_while_being_read_is_not_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(1))
    real = intake._read_exactly

    def read_then_write(fd: int, size: int) -> bytes | None:
        data = real(fd, size)
        with path.open("ab") as out:  # the writer appends right after our read
            out.write(b"more")
        return data

    monkeypatch.setattr(intake, "_read_exactly", read_then_write)
    assert take_in_sync(str(tmp_path), "a.png", None).verdict is Verdict.UNSETTLED


def test_read_exactly_refuses_a_file_of_another_size(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    for size, expected in [(100, b"x" * 100), (99, None), (101, None)]:
        fd = os.open(path, os.O_RDONLY)
        try:
            assert intake._read_exactly(fd, size) == expected
        finally:
            os.close(fd)


def _hostile(root: Path) -> list[str]:
    """Paths the fast path must leave to the scanner, created under `root`."""
    (root / "real.png").write_bytes(png_bytes(1))
    os.symlink(root / "real.png", root / "link.png")
    os.mkdir(root / "dir.png")
    os.mkfifo(root / "fifo.png")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_bytes(b"hello")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.png").write_bytes(png_bytes(2))
    (root / "sub").mkdir()
    (root / "sub" / "s.png").write_bytes(png_bytes(3))
    os.symlink(root / "sub", root / "linked")
    return [
        "link.png",
        "dir.png",
        "fifo.png",
        "empty.png",
        "notes.txt",
        "missing.png",
        ".hidden/h.png",
        "linked/s.png",
        "../real.png",
        "sub//s.png",
        "",
    ]


def test_anything_unusual_is_left_to_the_scanner(tmp_path: Path) -> None:
    for path in _hostile(tmp_path):
        got = take_in_sync(str(tmp_path), path, None)  # never blocks on the FIFO
        assert got.verdict is Verdict.ASK_SCANNER, path


def test_directory_swapped_for_a_symlink_mid_intake_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory on the way replaced by a link outside the folder just as the intake starts
    opening: the open goes one directory at a time and follows no link, so nothing outside is
    read (checking the directories and then opening the whole path left that window)."""
    root, outside = tmp_path / "share", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png_bytes(1))
    outside.mkdir()
    (outside / "a.png").write_bytes(png_bytes(2))  # what a followed link would read
    real_open = os.open
    swapped: list[bool] = []

    def open_after_swap(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if not swapped:
            swapped.append(True)
            (root / "sub").rename(tmp_path / "was-sub")
            (root / "sub").symlink_to(outside, target_is_directory=True)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_after_swap)
    got = take_in_sync(str(root), "sub/a.png", None)
    assert swapped
    assert got.verdict is Verdict.ASK_SCANNER
    assert got.content is None


def test_missing_folder_is_left_to_the_scanner(tmp_path: Path) -> None:
    got = take_in_sync(str(tmp_path / "gone"), "a.png", None)
    assert got.verdict is Verdict.ASK_SCANNER


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif", "bmp", "tiff"])
def test_ready_files_agree_with_the_scanner(tmp_path: Path, kind: str) -> None:
    ext = {"jpeg": "jpg", "tiff": "tif"}.get(kind, kind)
    for i, size in enumerate([None, 1000, 70_000]):
        write_image(tmp_path / "d" / f"f{i}.{ext}", kind, i, size=size)
    paths = [f"d/f{i}.{ext}" for i in range(3)]
    scan = asyncio.run(examine_paths(tmp_path, paths, {}, now=time.time()))
    got = [take_in_sync(str(tmp_path), p, None) for p in paths]
    assert [g.file for g in got] == sorted(scan.files)
    assert all(g.content and g.file and g.content == Hashed.of(g.content.data) for g in got)
    assert all(g.content and g.file and g.content.md5 == g.file.md5 for g in got)
