"""The SQLite manifest on real files in tmp_path: schema, damage, read-only use, atomicity."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncd.errors import ManifestError
from syncd.graph import upload_name
from syncd.manifest import SCHEMA_VERSION, SqliteManifest
from syncd.models import FileRecord, FileState, ImageOrigin, ImageRecord, UploadIntent

ACCOUNT = "1234567890"
OTHER = "2222222222"
MD5_A = "a" * 32
MD5_B = "b" * 32
MD5_C = "c" * 32

# Names a shared drive really holds: bytes that are not UTF-8, newlines, non-Latin scripts.
ODD_PATHS = [
    os.fsdecode(b"bad\xff.jpg"),
    os.fsdecode(b"dir\xfe\xfd/inner\x80.png"),
    "line\nbreak.jpg",
    "tab\tand\rreturn.gif",
    "日本語/写真.png",
    "emoji 😀/ünïcödé.JPG",
    "back\\slash 'quote\".bmp",
    "  leading and trailing  .tiff",
    "%_wild*card?.jpg",
]


def rec(
    path: str,
    md5: str | None = MD5_A,
    state: FileState = FileState.SYNCED,
    account: str = ACCOUNT,
    **kw: object,
) -> FileRecord:
    fields: dict[str, object] = {
        "size": 100,
        "mtime_ns": 1_700_000_000_000_000_000,
        "remote_hash": "h-" + md5 if md5 and state is FileState.SYNCED else None,
        **kw,
    }
    return FileRecord(account=account, path=path, md5=md5, state=state, **fields)  # type: ignore[arg-type]


def image(md5: str = MD5_A, account: str = ACCOUNT, **kw: object) -> ImageRecord:
    fields: dict[str, object] = {
        "hash": "h-" + md5,
        "origin": ImageOrigin.UPLOADED,
        "uploaded_at": 1000.0,
        "name": "a.jpg",
        **kw,
    }
    return ImageRecord(account=account, md5=md5, **fields)  # type: ignore[arg-type]


def intent(md5: str = MD5_A, path: str = "a.jpg", account: str = ACCOUNT) -> UploadIntent:
    return UploadIntent(account, md5, path, upload_name(path), 999.0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "manifest.sqlite3"


@pytest.fixture
def manifest(path: Path) -> Iterator[SqliteManifest]:
    m = SqliteManifest.open(path)
    try:
        yield m
    finally:
        m.close()


def raw_sql(path: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """A query through a second, independent connection (what another process would see)."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def reopened(path: Path) -> SqliteManifest:
    return SqliteManifest.open(path, readonly=True)


# -- opening ----------------------------------------------------------------------------


def test_fresh_file_gets_schema_version_and_wal(path: Path) -> None:
    m = SqliteManifest.open(path)  # the parent directory is created too
    try:
        assert path.is_file()
        assert raw_sql(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 1
        assert raw_sql(path, "PRAGMA journal_mode") == [("wal",)]
        tables = {str(r[0]) for r in raw_sql(path, "SELECT name FROM sqlite_master")}
        assert {"files", "images", "intents", "accounts", "schema_version"} <= tables
        assert m.integrity_ok()
        assert m.accounts() == []
    finally:
        m.close()


def test_reopen_keeps_rows_and_does_not_migrate_again(path: Path) -> None:
    m = SqliteManifest.open(path)
    m.record_files([rec("a.jpg"), rec("sub/b.png", MD5_B, FileState.PENDING)])
    m.finish_upload(image(), [])
    m.begin_upload(intent(MD5_B, "sub/b.png"))
    m.note_scan(ACCOUNT, 123.5, "folder unreadable")
    m.close()

    for readonly in (False, True):
        again = SqliteManifest.open(path, readonly=readonly)
        try:
            assert set(again.files(ACCOUNT)) == {"a.jpg", "sub/b.png"}
            assert again.files(ACCOUNT)["sub/b.png"] == rec("sub/b.png", MD5_B, FileState.PENDING)
            assert again.images(ACCOUNT) == [image()]
            assert again.intents(ACCOUNT) == [intent(MD5_B, "sub/b.png")]
            assert again.last_scan(ACCOUNT) == (123.5, "folder unreadable")
            assert again.accounts() == [ACCOUNT]
        finally:
            again.close()
    assert raw_sql(path, "SELECT count(*) FROM schema_version") == [(1,)]


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_is_refused_naming_the_file(path: Path, readonly: bool) -> None:
    SqliteManifest.open(path).close()
    raw_sql(path, "UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(ManifestError) as info:
        SqliteManifest.open(path, readonly=readonly)
    assert str(path) in str(info.value)
    assert "newer" in str(info.value)
    assert _open_fds(path) == []  # the refused file is not left open
    # Nothing was changed by the refused open.
    assert raw_sql(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION + 1,)]


def _random_bytes(_: Path) -> bytes:
    return random.Random(7).randbytes(16384)


def _sqlite_header_then_garbage(_: Path) -> bytes:
    return b"SQLite format 3\x00" + random.Random(8).randbytes(16384)


def _damaged_pages(good: Path) -> bytes:
    data = bytearray(good.read_bytes())
    data[4096:8192] = random.Random(9).randbytes(4096)  # page 2 onwards: the tables
    return bytes(data)


@pytest.mark.parametrize("damage", [_random_bytes, _sqlite_header_then_garbage, _damaged_pages])
@pytest.mark.parametrize("readonly", [False, True])
def test_damaged_file_is_a_manifest_error_with_a_hint(
    path: Path, damage: Callable[[Path], bytes], readonly: bool
) -> None:
    m = SqliteManifest.open(path)
    m.record_files([rec(f"f{i}.jpg") for i in range(50)])
    m.close()
    path.write_bytes(damage(path))
    with pytest.raises(ManifestError) as info:
        SqliteManifest.open(path, readonly=readonly)
    assert str(path) in str(info.value)
    assert "damaged" in str(info.value)
    assert _open_fds(path) == []


def _open_fds(path: Path) -> list[str]:
    """This process's descriptors open on the manifest file (Linux: /proc/self/fd)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used, closed by now
        if target == str(path.resolve()):
            found.append(target)
    return found


def test_readonly_open_of_a_missing_path_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "not" / "there" / "manifest.sqlite3"
    m = SqliteManifest.open(target, readonly=True)
    try:
        assert m.readonly
        assert m.files(ACCOUNT) == {}
        assert m.images(ACCOUNT) == []
        assert m.accounts() == []
        with pytest.raises(ManifestError, match="read-only"):
            m.record_files([rec("a.jpg")])
    finally:
        m.close()
    assert list(tmp_path.iterdir()) == []


def test_readonly_open_refuses_every_write(path: Path) -> None:
    m = SqliteManifest.open(path)
    m.record_files([rec("a.jpg")])
    m.finish_upload(image(), [])
    m.close()
    before = path.read_bytes()

    ro = SqliteManifest.open(path, readonly=True)
    writes: list[Callable[[], None]] = [
        lambda: ro.record_files([rec("b.jpg")]),
        lambda: ro.forget_files(ACCOUNT, ["a.jpg"]),
        lambda: ro.move_files(ACCOUNT, [(rec("a.jpg"), "c.jpg")]),
        lambda: ro.begin_upload(intent()),
        lambda: ro.abandon_upload(ACCOUNT, MD5_A),
        lambda: ro.finish_upload(image(MD5_B), [rec("b.jpg", MD5_B)]),
        lambda: ro.set_gone(ACCOUNT, [MD5_A], 5.0),
        lambda: ro.drop_images(ACCOUNT, [MD5_A]),
        lambda: ro.note_scan(ACCOUNT, 1.0, None),
    ]
    try:
        for write in writes:
            with pytest.raises(ManifestError, match="read-only"):
                write()
        assert set(ro.files(ACCOUNT)) == {"a.jpg"}  # reads still work
        assert ro.images(ACCOUNT) == [image()]
    finally:
        ro.close()
    assert path.read_bytes() == before


def test_readonly_open_of_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    SqliteManifest.open(Path("m.sqlite3")).close()
    ro = SqliteManifest.open(Path("m.sqlite3"), readonly=True)
    try:
        assert ro.files(ACCOUNT) == {}
    finally:
        ro.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
@pytest.mark.parametrize("existing", [False, True])
def test_readonly_directory_is_a_manifest_error(tmp_path: Path, existing: bool) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    target = folder / "manifest.sqlite3"
    if existing:
        SqliteManifest.open(target).close()
    folder.chmod(0o555)
    try:
        with pytest.raises(ManifestError) as info:
            SqliteManifest.open(target)
        assert str(target) in str(info.value)
    finally:
        folder.chmod(0o755)


def test_unwritable_parent_is_a_manifest_error(tmp_path: Path) -> None:
    # Works as root too: the "directory" to create is a regular file.
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ManifestError) as info:
        SqliteManifest.open(blocker / "manifest.sqlite3")
    assert str(blocker) in str(info.value)


# -- paths ------------------------------------------------------------------------------


def test_odd_paths_round_trip_exactly(path: Path, manifest: SqliteManifest) -> None:
    manifest.record_files(rec(p, md5=f"{i:032x}") for i, p in enumerate(ODD_PATHS))
    for i, p in enumerate(ODD_PATHS):
        manifest.begin_upload(intent(f"{i:032x}", p))
    manifest.close()

    again = SqliteManifest.open(path)
    try:
        files = again.files(ACCOUNT)
        assert set(files) == set(ODD_PATHS)
        for i, p in enumerate(ODD_PATHS):
            assert files[p].path == p
            assert again.file(ACCOUNT, p) == rec(p, md5=f"{i:032x}")
            assert again.paths_with_md5(ACCOUNT, f"{i:032x}") == [p]
        assert {i.path for i in again.intents(ACCOUNT)} == set(ODD_PATHS)
        # Stored as the file name's raw bytes.
        stored = {bytes(r[0]) for r in raw_sql(path, "SELECT path FROM files")}  # type: ignore[call-overload]
        assert stored == {os.fsencode(p) for p in ODD_PATHS}
    finally:
        again.close()


# -- upload intents ---------------------------------------------------------------------


def test_begin_abandon_and_finish_upload(manifest: SqliteManifest) -> None:
    manifest.begin_upload(intent(MD5_A, "a.jpg"))
    manifest.begin_upload(intent(MD5_B, "b.jpg"))
    manifest.begin_upload(intent(MD5_A, "a.jpg", account=OTHER))
    assert {i.md5 for i in manifest.intents(ACCOUNT)} == {MD5_A, MD5_B}

    manifest.abandon_upload(ACCOUNT, MD5_B)
    assert manifest.intents(ACCOUNT) == [intent(MD5_A, "a.jpg")]

    files = [rec("a.jpg"), rec("copy/a.jpg")]
    manifest.finish_upload(image(), files)
    assert manifest.intents(ACCOUNT) == []
    assert manifest.intents(OTHER) == [intent(MD5_A, "a.jpg", account=OTHER)]  # untouched
    assert manifest.images(ACCOUNT) == [image()]
    assert manifest.image_for_md5(ACCOUNT, MD5_A) == image()
    assert manifest.image_for_md5(OTHER, MD5_A) is None
    assert manifest.files(ACCOUNT) == {f.path: f for f in files}


def test_finish_upload_is_all_or_nothing_when_its_last_step_fails(
    path: Path, manifest: SqliteManifest
) -> None:
    manifest.record_files([rec("old.jpg", MD5_C)])
    manifest.begin_upload(intent(MD5_A, "a.jpg"))
    # Another connection makes the final step (closing the intent) fail, after the image and
    # file rows were already written inside the transaction.
    raw_sql(
        path,
        "CREATE TRIGGER refuse BEFORE DELETE ON intents "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    with pytest.raises(ManifestError, match="injected failure"):
        manifest.finish_upload(image(), [rec("a.jpg"), rec("b.jpg")])

    assert manifest.images(ACCOUNT) == []
    assert set(manifest.files(ACCOUNT)) == {"old.jpg"}
    assert manifest.intents(ACCOUNT) == [intent(MD5_A, "a.jpg")]
    # The connection is still usable, and a retry once the cause is gone succeeds.
    raw_sql(path, "DROP TRIGGER refuse")
    manifest.finish_upload(image(), [rec("a.jpg")])
    assert manifest.intents(ACCOUNT) == []
    assert set(manifest.files(ACCOUNT)) == {"old.jpg", "a.jpg"}


def test_finish_upload_constraint_violation_writes_nothing(
    path: Path, manifest: SqliteManifest
) -> None:
    manifest.begin_upload(intent(MD5_A, "a.jpg"))
    broken = rec("b.jpg", size=None)  # files.size is NOT NULL: the second statement fails
    with pytest.raises(ManifestError, match="NOT NULL"):
        manifest.finish_upload(image(), [rec("a.jpg"), broken])
    assert manifest.images(ACCOUNT) == []
    assert manifest.files(ACCOUNT) == {}
    assert manifest.intents(ACCOUNT) == [intent(MD5_A, "a.jpg")]
    manifest.close()
    again = reopened(path)  # and nothing reached the file either
    try:
        assert again.images(ACCOUNT) == []
        assert again.files(ACCOUNT) == {}
        assert len(again.intents(ACCOUNT)) == 1
    finally:
        again.close()


def test_an_exception_inside_finish_upload_rolls_back(path: Path, manifest: SqliteManifest) -> None:
    manifest.begin_upload(intent(MD5_A, "a.jpg"))

    class Boom(Exception):
        pass

    class Exploding(list[FileRecord]):
        """The file rows: iterating them fails half-way, after the image row was written."""

        def __iter__(self) -> Iterator[FileRecord]:
            yield rec("a.jpg")
            raise Boom

    with pytest.raises(Boom):
        manifest.finish_upload(image(), Exploding())
    assert manifest.images(ACCOUNT) == []
    assert manifest.files(ACCOUNT) == {}
    assert len(manifest.intents(ACCOUNT)) == 1
    manifest.record_files([rec("c.jpg")])  # no transaction was left open
    assert set(manifest.files(ACCOUNT)) == {"c.jpg"}


def test_connection_closed_mid_transaction_leaves_nothing_half_written(path: Path) -> None:
    m = SqliteManifest.open(path)
    m.begin_upload(intent())

    class ClosingHalfway(list[FileRecord]):
        """The file rows: the connection goes away after the image row was written."""

        def __iter__(self) -> Iterator[FileRecord]:
            yield rec("a.jpg")
            m.close()
            yield rec("b.jpg")

    with pytest.raises(ManifestError, match="closed"):
        m.finish_upload(image(), ClosingHalfway())
    again = reopened(path)
    try:
        assert again.images(ACCOUNT) == []
        assert again.files(ACCOUNT) == {}
        assert again.intents(ACCOUNT) == [intent()]
        assert again.integrity_ok()
    finally:
        again.close()


def test_a_closed_connection_is_a_manifest_error(path: Path) -> None:
    m = SqliteManifest.open(path)
    m.begin_upload(intent())
    m.close()
    with pytest.raises(ManifestError):
        m.finish_upload(image(), [rec("a.jpg")])
    with pytest.raises(ManifestError):
        m.files(ACCOUNT)
    again = reopened(path)
    try:
        assert again.images(ACCOUNT) == []
        assert again.intents(ACCOUNT) == [intent()]
    finally:
        again.close()


# -- images -----------------------------------------------------------------------------


def test_set_gone_and_drop_images(manifest: SqliteManifest) -> None:
    for md5 in (MD5_A, MD5_B, MD5_C):
        manifest.finish_upload(image(md5), [])
    manifest.finish_upload(image(MD5_A, account=OTHER), [])

    manifest.set_gone(ACCOUNT, [MD5_A, MD5_B], 500.0)
    gone = {i.md5: i.gone_since for i in manifest.images(ACCOUNT)}
    assert gone == {MD5_A: 500.0, MD5_B: 500.0, MD5_C: None}
    assert manifest.images(OTHER)[0].gone_since is None

    manifest.set_gone(ACCOUNT, [MD5_B], None)  # the content came back: grace cancelled
    manifest.set_gone(ACCOUNT, [], 1.0)  # nothing to do
    gone = {i.md5: i.gone_since for i in manifest.images(ACCOUNT)}
    assert gone == {MD5_A: 500.0, MD5_B: None, MD5_C: None}

    manifest.drop_images(ACCOUNT, [MD5_A, "f" * 32])
    assert {i.md5 for i in manifest.images(ACCOUNT)} == {MD5_B, MD5_C}
    assert manifest.image_for_md5(ACCOUNT, MD5_A) is None
    assert [i.md5 for i in manifest.images(OTHER)] == [MD5_A]


def test_adopted_origin_round_trips(manifest: SqliteManifest) -> None:
    adopted = image(origin=ImageOrigin.ADOPTED, gone_since=7.0, name="x" * 100)
    manifest.finish_upload(adopted, [])
    assert manifest.image_for_md5(ACCOUNT, MD5_A) == adopted


# -- files ------------------------------------------------------------------------------


def test_move_files_rekeys_rows(manifest: SqliteManifest) -> None:
    manifest.record_files([rec("a.jpg"), rec("b.jpg", MD5_B)])
    manifest.record_files([rec("a.jpg", account=OTHER)])
    manifest.move_files(ACCOUNT, [(rec("a.jpg"), "sub/renamed.jpg")])
    files = manifest.files(ACCOUNT)
    assert set(files) == {"sub/renamed.jpg", "b.jpg"}
    assert files["sub/renamed.jpg"] == rec("sub/renamed.jpg")
    assert set(manifest.files(OTHER)) == {"a.jpg"}
    manifest.move_files(ACCOUNT, [])


def test_move_files_swapping_two_names(manifest: SqliteManifest) -> None:
    a, b = rec("a.jpg", MD5_A), rec("b.jpg", MD5_B)
    manifest.record_files([a, b])
    # Between two scans the user swapped the two files' names: one batch of moves.
    manifest.move_files(ACCOUNT, [(a, "b.jpg"), (b, "a.jpg")])
    files = manifest.files(ACCOUNT)
    assert {p: f.md5 for p, f in files.items()} == {"a.jpg": MD5_B, "b.jpg": MD5_A}


def test_move_files_shifting_a_chain(manifest: SqliteManifest) -> None:
    # x -> y, y -> z (a directory renamed into one of its siblings' old name, say).
    x, y = rec("d/x.jpg", MD5_A), rec("d/y.jpg", MD5_B)
    manifest.record_files([x, y])
    manifest.move_files(ACCOUNT, [(x, "d/y.jpg"), (y, "d/z.jpg")])
    files = manifest.files(ACCOUNT)
    assert {p: f.md5 for p, f in files.items()} == {"d/y.jpg": MD5_A, "d/z.jpg": MD5_B}


def test_files_under_respects_prefix_boundaries(manifest: SqliteManifest) -> None:
    inside = [
        "a/x.jpg",
        "a/b/deep/y.jpg",
        os.fsdecode(b"a/bad\xff.jpg"),
        "a/\u00e9t\u00e9.png",
        "a/ space.gif",
    ]
    outside = [
        "a.jpg",
        "a",
        "ab/x.jpg",
        "a0/x.jpg",
        "a-b/x.jpg",
        "a b/x.jpg",
        "a.d/x.jpg",
        "b/a/x.jpg",
        "A/x.jpg",
        os.fsdecode(b"a\xff/x.jpg"),
    ]
    manifest.record_files(rec(p) for p in inside + outside)
    manifest.record_files([rec("a/x.jpg", account=OTHER)])

    assert {f.path for f in manifest.files_under(ACCOUNT, "a")} == set(inside)
    assert {f.path for f in manifest.files_under(ACCOUNT, "a/b")} == {"a/b/deep/y.jpg"}
    assert {f.path for f in manifest.files_under(ACCOUNT, "a/b/deep")} == {"a/b/deep/y.jpg"}
    assert manifest.files_under(ACCOUNT, "a/x.jpg") == []  # a file is not a folder
    assert manifest.files_under(ACCOUNT, "missing") == []
    assert {f.path for f in manifest.files_under(OTHER, "a")} == {"a/x.jpg"}


def test_files_under_unicode_and_wildcard_prefixes(manifest: SqliteManifest) -> None:
    paths = ["日本/写真.png", "日本語/x.jpg", "%_/x.jpg", "%_x/y.jpg", "ab/x.jpg"]
    manifest.record_files(rec(p) for p in paths)
    assert [f.path for f in manifest.files_under(ACCOUNT, "日本")] == ["日本/写真.png"]
    assert [f.path for f in manifest.files_under(ACCOUNT, "%_")] == ["%_/x.jpg"]
    assert manifest.files_under(ACCOUNT, "a_") == []


def test_paths_with_md5_ignores_skipped_rows(manifest: SqliteManifest) -> None:
    manifest.record_files(
        [
            rec("synced.jpg"),
            rec("pending.jpg", state=FileState.PENDING),
            rec("failed.jpg", state=FileState.FAILED, last_error="(#100) bad", attempts=3),
            rec("skipped.jpg", state=FileState.SKIPPED, last_error="not an image"),
            rec("other.jpg", MD5_B),
            rec("elsewhere.jpg", account=OTHER),
        ]
    )
    assert sorted(manifest.paths_with_md5(ACCOUNT, MD5_A)) == [
        "failed.jpg",
        "pending.jpg",
        "synced.jpg",
    ]
    assert manifest.paths_with_md5(ACCOUNT, MD5_C) == []
    failed = manifest.file(ACCOUNT, "failed.jpg")
    assert failed is not None
    assert (failed.state, failed.last_error, failed.attempts) == (FileState.FAILED, "(#100) bad", 3)


def test_record_and_forget_files(manifest: SqliteManifest) -> None:
    manifest.record_files([rec("a.jpg"), rec("b.jpg")])
    manifest.record_files([rec("a.jpg", MD5_B, FileState.PENDING, size=5)])  # replaces
    assert manifest.files(ACCOUNT)["a.jpg"] == rec("a.jpg", MD5_B, FileState.PENDING, size=5)
    manifest.forget_files(ACCOUNT, ["a.jpg", "never.jpg"])
    assert set(manifest.files(ACCOUNT)) == {"b.jpg"}
    manifest.record_files([])
    manifest.forget_files(ACCOUNT, [])


def test_integrity_ok(path: Path, manifest: SqliteManifest) -> None:
    manifest.record_files(rec(f"{i}.jpg") for i in range(100))
    assert manifest.integrity_ok()
    memory = SqliteManifest.memory()
    try:
        assert memory.integrity_ok()
    finally:
        memory.close()


def test_images_without_names_and_the_names_asked_for(manifest: SqliteManifest) -> None:
    hashes = [f"h{i:04d}" for i in range(1200)]  # more than one query's worth of parameters
    for i, image_hash in enumerate(hashes):
        manifest.finish_upload(image(f"{i:032x}", hash=image_hash, name=f"n{i}.png"), [])
    named, bare = manifest.images(ACCOUNT), manifest.images(ACCOUNT, names=False)
    assert {i.name for i in named} == {f"n{i}.png" for i in range(1200)}
    assert {i.name for i in bare} == {""}
    assert [i._replace(name="") for i in named] == bare
    wanted = [*hashes[::2], "unknown"]
    assert manifest.image_names(ACCOUNT, wanted) == {h: f"n{int(h[1:])}.png" for h in hashes[::2]}
    assert manifest.image_names(ACCOUNT, []) == {}
