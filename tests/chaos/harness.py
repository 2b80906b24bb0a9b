"""A real fleet for the chaos tests: one ``baton-orchestrator`` and a few ``baton-supervisor``
processes on 127.0.0.1 (mDNS off, devices registered by hand), and the checks they share.

``running_fleet`` starts everything, registers every device and pushes the modules; whatever
happens in the test, every process it started is SIGKILLed on the way out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.daemons import OrchestratorProcess, get_json, module_form, post_json
from tests.support import SupervisorProcess

FIBO_STEP = {"module": "fibo", "func": "fibo"}
SHOUT_STEP = {"module": "strings", "func": "shout"}


@dataclass
class Fleet:
    orch: OrchestratorProcess
    sups: list[SupervisorProcess]
    session: aiohttp.ClientSession
    by_id: dict[str, SupervisorProcess] = field(default_factory=dict)  # device id -> process

    async def register(self, sup: SupervisorProcess) -> str:
        status, body = await post_json(
            self.session, self.orch.url + "/devices", json={"host": "127.0.0.1", "port": sup.port}
        )
        assert status == 201, body
        self.by_id[str(body["id"])] = sup
        return str(body["id"])

    async def push_modules(self, names: Iterable[str]) -> None:
        for name in names:
            status, body = await post_json(
                self.session, self.orch.url + "/modules", data=module_form(name)
            )
            assert status == 201, body

    async def listing(self, sup: SupervisorProcess, where: str = "") -> list[str]:
        """Deployment ids the device lists as ready (``GET /deploy``); asserts none is listed
        twice or in another state (``where`` goes into the assertion messages)."""
        status, body = await get_json(self.session, sup.url + "/deploy")
        assert status == 200, (where, sup.name, body)
        ids = [str(d["deploymentId"]) for d in body["deployments"]]
        assert len(ids) == len(set(ids)), (where, sup.name, "listed twice", ids)
        assert all(d["status"] == "ready" for d in body["deployments"]), (where, sup.name, body)
        return ids

    def kill_all(self) -> None:
        self.orch.kill()
        for sup in self.sups:
            sup.kill()


@asynccontextmanager
async def running_fleet(
    tmp_path: Path,
    *,
    devices: int,
    orch_flags: list[str],
    modules: Iterable[str],
    sup_flags: list[str] | None = None,
    connector: aiohttp.BaseConnector | None = None,
) -> AsyncIterator[Fleet]:
    tag = uuid.uuid4().hex[:6]
    orch = OrchestratorProcess(tmp_path / "orchestrator", extra=orch_flags)
    sups = [
        SupervisorProcess(tmp_path / f"dev{i}", name=f"chaos-{tag}-{i}", extra=sup_flags)
        for i in range(devices)
    ]
    # No pooled connections by default: every request after a kill opens a fresh one.
    connector = connector or aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        fleet = Fleet(orch, sups, session)
        try:
            orch.start()
            for sup in sups:
                sup.start()
            await orch.wait_healthy(session, timeout=30)
            for sup in sups:
                await sup.wait_healthy(timeout=30)
                await fleet.register(sup)
            await fleet.push_modules(modules)
            yield fleet
        finally:
            fleet.kill_all()


def read_state(path: Path, where: str) -> dict[str, Any]:
    """A daemon's ``state.json``: it must parse as JSON whenever it exists (atomic writes)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        state = json.loads(text)
    except ValueError as err:
        raise AssertionError(f"{where}: {path} is not JSON ({err}): {text[:300]!r}") from err
    assert isinstance(state, dict), (where, path, text[:300])
    return state


def stored_deployment_ids(supervisor_state: dict[str, Any]) -> set[str]:
    """Deployment ids in a supervisor's ``state.json`` (tinydb table ``deployments``)."""
    return {str(doc["id"]) for doc in (supervisor_state.get("deployments") or {}).values()}


def stored_orchestrator_deployments(orch_state: dict[str, Any], where: str) -> dict[str, str]:
    """name -> id of the deployments in the orchestrator's ``state.json``."""
    docs = list((orch_state.get("deployments") or {}).values())
    by_name = {str(d["deployment"]["name"]): str(d["id"]) for d in docs}
    assert len(by_name) == len(docs), (where, "one name stored twice", docs)
    return by_name
