"""`syncd demo`: the whole daemon against the bundled emulator, on a temporary folder.

No account and no token are needed: the emulator runs on a free loopback port, a few sample
images are dropped into a fresh folder (some before start-up, some while it watches), and the
logs show them being uploaded. `--seconds N` stops it after N seconds, for scripts and CI.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

from syncd.config import Config, parse_config
from syncd.emulator import EmulatorThread
from syncd.logs import configure_logging
from syncd.secrets import Secrets, Token
from syncd.service import Service

DEMO_ACCOUNT = "1000000001"
DEMO_TOKEN = "demo-token-for-the-bundled-emulator"  # noqa: S105 - the emulator accepts any


def sample_png(width: int, height: int, seed: int) -> bytes:
    """A small, valid, distinct PNG: a colour gradient picked by `seed`."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: none
        for x in range(width):
            rows += bytes(((x * 4 + seed * 40) % 256, (y * 4 + seed * 70) % 256, (seed * 90) % 256))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


def demo_config(base_url: str, workdir: Path) -> Config:
    """The demo's configuration: one account, short settle and grace so changes show fast."""
    return parse_config(
        {
            "graph": {"base_url": base_url},
            "manifest": {"path": str(workdir / "manifest.sqlite3")},
            "sync": {
                "workers": 4,
                "settle_seconds": 1.0,
                "delete_grace_seconds": 15.0,
                "max_delete_fraction": 0.5,
                "observer": "native",
                "drain_seconds": 5.0,
            },
            "log": {"format": "console" if sys.stdout.isatty() else "json"},
            "accounts": [{"id": DEMO_ACCOUNT, "folder": str(workdir / "drop-images-here")}],
        }
    )


def run_demo(seconds: float | None) -> int:
    """Run the demo until Ctrl-C, or for `seconds`; returns the exit code."""
    workdir = Path(tempfile.mkdtemp(prefix="syncd-demo-"))
    folder = workdir / "drop-images-here"
    folder.mkdir()
    try:
        with EmulatorThread() as emulator:
            config = demo_config(emulator.base_url, workdir)
            configure_logging(level="info", fmt=config.log.format, stream=sys.stdout)
            _intro(emulator.base_url, folder, seconds)
            for i in range(2):
                (folder / f"sample-{i + 1}.png").write_bytes(sample_png(48, 32, i))
            code = asyncio.run(_run(config, folder, seconds))
            images = emulator.call(emulator.state.images, DEMO_ACCOUNT)
            print(
                f"\nsyncd demo: the emulated account now holds {len(images)} images; "
                f"exit code {code}.",
                flush=True,
            )
            return code
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _run(config: Config, folder: Path, seconds: float | None) -> int:
    service = Service(config, Secrets(token=Token(DEMO_TOKEN), app_secret=None))
    task = asyncio.create_task(service.run())
    await asyncio.sleep(1.5)  # a demo pacing its story for a person watching, not a sync
    (folder / "campaigns" / "spring").mkdir(parents=True, exist_ok=True)
    (folder / "campaigns" / "spring" / "banner.png").write_bytes(sample_png(64, 64, 3))
    (folder / "notes.txt").write_text("not an image: syncd skips it and says why\n")
    if seconds is not None:
        await asyncio.wait([task], timeout=max(0.0, seconds - 1.5))
        if not task.done():
            service.request_stop("--seconds elapsed")
    return await task


def _intro(base_url: str, folder: Path, seconds: float | None) -> None:
    lines = [
        "syncd demo: the bundled Graph API emulator is on " + base_url,
        f"  watching {folder}",
        "  drop .jpg/.png/.gif files there to see them uploaded; delete one to see its image",
        "  deleted after a 15 s grace period.",
        "  Ctrl-C stops it." if seconds is None else f"  stopping after {seconds:g} s.",
        "",
    ]
    print("\n".join(lines), flush=True)
