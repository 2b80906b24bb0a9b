"""A lost hop: the middle device of a three-hop chain is SIGKILLed.

One real ``baton-orchestrator`` and three ``baton-supervisor`` processes on 127.0.0.1 run
``fibo.fibo → strings.shout → strings.stats`` with ``spread`` (one step per device). After
the middle device is killed:

* the next execution fails fast — well before the 60 s execution deadline, within
  ``FAIL_FAST_S`` — and its error names the lost hop by address and by device name;
* every execution until the failover fails just as fast (none hangs);
* failover re-places the middle step on the healthy devices within the detection window plus
  10 s, and the next execution succeeds with the right value through the new devices;
* restarted, the killed device gets its stale copy removed by the reconciler.

Unit-sized companions check how the orchestrator follows a hop whose device answers, but not
with a result: a Baton device that no longer knows the call (it restarted) or an error
status ends the execution at once, after one request, instead of asking again until the
deadline.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.executions import Executions
from tests.chaos import knobs
from tests.chaos.harness import FIBO_STEP, SHOUT_STEP, Fleet, running_fleet
from tests.daemons import fibo, get_json, post_json, until

ServerFactory = Callable[..., Awaitable[TestServer]]
INTERVAL, LOST_AFTER, HEALTH_TIMEOUT = 0.3, 2, 2.0
# Soak runs scale the work, so they scale the per-test timeout with it.
pytestmark = pytest.mark.timeout(knobs.TEST_TIMEOUT_S)

DETECTION_S = INTERVAL * LOST_AFTER + HEALTH_TIMEOUT
DEADLINE_S = 60.0
ORCH_FLAGS = [
    "--health-interval",
    str(INTERVAL),
    "--lost-after",
    str(LOST_AFTER),
    "--back-after",
    "1",
    "--reconcile-interval",
    "1",
    "--execution-deadline",
    str(DEADLINE_S),
]
STATS_STEP = {"module": "strings", "func": "stats"}
MANIFEST = {"name": "lost-hop", "sequence": [FIBO_STEP, SHOUT_STEP, STATS_STEP], "spread": True}


def expected(n: int) -> dict[str, int]:
    """fibo(n), as text, upper-cased (digits stay), then counted."""
    return {"length": len(str(fibo(n))), "words": 1}


async def execute(fleet: Fleet, dep_id: str, n: int) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    status, run = await post_json(
        fleet.session, f"{fleet.orch.url}/deployments/{dep_id}/executions", json={"param0": n}
    )
    return status, run, time.monotonic() - started


async def hosts(fleet: Fleet, dep_id: str) -> tuple[dict[str, Any], list[str]]:
    """The deployment and the device id of each step of its latest revision, in order (none
    while that revision is not placed yet)."""
    status, dep = await get_json(fleet.session, f"{fleet.orch.url}/deployments/{dep_id}")
    assert status == 200, dep
    return dep, [step["device"] for step in (dep["placement"] or {}).get("steps", [])]


@dataclass
class Tally:
    rounds: int = 0
    fail_fast: int = 0  # executions that met the dead hop and failed fast
    slowest_failure_s: float = 0.0
    failover_s: list[float] = field(default_factory=list)
    first_error: str = ""


async def lose_the_middle_hop(fleet: Fleet, dep_id: str, number: int, tally: Tally) -> None:
    dep, placed = await hosts(fleet, dep_id)
    if number == 0:
        assert len(set(placed)) == 3, ("spread: one step per device", placed)
    # After a failover two devices may share the steps (the third was down); the middle hop
    # still has a device of its own after the first.
    assert placed[1] != placed[0], placed
    victim = fleet.by_id[placed[1]]
    netloc = victim.url.removeprefix("http://")
    where = f"round {number}: {victim.name} ({victim.url}) hosts the middle hop"
    victim.kill()
    killed_at = time.monotonic()

    # The next execution fails fast, naming the lost hop's address and device.
    status, run, took = await execute(fleet, dep_id, 25)
    assert status == 502 and run["status"] == "failed", (where, run)
    assert took < knobs.FAIL_FAST_S < DEADLINE_S, (where, took, run)
    assert netloc in run["error"] and victim.name in run["error"], (where, run["error"])
    first = fleet.by_id[placed[0]].name
    assert [hop["device"] for hop in run["trace"]] == [first], (where, run["trace"])
    tally.fail_fast += 1
    tally.slowest_failure_s = max(tally.slowest_failure_s, took)
    tally.first_error = tally.first_error or run["error"]

    async def failed_over() -> dict[str, Any] | None:
        current, steps = await hosts(fleet, dep_id)
        if (
            current["state"] == "ACTIVE"
            and current["revision"] > dep["revision"]
            and placed[1] not in steps
        ):
            return current
        # Until the failover, every execution fails as fast; none hangs.
        status, run, took = await execute(fleet, dep_id, 20)
        tally.slowest_failure_s = max(tally.slowest_failure_s, took)
        assert took < knobs.FAIL_FAST_S, (where, "an execution hung", took, run)
        if status != 200:
            assert netloc in run["error"], (where, run["error"])
            tally.fail_fast += 1
        return None

    current = await until(failed_over, DETECTION_S + 10, f"{where}: failover")
    tally.failover_s.append(round(time.monotonic() - killed_at, 2))
    assert tally.failover_s[-1] <= DETECTION_S + 10, (where, tally.failover_s)
    assert current["revisions"][-1]["cause"].startswith("failover"), (where, current)
    _, now = await hosts(fleet, dep_id)
    assert placed[1] not in now, (where, now)

    # The next execution succeeds, through the new middle device.
    status, run, took = await execute(fleet, dep_id, 40)
    assert status == 200 and run["value"] == expected(40), (where, run)
    names = [fleet.by_id[d].name for d in now]
    assert [hop["device"] for hop in run["trace"]] == names, (where, run["trace"])

    # Back again (same state), the killed device loses its stale copy: it hosts no step now.
    victim.start()
    await victim.wait_healthy(timeout=30)

    async def emptied() -> bool:
        return dep_id not in await fleet.listing(victim, where)

    await until(emptied, 15, f"{where}: the stale copy removed from the restarted device")
    tally.rounds += 1


@pytest.mark.slow
@pytest.mark.timeout(knobs.TEST_TIMEOUT_S)
async def test_a_killed_middle_hop_fails_fast_naming_it_and_fails_over(tmp_path: Path) -> None:
    tally = Tally()
    async with running_fleet(
        tmp_path, devices=3, orch_flags=ORCH_FLAGS, modules=["fibo", "strings"]
    ) as fleet:
        status, dep = await post_json(
            fleet.session, fleet.orch.url + "/deployments?wait=30", json=MANIFEST
        )
        assert status == 201 and dep["state"] == "ACTIVE", dep
        status, run, _ = await execute(fleet, dep["id"], 30)
        assert status == 200 and run["value"] == expected(30), run
        for number in range(knobs.LOST_HOP_ROUNDS):
            await lose_the_middle_hop(fleet, dep["id"], number, tally)

    stats = {
        "rounds": tally.rounds,
        "fail-fast executions": tally.fail_fast,
        "slowest failed execution ms": round(tally.slowest_failure_s * 1000, 1),
        "fail-fast bound s": knobs.FAIL_FAST_S,
        "execution deadline s": DEADLINE_S,
        "failover seconds": tally.failover_s,
        "failover bound s": DETECTION_S + 10,
        "error of the first failed execution": tally.first_error,
    }
    knobs.record("lost_hop", stats)
    print(knobs.summary("lost_hop", stats))


# --- following a hop that answers without a result ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, "no longer knows the call"), (503, "answered HTTP 503")],
)
async def test_a_hop_answering_without_a_result_ends_the_execution_at_once(
    aiohttp_server: ServerFactory, status: int, error: str
) -> None:
    asked: list[str] = []

    async def call(request: web.Request) -> web.Response:
        return web.json_response({"resultUrl": str(request.url.with_path("/request-history/x"))})

    async def history(request: web.Request) -> web.Response:
        asked.append(request.query_string)
        return web.json_response({"status": "error", "result": "no such call"}, status=status)

    app = web.Application()
    app.router.add_get("/dep/modules/m/f", call)
    app.router.add_get("/request-history/x", history)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        executions = Executions(session, lambda url: ("restarted-device", 1))
        started = time.monotonic()
        execution = await executions.run(
            "dep",
            {"url": base, "path": "/dep/modules/m/f", "method": "get"},
            {},
            {},
            deadline_s=30,
        )
        took = time.monotonic() - started
    assert execution.status == "failed", execution
    assert error in (execution.error or "") and "restarted-device" in (execution.error or ""), (
        execution.error
    )
    assert took < 5, took  # not the 30 s deadline
    assert len(asked) == 1, asked  # asked once, not again and again until the deadline
