"""Prometheus text-format metrics: calls, errors, traps and durations per function."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from dataclasses import dataclass

# Upper bounds (seconds) of the call-duration histogram buckets.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

Key = tuple[str, str, str]


@dataclass
class _Series:
    calls: int = 0
    errors: int = 0
    traps: int = 0
    seconds: float = 0.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters kept in memory; rendered on demand by :meth:`render`."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._series: dict[Key, _Series] = defaultdict(_Series)
        # Per-bucket (not cumulative) counts; render() accumulates them as Prometheus wants.
        self._buckets: dict[Key, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))

    def call(self, deployment: str, module: str, function: str, seconds: float, ok: bool) -> None:
        key = (deployment, module, function)
        series = self._series[key]
        series.calls += 1
        series.seconds += seconds
        if not ok:
            series.errors += 1
        index = bisect.bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):  # beyond the last bound only +Inf (the call count) counts it
            self._buckets[key][index] += 1

    def trap(self, deployment: str, module: str, function: str) -> None:
        self._series[(deployment, module, function)].traps += 1

    def forget(self, deployment: str) -> None:
        for key in [k for k in self._series if k[0] == deployment]:
            del self._series[key]
            self._buckets.pop(key, None)

    def render(self, deployments: int, in_flight: int) -> str:
        out = [
            "# HELP baton_uptime_seconds Seconds since the supervisor started.",
            "# TYPE baton_uptime_seconds gauge",
            f"baton_uptime_seconds {time.monotonic() - self._started:.3f}",
            "# HELP baton_deployments Deployments installed on this device.",
            "# TYPE baton_deployments gauge",
            f"baton_deployments {deployments}",
            "# HELP baton_calls_in_flight Function calls currently running or forwarding.",
            "# TYPE baton_calls_in_flight gauge",
            f"baton_calls_in_flight {in_flight}",
        ]
        counters = (
            ("baton_calls_total", "Function calls finished.", "calls"),
            ("baton_call_errors_total", "Function calls that failed.", "errors"),
            ("baton_traps_total", "Guest failures: traps, timeouts, limits.", "traps"),
        )
        for name, help_text, attr in counters:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for key, series in sorted(self._series.items()):
                out.append(f"{name}{{{_labels(key)}}} {getattr(series, attr)}")
        name = "baton_call_duration_seconds"
        out += [f"# HELP {name} Wall time of function calls.", f"# TYPE {name} histogram"]
        for key, series in sorted(self._series.items()):
            labels = _labels(key)
            cumulative = 0
            for bound, count in zip(BUCKETS, self._buckets[key], strict=True):
                cumulative += count
                out.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
            out.append(f'{name}_bucket{{{labels},le="+Inf"}} {series.calls}')
            out.append(f"{name}_sum{{{labels}}} {series.seconds:.6f}")
            out.append(f"{name}_count{{{labels}}} {series.calls}")
        return "\n".join(out) + "\n"


def _labels(key: Key) -> str:
    dep, mod, fn = key
    return f'deployment="{_escape(dep)}",module="{_escape(mod)}",function="{_escape(fn)}"'
