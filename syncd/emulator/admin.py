"""Test-only routes under `/__emulator__/`: look at state, change config, seed creatives.

They need no token, are never faulted, throttled or logged, and speak plain JSON
(`{"error": "..."}` with HTTP 400/404 on a bad request).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from aiohttp import web

from syncd.emulator.config import AccountLimits, Faults, account_digits
from syncd.emulator.images import CONTENT_TYPES
from syncd.emulator.nodes import DELETED
from syncd.emulator.state import EmulatorState

PREFIX = "/__emulator__"
_CONFIG_KEYS = frozenset(
    {
        "faults",
        "limits",
        "account_limits",
        "valid_tokens",
        "expired_tokens",
        "denied_accounts",
        "app_secret",
    }
)
_Settings = TypeVar("_Settings", AccountLimits, Faults)


class AdminError(ValueError):
    """A bad admin request; the message is sent back."""


class AdminRoutes:
    """The admin handlers, bound to one emulator state."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        """Route table to add to the application."""
        return [
            web.get(f"{PREFIX}/state", self.get_state),
            web.get(f"{PREFIX}/requests", self.get_requests),
            web.post(f"{PREFIX}/config", self.post_config),
            web.post(f"{PREFIX}/creatives", self.post_creatives),
            web.post(f"{PREFIX}/reset", self.post_reset),
            web.get(PREFIX + "/images/{account}/{hash}", self.get_image),
        ]

    async def get_state(self, request: web.Request) -> web.Response:
        """Every account's images (deleted ones too) and counters."""
        state = self.state
        accounts = {
            digits: {
                "images": state.images(digits, include_deleted=True),
                "posts": acct.posts,
                "deletes": acct.deletes,
                "throttled": acct.throttled,
                "served": acct.served,
            }
            for digits, acct in state.accounts.items()
        }
        return web.json_response({"accounts": accounts, "requests": len(state.requests)})

    async def get_requests(self, request: web.Request) -> web.Response:
        """The Graph request log."""
        return web.json_response(list(self.state.requests))

    async def post_config(self, request: web.Request) -> web.Response:
        """Change faults, limits, tokens, denied accounts or the app secret."""
        try:
            apply_config(self.state, await _json_object(request))
        except AdminError as exc:
            return _bad(str(exc))
        return web.json_response({"ok": True})

    async def post_creatives(self, request: web.Request) -> web.Response:
        """Say which creatives use an image (so deleting it must be refused)."""
        try:
            body = await _json_object(request)
            creatives = body.get("creatives", [])
            if not isinstance(creatives, list):
                raise AdminError("creatives must be a list of ids")
            args = (str(body["account"]), str(body["hash"]), [str(c) for c in creatives])
        except (AdminError, KeyError) as exc:
            return _bad(f"bad creatives request: {exc}")
        try:
            self.state.set_creatives(*args, in_adgroups=bool(body.get("in_adgroups", False)))
        except KeyError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response({"ok": True})

    async def post_reset(self, request: web.Request) -> web.Response:
        """Forget everything, back to the config the emulator started with."""
        self.state.reset()
        return web.json_response({"ok": True})

    async def get_image(self, request: web.Request) -> web.Response:
        """The bytes behind an image's `url` fields."""
        image = self.state.find(request.match_info["account"], request.match_info["hash"])
        if image is None or image.status == DELETED:
            return web.json_response({"error": "no such image"}, status=404)
        return web.Response(body=image.data, content_type=CONTENT_TYPES[image.info.format])


def apply_config(state: EmulatorState, body: dict[str, Any]) -> None:
    """Apply an admin config change; fields not named keep their current values.

    Everything is checked before anything changes: a bad request changes nothing.
    """
    unknown = set(body) - _CONFIG_KEYS
    if unknown:
        raise AdminError(f"unknown config keys: {sorted(unknown)}")
    config = state.config
    faults = _faults(state, _object(body["faults"], "faults")) if "faults" in body else None
    limits = _merged(config.limits, _object(body.get("limits", {}), "limits"))
    per_account = {
        account: _merged(state.limits_for(account), _object(fields, "account_limits"))
        for account, fields in _object(body.get("account_limits", {}), "account_limits").items()
    }
    tokens = body.get("valid_tokens", config.valid_tokens)
    valid = None if tokens is None else _strings(tokens, "valid_tokens")
    expired = _strings(body.get("expired_tokens", config.expired_tokens), "expired_tokens")
    denied = _strings(body.get("denied_accounts", config.denied_accounts), "denied_accounts")
    secret = body.get("app_secret", config.app_secret)
    if secret is not None and not isinstance(secret, str):
        raise AdminError("app_secret must be a string or null")
    if faults is not None:
        state.faults.configure(faults)  # re-seeded: a run from here on repeats
        config.faults = faults
    config.limits = limits
    for account, account_limits in per_account.items():
        state.set_limits(account, account_limits)
    config.valid_tokens, config.expired_tokens, config.app_secret = valid, expired, secret
    config.denied_accounts = frozenset(account_digits(a) for a in denied)


def _faults(state: EmulatorState, fields: dict[str, Any]) -> Faults:
    """New faults from the current ones; `throttle_seconds` become clock deadlines."""
    fields = dict(fields)
    storms = _object(fields.pop("throttle_seconds", {}), "throttle_seconds")
    faults = _merged(state.config.faults, fields)
    deadlines = dict(faults.throttle_accounts)
    now = state.clock()
    for account, seconds in storms.items():
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise AdminError("throttle_seconds values must be numbers")
        deadlines[account_digits(account)] = now + float(seconds)
    return dataclasses.replace(faults, throttle_accounts=deadlines)


def _merged(current: _Settings, fields: dict[str, Any]) -> _Settings:
    """`current` with the named fields replaced, each type-checked against the default."""
    known = {f.name for f in dataclasses.fields(current)}
    for name, value in fields.items():
        if name not in known:
            raise AdminError(f"unknown field {name!r} for {type(current).__name__}")
        _check_type(name, getattr(current, name), value)
    return dataclasses.replace(current, **fields)


def _check_type(name: str, current: object, value: object) -> None:
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise AdminError(f"{name} must be of type {type(current).__name__}")


def _object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AdminError(f"{name} must be a JSON object")
    return value


def _strings(value: object, name: str) -> frozenset[str]:
    if not isinstance(value, list | frozenset) or not all(isinstance(v, str) for v in value):
        raise AdminError(f"{name} must be a list of strings")
    return frozenset(value)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError as exc:
        raise AdminError(f"body is not JSON: {exc}") from exc
    return _object(body, "body")


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
