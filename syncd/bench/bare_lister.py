"""A bare aiohttp listing: every image of the account, page by page, and nothing else.

Run as `python -m syncd.bench.bare_lister BASE_URL ACCOUNT` with the token in
SYNCD_ACCESS_TOKEN. It asks for what syncd's no-change reconcile asks for (`hash,status`,
pages of syncd.graph.LIST_PAGE) and follows the `after` cursor until a page has no `next`,
keeping each image's status by its hash and nothing else. It imports nothing of syncd, so
its start-up is the interpreter's and aiohttp's alone.

Timed from spawn to exit beside the bare walk, it shows what the listing every reconcile makes
by contract costs on this machine against this emulator before syncd does anything with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp

PAGE = 500  # syncd.graph.LIST_PAGE (not imported: syncd.graph imports the rest of syncd)


async def list_statuses(url: str) -> dict[str, str]:
    """Page through the listing; every image's status by its hash."""
    headers = {"Authorization": f"OAuth {os.environ['SYNCD_ACCESS_TOKEN']}"}
    params = {"fields": "hash,status", "limit": str(PAGE)}
    statuses: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url, params=params, headers=headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {raw[:200]!r}")
            page = json.loads(raw)
            statuses.update((item["hash"], item["status"]) for item in page["data"])
            paging = page.get("paging", {})
            if "next" not in paging:
                return statuses
            params = {**params, "after": paging["cursors"]["after"]}


def main(argv: list[str]) -> int:
    """List the account; print the number of images listed."""
    base_url, account = argv
    print(len(asyncio.run(list_statuses(f"{base_url}/v21.0/act_{account}/adimages"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
