"""The emulated Graph API as an aiohttp application.

One handler serves every Graph path, in the order Meta appears to check things: injected
transport faults, then the token (and appsecret_proof), then the path, the account's
permission, its score, and finally the route itself. Every answer for an account carries
the usage headers, and every call lands in the request log.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from aiohttp import web

from syncd.emulator import errors
from syncd.emulator.admin import AdminRoutes
from syncd.emulator.errors import GraphApiError
from syncd.emulator.listing import list_images, read_account
from syncd.emulator.params import (
    GraphRequest,
    check_appsecret_proof,
    read_graph_request,
    token_in_url,
)
from syncd.emulator.scoring import READ_COST, WRITE_COST, usage_headers
from syncd.emulator.state import EmulatorState, RequestRecord
from syncd.emulator.uploads import delete_image, post_images

STATE_KEY = web.AppKey("syncd_emulator_state", EmulatorState)

# An optional version prefix (Meta serves unversioned calls too), a node, an optional edge.
_PATH = re.compile(r"^/(?:v\d+\.\d+/)?(?P<node>[^/]+)(?:/(?P<edge>[^/]+))?/?$")
_ROUTES = {
    (None, "GET"): "account",
    ("adimages", "GET"): "list",
    ("adimages", "POST"): "upload",
    ("adimages", "DELETE"): "delete",
}


@dataclass(frozen=True, slots=True)
class Target:
    """What a Graph path names."""

    node: str
    edge: str | None
    account: str | None  # the digits of an `act_<digits>` node


def parse_target(path: str) -> Target:
    """Split a request path into node, edge and account digits."""
    match = _PATH.match(path)
    if match is None:
        return Target(path, None, None)
    node, edge = match["node"], match["edge"]
    digits = node.removeprefix("act_")
    account = digits if node.startswith("act_") and digits.isdigit() else None
    return Target(node, edge, account)


def create_app(state: EmulatorState) -> web.Application:
    """The Graph API routes plus the test-only admin routes under `/__emulator__/`."""
    # Large enough that an oversize `bytes` upload reaches the Graph error, not a bare 413.
    app = web.Application(client_max_size=state.config.max_image_bytes * 3 + 1024 * 1024)
    app[STATE_KEY] = state
    app.add_routes(AdminRoutes(state).routes())
    app.router.add_route("*", "/{tail:.*}", GraphRoutes(state).handle)
    return app


class GraphRoutes:
    """The Graph API handler, bound to one emulator state."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one Graph call, or inject the fault the dice say."""
        state = self.state
        target = parse_target(request.path)
        record = self._record(request, target)
        fault = state.faults.draw()
        if fault.latency_seconds > 0:
            await asyncio.sleep(fault.latency_seconds)
        if fault.drop:
            return self._drop(request, record, "drop")
        stored = False
        try:
            if fault.error is not None:
                record["fault"] = "error"
                raise fault.error
            body, stored = await self._serve(request, target, record)
            status = 200
        except GraphApiError as err:
            body, status = err.body(state.next_trace_id()), err.status
            record["code"] = err.code
        if stored and state.faults.drop_after_processing():
            return self._drop(request, record, "drop_after_processing")
        record["status"] = status
        state.requests.append(record)
        headers = self._usage_headers(target.account) if target.account else None
        return web.json_response(body, status=status, headers=headers)

    async def _serve(
        self, request: web.Request, target: Target, record: RequestRecord
    ) -> tuple[dict[str, object], bool]:
        """The answer to an authenticated call, and whether it stored images."""
        state = self.state
        req = await read_graph_request(request, state.config.max_image_bytes)
        record["token_source"] = req.token_source
        self._authenticate(req)
        route = _ROUTES.get((target.edge, request.method))
        if route is None or not target.node.startswith("act_"):
            raise errors.unsupported(request.method, target.node)
        account = target.account
        if account is None:
            raise errors.invalid_parameter(f"Invalid ad account id: {target.node}")
        if account in state.config.denied_accounts:
            raise errors.permission_denied()
        self._admit(account, READ_COST if request.method == "GET" else WRITE_COST, record)
        if route == "account":
            return read_account(account, request.query), False
        if route == "list":
            return list_images(state, account, request.query, request.url), False
        if route == "upload":
            return post_images(state, account, req, str(request.url.origin())), True
        return delete_image(state, account, req.params), False

    def _authenticate(self, req: GraphRequest) -> None:
        config = self.state.config
        token = req.token
        if token is None:
            raise errors.missing_token()
        if token in config.expired_tokens:
            raise errors.expired_token()
        if config.valid_tokens is not None and token not in config.valid_tokens:
            raise errors.invalid_token()
        check_appsecret_proof(config.app_secret, token, req.params)

    def _admit(self, account: str, cost: float, record: RequestRecord) -> None:
        """Charge the call to the account's score; refuse it (80004) when over."""
        state = self.state
        acct = state.account(account)
        if state.faults.storm_until(account, state.clock()) is not None:
            acct.throttled += 1
            record["fault"] = "throttle_storm"
            raise errors.throttled()
        if not state.scores.charge(account, cost, state.limits_for(account)):
            acct.throttled += 1
            raise errors.throttled()
        acct.served += 1

    def _usage_headers(self, account: str) -> dict[str, str]:
        state = self.state
        storm = state.faults.storm_until(account, state.clock())
        usage = state.scores.usage(account, state.limits_for(account), storm)
        return usage_headers(account, usage)

    def _record(self, request: web.Request, target: Target) -> RequestRecord:
        return RequestRecord(
            method=request.method,
            path=request.path,
            query=request.query_string,
            account=target.account,
            status=None,
            code=None,
            kind="read" if request.method in ("GET", "HEAD") else "write",
            at=self.state.clock(),
            token_in_url=token_in_url(request),
            token_source=None,
            fault=None,
        )

    def _drop(self, request: web.Request, record: RequestRecord, fault: str) -> web.Response:
        """Close the connection with no answer at all, as a crashed front end would."""
        record["fault"] = fault
        record["status"] = None
        self.state.requests.append(record)
        if request.transport is not None:
            request.transport.abort()
        # Never sent: aiohttp sees the closed transport and drops the response quietly.
        return web.Response()
