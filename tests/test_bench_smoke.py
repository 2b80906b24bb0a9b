"""``make bench`` machinery with tiny counts: every row is measured and rendered (no timings)."""

from __future__ import annotations

from bench.report import render
from bench.run import Config, describe, run_bench

ROWS = {
    "call+result latency, median",
    "call+result latency, p99",
    "throughput, 8 clients",
    "server CPU per pair, 8 clients",
    "idle RSS after deploy + calls",
    "startup to healthy, median",
    "first call+result after deploy, median",
    "chain overhead per hop, median",
}


async def test_bench_reports_every_row() -> None:
    cfg = Config(pairs=10, seconds=0.3, startups=1, warmup=2, warmup_s=0.1, idle_s=0.1)
    rows = await run_bench(cfg)
    assert {r.metric for r in rows} == ROWS
    assert all(r.baseline > 0 for r in rows)
    table = render(rows, describe(cfg))
    assert all(f"\n| {metric} | " in table for metric in ROWS)
    assert "wasmtime" in table and "cores" in table
