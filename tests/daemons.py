"""Helpers for tests that run the installed daemons as real processes on 127.0.0.1.

``OrchestratorProcess`` is the ``baton-orchestrator`` console script in its own process (the
supervisor's counterpart is ``tests.support.SupervisorProcess``); ``supervisor_fleet`` runs
several of those; ``until`` polls with a deadline; ``get_json``/``post_json`` are one request
each with a timeout; ``check_history`` checks a deployment's stored transitions against the
lifecycle table; ``FAST_FAILOVER`` are orchestrator settings that notice a lost device within
``DETECTION_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from orchestrator.lifecycle import TRANSITIONS, Event, State
from tests.conftest import ROOT, WASM_DIR, free_port
from tests.support import SupervisorProcess, clean_env

T = TypeVar("T")
BIN = Path(sys.executable).parent
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)

# Health checks every _INTERVAL_S, a device lost after _LOST_AFTER misses; a check itself
# times out after 2 s, so a killed device is noticed within DETECTION_S.
_INTERVAL_S, _LOST_AFTER = 0.3, 2
DETECTION_S = _INTERVAL_S * _LOST_AFTER + 2.0
FAST_FAILOVER: dict[str, Any] = {
    "health_interval_s": _INTERVAL_S,
    "lost_after": _LOST_AFTER,
    "back_after": 1,
    "reconcile_interval_s": 0.5,
}
"""Keyword arguments for ``make_orchestrator``: quick loss detection and reconciliation."""


class OrchestratorProcess:
    """The installed ``baton-orchestrator`` in its own process on 127.0.0.1.

    ``extra`` is appended to the command line (e.g. ``--lost-after 2``); later flags win.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        mdns: bool = False,
        extra: list[str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.mdns = mdns
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / f"orchestrator-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = clean_env()
        argv = [
            str(BIN / "baton-orchestrator"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            "--mdns-interfaces",
            "127.0.0.1" if self.mdns else "none",
            "--health-interval",
            "0.5",
            *self.extra,
        ]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        async def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"orchestrator exited: {self.tail()}")
            try:
                async with session.get(
                    self.url + "/health", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await until(healthy, timeout, f"the orchestrator on {self.url} to answer /health")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@contextlib.asynccontextmanager
async def supervisor_fleet(root: Path, count: int) -> AsyncIterator[list[SupervisorProcess]]:
    """``count`` healthy supervisor processes ``sup0``… with state under ``root``; all killed
    on exit, including when one fails to start."""
    sups = [SupervisorProcess(root / f"sup{i}", name=f"sup{i}") for i in range(count)]
    try:
        for sup in sups:
            sup.start()
        for sup in sups:
            await sup.wait_healthy()
        yield sups
    finally:
        for sup in sups:
            sup.kill()


async def until(
    probe: Callable[[], Awaitable[T | None]], within_s: float, what: str, poll_s: float = 0.1
) -> T:
    """Poll ``probe`` every ``poll_s`` until it returns something truthy; fail after
    ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(poll_s)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=HTTP_TIMEOUT) as resp:
        return resp.status, await resp.json()


async def post_json(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.post(url, timeout=HTTP_TIMEOUT, **kwargs) as resp:
        return resp.status, await resp.json()


def module_form(name: str) -> aiohttp.FormData:
    """``POST /modules`` body for ``build/wasm/<name>.wasm`` and ``modules/<name>``: its
    functions.json and its data files (``*.txt``, e.g. textfile's prefix.txt)."""
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("wasm", (WASM_DIR / f"{name}.wasm").read_bytes(), filename=f"{name}.wasm")
    functions = (ROOT / "modules" / name / "functions.json").read_bytes()
    form.add_field("functions", functions, filename="functions.json")
    for data in sorted((ROOT / "modules" / name).glob("*.txt")):
        form.add_field(data.name, data.read_bytes(), filename=data.name)
    return form


def check_history(dep: dict[str, Any], where: str) -> None:
    """Events form one valid chain per revision, and each revision's state is its last ``to``."""
    last: dict[int, str] = {}
    for event in dep["events"]:
        previous = last.get(event["revision"], State.QUEUED.value)
        assert event["from"] == previous, (where, event, dep["events"])
        allowed = TRANSITIONS[State(event["from"])]
        assert allowed.get(Event(event["event"])) == State(event["to"]), (where, event)
        last[event["revision"]] = event["to"]
    for rev in dep["revisions"]:
        assert last.get(rev["number"], State.QUEUED.value) == rev["state"], (where, dep)


def fibo(n: int) -> int:
    """What the ``fibo`` module's ``fibo`` returns for small ``n``."""
    a, b = 1, 1
    for _ in range(n):
        a, b = b, a + b
    return a
