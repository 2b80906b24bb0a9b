"""A TCP proxy on 127.0.0.1 that stands for a device's network, under the test's control.

The orchestrator is told the device lives at the proxy's address, so every request it makes
to the device (health checks, deploys, calls, result long-polls) crosses the proxy, and the
test decides what the network does:

- ``up``: bytes flow both ways; ``delay_s`` holds every chunk the client sends (a request)
  that long before it reaches the device, so each request/response turn gets that much slower;
- ``down``: the proxy stops listening and severs every open connection, so new connections
  are refused (``ECONNREFUSED``) and pooled keep-alive connections die, as when a device
  drops off the network;
- a **health script**: a string of ``.`` (forward) and ``F`` (fail), consumed one character per
  ``GET /health`` request; an ``F`` is answered by the proxy itself with ``503`` (the
  request never reaches the device), so exactly one health check fails per ``F`` however the
  checks are timed. Other requests are not affected; an empty script forwards everything.

Every ``GET /health`` the proxy sees is logged in :attr:`FlakyLink.checks` with the wall
clock (``time.time()``, the clock the orchestrator stamps its device events with) and its
fate, so a test can line up the orchestrator's status changes with the exact checks that
caused them. Requests are recognised by the first bytes of a client chunk: on loopback,
aiohttp writes a GET's whole head in one write and never pipelines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["Check", "FlakyLink"]

_HEALTH = b"GET /health "
_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 11\r\n"
    b"\r\n"
    b"flaky link\n"
)

Fate = Literal["forwarded", "failed"]


@dataclass(frozen=True)
class Check:
    """One ``GET /health`` that reached the proxy: when, and what the proxy did with it."""

    at: float
    fate: Fate
    delay_s: float


class FlakyLink:
    """See the module docstring. Use ``async with FlakyLink(upstream_port) as link``."""

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0  # chosen by the first start
        self.delay_s = 0.0
        self.checks: list[Check] = []
        self.connections = 0  # connections accepted (and forwarded)
        self.severed = 0  # open connections cut by going down
        self._script: list[str] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> FlakyLink:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def up(self) -> None:
        """Listen again (on the same port after the first time). Idempotent."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def down(self) -> None:
        """Stop listening and cut every open connection (both sides). Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        self.severed += len(self._writers) // 2
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def script(self, pattern: str) -> None:
        """Queue ``pattern`` (``.`` forward, ``F`` fail) for the next health checks."""
        if set(pattern) - {".", "F"}:
            raise ValueError(f"a health script is made of '.' and 'F', got {pattern!r}")
        self._script.extend(pattern)

    def unscript(self) -> None:
        """Drop what is left of the health script: every check is forwarded again."""
        self._script.clear()

    @property
    def scripted(self) -> int:
        """Characters of the health script not consumed yet."""
        return len(self._script)

    async def close(self) -> None:
        """Go down and wait for every connection handler to finish."""
        await self.down()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(client_r, client_w)
        except asyncio.CancelledError:
            pass  # closing: asyncio's stream callback would log a cancelled handler as an error
        finally:
            self._handlers.discard(task)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._server is None:  # went down between the accept and this callback
            client_w.transport.abort()
            return
        try:
            device_r, device_w = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_w.transport.abort()  # the device itself is down: so is this connection
            return
        if not self.is_up:
            # Went down while we connected upstream: down() could not see this pair, and a
            # surviving keep-alive connection would carry checks through the "outage".
            client_w.transport.abort()
            device_w.transport.abort()
            return
        self.connections += 1
        self._writers.update((client_w, device_w))
        pumps = [
            asyncio.create_task(self._requests(client_r, client_w, device_w)),
            asyncio.create_task(self._pump(device_r, client_w)),
        ]
        try:
            # Either side ending ends the pair: a half-open proxied connection helps nobody.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_w, device_w):
                self._writers.discard(writer)
                writer.transport.abort()

    async def _requests(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        device_w: asyncio.StreamWriter,
    ) -> None:
        """Client → device, with the delay and the health script applied."""
        with contextlib.suppress(ConnectionError):
            while chunk := await client_r.read(1 << 16):
                delay = self.delay_s
                if chunk.startswith(_HEALTH):
                    step = self._script.pop(0) if self._script else "."
                    fate: Fate = "failed" if step == "F" else "forwarded"
                    self.checks.append(Check(time.time(), fate, delay))
                    if fate == "failed":
                        client_w.write(_UNAVAILABLE)
                        await client_w.drain()
                        continue
                if delay > 0:
                    await asyncio.sleep(delay)  # the scenario (a slow link), not synchronisation
                device_w.write(chunk)
                await device_w.drain()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
