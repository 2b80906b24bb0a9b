"""A zeroconf browser in another process, bound to 127.0.0.1, as a pytest fixture."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from supervisor.protocol import SERVICE_TYPE

# A browser that prints one JSON line per event for instances whose name starts with argv[1]
# (other tests on this machine may advertise on loopback too).
BROWSER = r"""
import asyncio, json, sys
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

PREFIX, TYPE = sys.argv[1], sys.argv[2]

def emit(**event):
    print(json.dumps(event), flush=True)

async def main():
    azc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    tasks = set()

    async def resolve(kind, name):
        info = AsyncServiceInfo(TYPE, name)
        if await info.async_request(azc.zeroconf, 3000):
            txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            emit(event=kind, name=name, port=info.port,
                 addresses=info.parsed_addresses(), txt=txt)

    def on_change(zeroconf, service_type, name, state_change):
        if not name.startswith(PREFIX):
            return
        if state_change is ServiceStateChange.Removed:
            emit(event="removed", name=name)
            return
        kind = "added" if state_change is ServiceStateChange.Added else "updated"
        task = asyncio.ensure_future(resolve(kind, name))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, [TYPE], handlers=[on_change])
    emit(event="ready")
    # Runs until the test kills it (bounded by the parent's deadlines); stdin EOF also ends it.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await browser.async_cancel()
    await azc.async_close()

asyncio.run(main())
"""

Event = dict[str, Any]


class Browser:
    """The browser subprocess, read line by line with deadlines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def next_event(self, within_s: float) -> Event:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within_s)
        if not line:
            raise AssertionError(f"browser exited (rc={self.proc.returncode})")
        event: Event = json.loads(line)
        return event

    async def wait_for(self, pred: Callable[[Event], bool], within_s: float) -> Event:
        """The first event matching ``pred`` within ``within_s`` seconds overall."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            event = await self.next_event(max(0.0, deadline - loop.time()))
            if pred(event):
                return event


@pytest.fixture
async def browser_for() -> AsyncIterator[Callable[[str], Any]]:
    procs: list[asyncio.subprocess.Process] = []

    async def spawn(prefix: str) -> Browser:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            BROWSER,
            prefix,
            SERVICE_TYPE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        b = Browser(proc)
        assert (await b.next_event(15))["event"] == "ready"
        return b

    try:
        yield spawn
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
