"""The Graph nodes the emulator serves (AdImage, AdAccount) and how they are rendered.

`fields` handling lives here too: which fields each node type has, which are the defaults,
and the (#100) answer for a field the node type does not have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from syncd.emulator import errors
from syncd.emulator.images import ImageInfo

ACTIVE = "ACTIVE"
DELETED = "DELETED"

IMAGE_DEFAULT_FIELDS = ("id", "hash")
ACCOUNT_DEFAULT_FIELDS = ("id", "account_id", "name", "account_status")


def graph_time(moment: datetime) -> str:
    """Meta's datetime format: 2026-11-22T10:00:00+0000."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S+0000")


@dataclass
class StoredImage:
    """One image node of one account."""

    account: str
    hash: str
    name: str
    data: bytes
    info: ImageInfo
    seq: int  # creation order in the account; paging cursors point at it
    created_at: datetime
    updated_at: datetime
    status: str = ACTIVE
    creatives: list[str] = field(default_factory=list)
    in_adgroups: bool = False
    upload_count: int = 0

    @property
    def node_id(self) -> str:
        """Meta's AdImage id: `<account digits>:<hash>`."""
        return f"{self.account}:{self.hash}"

    @property
    def in_use(self) -> bool:
        """Whether a creative (or an ad group through one) uses the image."""
        return bool(self.creatives) or self.in_adgroups

    def url(self, base_url: str, variant: str | None = None) -> str:
        """Where the emulator serves the bytes (the admin image route)."""
        url = f"{base_url}/__emulator__/images/{self.account}/{self.hash}"
        return url if variant is None else f"{url}?variant={variant}"


def fit(info: ImageInfo, box: int) -> tuple[int, int]:
    """The size of the image scaled down to fit a box x box square (never scaled up)."""
    largest = max(info.width, info.height)
    if largest <= box:
        return info.width, info.height
    return max(1, info.width * box // largest), max(1, info.height * box // largest)


def upload_entry(image: StoredImage, base_url: str) -> dict[str, object]:
    """One value of an upload answer's `images` map."""
    width_256, height_256 = fit(image.info, 256)
    return {
        "hash": image.hash,
        "url": image.url(base_url),
        "url_128": image.url(base_url, "128"),
        "url_256": image.url(base_url, "256"),
        # Meta's reference types these two as strings.
        "url_256_height": str(height_256),
        "url_256_width": str(width_256),
        "height": image.info.height,
        "width": image.info.width,
        "name": image.name,
    }


_IMAGE_FIELDS: dict[str, Callable[[StoredImage, str], object]] = {
    "id": lambda image, _: image.node_id,
    "account_id": lambda image, _: image.account,
    "hash": lambda image, _: image.hash,
    "name": lambda image, _: image.name,
    "status": lambda image, _: image.status,
    "creatives": lambda image, _: list(image.creatives),
    "is_associated_creatives_in_adgroups": lambda image, _: image.in_adgroups,
    "width": lambda image, _: image.info.width,
    "height": lambda image, _: image.info.height,
    "original_width": lambda image, _: image.info.width,
    "original_height": lambda image, _: image.info.height,
    "created_time": lambda image, _: graph_time(image.created_at),
    "updated_time": lambda image, _: graph_time(image.updated_at),
    "url": lambda image, base: image.url(base),
    "url_128": lambda image, base: image.url(base, "128"),
    "permalink_url": lambda image, base: image.url(base, "permalink"),
}

_ACCOUNT_FIELDS: dict[str, Callable[[str], object]] = {
    "id": lambda account: f"act_{account}",
    "account_id": lambda account: account,
    "name": lambda account: f"Emulated account {account}",
    "account_status": lambda account: 1,
    "currency": lambda account: "USD",
    "timezone_name": lambda account: "Etc/UTC",
}


def parse_fields(raw: str | None, default: tuple[str, ...], node_type: str) -> list[str]:
    """The `fields` parameter as a list, checked against the node type's fields."""
    if raw is None or not raw.strip():
        return list(default)
    known = _IMAGE_FIELDS if node_type == "AdImage" else _ACCOUNT_FIELDS
    names = [name.strip() for name in raw.split(",") if name.strip()]
    for name in names:
        if name not in known:
            raise errors.nonexisting_field(name, node_type)
    return list(dict.fromkeys(names))  # repeated names once, order kept


def image_fields(image: StoredImage, names: list[str], base_url: str) -> dict[str, object]:
    """The image node as the listing renders it."""
    return {name: _IMAGE_FIELDS[name](image, base_url) for name in names}


def account_fields(account: str, names: list[str]) -> dict[str, object]:
    """The ad account node."""
    return {name: _ACCOUNT_FIELDS[name](account) for name in names}


def describe(image: StoredImage) -> dict[str, object]:
    """An image as tests and the admin state route see it."""
    return {
        "id": image.node_id,
        "account_id": image.account,
        "hash": image.hash,
        "name": image.name,
        "status": image.status,
        "creatives": list(image.creatives),
        "is_associated_creatives_in_adgroups": image.in_adgroups,
        "content_md5": hashlib.md5(image.data, usedforsecurity=False).hexdigest(),
        "size": len(image.data),
        "format": image.info.format,
        "width": image.info.width,
        "height": image.info.height,
        "created_time": graph_time(image.created_at),
        "updated_time": graph_time(image.updated_at),
        "upload_count": image.upload_count,
    }
