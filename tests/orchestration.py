"""The ``orchestrator`` fixture: a real orchestrator app on 127.0.0.1 and a small client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from orchestrator.app import build_app
from orchestrator.config import Settings
from tests.conftest import ROOT, WASM_DIR, free_port

ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class Orchestrator:
    url: str
    session: aiohttp.ClientSession
    state_dir: Path

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.post(self.url + path, **kwargs) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.get(self.url + path, **kwargs) as resp:
            return resp.status, await resp.json()

    async def push_module(
        self, name: str, version: str = "1", functions: bytes | None = None
    ) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("name", name)
        form.add_field("version", version)
        form.add_field("wasm", (WASM_DIR / f"{name}.wasm").read_bytes(), filename=f"{name}.wasm")
        described = functions or (ROOT / "modules" / name / "functions.json").read_bytes()
        form.add_field("functions", described, filename="functions.json")
        for data in (ROOT / "modules" / name).glob("*.txt"):
            form.add_field(data.name, data.read_bytes(), filename=data.name)
        status, body = await self.post("/modules", data=form)
        assert status in (200, 201), body
        return dict(body)

    async def deploy(self, manifest: dict[str, Any], **kwargs: Any) -> tuple[int, Any]:
        return await self.post("/deployments?wait=30", json=manifest, **kwargs)

    async def run(self, dep: str, **args: Any) -> tuple[int, Any]:
        return await self.post(f"/deployments/{dep}/executions", json=args)


OrchestratorFactory = Callable[..., Awaitable[Orchestrator]]


@pytest.fixture
async def make_orchestrator(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> AsyncIterator[OrchestratorFactory]:
    """Start orchestrator apps on 127.0.0.1 (mDNS off); keyword arguments override Settings."""
    async with aiohttp.ClientSession() as session:

        async def make(**overrides: Any) -> Orchestrator:
            port = free_port()
            defaults: dict[str, Any] = {
                "state_dir": tmp_path / "orchestrator",
                "port": port,
                "host": "127.0.0.1",
                "mdns_enabled": False,
                "health_interval_s": 0.5,
            }
            settings = Settings(**(defaults | overrides))
            await aiohttp_server(build_app(settings), port=port)
            return Orchestrator(f"http://127.0.0.1:{port}", session, settings.state_dir)

        yield make


@pytest.fixture
async def orchestrator(make_orchestrator: OrchestratorFactory) -> Orchestrator:
    return await make_orchestrator()
