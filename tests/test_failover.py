"""Failover and reconciliation with real supervisor processes killed with SIGKILL."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.daemons import DETECTION_S, FAST_FAILOVER, supervisor_fleet, until
from tests.orchestration import Orchestrator, OrchestratorFactory
from tests.support import SupervisorProcess

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[list[SupervisorProcess]]:
    async with supervisor_fleet(tmp_path, 3) as sups:
        yield sups


@pytest.fixture
async def orch(make_orchestrator: OrchestratorFactory) -> Orchestrator:
    return await make_orchestrator(**FAST_FAILOVER)


async def test_lost_device_fails_over_and_wiped_device_is_redeployed(
    fleet: list[SupervisorProcess], orch: Orchestrator
) -> None:
    for sup in fleet:
        status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": sup.port})
        assert status == 201, body
    await orch.push_module("fibo")
    manifest = {"name": "resilient", "sequence": [{"module": "fibo", "func": "fibo"}] * 2}
    status, dep = await orch.deploy(manifest)
    assert dep["state"] == "ACTIVE", dep
    status, run = await orch.run(dep["id"], param0=5)
    assert status == 200 and run["value"] == 34
    _, devices = await orch.get("/devices")
    name_of = {d["id"]: d["name"] for d in devices}
    used = [name_of[s["device"]] for s in dep["placement"]["steps"]]
    victim = next(s for s in fleet if s.name == used[1])

    # kill -9 the device hosting step 2: within the detection window plus 5 s the step is
    # re-placed on another device and runs work again.
    victim.kill()
    killed_at = time.monotonic()

    async def moved() -> Any:
        _, current = await orch.get(f"/deployments/{dep['id']}")
        steps = current["placement"]["steps"] if current["placement"] else []
        if (
            current["state"] == "ACTIVE"
            and steps
            and victim.name not in {name_of[s["device"]] for s in steps}
        ):
            return current
        return None

    current = await until(moved, DETECTION_S + 5, "the lost device's step re-placed")
    assert time.monotonic() - killed_at <= DETECTION_S + 5
    assert current["revisions"][-1]["cause"].startswith("failover")
    status, run = await orch.run(dep["id"], param0=5)
    assert status == 200 and run["value"] == 34, run

    # Wipe a surviving device's state and restart it: the reconciler deploys to it again.
    _, now = await orch.get(f"/deployments/{dep['id']}")
    host_name = name_of[now["placement"]["steps"][0]["device"]]
    host = next(s for s in fleet if s.name == host_name)
    host.kill()
    shutil.rmtree(host.state_dir)
    host.start()
    await host.wait_healthy()

    async def redeployed() -> bool:
        async with orch.session.get(host.url + "/deploy") as resp:
            listed = (await resp.json())["deployments"]
        return any(d["deploymentId"] == dep["id"] for d in listed)

    await until(redeployed, 15, "the wiped device redeployed by the reconciler")
    status, run = await orch.run(dep["id"], param0=5)
    assert status == 200 and run["value"] == 34, run
