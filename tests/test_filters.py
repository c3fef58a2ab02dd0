"""The pure ignore rules and image signature checks."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st
from images import bmp_bytes, gif_bytes, jpeg_bytes, png_bytes, tiff_bytes

from syncd.filters import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_BYTES,
    SIGNATURE_BYTES,
    detect_format,
    entry_reason,
    extension_reason,
    file_kind,
    ignore_reason,
    is_image_name,
    signature_reason,
    size_reason,
)

# Any text a name can hold, lone surrogates included (os.fsdecode makes them from bad bytes).
any_text = st.text(st.characters(codec=None, exclude_categories=()))
fs_names = st.binary(min_size=1).map(os.fsdecode)

HEADS = {
    "jpeg": jpeg_bytes(1),
    "png": png_bytes(1),
    "gif": gif_bytes(1),
    "bmp": bmp_bytes(1),
    "tiff": tiff_bytes(1),
}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (".hidden.jpg", "hidden file"),
        (".git", "hidden file"),
        ("~$report.docx", "editor lock file"),
        ("~$photo.jpg", "editor lock file"),
        ("upload.tmp", "temporary file"),
        ("UPLOAD.TMP", "temporary file"),
        ("photo.jpg.part", "temporary file"),
        ("photo.jpg.crdownload", "temporary file"),
        ("Photo.JPG.CRDownload", "temporary file"),
        ("Thumbs.db", "system file"),
        ("THUMBS.DB", "system file"),
        ("thumbs.db", "system file"),
        (".DS_Store", "system file"),
        ("photo.jpg", None),
        ("~photo.jpg", None),
        ("tmp.jpg", None),
        ("part", None),
        ("", None),
    ],
)
def test_ignore_reason(name: str, reason: str | None) -> None:
    assert ignore_reason(name) == reason


def test_ignore_reason_names_directories_as_such() -> None:
    assert ignore_reason(".Trash-1000", is_dir=True) == "hidden directory"
    assert ignore_reason("photos", is_dir=True) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a.jpg", None),
        ("a.JPG", None),
        ("a.Jpeg", None),
        ("a.png", None),
        ("a.gif", None),
        ("a.BMP", None),
        ("a.tif", None),
        ("a.TIFF", None),
        ("archive.tar.gz", "not an image extension (.gz)"),
        ("notes.txt", "not an image extension (.txt)"),
        ("README", "no extension"),
        ("trailing.", "no extension"),
        ("jpg", "no extension"),
    ],
)
def test_extension_reason(name: str, reason: str | None) -> None:
    assert extension_reason(name) == reason


def test_every_image_extension_is_accepted_in_any_case() -> None:
    for ext in IMAGE_EXTENSIONS:
        assert extension_reason(f"x.{ext}") is None
        assert extension_reason(f"x.{ext.upper()}") is None


@pytest.mark.parametrize(("fmt", "data"), sorted(HEADS.items()))
def test_detect_format(fmt: str, data: bytes) -> None:
    assert detect_format(data[:SIGNATURE_BYTES]) == fmt


def test_detect_format_big_endian_tiff_and_gif87a() -> None:
    assert detect_format(tiff_bytes(1, big_endian=True)) == "tiff"
    assert detect_format(b"GIF87a" + b"\x00" * 10) == "gif"
    assert detect_format(b"") is None
    assert detect_format(b"\xff\xd8") is None  # too short to be sure
    assert detect_format(b"hello world") is None


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jpg", "jpeg"),
        ("a.JPEG", "jpeg"),
        ("a.png", "png"),
        ("a.gif", "gif"),
        ("a.bmp", "bmp"),
        ("a.tif", "tiff"),
        ("a.tiff", "tiff"),
    ],
)
def test_signature_matches_extension(name: str, fmt: str) -> None:
    data = HEADS[fmt]
    assert signature_reason(name, data[:SIGNATURE_BYTES], len(data)) is None


def test_signature_mismatch_is_never_guessed() -> None:
    head = png_bytes(1)[:SIGNATURE_BYTES]
    reason = signature_reason("photo.jpg", head, 100)
    assert reason == "content does not match extension .jpg: looks like png"


def test_signature_of_unknown_content() -> None:
    assert signature_reason("a.png", b"plain text here", 15) == "content is not a PNG image"
    assert signature_reason("a.JPG", b"plain text here", 15) == "content is not a JPEG image"
    assert signature_reason("a.tif", b"", 15) == "content is not a TIFF image"


def test_signature_reason_judges_size_from_stat_alone() -> None:
    head = jpeg_bytes(1)[:SIGNATURE_BYTES]
    assert signature_reason("a.jpg", head, 0) == "empty file"
    assert signature_reason("a.jpg", head, MAX_IMAGE_BYTES) is None
    too_big = f"too large ({MAX_IMAGE_BYTES + 1} bytes > 30 MiB)"
    assert signature_reason("a.jpg", head, MAX_IMAGE_BYTES + 1) == too_big
    assert size_reason(10 * 1024**3) == f"too large ({10 * 1024**3} bytes > 30 MiB)"


def test_signature_reason_of_a_non_image_name() -> None:
    assert signature_reason("notes.txt", b"hello", 5) == "not an image extension (.txt)"


def test_file_kind() -> None:
    assert file_kind(stat.S_IFREG | 0o644) == "regular file"
    assert file_kind(stat.S_IFIFO | 0o644) == "fifo"
    assert file_kind(stat.S_IFSOCK) == "socket"
    assert file_kind(stat.S_IFCHR) == "character device"
    assert file_kind(stat.S_IFBLK) == "block device"
    assert file_kind(stat.S_IFDIR) == "directory"
    assert file_kind(0) == "special file"


def test_reasons_escape_what_logs_and_storage_cannot_hold() -> None:
    reason = extension_reason(os.fsdecode(b"x.\xff\nz"))
    assert reason is not None
    reason.encode("utf-8")  # no lone surrogates left
    assert "\n" not in reason


@given(any_text)
def test_name_rules_never_raise(name: str) -> None:
    for reason in (ignore_reason(name), ignore_reason(name, is_dir=True), extension_reason(name)):
        assert reason is None or (reason and isinstance(reason, str))
    ext_reason = extension_reason(name)
    if ext_reason is not None:
        ext_reason.encode("utf-8")


@given(st.one_of(any_text, fs_names), st.binary(max_size=64), st.integers())
def test_signature_reason_never_raises(name: str, head: bytes, size: int) -> None:
    reason = signature_reason(name, head, size)
    assert reason is None or isinstance(reason, str)
    if reason is None:
        assert detect_format(head) is not None
        assert 0 < size <= MAX_IMAGE_BYTES


image_like_names = st.builds(
    lambda stem, ext: f"{stem}.{ext}",
    any_text,
    st.sampled_from(sorted(IMAGE_EXTENSIONS | {"JPG", "Tiff", "tmp", "part", "db", "ds_store"})),
)


@given(st.one_of(any_text, fs_names, image_like_names))
def test_fast_name_check_agrees_with_the_rules(name: str) -> None:
    slow = ignore_reason(name) is None and extension_reason(name) is None
    assert is_image_name(name) == slow


@pytest.mark.parametrize(
    ("name", "mode", "size", "reason"),
    [
        ("a.jpg", stat.S_IFREG | 0o644, 10, None),
        ("a.jpg", stat.S_IFIFO | 0o644, 0, "not a regular file (fifo)"),
        (".a.jpg", stat.S_IFIFO | 0o644, 0, "hidden file"),
        ("a.txt", stat.S_IFREG | 0o644, 10, "not an image extension (.txt)"),
        ("a.jpg", stat.S_IFREG | 0o644, 0, "empty file"),
        (
            "a.png",
            stat.S_IFREG,
            MAX_IMAGE_BYTES + 1,
            f"too large ({MAX_IMAGE_BYTES + 1} bytes > 30 MiB)",
        ),
    ],
)
def test_entry_reason(name: str, mode: int, size: int, reason: str | None) -> None:
    assert entry_reason(name, mode, size) == reason


@given(st.one_of(any_text, image_like_names), st.integers(0, 2**32 - 1), st.integers())
def test_entry_reason_never_raises(name: str, mode: int, size: int) -> None:
    reason = entry_reason(name, mode, size)
    assert reason is None or isinstance(reason, str)
    if reason is None:
        assert is_image_name(name)
        assert stat.S_ISREG(mode)
