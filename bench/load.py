"""Load generators: sequential call+result pairs, N concurrent clients, chained calls.

A *pair* is ``GET <call url>`` (answers ``{"resultUrl"}``) then ``GET <resultUrl>?wait=5``
(answers the history entry once it is final); both bodies are decoded as JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import psutil

WAIT = "?wait=5"
Probe = Callable[[], Awaitable[float]]
TIMEOUT = aiohttp.ClientTimeout(total=30)  # no request of the bench may hang it


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as resp:
        body = await resp.json()
        if resp.status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"GET {url} answered HTTP {resp.status}: {body}")
        return body


async def pair(session: aiohttp.ClientSession, call_url: str) -> float:
    """Seconds for one call and its result."""
    began = time.perf_counter()
    reply = await _get_json(session, call_url)
    await _get_json(session, str(reply["resultUrl"]) + WAIT)
    return time.perf_counter() - began


async def chained(session: aiohttp.ClientSession, call_url: str) -> float:
    """Seconds from a call on the first hop until the second hop's final entry is read."""
    began = time.perf_counter()
    reply = await _get_json(session, call_url)
    hop1 = await _get_json(session, str(reply["resultUrl"]) + WAIT)
    await _get_json(session, str(hop1["result"]) + WAIT)
    return time.perf_counter() - began


async def alternating(probes: Sequence[Probe], count: int, warmup: int) -> list[list[float]]:
    """Run the probes in turn, ``warmup + count`` rounds, so drift hits all of them alike."""
    samples: list[list[float]] = [[] for _ in probes]
    for i in range(warmup + count):
        for probe, out in zip(probes, samples, strict=True):
            seconds = await probe()
            if i >= warmup:
                out.append(seconds)
    return samples


@dataclass(frozen=True)
class Burst:
    """Pairs completed in ``seconds`` of wall time; ``cpu_s`` the server process's CPU time."""

    pairs: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0

    def __add__(self, other: Burst) -> Burst:
        return Burst(
            self.pairs + other.pairs, self.seconds + other.seconds, self.cpu_s + other.cpu_s
        )

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_pair(self) -> float:
        return self.cpu_s / self.pairs if self.pairs else float("inf")


def _cpu(server: psutil.Process) -> float:
    times = server.cpu_times()
    return float(times.user + times.system)


async def burst(
    call_url: str, seconds: float, clients: int, warmup: float, server: psutil.Process
) -> Burst:
    """``clients`` coroutines sharing one session make pairs; counted after ``warmup``."""
    done = 0
    stop_at = time.perf_counter() + warmup + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await pair(session, call_url)
            done += 1

    connector = aiohttp.TCPConnector(limit=2 * clients)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        workers = [asyncio.create_task(client(session)) for _ in range(clients)]
        try:
            await asyncio.sleep(warmup)
            first, cpu, began = done, _cpu(server), time.perf_counter()
            await asyncio.sleep(seconds)
            last, cpu, ended = done, _cpu(server) - cpu, time.perf_counter()
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return Burst(last - first, ended - began, cpu)
