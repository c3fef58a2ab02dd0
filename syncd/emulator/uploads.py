"""The writing side of `/act_{id}/adimages`: POST (upload, bytes, copy_from) and DELETE.

A POST is all or nothing: every image in it is checked before any is stored, so one bad
file fails the whole call and stores nothing (Meta's behaviour for mixed batches is not
documented; all-or-nothing is the simplest a client can reason about).
"""

from __future__ import annotations

import binascii
import json
from base64 import b64decode
from dataclasses import dataclass

from multidict import MultiDict

from syncd.emulator import errors
from syncd.emulator.images import SUBCODE_BASE64, ImageInfo, InvalidImage, check_upload
from syncd.emulator.nodes import DELETED, StoredImage, upload_entry
from syncd.emulator.params import GraphRequest
from syncd.emulator.state import EmulatorState


@dataclass(frozen=True, slots=True)
class _Item:
    """One image of a POST: the response key, the name to store, the bytes."""

    key: str
    name: str
    data: bytes
    info: ImageInfo


def post_images(
    state: EmulatorState, account: str, req: GraphRequest, base_url: str
) -> dict[str, object]:
    """Upload every file part, `bytes` and `copy_from` of one POST; answer `{"images": ...}`."""
    items = _checked_items(req, state.config.max_image_bytes)
    source = _copy_source(state, req.params)
    if not items and source is None:
        raise errors.invalid_parameter("No image in the request: send a file, bytes or copy_from")
    entries: dict[str, object] = {}
    carried: set[str] = set()  # a POST counts once per distinct content it carried
    for item in items:
        image = state.store(account, item.name, item.data, item.info)
        entries[item.key] = _counted(image, carried, base_url)
    if source is not None:
        image = state.store(account, source.name, source.data, source.info)
        entries[image.hash] = _counted(image, carried, base_url)
    state.account(account).posts += 1
    return {"images": entries}


def delete_image(state: EmulatorState, account: str, params: MultiDict[str]) -> dict[str, object]:
    """DELETE by `hash` (query or body), optionally checked against `image_id`."""
    image_hash = params.get("hash", "").strip()
    if not image_hash:
        raise errors.invalid_parameter("The parameter hash is required")
    image_id = params.get("image_id", "").strip()
    if image_id and image_id not in (f"{account}:{image_hash}", image_hash):
        raise errors.invalid_parameter("Image not found")
    state.delete(account, image_hash)
    return {"success": True}


def _counted(image: StoredImage, carried: set[str], base_url: str) -> dict[str, object]:
    if image.hash not in carried:
        carried.add(image.hash)
        image.upload_count += 1
    return upload_entry(image, base_url)


def _checked_items(req: GraphRequest, max_bytes: int) -> list[_Item]:
    """Every image of the request, each checked; the first refusal fails the call."""
    raw: list[tuple[str, str, str | None, bytes]] = [
        (part.filename, part.filename, part.filename, part.data) for part in req.files
    ]
    for encoded in req.params.getall("bytes", []):
        # A `bytes` upload has no filename to check; a `name` field may name it.
        raw.append(("bytes", req.params.get("name", "bytes"), None, _decode_base64(encoded)))
    items = []
    for key, name, filename, data in raw:
        try:
            info = check_upload(filename, data, max_bytes)
        except InvalidImage as exc:
            raise errors.image_error(exc) from exc
        items.append(_Item(key, name, data, info))
    return items


def _decode_base64(encoded: str) -> bytes:
    compact = "".join(encoded.split())  # line-wrapped base64 is common and harmless
    try:
        return b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        bad = InvalidImage("the bytes parameter is not valid base64", SUBCODE_BASE64)
        raise errors.image_error(bad) from exc


def _copy_source(state: EmulatorState, params: MultiDict[str]) -> StoredImage | None:
    """The image `copy_from` names, or None when the POST has no `copy_from`."""
    raw = params.get("copy_from")
    if raw is None:
        return None
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise errors.invalid_parameter("Invalid copy_from: not a JSON object") from exc
    if not isinstance(spec, dict):
        raise errors.invalid_parameter("Invalid copy_from: not a JSON object")
    source, image_hash = str(spec.get("source_account_id", "")), spec.get("hash")
    if not source.isdigit() or not isinstance(image_hash, str):
        raise errors.invalid_parameter(
            "Invalid copy_from: source_account_id (digits, no act_) and hash are required"
        )
    image = state.find(source, image_hash)
    if image is None or image.status == DELETED:
        raise errors.invalid_parameter("Invalid copy_from: the source image was not found")
    return image
