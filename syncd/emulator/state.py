"""All the emulator's in-memory state: accounts, their images, counters and the request log.

Every method is plain Python and must run on the emulator's event-loop thread (tests use
`EmulatorThread.call`), so no locks are needed: the loop runs one handler step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypedDict

from syncd.emulator import errors
from syncd.emulator.config import AccountLimits, EmulatorConfig, account_digits, copy_config
from syncd.emulator.faults import FaultInjector
from syncd.emulator.images import ImageInfo, InvalidImage, check_upload, emulator_hash
from syncd.emulator.nodes import ACTIVE, DELETED, StoredImage, describe, upload_entry
from syncd.emulator.scoring import ScoreBoard


class RequestRecord(TypedDict):
    """One Graph request as the emulator saw it (admin routes are not recorded)."""

    method: str
    path: str
    query: str
    account: str | None
    status: int | None  # None: the connection was dropped without an answer
    code: int | None
    kind: str  # "read" | "write"
    at: float  # the emulator's clock
    token_in_url: bool
    token_source: str | None  # "header" | "query" | "body" | None
    fault: str | None  # "error" | "drop" | "drop_after_processing" | "throttle_storm" | None


@dataclass
class AccountState:
    """One emulated ad account."""

    account_id: str
    images: dict[str, StoredImage] = field(default_factory=dict)
    order: list[StoredImage] = field(default_factory=list)  # creation order: seq ascending
    next_seq: int = 1
    posts: int = 0
    deletes: int = 0
    throttled: int = 0
    served: int = 0
    limits: AccountLimits | None = None


class EmulatorState:
    """The emulator's accounts, images, score model, faults and request log."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self._initial = copy_config(self.config)
        self.accounts: dict[str, AccountState] = {}
        self.requests: list[RequestRecord] = []
        self.scores = ScoreBoard(self.clock)
        self.faults = FaultInjector(self.config.faults)
        self.base_url = "http://127.0.0.1"  # set to the bound address by the runners
        self._traces = 0

    def clock(self) -> float:
        """The emulator's clock (looked up on every call: tests may swap the config's)."""
        return self.config.clock()

    def reset(self) -> None:
        """Back to the state right after construction, including the initial config."""
        self.config = copy_config(self._initial)
        self.accounts.clear()
        self.requests.clear()
        self.scores.reset()
        self.faults.configure(self.config.faults)
        self._traces = 0

    def account(self, account: str) -> AccountState:
        """The account, created on first use as Meta's accounts appear to a new token."""
        digits = account_digits(account)
        return self.accounts.setdefault(digits, AccountState(digits))

    def limits_for(self, account: str) -> AccountLimits:
        """The account's own limits, else the configured default."""
        found = self.accounts.get(account_digits(account))
        if found is not None and found.limits is not None:
            return found.limits
        return self.config.limits

    def set_limits(self, account: str, limits: AccountLimits) -> None:
        """Give one account its own score model."""
        self.account(account).limits = limits

    def next_trace_id(self) -> str:
        """A fbtrace_id; a counter, so seeded runs give identical bodies."""
        self._traces += 1
        return f"AEmu{self._traces:08d}"

    def upload(self, account: str, filename: str, data: bytes) -> dict[str, object]:
        """Store an image as a POST would (validation included); return its upload entry.

        Raises `GraphApiError` when the API would refuse the file. Seeding state this way
        counts in the image's `upload_count` but not in `post_count` (no POST was made).
        """
        try:
            info = check_upload(filename, data, self.config.max_image_bytes)
        except InvalidImage as exc:
            raise errors.image_error(exc) from exc
        image = self.store(account, filename, data, info)
        image.upload_count += 1
        return upload_entry(image, self.base_url)

    def store(self, account: str, name: str, data: bytes, info: ImageInfo) -> StoredImage:
        """Add validated bytes; identical content is the same node (reactivated if deleted)."""
        acct = self.account(account)
        digest = emulator_hash(data)
        now = datetime.now(UTC)
        image = acct.images.get(digest)
        if image is None:
            seq = acct.next_seq
            image = StoredImage(acct.account_id, digest, name[:100], data, info, seq, now, now)
            acct.images[digest] = image
            acct.order.append(image)
            acct.next_seq += 1
        elif image.status == DELETED:
            image.status = ACTIVE
            image.updated_at = now
        return image

    def find(self, account: str, image_hash: str) -> StoredImage | None:
        """The image node with this hash (any status), if the account has it."""
        acct = self.accounts.get(account_digits(account))
        return None if acct is None else acct.images.get(image_hash)

    def delete(self, account: str, image_hash: str) -> None:
        """Mark the image DELETED, refusing unknown, deleted or in-use images (code 100)."""
        image = self.find(account, image_hash)
        if image is None or image.status == DELETED:
            raise errors.invalid_parameter("Image not found")
        if image.in_use:
            raise errors.invalid_parameter("Cannot delete an image used by an ad creative")
        image.status = DELETED
        image.updated_at = datetime.now(UTC)
        self.account(account).deletes += 1

    def set_creatives(
        self, account: str, image_hash: str, creative_ids: list[str], in_adgroups: bool = False
    ) -> None:
        """Say which creatives use an image (KeyError if the account has no such image)."""
        image = self.find(account, image_hash)
        if image is None:
            raise KeyError(f"no image {image_hash} in account {account_digits(account)}")
        image.creatives = list(creative_ids)
        image.in_adgroups = in_adgroups
        image.updated_at = datetime.now(UTC)

    def images(self, account: str, include_deleted: bool = False) -> list[dict[str, object]]:
        """The account's images in creation order, as JSON-ready dicts."""
        acct = self.accounts.get(account_digits(account))
        if acct is None:
            return []
        return [
            describe(image) for image in acct.order if include_deleted or image.status != DELETED
        ]

    def post_count(self, account: str | None = None) -> int:
        """POSTs that stored images (answered or dropped after processing)."""
        return sum(acct.posts for acct in self._selected(account))

    def delete_count(self, account: str | None = None) -> int:
        """Successful deletes."""
        return sum(acct.deletes for acct in self._selected(account))

    def throttle_count(self, account: str | None = None) -> int:
        """Calls answered 80004."""
        return sum(acct.throttled for acct in self._selected(account))

    def served_count(self, account: str | None = None) -> int:
        """Calls that passed the score model and reached the route."""
        return sum(acct.served for acct in self._selected(account))

    def _selected(self, account: str | None) -> list[AccountState]:
        if account is None:
            return list(self.accounts.values())
        found = self.accounts.get(account_digits(account))
        return [] if found is None else [found]
