"""Partitions with real supervisor processes: N chains on distinct devices, executions spread
over the healthy ones, a lost partition re-placed, and ``partitions`` immutable (409)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import DETECTION_S, FAST_FAILOVER, supervisor_fleet, until
from tests.orchestration import Orchestrator, OrchestratorFactory
from tests.support import SupervisorProcess

FIBO = {5: 8, 6: 13, 7: 21}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[list[SupervisorProcess]]:
    async with supervisor_fleet(tmp_path, 4) as sups:
        yield sups


@pytest.fixture
async def orch(make_orchestrator: OrchestratorFactory) -> Orchestrator:
    return await make_orchestrator(**FAST_FAILOVER)


async def _listed(orch: Orchestrator, sup: SupervisorProcess) -> set[str]:
    async with orch.session.get(sup.url + "/deploy") as resp:
        return {d["deploymentId"] for d in (await resp.json())["deployments"]}


async def test_two_partitions_run_on_distinct_devices_share_executions_and_fail_over(
    fleet: list[SupervisorProcess], orch: Orchestrator
) -> None:
    for sup in fleet:
        status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": sup.port})
        assert status == 201, body
    await orch.push_module("fibo")
    manifest = {"name": "parted", "sequence": [{"module": "fibo", "func": "fibo"}], "partitions": 2}
    status, dep = await orch.deploy(manifest)
    assert status == 201 and dep["state"] == "ACTIVE", dep
    chains = [p["devices"] for p in dep["partitions"]]
    assert len(chains) == 2 and not set(chains[0]) & set(chains[1]), chains
    _, devices = await orch.get("/devices")
    name_of = {d["id"]: d["name"] for d in devices}
    by_name = {s.name: s for s in fleet}

    # Each partition is its own deployment on its device (partition 1 under "<id>-p1"),
    # and no other device holds anything of it.
    for k, chain in enumerate(chains):
        remote = dep["id"] if k == 0 else f"{dep['id']}-p{k}"
        for device_id in chain:
            assert await _listed(orch, by_name[name_of[device_id]]) == {remote}
    unused = [s for s in fleet if s.name not in {name_of[d] for c in chains for d in c}]
    assert len(unused) == 2
    for sup in unused:
        assert await _listed(orch, sup) == set()

    # 100 executions, every value right, spread evenly over both partitions.
    first_hops: Counter[str] = Counter()
    for i in range(100):
        n = 5 + i % 3
        status, run = await orch.run(dep["id"], param0=n)
        assert status == 200 and run["value"] == FIBO[n], run
        first_hops[run["trace"][0]["device"]] += 1
    assert first_hops == {name_of[chains[0][0]]: 50, name_of[chains[1][0]]: 50}

    # Kill partition 1's device: it is re-placed on a spare device; both partitions stay on
    # distinct healthy devices and executions run on both again.
    victim = by_name[name_of[chains[1][0]]]
    victim.kill()

    async def replaced() -> Any:
        _, now = await orch.get(f"/deployments/{dep['id']}")
        placed = [p["devices"] for p in now["partitions"]]
        used = {name_of[d] for c in placed for d in c}
        if now["state"] == "ACTIVE" and len(placed) == 2 and victim.name not in used:
            return now
        return None

    now = await until(replaced, DETECTION_S + 10, "partition 1 re-placed off the lost device")
    assert now["revisions"][-1]["cause"].startswith("failover"), now["revisions"]
    placed = [p["devices"] for p in now["partitions"]]
    assert not set(placed[0]) & set(placed[1]), placed
    assert placed[0] == chains[0]  # the healthy partition did not move
    seen: Counter[str] = Counter()
    for _ in range(10):
        status, run = await orch.run(dep["id"], param0=6)
        assert status == 200 and run["value"] == 13, run
        seen[run["trace"][0]["device"]] += 1
    assert set(seen) == {name_of[placed[0][0]], name_of[placed[1][0]]}, seen


async def test_changing_partitions_is_refused_naming_the_field(
    fleet: list[SupervisorProcess], orch: Orchestrator
) -> None:
    for sup in fleet[:2]:
        status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": sup.port})
        assert status == 201, body
    await orch.push_module("fibo")
    manifest: dict[str, Any] = {
        "name": "fixed",
        "sequence": [{"module": "fibo", "func": "fibo"}],
        "partitions": 2,
    }
    status, dep = await orch.deploy(manifest)
    assert status == 201 and dep["state"] == "ACTIVE", dep
    status, problem = await orch.deploy(manifest | {"partitions": 3})
    assert status == 409, problem
    assert problem["field"] == "partitions"
    assert "partitions" in problem["result"] or "partitions" in problem.get("detail", "")
    # Nothing changed: still one revision, two partitions; the same manifest is a no-op.
    status, same = await orch.deploy(manifest)
    assert status == 200 and len(same["revisions"]) == 1 and len(same["partitions"]) == 2
    # Partitions beyond the devices available share them rather than fail (a lab fleet).
    status, wide = await orch.deploy(
        {"name": "wide", "sequence": [{"module": "fibo", "func": "fibo"}], "partitions": 3}
    )
    assert status == 201 and wide["state"] == "ACTIVE", wide
    assert len(wide["partitions"]) == 3
    status, run = await orch.run(wide["id"], param0=7)
    assert status == 200 and run["value"] == 21
