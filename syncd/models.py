"""Plain data shared by the scanner, the manifest, the planner and the executor.

The records a pass makes one of per file (`LocalFile`, `FileRecord`, `ImageRecord`: 300,000
of them for 100,000 files, and a `RemoteImage` for each listed image it looks up) are named
tuples: immutable like a frozen dataclass, but about six times cheaper to build (a frozen
dataclass sets each field through `object.__setattr__`). A listing holds most images as their
status alone (`RemoteListing`).

Paths are relative to the account's folder, always with "/" separators, as `str` decoded with
`os.fsdecode` (so undecodable bytes survive as surrogate escapes); `display_path` makes them
printable.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple


class FileState(enum.StrEnum):
    """What the manifest says of one local file."""

    PENDING = "pending"  # seen, not uploaded yet (or being uploaded)
    SYNCED = "synced"  # its content maps to a remote hash
    FAILED = "failed"  # the last attempt failed; `last_error` says why
    SKIPPED = "skipped"  # never an upload candidate; `last_error` says why


class ImageOrigin(enum.StrEnum):
    """How a remote image came to be in the manifest. Only UPLOADED images are ever deleted."""

    UPLOADED = "uploaded"  # syncd POSTed these bytes and the API answered with this hash
    ADOPTED = "adopted"  # the hash already existed remotely before syncd's upload


class FolderState(enum.StrEnum):
    """Whether an account's folder can be trusted to say which files are gone."""

    OK = "ok"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    UNMOUNTED = "unmounted"  # empty, or no longer the file system it was, while images are synced


class LocalFile(NamedTuple):
    """One regular file under an account folder that is an upload candidate."""

    path: str
    size: int
    mtime_ns: int
    md5: str


@dataclass(frozen=True, slots=True)
class Skip:
    """A file that is not an upload candidate, and why (logged once, shown by `status`)."""

    path: str
    reason: str
    size: int = 0
    mtime_ns: int = 0


class FileRecord(NamedTuple):
    """A manifest row for one local file."""

    account: str
    path: str
    size: int
    mtime_ns: int
    md5: str | None
    state: FileState
    remote_hash: str | None = None
    last_error: str | None = None
    attempts: int = 0


class ImageRecord(NamedTuple):
    """A manifest row for one remote image whose hash syncd received from an upload."""

    account: str
    hash: str
    md5: str
    origin: ImageOrigin
    uploaded_at: float
    gone_since: float | None = None  # when syncd first saw no local file holding this content
    name: str = ""


@dataclass(frozen=True, slots=True)
class UploadIntent:
    """Written before a POST, removed with the result: a crash leaves it for the next start."""

    account: str
    md5: str
    path: str
    upload_name: str
    started_at: float


class RemoteImage(NamedTuple):
    """One image as the Graph API lists it."""

    hash: str
    name: str = ""
    status: str = "ACTIVE"
    creatives: tuple[str, ...] = ()
    in_adgroups: bool = False
    created_time: str = ""
    # The answer about creatives could not be read (a field of the wrong type): never taken
    # as "unused", because that would allow a deletion.
    uncertain: bool = False

    @property
    def in_use(self) -> bool:
        return bool(self.creatives) or self.in_adgroups or self.uncertain


class RemoteListing(Mapping[str, RemoteImage]):
    """An account's listing by hash, read like a dict of `RemoteImage`.

    A pass lists every image for its hash and status only: a `RemoteImage` each would be
    11 MB at 100,000 images, a tenth of the pass's peak memory. So an image with nothing
    but a hash and a status is held as its status (an interned string) and its `RemoteImage`
    is built when looked up; an image with more (a name, creatives) is held whole.
    """

    __slots__ = ("_status", "_whole")

    def __init__(self, images: Iterable[RemoteImage] = ()) -> None:
        self._status: dict[str, str] = {}
        self._whole: dict[str, RemoteImage] = {}
        self.update(images)

    def update(self, images: Iterable[RemoteImage]) -> None:
        """Add images; an image listed again replaces the earlier entry, as in a dict."""
        status, whole = self._status, self._whole
        for image in images:
            key = image.hash
            if not (
                image.name
                or image.creatives
                or image.in_adgroups
                or image.created_time
                or image.uncertain
            ):
                status[key] = image.status
                if whole:
                    whole.pop(key, None)
            else:
                whole[key] = image
                status.pop(key, None)

    def __getitem__(self, key: str) -> RemoteImage:
        image = self._whole.get(key)
        if image is not None:
            return image
        return RemoteImage(key, "", self._status[key])

    def get(self, key: str, default: RemoteImage | None = None) -> RemoteImage | None:  # type: ignore[override]
        status = self._status.get(key)
        if status is not None:
            return RemoteImage(key, "", status)
        return self._whole.get(key, default)

    def status(self, key: str) -> str | None:
        """The image's status, or None when it is not listed (builds no RemoteImage)."""
        status = self._status.get(key)
        if status is not None:
            return status
        whole = self._whole.get(key)
        return whole.status if whole is not None else None

    def __contains__(self, key: object) -> bool:
        return key in self._status or key in self._whole

    def __iter__(self) -> Iterator[str]:
        yield from self._status
        yield from self._whole

    def __len__(self) -> int:
        return len(self._status) + len(self._whole)


def display_path(path: str) -> str:
    """A printable form of a path that may hold undecodable bytes or control characters."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
