"""Load generators: sequential call+result pairs, N concurrent clients, chained calls.

A *pair* is ``GET <call url>`` (answers ``{"resultUrl"}``) then ``GET <resultUrl>?wait=5``
(answers the history entry once it is final); both bodies are decoded as JSON.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

WAIT = "?wait=5"


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


async def latencies(
    session: aiohttp.ClientSession, call_url: str, count: int, warmup: int
) -> list[float]:
    for _ in range(warmup):
        await pair(session, call_url)
    return [await pair(session, call_url) for _ in range(count)]


async def throughput(call_url: str, seconds: float, clients: int, warmup: float) -> float:
    """Pairs per second completed by ``clients`` coroutines sharing one session."""
    done = 0
    stop_at = time.perf_counter() + warmup + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await pair(session, call_url)
            done += 1

    connector = aiohttp.TCPConnector(limit=2 * clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [asyncio.create_task(client(session)) for _ in range(clients)]
        try:
            await asyncio.sleep(warmup)
            first, began = done, time.perf_counter()
            await asyncio.sleep(seconds)
            last, ended = done, time.perf_counter()
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return (last - first) / (ended - began)
