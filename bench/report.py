"""The bench's markdown table: each figure, its same-run baseline, the ratio and the target."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Row:
    metric: str
    value: float
    baseline: float
    baseline_is: str
    unit: str  # "ms", "pairs/s" or "MB"
    target: str = "—"
    check: Callable[[float, float], bool] | None = None  # (value, ratio) -> met

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")

    @property
    def met(self) -> str:
        if self.check is None:
            return "—"
        return "yes" if self.check(self.value, self.ratio) else "**no**"


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def p99_ms(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000


def _fmt(value: float, unit: str) -> str:
    digits = 3 if unit == "ms" and abs(value) < 10 else 1
    return f"{value:.{digits}f} {unit}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Machine: {cpu}, {psutil.cpu_count()} cores, Python {platform.python_version()}, "
        f"wasmtime {importlib.metadata.version('wasmtime')}, aiohttp "
        f"{importlib.metadata.version('aiohttp')}; {now}"
    )


def render(rows: Sequence[Row], notes: str) -> str:
    lines = [
        "| Metric | Baton | Baseline | Baseline is | Ratio | Target | Met |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.metric} | {_fmt(r.value, r.unit)} | {_fmt(r.baseline, r.unit)} | "
            f"{r.baseline_is} | {r.ratio:.2f} | {r.target} | {r.met} |"
        )
    return "\n".join([*lines, "", machine(), notes]) + "\n"
