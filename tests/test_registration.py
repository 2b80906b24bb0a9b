"""supervisor.registration against a real aiohttp orchestrator stub on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from supervisor.registration import REGISTER_PATH, Registrar, _redact
from tests.conftest import free_port

BODY: dict[str, Any] = {
    "name": "dev-a._webthing._tcp.local.",
    "type": "_webthing._tcp.local.",
    "port": 8080,
    "addresses": ["127.0.0.1"],
    "host": "dev-a.local.",
    "properties": {"path": "/", "tls": "0", "address": "127.0.0.1", "id": "d1", "api": "1"},
}


class Orchestrator:
    """Records registration bodies; answers ``fail`` 503s first, then 200."""

    def __init__(self, fail: int = 0, hang: int = 0) -> None:
        self.fail = fail
        self.hang = hang
        self.bodies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.attempts = 0
        self.auth: list[str | None] = []

    async def register(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.auth.append(request.headers.get("Authorization"))
        if self.hang > 0:
            self.hang -= 1
            await asyncio.Event().wait()  # never answers; the client's timeout must fire
        if self.fail > 0:
            self.fail -= 1
            return web.json_response({"error": "busy"}, status=503)
        self.bodies.put_nowait(await request.json())
        return web.json_response({"status": "ok"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(REGISTER_PATH, self.register)
        return app


StartServer = Callable[[Orchestrator], Awaitable[str]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def orchestrator(aiohttp_server: AiohttpServer) -> StartServer:
    async def start(orc: Orchestrator) -> str:
        server = await aiohttp_server(orc.app(), host="127.0.0.1")
        return str(server.make_url("/"))

    return start


@pytest.fixture
async def registrars() -> AsyncIterator[list[Registrar]]:
    made: list[Registrar] = []
    yield made
    for r in made:
        await r.stop()


def state(r: Registrar) -> tuple[bool, str | None]:
    """Both observable fields at once (and no type narrowing across awaits)."""
    return r.registered, r.last_error


def make(made: list[Registrar], session: aiohttp.ClientSession, url: str, **kw: Any) -> Registrar:
    r = Registrar(session, orchestrator_url=url, body=BODY, **kw)
    made.append(r)
    return r


async def test_registers_with_the_reference_body(
    session: aiohttp.ClientSession, orchestrator: StartServer, registrars: list[Registrar]
) -> None:
    orc = Orchestrator()
    r = make(registrars, session, await orchestrator(orc))
    assert state(r) == (False, None)
    await r.start()
    await r.start()  # idempotent: still one task
    assert await asyncio.wait_for(orc.bodies.get(), 5) == BODY
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "orchestrator-registration"]
    assert len(tasks) == 1
    assert state(r) == (True, None)
    await r.stop()
    await r.stop()
    assert all(t.done() for t in tasks)


async def test_sends_the_fleet_token_when_it_has_one(
    session: aiohttp.ClientSession, orchestrator: StartServer, registrars: list[Registrar]
) -> None:
    orc = Orchestrator()
    url = await orchestrator(orc)
    await make(registrars, session, url, token="fleet-s3cret").start()
    await make(registrars, session, url).start()
    for _ in range(2):
        await asyncio.wait_for(orc.bodies.get(), 5)
    assert sorted(orc.auth, key=str) == ["Bearer fleet-s3cret", None]


async def test_retries_with_backoff_then_logs_recovery_once(
    session: aiohttp.ClientSession,
    orchestrator: StartServer,
    registrars: list[Registrar],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="supervisor.registration")
    orc = Orchestrator(fail=2)
    base = await orchestrator(orc)
    # Credentials in the URL must never reach the logs or last_error.
    secret_url = base.replace("http://", "http://user:s3cret@")
    r = make(registrars, session, secret_url, retry_s=0.01, max_retry_s=0.05)
    await r.start()
    assert await asyncio.wait_for(orc.bodies.get(), 5) == BODY
    assert orc.attempts == 3
    assert state(r) == (True, None)

    records = [rec for rec in caplog.records if rec.name == "supervisor.registration"]
    errors = [rec for rec in records if rec.levelno == logging.ERROR]
    infos = [rec for rec in records if rec.levelno == logging.INFO]
    assert [e.getMessage().count("503") for e in errors] == [1]
    assert [i.getMessage().startswith("registered") for i in infos] == [True]
    text = caplog.text
    assert "s3cret" not in text
    assert orc.auth[-1] is not None  # aiohttp did send the credentials, as Basic auth


async def test_unreachable_orchestrator_then_set_url_registers_promptly(
    session: aiohttp.ClientSession, orchestrator: StartServer, registrars: list[Registrar]
) -> None:
    orc = Orchestrator()
    good = await orchestrator(orc)
    dead = f"http://user:s3cret@127.0.0.1:{free_port()}"  # nothing listens there
    # A long backoff: only set_url() can make the next attempt happen within the deadline.
    r = make(registrars, session, dead, retry_s=60.0, timeout_s=2.0)
    await r.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while r.last_error is None:  # first attempt fails fast (connection refused)
        assert loop.time() < deadline, "first attempt never finished"
        await asyncio.sleep(0.01)
    assert not r.registered
    assert "127.0.0.1" in r.last_error
    assert "s3cret" not in r.last_error

    r.set_url(good)
    assert await asyncio.wait_for(orc.bodies.get(), 2) == BODY
    assert state(r) == (True, None)
    assert r.url == good


async def test_request_timeout_counts_as_failure(
    session: aiohttp.ClientSession, orchestrator: StartServer, registrars: list[Registrar]
) -> None:
    orc = Orchestrator(hang=1)
    r = make(registrars, session, await orchestrator(orc), retry_s=0.01, timeout_s=0.2)
    await r.start()
    assert await asyncio.wait_for(orc.bodies.get(), 5) == BODY
    assert orc.attempts == 2
    assert r.registered


async def test_renews_after_silence_but_not_while_health_checked(
    session: aiohttp.ClientSession, orchestrator: StartServer, registrars: list[Registrar]
) -> None:
    renewal = 0.3
    orc = Orchestrator()
    r = make(registrars, session, await orchestrator(orc), renewal_s=renewal)
    await r.start()
    await asyncio.wait_for(orc.bodies.get(), 5)

    # No health checks: a renewal comes after about renewal_s.
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(orc.bodies.get(), 5)
    assert loop.time() - t0 >= renewal * 0.9

    # Health checks every renewal/6 for 3 renewal periods: no renewal at all. The sleeps pace
    # the stimulus; the assertion is that nothing arrived meanwhile.
    end = loop.time() + 3 * renewal
    while loop.time() < end:
        r.note_health_check()
        await asyncio.sleep(renewal / 6)
        assert orc.bodies.empty(), "renewed although the orchestrator kept checking"
    assert orc.attempts == 2

    # Checks stop: the renewal follows.
    await asyncio.wait_for(orc.bodies.get(), 5)
    assert orc.attempts == 3


def test_redact_drops_credentials_and_query() -> None:
    assert _redact("http://u:pw@orc.example:3000/base?token=x#f") == "http://orc.example:3000/base"
    assert _redact("http://[::1]:80/") == "http://[::1]:80/"
    assert _redact("http://[bad") == "<invalid url>"
