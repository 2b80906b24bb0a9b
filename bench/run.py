"""Runs every measurement against real processes on 127.0.0.1 and returns the table's rows."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import load, procs
from bench.report import Row, median_ms, p99_ms
from tests.conftest import WASM_DIR
from tests.support import Step, file_server_app, mini_manifest

MB = 1_000_000


@dataclass(frozen=True)
class Config:
    pairs: int = 500  # sequential call+result samples per server
    seconds: float = 5.0  # throughput measurement per server
    clients: int = 8
    startups: int = 3  # spawns per server kind: startup and first-call samples
    warmup: int = 50  # pairs before latency samples
    warmup_s: float = 0.5  # throughput warm-up before counting
    idle_s: float = 1.0  # idle time before RSS is read
    param: int = 20


def _fibo(dep: str, device_url: str, files_url: str, to: Any = None) -> dict[str, Any]:
    step = Step("fibo", "fibo", [("param0", "integer")], to=to)
    return mini_manifest(dep, device_url, files_url, [step])


async def _deploy(session: aiohttp.ClientSession, url: str, node: dict[str, Any]) -> None:
    async with session.post(f"{url}/deploy", json=node) as resp:
        if resp.status != 200:
            raise RuntimeError(f"deploy to {url} answered {resp.status}: {await resp.text()}")


async def run_bench(cfg: Config) -> list[Row]:
    """Measure every row; every process started is stopped before its temp dir goes."""
    runner = web.AppRunner(file_server_app({"fibo.wasm": WASM_DIR / "fibo.wasm"}))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        files_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        with tempfile.TemporaryDirectory(prefix="baton-bench-", ignore_cleanup_errors=True) as tmp:
            started: list[procs.ServerProcess] = []
            try:
                async with aiohttp.ClientSession(timeout=load.TIMEOUT) as session:
                    return await _measure(cfg, Path(tmp), files_url, session, started)
            finally:
                for proc in started:
                    proc.stop()
    finally:
        await runner.cleanup()


async def _measure(
    cfg: Config,
    tmp: Path,
    files_url: str,
    session: aiohttp.ClientSession,
    started: list[procs.ServerProcess],
) -> list[Row]:
    query = f"?param0={cfg.param}"
    # Startup and first call after deploy, each on fresh processes (supervisor and bare
    # alternate); the last of each kind stays up for the other measurements.
    n = max(1, cfg.startups)
    sups = [procs.supervisor(tmp / f"sup{i}", f"sup{i}") for i in range(n)]
    bares = [procs.bare(tmp, f"bare{i}") for i in range(n)]
    sup, bare = sups[-1], bares[-1]
    sup_start: list[float] = []
    bare_start: list[float] = []
    first: list[float] = []
    for i in range(n):
        started.append(sups[i])
        sup_start.append(await sups[i].start(session))
        await _deploy(session, sups[i].url, _fibo("bench", sups[i].url, files_url))
        first.append(await load.pair(session, f"{sups[i].url}/bench/modules/fibo/fibo{query}"))
        started.append(bares[i])
        bare_start.append(await bares[i].start(session))
        if i < n - 1:
            sups[i].stop()
            bares[i].stop()
    sup_call = f"{sup.url}/bench/modules/fibo/fibo{query}"
    bare_call = f"{bare.url}/bench/modules/fibo/fibo{query}"

    for _ in range(5):
        await load.pair(session, sup_call)
        await load.pair(session, bare_call)
    await asyncio.sleep(cfg.idle_s)
    sup_rss, bare_rss = sup.rss() / MB, bare.rss() / MB

    sup_lat, bare_lat = await load.alternating(
        [partial(load.pair, session, sup_call), partial(load.pair, session, bare_call)],
        cfg.pairs,
        cfg.warmup,
    )
    # Throughput in alternating slices, for the same reason.
    sup_tput, bare_tput = load.Burst(), load.Burst()
    slices = 2
    for _ in range(slices):
        for server, url in ((sup, sup_call), (bare, bare_call)):
            got = await load.burst(
                url, cfg.seconds / slices, cfg.clients, cfg.warmup_s, server.ps()
            )
            if server is sup:
                sup_tput += got
            else:
                bare_tput += got

    # Chain A -> B; single-hop and chained samples alternate so drift hits both alike.
    hop_b = procs.supervisor(tmp / "hop-b", "hop-b")
    started.append(hop_b)
    await hop_b.start(session)
    to_b = _fibo("chain", hop_b.url, files_url)
    await _deploy(session, hop_b.url, to_b)
    await _deploy(
        session, sup.url, _fibo("chain", sup.url, files_url, to_b["endpoints"]["fibo"]["fibo"])
    )
    chain_call = f"{sup.url}/chain/modules/fibo/fibo{query}"
    single, chain = await load.alternating(
        [partial(load.pair, session, sup_call), partial(load.chained, session, chain_call)],
        max(1, cfg.pairs // 2),
        cfg.warmup,
    )

    steady = median_ms(sup_lat)
    hop = median_ms(single)
    return [
        Row("call+result latency, median", steady, median_ms(bare_lat), "bare aiohttp", "ms",
            "ratio ≤ 1.3", lambda _v, r: r <= 1.3),
        Row("call+result latency, p99", p99_ms(sup_lat), p99_ms(bare_lat), "bare aiohttp", "ms"),
        Row(f"throughput, {cfg.clients} clients", sup_tput.rate, bare_tput.rate, "bare aiohttp",
            "pairs/s", "ratio ≥ 0.75", lambda _v, r: r >= 0.75),
        Row(f"server CPU per pair, {cfg.clients} clients", sup_tput.cpu_per_pair * 1000,
            bare_tput.cpu_per_pair * 1000, "bare aiohttp", "ms"),
        Row("idle RSS after deploy + calls", sup_rss, bare_rss, "bare aiohttp", "MB",
            "≤ 40 MB", lambda v, _r: v <= 40),
        Row("startup to healthy, median", median_ms(sup_start), median_ms(bare_start),
            "bare aiohttp", "ms"),
        Row("first call+result after deploy, median", median_ms(first), steady,
            "steady call+result median", "ms", "≤ 5 ms", lambda v, _r: v <= 5),
        Row("chain overhead per hop, median", median_ms(chain) - hop, hop,
            "single-hop call+result median", "ms"),
    ]  # fmt: skip


def describe(cfg: Config) -> str:
    return (
        f"Settings: a pair is GET call then GET resultUrl?wait=5, fibo(param0={cfg.param}); "
        f"{cfg.pairs} sequential pairs per server after {cfg.warmup} warm-up, supervisor and "
        f"bare alternating pair by pair; throughput {cfg.seconds:g} s per server with "
        f"{cfg.clients} clients in one session, in 2 alternating slices; "
        f"{cfg.startups} spawns per server for startup and first call; chain samples alternate "
        f"with single-hop ones. MB = 10^6 bytes."
    )
