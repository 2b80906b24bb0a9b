"""The ``stack`` fixture: a module file server plus supervisors built on demand, all on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from supervisor.app import build_app
from supervisor.config import Settings
from tests.support import HITS, Step, default_files, file_server_app, mini_manifest

ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class Device:
    server: TestServer
    settings: Settings

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@dataclass
class Stack:
    files_url: str
    session: aiohttp.ClientSession
    make_device: Callable[..., Awaitable[Device]]
    file_hits: dict[str, int]

    async def deploy(
        self, device: Device, node: dict[str, Any], path: str = "/deploy"
    ) -> aiohttp.ClientResponse:
        resp = await self.session.post(device.url + path, json=node)
        await resp.read()
        return resp

    async def call(self, url: str, **params: Any) -> dict[str, Any]:
        async with self.session.get(url, params={k: str(v) for k, v in params.items()}) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    async def entry(self, result_url: str, wait: float = 10) -> tuple[int, dict[str, Any]]:
        async with self.session.get(result_url, params={"wait": str(wait)}) as resp:
            return resp.status, dict(await resp.json())


@pytest.fixture
async def stack(aiohttp_server: ServerFactory, tmp_path: Path) -> AsyncIterator[Stack]:
    files = await aiohttp_server(file_server_app(default_files()))
    counter = 0

    async def make_device(**overrides: Any) -> Device:
        nonlocal counter
        counter += 1
        defaults: dict[str, Any] = {
            "state_dir": tmp_path / f"dev{counter}",
            "name": f"dev{counter}",
            "mdns_enabled": False,
        }
        settings = Settings(**(defaults | overrides))
        server = await aiohttp_server(build_app(settings))
        return Device(server, settings)

    async with aiohttp.ClientSession() as session:
        yield Stack(str(files.make_url("")).rstrip("/"), session, make_device, files.app[HITS])


def fibo_node(
    dep: str, device: Device, stack: Stack, to: dict[str, Any] | None = None
) -> dict[str, Any]:
    return mini_manifest(
        dep, device.url, stack.files_url, [Step("fibo", "fibo", [("param0", "integer")], to=to)]
    )
