"""The terminal progress line of `--reconcile`, with a clock moved by hand."""

from __future__ import annotations

import io

from syncd.models import LocalFile
from syncd.planner import Plan, Upload
from syncd.progress import Progress


def upload(size: int) -> Upload:
    return Upload("m", (LocalFile("a.jpg", size, 1, "m"),), "a.jpg")


def test_counts_and_eta_from_the_byte_rate() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, clock=lambda: now[0])
    progress.hashed(10, 0)
    progress.planned(Plan("1", uploads=[upload(1000), upload(3000)]))
    assert progress.line() == "hashed 10 files, uploaded 0/2"
    now[0] = 2.0
    progress.uploaded(upload(1000))  # 1000 bytes in 2 s: 3000 left take 6 s
    assert progress.line() == "hashed 10 files, uploaded 1/2, ETA 0m06s"
    progress.finish()
    assert out.getvalue().endswith("uploaded 1/2, ETA 0m06s\n")


def test_redraws_are_rate_limited() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, clock=lambda: now[0])
    for i in range(100):
        progress.hashed(i, 0)
    assert out.getvalue().count("\r") == 0  # nothing yet: less than a redraw interval
    now[0] = 1.0
    progress.hashed(100, 0)
    assert out.getvalue().count("\r") == 1
