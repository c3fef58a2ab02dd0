"""MD5 off the event loop: correct, refuses non-regular files, notices files that change."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from images import image_bytes, png_bytes

from syncd import hashing
from syncd.hashing import (
    CHUNK,
    FileChangedError,
    FileRead,
    FileTooLargeError,
    NotRegularFileError,
    Outcome,
    hash_files,
    md5_bytes,
    md5_file,
    read_and_hash,
    read_error_reason,
)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 1, 4096, CHUNK - 1, CHUNK, 2 * CHUNK + 123])
async def test_md5_file_equals_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert await md5_file(path) == md5(data)
    assert await md5_file(str(path), expected_size=size) == md5(data)


def test_md5_bytes() -> None:
    assert md5_bytes(b"") == "d41d8cd98f00b204e9800998ecf8427e"
    assert md5_bytes(png_bytes(3)) == md5(png_bytes(3))


@pytest.mark.asyncio
@pytest.mark.parametrize("expected", [99, 101, 0])
async def test_size_mismatch_is_file_changed(tmp_path: Path, expected: int) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    with pytest.raises(FileChangedError, match="expected"):
        await md5_file(path, expected_size=expected)


def test_file_changed_is_not_an_os_error() -> None:
    # Callers treat OSError as "cannot read now"; a changed file is "wait and look again".
    assert not issubclass(FileChangedError, OSError)
    assert issubclass(NotRegularFileError, OSError)


@pytest.mark.asyncio
async def test_read_and_hash_returns_the_bytes_it_hashed(tmp_path: Path) -> None:
    data = png_bytes(5)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert await read_and_hash(path, max_bytes=len(data)) == (data, md5(data))


@pytest.mark.asyncio
async def test_read_and_hash_refuses_more_than_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"y" * 1001)
    with pytest.raises(FileTooLargeError, match="1001 bytes > 1000 bytes"):
        await read_and_hash(path, max_bytes=1000)


@pytest.mark.asyncio
async def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    # No writer ever opens the FIFO: a blocking open would hang here until the timeout.
    for attempt in (
        md5_file(fifo),
        read_and_hash(fifo, max_bytes=100),
    ):
        with pytest.raises(NotRegularFileError, match=r"not a regular file \(fifo\)"):
            await asyncio.wait_for(attempt, timeout=10)


@pytest.mark.asyncio
async def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFileError, match="directory"):
        await md5_file(tmp_path)


@pytest.mark.asyncio
async def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await md5_file(tmp_path / "nope.jpg")


@pytest.mark.asyncio
async def test_hashing_leaves_the_loop_responsive(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.truncate(64 * CHUNK)  # sparse: cheap to make, still 64 chunks to read and hash
    worst = 0.0
    ticks = 0

    async def ticker() -> None:
        nonlocal worst, ticks
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)  # measures lag only; nothing waits on it for correctness
            worst = max(worst, time.perf_counter() - before - 0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        digest = await md5_file(path, expected_size=64 * CHUNK)
    finally:
        task.cancel()
    assert digest == md5(bytes(64 * CHUNK))
    assert ticks > 3
    assert worst < 1.0  # generous: a blocked loop would stall for the whole hash


def reject_text(path: str, head: bytes, size: int) -> str | None:
    return "text, not an image" if head.startswith(b"text") else None


@pytest.mark.asyncio
async def test_hash_files_sorts_every_outcome(tmp_path: Path) -> None:
    good = png_bytes(1)
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "text.png").write_bytes(b"text pretending")
    (tmp_path / "grown.png").write_bytes(good + b"more")
    os.mkfifo(tmp_path / "pipe.png")
    files = [
        ("good.png", len(good)),
        ("text.png", 15),
        ("grown.png", len(good)),  # listed before it grew
        ("gone.png", 10),
        ("pipe.png", 10),
    ]
    progress: list[tuple[int, int]] = []
    reads = await hash_files(
        str(tmp_path),
        files,
        check_head=reject_text,
        head_bytes=16,
        concurrency=2,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    by_path = {r.path: r for r in reads}
    assert by_path["good.png"] == FileRead(
        "good.png", Outcome.HASHED, md5(good), "", len(good)
    )  # the head is part of the one read, not read twice
    assert by_path["text.png"] == FileRead(
        "text.png", Outcome.REJECTED, "", "text, not an image", 15
    )
    assert by_path["grown.png"].outcome is Outcome.CHANGED
    assert by_path["gone.png"] == FileRead("gone.png", Outcome.UNREADABLE, reason="file vanished")
    assert by_path["pipe.png"].reason == "not a regular file (fifo)"
    # Small files are read in batches (one thread hop each): progress comes per batch.
    assert progress == [(0, 5), (5, 5)]


@pytest.mark.asyncio
async def test_hash_files_of_nothing(tmp_path: Path) -> None:
    reads = await hash_files(
        str(tmp_path), [], check_head=reject_text, head_bytes=16, concurrency=4
    )
    assert reads == []


@given(sizes=st.lists(st.integers(0, 3 * hashing.BATCH_BYTES), max_size=60))
def test_batches_keep_every_file_once_in_order_within_the_limits(sizes: list[int]) -> None:
    files = [(f"f{i}", size) for i, size in enumerate(sizes)]
    batches = list(hashing._batches(files))
    assert [f for batch in batches for f in batch] == files
    for batch in batches:
        assert 1 <= len(batch) <= hashing.BATCH_FILES
        # Only the file that reached the byte limit may take a batch past it.
        assert sum(size for _, size in batch[:-1]) < hashing.BATCH_BYTES
    for batch in batches[:-1]:  # each batch but the last stopped at a limit
        total = sum(size for _, size in batch)
        assert len(batch) == hashing.BATCH_FILES or total >= hashing.BATCH_BYTES


@pytest.mark.asyncio
async def test_many_small_files_and_a_big_one_are_each_hashed_once(tmp_path: Path) -> None:
    contents = {f"s{i}.png": png_bytes(i) for i in range(40)}
    contents["big.png"] = image_bytes("png", 99, size=hashing.BATCH_BYTES + 10)
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    progress: list[int] = []
    reads = await hash_files(
        str(tmp_path),
        [(name, len(data)) for name, data in contents.items()],
        check_head=reject_text,
        head_bytes=16,
        concurrency=3,
        on_progress=lambda done, total: progress.append(done),
    )
    assert sorted(r.path for r in reads) == sorted(contents)
    assert {r.path: r.md5 for r in reads} == {
        name: hashlib.md5(data).hexdigest() for name, data in contents.items()
    }
    assert progress == sorted(progress)
    assert progress[0] == 0
    assert progress[-1] == len(contents)


def test_read_error_reasons() -> None:
    assert read_error_reason(FileNotFoundError(2, "x")) == "file vanished"
    assert read_error_reason(PermissionError(13, "x")) == "permission denied"
    assert read_error_reason(OSError(errno.ENAMETOOLONG, "x")) == "path too long"
    assert read_error_reason(OSError(errno.EIO, "Input/output error")) == (
        "cannot read: Input/output error"
    )
