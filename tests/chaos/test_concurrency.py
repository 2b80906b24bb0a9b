"""1,000 executions at once through a two-hop chain, each with its own input.

One real ``baton-orchestrator`` and two ``baton-supervisor`` processes on 127.0.0.1 run
``strings.shout → strings.shout`` (one step per device). ``CONCURRENT_EXECUTIONS`` calls of
``POST /deployments/{id}/executions`` are issued by one ``asyncio.gather`` (the client keeps
``CLIENT_IN_FLIGHT`` open at a time, as a real client pool would), each with a distinct
lower-case text, so a mix-up shows as a wrong value:

* every one returns 200 with its own text upper-cased, through both devices in order;
* none lost, none duplicated: as many distinct execution ids as calls, a distinct request id
  per hop (no id shared between executions, hops or devices), and each device counted
  exactly one call per execution of its function (``/metrics``);
* a sample of the hops' history entries, read back from the devices, hold the same values.

The count and wall time go to ``build/chaos-stats.json``.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.chaos import knobs
from tests.chaos.harness import SHOUT_STEP, Fleet, running_fleet
from tests.daemons import get_json, post_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(knobs.TEST_TIMEOUT_S)]

ORCH_FLAGS = ["--execution-deadline", "120"]
MANIFEST = {"name": "shout-twice", "sequence": [SHOUT_STEP, SHOUT_STEP]}
TIMEOUT = aiohttp.ClientTimeout(total=180)


def text_for(i: int, tag: str) -> str:
    return f"exec {i:05d} of run {tag}: mixed case, no mix-up"


async def calls_counted(fleet: Fleet, dep_id: str) -> dict[str, int]:
    """Device name -> finished ``shout`` calls of the deployment, from each ``/metrics``."""
    pattern = re.compile(
        rf'^baton_calls_total\{{deployment="{dep_id}",module="strings",function="shout"\}} (\d+)$',
        re.MULTILINE,
    )
    counted = {}
    for sup in fleet.sups:
        async with fleet.session.get(sup.url + "/metrics") as resp:
            text = await resp.text()
        found = pattern.findall(text)
        counted[sup.name] = int(found[0]) if found else 0
    return counted


async def test_a_thousand_concurrent_executions_each_get_their_own_answer(tmp_path: Path) -> None:
    tag = f"{random.randrange(1 << 32):08x}"
    connector = aiohttp.TCPConnector(limit=knobs.CLIENT_IN_FLIGHT)
    count = knobs.CONCURRENT_EXECUTIONS
    # Every call stays in the devices' request history, for the read-back below.
    history = ["--history-size", str(count + 100)]
    async with running_fleet(
        tmp_path,
        devices=2,
        orch_flags=ORCH_FLAGS,
        sup_flags=history,
        modules=["strings"],
        connector=connector,
    ) as fleet:
        status, dep = await post_json(
            fleet.session, fleet.orch.url + "/deployments?wait=30", json=MANIFEST
        )
        assert status == 201 and dep["state"] == "ACTIVE", dep
        hosts = [fleet.by_id[step["device"]].name for step in dep["placement"]["steps"]]
        assert len(set(hosts)) == 2, hosts
        url = f"{fleet.orch.url}/deployments/{dep['id']}/executions"
        before = await calls_counted(fleet, dep["id"])

        in_flight = asyncio.Semaphore(knobs.CLIENT_IN_FLIGHT)
        peak = 0
        running = 0

        async def one(i: int) -> tuple[int, int, dict[str, Any]]:
            nonlocal peak, running
            async with in_flight:
                running += 1
                peak = max(peak, running)
                try:
                    async with fleet.session.post(
                        url, json={"text": text_for(i, tag)}, timeout=TIMEOUT
                    ) as resp:
                        return i, resp.status, await resp.json()
                finally:
                    running -= 1

        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(count)))
        wall = time.monotonic() - started

        wrong = [
            (i, status, run.get("value"), run.get("error"))
            for i, status, run in results
            if status != 200 or run.get("value") != text_for(i, tag).upper()
        ]
        assert not wrong, (len(wrong), wrong[:5])
        assert len(results) == count
        execution_ids = {run["id"] for _, _, run in results}
        assert len(execution_ids) == count, "an execution id was handed out twice"
        request_ids: list[str] = []
        for i, _, run in results:
            trace = run["trace"]
            assert [hop["device"] for hop in trace] == hosts, (i, trace)
            assert trace[-1]["value"] == text_for(i, tag).upper(), (i, trace)
            request_ids += [hop["requestId"] for hop in trace]
        assert len(request_ids) == 2 * count and len(set(request_ids)) == 2 * count, (
            "a request id was used twice"
        )
        after = await calls_counted(fleet, dep["id"])
        assert {name: after[name] - before[name] for name in after} == dict.fromkeys(
            hosts, count
        ), (before, after)

        # A sample of hops, read back from the devices themselves.
        for i, _, run in random.Random(tag).sample(results, 20):
            for hop in run["trace"]:
                status, entry = await get_json(fleet.session, hop["url"])
                assert status == 200 and entry["request_id"] == hop["requestId"], entry
                assert entry["value"] == text_for(i, tag).upper(), (i, entry)
        assert wall < knobs.CONCURRENCY_BUDGET_S, wall

    stats = {
        "concurrent executions completed": count,
        "client in flight (cap)": knobs.CLIENT_IN_FLIGHT,
        "client in flight (peak)": peak,
        "wall seconds": round(wall, 2),
        "executions per second": round(count / wall, 1),
        "hops": 2,
    }
    knobs.record("concurrency", stats)
    print(knobs.summary("concurrency", stats))
