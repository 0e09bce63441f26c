"""Shared bits of the benchmarks: percentiles and the results table."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

NO_BASELINE = "no baseline: openwakeword is not installed here (pip install 'livehome[train]', CPython 3.11, 64-bit)"


def have_openwakeword() -> bool:
    """Whether the bare-openWakeWord baselines can run (the test and train extras; not on armv7l, not on
    CPython >= 3.12, where its tflite-runtime dependency has no wheel)."""
    return importlib.util.find_spec("openwakeword") is not None


@dataclass(frozen=True)
class Row:
    bench: str
    metric: str
    ours: float
    baseline: float | None
    unit: str
    baseline_name: str = ""

    @property
    def ratio(self) -> str:
        if self.baseline is None or self.baseline == 0:
            return "–"
        return f"{self.ours / self.baseline:.2f}×"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def table(rows: list[Row]) -> str:
    lines = [
        "| bench | metric | ours | baseline | ratio | baseline is |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.bench} | {r.metric} | {_fmt(r.ours, r.unit)} | {_fmt(r.baseline, r.unit)} | {r.ratio} "
            f"| {r.baseline_name} |"
        )
    return "\n".join(lines)
