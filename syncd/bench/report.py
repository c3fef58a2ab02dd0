"""What a benchmark reports: figures with targets, its parameters, and the printed table."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Figure:
    """One measured figure; `passed` is None when it has no target (reported only)."""

    name: str
    measured: float | None
    unit: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""

    def shown(self) -> str:
        """The measured value as the table prints it."""
        if self.measured is None or not math.isfinite(self.measured):
            return "n/a"
        value = self.measured
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{text} {self.unit}".strip()


@dataclass(slots=True)
class BenchResult:
    """One benchmark's figures, the parameters it ran with, and raw details for the JSON."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def add(
        self,
        name: str,
        measured: float | None,
        unit: str = "",
        *,
        at_least: float | None = None,
        at_most: float | None = None,
        note: str = "",
    ) -> Figure:
        """Record a figure; a bound makes it a target that passes or fails."""
        target, passed = "", None
        ok = measured is not None and math.isfinite(measured)
        if at_least is not None:
            target = f">= {at_least:g} {unit}".strip()
            passed = ok and measured is not None and measured >= at_least
        elif at_most is not None:
            target = f"<= {at_most:g} {unit}".strip()
            passed = ok and measured is not None and measured <= at_most
        figure = Figure(name, measured, unit, target, passed, note)
        self.figures.append(figure)
        return figure


def table(results: list[BenchResult]) -> str:
    """The figures as a fixed-width table: figure, measured, target, pass/fail."""
    rows = [("figure", "measured", "target", "result")]
    for result in results:
        if result.error is not None:
            rows.append((f"{result.name}: ERROR", result.error[:60], "", "fail"))
        for fig in result.figures:
            verdict = "-" if fig.passed is None else ("pass" if fig.passed else "FAIL")
            rows.append((f"{result.name}: {fig.name}", fig.shown(), fig.target or "-", verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def write_json(path: Path, header: dict[str, Any], results: list[BenchResult]) -> None:
    """All figures, parameters and details as one JSON document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**header, "benchmarks": {r.name: _clean(asdict(r)) for r in results}}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
