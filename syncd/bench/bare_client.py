"""A bare aiohttp client: the peer benchmark's uploads and nothing else.

Run as `python -m syncd.bench.bare_client BASE_URL ACCOUNT FOLDER WORKERS` with the token in
SYNCD_ACCESS_TOKEN. It reads every image into memory before its first POST, then sends them
`WORKERS` at a time through one aiohttp session, each as the one-buffer multipart body syncd
sends, and checks only the HTTP status: no scan, hashing, listing, manifest, log or retry.
It imports nothing of syncd, so its start-up is the interpreter's and aiohttp's alone.

Timed from spawn to exit like the peer and syncd, it shows what the plainest concurrent
aiohttp script pays on this machine against this emulator (the interpreter, aiohttp's import,
and the POSTs), and so how near to the peer ratio's target such a client comes at all.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff")
BOUNDARY = "bare-client-boundary"


def body(name: str, data: bytes) -> bytes:
    """One file part named `filename`, as syncd.graph.multipart_body builds it."""
    head = (
        f"--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: form-data; name="filename"; filename="{name}"\r\n\r\n'
    )
    return b"".join((head.encode(), data, f"\r\n--{BOUNDARY}--\r\n".encode()))


async def upload_all(url: str, bodies: list[bytes], workers: int) -> None:
    """POST every body, `workers` at a time; any answer but 200 fails the run."""
    headers = {
        "Authorization": f"OAuth {os.environ['SYNCD_ACCESS_TOKEN']}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    todo = iter(bodies)
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for data in todo:  # one shared iterator: each body is taken once
                async with session.post(url, data=data, headers=headers) as resp:
                    answer = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {answer[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(workers)))


def main(argv: list[str]) -> int:
    """Upload every image under the folder; print the count."""
    base_url, account, folder, workers = argv
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    bodies = [body(p.name, p.read_bytes()) for p in paths]
    url = f"{base_url}/v21.0/act_{account}/adimages"
    asyncio.run(upload_all(url, bodies, int(workers)))
    print(len(bodies))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
