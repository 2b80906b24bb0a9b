"""``make bench`` machinery with tiny counts: every row is measured and rendered (no timings)."""

from __future__ import annotations

from bench.orchestrator import OrchestratorConfig, expected_metrics, run_orchestrator_bench
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


async def test_orchestrator_bench_reports_every_row() -> None:
    cfg = OrchestratorConfig(
        place_sizes=(60, 120),
        place_runs=1,
        fleet_sizes=(2, 3),
        cached_runs=1,
        chain_pairs=3,
        chain_warmup=1,
    )
    rows, notes = await run_orchestrator_bench(cfg)
    assert {r.metric for r in rows} == expected_metrics(cfg)
    assert all(r.baseline > 0 for r in rows if "added time" not in r.metric)
    table = render(rows, notes)
    assert all(f"\n| {r.metric} | " in table for r in rows)
    assert "supervisor apps in one process" in table
