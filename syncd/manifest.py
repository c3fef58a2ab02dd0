"""The manifest: what syncd knows of every local file and every image it uploaded.

One `SqliteManifest` owns the one SQLite connection of the process. Every change is one
transaction, so a `kill -9` leaves either the state before or after it. Paths are stored as the
raw file-name bytes (BLOB), so names that are not valid UTF-8 survive the round trip.

The upload intent protocol makes crashes harmless: `begin_upload` is committed before the POST,
`finish_upload` records the hash, the files and removes the intent in one transaction. An intent
found at start-up means a POST may have happened without its answer being recorded.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from sys import intern
from typing import Any, Protocol

from syncd.checkpoint import WalCheckpointer
from syncd.errors import ManifestError
from syncd.models import FileRecord, FileState, ImageOrigin, ImageRecord, UploadIntent

SCHEMA_VERSION = 1

# Each entry migrates from version i to i+1; never edit one that has shipped, add another.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE files (
        account TEXT NOT NULL,
        path BLOB NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        md5 TEXT,
        state TEXT NOT NULL,
        remote_hash TEXT,
        last_error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (account, path)
    ) WITHOUT ROWID;
    CREATE INDEX files_md5 ON files (account, md5);
    CREATE TABLE images (
        account TEXT NOT NULL,
        md5 TEXT NOT NULL,
        hash TEXT NOT NULL,
        origin TEXT NOT NULL,
        uploaded_at REAL NOT NULL,
        gone_since REAL,
        name TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (account, md5)
    );
    CREATE INDEX images_hash ON images (account, hash);
    CREATE TABLE intents (
        account TEXT NOT NULL,
        md5 TEXT NOT NULL,
        path BLOB NOT NULL,
        upload_name TEXT NOT NULL,
        started_at REAL NOT NULL,
        PRIMARY KEY (account, md5)
    );
    CREATE TABLE accounts (
        account TEXT PRIMARY KEY,
        last_scan REAL,
        last_error TEXT
    );
    """,
)


class Manifest(Protocol):
    """What the engine needs of a manifest; SQLite is the one backend today."""

    def files(self, account: str) -> dict[str, FileRecord]: ...
    def images(self, account: str, *, names: bool = True) -> list[ImageRecord]: ...
    def intents(self, account: str) -> list[UploadIntent]: ...
    def record_files(
        self, records: Iterable[FileRecord], *, unchanged_since: float = ...
    ) -> None: ...
    def forget_files(
        self, account: str, paths: Iterable[str], *, unchanged_since: float = ...
    ) -> None: ...
    def begin_upload(self, intent: UploadIntent) -> None: ...
    def abandon_upload(self, account: str, md5: str) -> None: ...
    def finish_upload(self, image: ImageRecord, files: Sequence[FileRecord]) -> None: ...
    def image_for_md5(self, account: str, md5: str) -> ImageRecord | None: ...
    def paths_with_md5(self, account: str, md5: str) -> list[str]: ...
    def set_gone(self, account: str, md5s: Iterable[str], since: float | None) -> None: ...
    def drop_images(self, account: str, md5s: Iterable[str]) -> None: ...
    def note_scan(self, account: str, at: float, error: str | None) -> None: ...
    def close(self) -> None: ...


def _enc(path: str) -> bytes:
    return os.fsencode(path)


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _dec(raw: bytes | str) -> str:
    # os.fsdecode's result, without its per-call checks: this runs once per file per pass.
    return raw.decode(_FS_ENCODING, _FS_ERRORS) if isinstance(raw, bytes) else raw


class SqliteManifest:
    """The SQLite manifest. Not thread-safe: one owner (the event loop's thread)."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._checkpointer: WalCheckpointer | None = None

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> SqliteManifest:
        """Open (creating it unless read-only) and migrate; errors name the file and the cause."""
        try:
            if readonly:
                if not path.exists():
                    return cls.memory(readonly=True)
                conn = _connect_readonly(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, isolation_level=None)
            manifest = cls(conn, path, readonly)
        except (sqlite3.Error, OSError) as exc:
            raise ManifestError(f"manifest {path}: {_sqlite_reason(exc)}") from None
        try:
            manifest._prepare()
        except BaseException as exc:
            manifest.close()  # damaged, newer, or not ours to migrate: the file is not kept open
            if isinstance(exc, sqlite3.Error | OSError):
                raise ManifestError(f"manifest {path}: {_sqlite_reason(exc)}") from None
            raise
        return manifest

    @classmethod
    def memory(cls, *, readonly: bool = False) -> SqliteManifest:
        """An empty in-memory manifest (tests; a dry run with no manifest file yet)."""
        manifest = cls(sqlite3.connect(":memory:", isolation_level=None), None, False)
        manifest._prepare()
        manifest.readonly = readonly
        return manifest

    def _prepare(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 5000")
        if not self.readonly:
            # WAL: readers (`syncd status`) never block the daemon; NORMAL sync is durable
            # against a killed process, and a power loss can only forget the newest rows,
            # which makes syncd re-upload (idempotent), never delete.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if self.path is not None:
                # Checkpoints end in fsync: mostly in a thread of their own, not in a commit on
                # the event loop's thread (see syncd.checkpoint).
                self._checkpointer = WalCheckpointer(self.path)
        version = self._version()
        if version > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest {self.path}: schema version {version} is newer than this syncd "
                f"understands ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            if self.readonly:
                raise ManifestError(f"manifest {self.path}: needs migrating; run syncd once")
            self._migrate(version)

    def _version(self) -> int:
        row = self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
        ).fetchone()
        if row is None:
            return 0
        found = self._conn.execute("SELECT version FROM schema_version").fetchone()
        return int(found[0]) if found else 0

    def _migrate(self, version: int) -> None:
        with self._tx() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise ManifestError("manifest opened read-only (dry run or status)")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ManifestError(f"manifest {self.path}: {_sqlite_reason(exc)}") from None
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def _tuples(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Plain tuples: the fast path for whole-table reads (100,000 rows per pass)."""
        try:
            rows: list[tuple[Any, ...]] = self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise ManifestError(f"manifest {self.path}: {_sqlite_reason(exc)}") from None
        return rows

    def _stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows as they come, in batches: a whole-account read never holds every row twice."""
        try:
            cursor = self._conn.execute(sql, args)
            while rows := cursor.fetchmany(STREAM_BATCH):
                yield from rows
        except sqlite3.Error as exc:
            raise ManifestError(f"manifest {self.path}: {_sqlite_reason(exc)}") from None

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        try:
            cursor = self._conn.execute(sql, args)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()
        except sqlite3.Error as exc:
            raise ManifestError(f"manifest {self.path}: {_sqlite_reason(exc)}") from None

    # -- reads ---------------------------------------------------------------------------

    def accounts(self) -> list[str]:
        """Every account the manifest has rows for."""
        rows = self._query(
            "SELECT account FROM files UNION SELECT account FROM images "
            "UNION SELECT account FROM accounts ORDER BY account"
        )
        return [str(r[0]) for r in rows]

    def files(self, account: str) -> dict[str, FileRecord]:
        """The file rows of an account, by relative path.

        The biggest read there is (100,000 rows a pass): rows are streamed rather than held
        twice, the account string is shared, and hashes are interned so that a file row and
        its image row hold one copy of each.
        """
        out: dict[str, FileRecord] = {}
        for path, size, mtime_ns, md5, state, remote_hash, last_error, attempts in self._stream(
            f"SELECT {FILE_FIELDS} FROM files WHERE account = ?", (account,)
        ):
            rel = _dec(path)
            out[rel] = FileRecord(
                account, rel, size, mtime_ns, md5 and intern(md5), _state(state),
                remote_hash and intern(remote_hash), last_error, attempts,
            )  # fmt: skip
        return out

    def images(self, account: str, *, names: bool = True) -> list[ImageRecord]:
        """The image rows of an account (one per local content).

        Without `names`, every name is "": a pass needs names only for the few images it
        deletes (`image_names`), and 100,000 of them are megabytes.
        """
        fields = IMAGE_FIELDS if names else IMAGE_FIELDS.replace("name", "''")
        return [
            ImageRecord(
                account,
                intern(image_hash),
                intern(md5),
                _origin(origin),
                uploaded_at,
                gone_since,
                name,
            )
            # `+account`: a plain table scan. Through the (account, hash) index, every row
            # would cost a lookup by rowid, 2.5 times slower for a whole account.
            for image_hash, md5, origin, uploaded_at, gone_since, name in self._stream(
                f"SELECT {fields} FROM images WHERE +account = ?", (account,)
            )
        ]

    def image_names(self, account: str, hashes: Sequence[str]) -> dict[str, str]:
        """The recorded names of these images, by hash."""
        found: dict[str, str] = {}
        for start in range(0, len(hashes), NAMES_PER_QUERY):
            chunk = list(hashes[start : start + NAMES_PER_QUERY])
            marks = ",".join("?" * len(chunk))
            found.update(
                self._tuples(
                    f"SELECT hash, name FROM images WHERE account = ? AND hash IN ({marks})",
                    (account, *chunk),
                )
            )
        return found

    def intents(self, account: str) -> list[UploadIntent]:
        """Uploads that were started and never recorded (a crash, or a kill)."""
        rows = self._query("SELECT * FROM intents WHERE account = ?", (account,))
        return [
            UploadIntent(
                account=r["account"],
                md5=r["md5"],
                path=_dec(r["path"]),
                upload_name=r["upload_name"],
                started_at=r["started_at"],
            )
            for r in rows
        ]

    def file(self, account: str, path: str) -> FileRecord | None:
        """One file row, or None."""
        rows = self._tuples(
            f"SELECT {FILE_COLUMNS} FROM files WHERE account = ? AND path = ?",
            (account, _enc(path)),
        )
        return _file(rows[0]) if rows else None

    def files_under(self, account: str, prefix: str) -> list[FileRecord]:
        """The rows of files inside the folder `prefix` (relative, no trailing slash)."""
        low = _enc(prefix + "/")
        high = _enc(prefix + "0")  # "0" sorts right after "/": every path under the prefix
        rows = self._tuples(
            f"SELECT {FILE_COLUMNS} FROM files WHERE account = ? AND path >= ? AND path < ?",
            (account, low, high),
        )
        return [_file(r) for r in rows]

    def paths_with_md5(self, account: str, md5: str) -> list[str]:
        """Every recorded file that holds this content."""
        rows = self._query(
            "SELECT path FROM files WHERE account = ? AND md5 = ? AND state != 'skipped'",
            (account, md5),
        )
        return [_dec(r[0]) for r in rows]

    def image_for_md5(self, account: str, md5: str) -> ImageRecord | None:
        """The image this content was uploaded as, if any."""
        rows = self._tuples(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE account = ? AND md5 = ?", (account, md5)
        )
        return _image(rows[0]) if rows else None

    def earliest_gone(self, account: str, after: float | None = None) -> float | None:
        """The earliest grace start (after `after`, if given): when the next sweep is due."""
        rows = self._tuples(
            "SELECT MIN(gone_since) FROM images WHERE account = ? AND gone_since > ?",
            (account, float("-inf") if after is None else after),
        )
        return rows[0][0] if rows else None

    def last_scan(self, account: str) -> tuple[float | None, str | None]:
        """When the account's folder was last fully scanned, and the last account-level error."""
        rows = self._query(
            "SELECT last_scan, last_error FROM accounts WHERE account = ?", (account,)
        )
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    # -- writes --------------------------------------------------------------------------

    def record_files(
        self, records: Iterable[FileRecord], *, unchanged_since: float = math.inf
    ) -> None:
        """Insert or replace file rows, all in one transaction; with `unchanged_since`, a row
        written at or after that time is left as it is (it is newer than the caller's view)."""
        now = time.time()
        if unchanged_since == math.inf:
            rows = [_file_row(r, now) for r in records]
            sql = FILE_UPSERT
        else:
            rows = [(*_file_row(r, now), unchanged_since) for r in records]
            sql = FILE_UPSERT_IF_OLDER
        if not rows:
            return
        with self._tx() as conn:
            conn.executemany(sql, rows)

    def move_files(self, account: str, moves: Iterable[tuple[FileRecord, str]]) -> None:
        """Re-key rows to their new paths (a rename inside the folder), atomically."""
        now = time.time()
        rows = list(moves)
        if not rows:
            return
        with self._tx() as conn:
            # Every source goes first: a batch is one simultaneous rename, so a swap (a->b,
            # b->a) or a chain (x->y, y->z) must not delete a row another move just wrote.
            conn.executemany(
                "DELETE FROM files WHERE account = ? AND path = ?",
                [(account, _enc(r.path)) for r, _ in rows],
            )
            conn.executemany(FILE_UPSERT, [_file_row(r, now, dest) for r, dest in rows])

    def forget_files(
        self, account: str, paths: Iterable[str], *, unchanged_since: float = math.inf
    ) -> None:
        """Remove the rows of files that are no longer in the folder; with `unchanged_since`,
        not a row written at or after that time (the file came back meanwhile)."""
        rows = [(account, _enc(p), unchanged_since) for p in paths]
        if rows:
            with self._tx() as conn:
                conn.executemany(
                    "DELETE FROM files WHERE account = ? AND path = ? AND updated_at < ?", rows
                )

    def begin_upload(self, intent: UploadIntent) -> None:
        """Record that a POST of this content is about to be sent."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO intents VALUES (?,?,?,?,?)",
                (
                    intent.account,
                    intent.md5,
                    _enc(intent.path),
                    intent.upload_name,
                    intent.started_at,
                ),
            )

    def abandon_upload(self, account: str, md5: str) -> None:
        """The POST did not create an image (it failed, or was never sent)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM intents WHERE account = ? AND md5 = ?", (account, md5))

    def finish_upload(self, image: ImageRecord, files: Sequence[FileRecord]) -> None:
        """Record the hash, the files that hold the content, and close the intent, atomically."""
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO images VALUES (?,?,?,?,?,?,?)",
                (
                    image.account,
                    image.md5,
                    image.hash,
                    image.origin.value,
                    image.uploaded_at,
                    image.gone_since,
                    image.name,
                ),
            )
            conn.executemany(FILE_UPSERT, [_file_row(f, now) for f in files])
            conn.execute(
                "DELETE FROM intents WHERE account = ? AND md5 = ?", (image.account, image.md5)
            )

    def set_gone(self, account: str, md5s: Iterable[str], since: float | None) -> None:
        """Start (or, with None, cancel) the grace period of images no local file holds."""
        rows = [(since, account, m) for m in md5s]
        if rows:
            with self._tx() as conn:
                conn.executemany(
                    "UPDATE images SET gone_since = ? WHERE account = ? AND md5 = ?", rows
                )

    def drop_images(self, account: str, md5s: Iterable[str]) -> None:
        """Forget images that were deleted (by syncd, or by someone else remotely)."""
        rows = [(account, m) for m in md5s]
        if rows:
            with self._tx() as conn:
                conn.executemany("DELETE FROM images WHERE account = ? AND md5 = ?", rows)

    def note_scan(self, account: str, at: float, error: str | None) -> None:
        """Remember when an account was last scanned and its account-level error, if any."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO accounts VALUES (?,?,?) ON CONFLICT(account) DO UPDATE SET "
                "last_scan = excluded.last_scan, last_error = excluded.last_error",
                (account, at, error),
            )

    def integrity_ok(self) -> bool:
        """`PRAGMA integrity_check` says ok."""
        rows = self._query("PRAGMA integrity_check")
        return [str(r[0]) for r in rows] == ["ok"]

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        if self._checkpointer is not None:
            self._checkpointer.close()  # first: the last connection to close checkpoints
        self._conn.close()


FILE_UPSERT = "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?)"
# The same, except over a row written at or after the last parameter's time.
FILE_UPSERT_IF_OLDER = (
    "INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (account, path) DO UPDATE SET "
    "size = excluded.size, mtime_ns = excluded.mtime_ns, md5 = excluded.md5, "
    "state = excluded.state, remote_hash = excluded.remote_hash, "
    "last_error = excluded.last_error, attempts = excluded.attempts, "
    "updated_at = excluded.updated_at WHERE files.updated_at < ?"
)


def _file_row(r: FileRecord, now: float, path: str | None = None) -> tuple[object, ...]:
    """A `files` row for `r` (optionally under another path), as `FILE_UPSERT` takes it."""
    return (
        r.account, _enc(path if path is not None else r.path), r.size, r.mtime_ns, r.md5,
        r.state.value, r.remote_hash, r.last_error, r.attempts, now,
    )  # fmt: skip


FILE_COLUMNS = "account, path, size, mtime_ns, md5, state, remote_hash, last_error, attempts"
FILE_FIELDS = FILE_COLUMNS.removeprefix("account, ")  # for reads of one account's rows
IMAGE_COLUMNS = "account, hash, md5, origin, uploaded_at, gone_since, name"
IMAGE_FIELDS = IMAGE_COLUMNS.removeprefix("account, ")
STREAM_BATCH = 4096
NAMES_PER_QUERY = 500  # well under SQLite's limit on bound parameters
_STATES = {s.value: s for s in FileState}
_ORIGINS = {o.value: o for o in ImageOrigin}


def _state(value: str) -> FileState:
    state = _STATES.get(value)
    if state is None:
        raise ManifestError(f"manifest: unknown file state {value!r} (the file is damaged)")
    return state


def _origin(value: str) -> ImageOrigin:
    origin = _ORIGINS.get(value)
    if origin is None:
        raise ManifestError(f"manifest: unknown image origin {value!r} (the file is damaged)")
    return origin


def _file(r: tuple[Any, ...]) -> FileRecord:
    return FileRecord(r[0], _dec(r[1]), r[2], r[3], r[4], _state(r[5]), r[6], r[7], r[8])


def _image(r: tuple[Any, ...]) -> ImageRecord:
    return ImageRecord(r[0], r[1], r[2], _origin(r[3]), r[4], gone_since=r[5], name=r[6])


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection, also for a user who cannot write the manifest's directory.

    Reading a WAL database needs its `-shm` file, which SQLite creates when it is missing:
    after the daemon closed it cleanly, a user who may read the manifest but not write its
    directory (`syncd status` by an operator) got "attempt to write a readonly database".
    With no `-wal` file beside it, every committed row is in the database file itself, so it
    is opened as immutable: read without the WAL and its locks.
    """
    # as_uri() needs an absolute path; a relative one would raise ValueError.
    uri = f"{path.absolute().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        conn.close()  # damaged, or unreadable this way: the file is not kept open
        if not isinstance(exc, sqlite3.OperationalError) or Path(f"{path}-wal").exists():
            raise
        conn = sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None)
    return conn


def _sqlite_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    text = text.split(" with text ")[0]  # sqlite would quote the damaged bytes themselves
    if "unable to open database file" in text:
        return f"{text} (cannot create or open it: does its directory exist, and is it writable?)"
    if "not a database" in text or "malformed" in text or "Could not decode" in text:
        return f"{text} (the file is damaged: move it aside and run `syncd --reconcile` to rebuild)"
    if "readonly" in text or "read-only" in text:
        return f"{text} (the manifest or its directory is not writable)"
    if "disk" in text and "full" in text:
        return f"{text} (no space left for the manifest)"
    return text
