"""``python -m bench``: run the bench, print the table and write it to ``build/bench.md``.

Knobs: ``BENCH_SECONDS`` (throughput duration per server, default 5) and ``BENCH_PAIRS``
(sequential latency samples per server, default 500). The orchestrator's rows
(``bench.orchestrator``) follow the supervisor's, with their own notes.
"""

from __future__ import annotations

import asyncio
import os
import sys

import psutil

from bench.orchestrator import OrchestratorConfig, run_orchestrator_bench
from bench.procs import ROOT
from bench.report import render
from bench.run import Config, describe, run_bench


def main() -> int:
    try:
        cfg = Config(
            pairs=int(os.environ.get("BENCH_PAIRS", "500")),
            seconds=float(os.environ.get("BENCH_SECONDS", "5")),
        )
    except ValueError as err:
        print(f"bench: BENCH_PAIRS and BENCH_SECONDS must be numbers: {err}", file=sys.stderr)
        return 2
    if cfg.pairs < 1 or cfg.seconds <= 0:
        print("bench: BENCH_PAIRS must be ≥ 1 and BENCH_SECONDS > 0", file=sys.stderr)
        return 2
    # Other work on the machine skews every figure; say how busy it was before we started.
    busy = psutil.cpu_percent(interval=0.5)
    rows = asyncio.run(run_bench(cfg))
    orch_rows, orch_notes = asyncio.run(run_orchestrator_bench(OrchestratorConfig()))
    table = render(
        [*rows, *orch_rows],
        f"{describe(cfg)}\n{orch_notes}\n"
        f"CPU busy (all cores) in the 0.5 s before the run: {busy:.0f}%.",
    )
    print(table, end="")
    out = ROOT / "build" / "bench.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
