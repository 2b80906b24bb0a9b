"""SIGKILL the orchestrator and the supervisors at random points of deploy, update, undeploy
and execute traffic; after every restart the fleet converges to what was acknowledged.

One real ``baton-orchestrator`` and three ``baton-supervisor`` processes on 127.0.0.1. Each
round runs lanes of traffic against the orchestrator's API at once — creating deployments
(a two-hop ``fibo → fibo`` chain, half of them with ``?wait``), changing existing ones (a new
revision), deleting others, and executing the ACTIVE ones — then SIGKILLs one daemon (the
orchestrator on even rounds, a random supervisor on odd ones) at a random moment, restarts
it, and checks:

* right after the kill, both daemons' ``state.json`` files parse, and the orchestrator's holds
  every deployment it acknowledged (2xx) and none whose deletion it acknowledged;
* after the restart, within ``CONVERGE_S``: every deployment the orchestrator holds is ACTIVE
  on its latest revision, each name once, revisions numbered 1..n, every event once and in
  a valid lifecycle chain; every acknowledged deployment is there with its acknowledged id
  and content, every acknowledged deletion is gone; each device lists (``GET /deploy``) and
  stores (``state.json``) exactly the deployments placed on it;
* every deployment then runs end to end with the right value, and every execution that
  succeeded during the chaos had the right value for its input.

Requests the kill cut off (no answer) may have happened or not; whichever it was, the rest
must hold. Set ``BATON_CHAOS_SEED`` to replay a run (the seed is in every assertion message);
sizes come from ``tests/chaos/knobs.py``; counters go to ``build/chaos-stats.json``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from orchestrator.manifests import manifest_digest
from orchestrator.model import Manifest
from tests.chaos import knobs
from tests.chaos.harness import (
    FIBO_STEP,
    Fleet,
    read_state,
    running_fleet,
    stored_deployment_ids,
    stored_orchestrator_deployments,
)
from tests.daemons import check_history, fibo, get_json, until
from tests.support import SupervisorProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(knobs.TEST_TIMEOUT_S)]

ORCH_FLAGS = [
    "--health-interval",
    "0.5",
    "--lost-after",
    "3",
    "--back-after",
    "1",
    "--reconcile-interval",
    "1",
    "--execution-deadline",
    "20",
]
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=40)
CUT_OFF = (aiohttp.ClientError, TimeoutError)  # no answer: the request may or may not have landed


def manifest(name: str, variant: int) -> dict[str, Any]:
    """A two-hop fibo chain; each variant has other limits, so a change is a new revision."""
    return {
        "name": name,
        "sequence": [FIBO_STEP, FIBO_STEP],
        "limits": {"fibo.fibo": {"timeoutMs": 3000 + 100 * variant}},
    }


def digest_of(name: str, variant: int) -> str:
    return manifest_digest(msgspec.convert(manifest(name, variant), Manifest))


@dataclass
class Ledger:
    """What the orchestrator acknowledged, and what a kill left undecided."""

    live: dict[str, str] = field(default_factory=dict)  # name -> id: acknowledged, not deleted
    variants: dict[str, set[int]] = field(default_factory=dict)  # name -> allowed contents
    deleted: dict[str, str] = field(default_factory=dict)  # name -> id, deletion acknowledged
    maybe_created: set[str] = field(default_factory=set)
    maybe_deleted: set[str] = field(default_factory=set)
    next_variant: dict[str, int] = field(default_factory=dict)


@dataclass
class Counters:
    kills: int = 0
    orchestrator_kills: int = 0
    supervisor_kills: int = 0
    long_outages: int = 0  # supervisors left down past the detection window
    deploys_acknowledged: int = 0
    updates_acknowledged: int = 0
    undeploys_acknowledged: int = 0
    requests_cut_off: int = 0
    executions_completed: int = 0  # during the chaos, right value checked
    executions_failed: int = 0  # during the chaos: a hop was down (502), or cut off
    checked_runs: int = 0  # after convergence, one per deployment per round
    failovers: int = 0  # revisions the orchestrator made itself (cause "failover: ...")
    unexpected: list[str] = field(default_factory=list)


class Round:
    """One round's traffic lanes; ``stop`` ends them after their current request."""

    def __init__(
        self, fleet: Fleet, ledger: Ledger, counters: Counters, number: int, rng: random.Random
    ) -> None:
        self.fleet = fleet
        self.ledger = ledger
        self.counters = counters
        self.number = number
        self.rng = rng
        self.stop = asyncio.Event()
        self.url = fleet.orch.url
        names = sorted(ledger.live)
        rng.shuffle(names)
        # Each existing name belongs to one lane this round: no two lanes race on one name.
        cut = len(names) // 3
        self.to_delete = names[:cut] if len(names) > knobs.MAX_LIVE_DEPLOYMENTS - 2 else []
        self.to_update = names[len(self.to_delete) : len(self.to_delete) + 2]
        self.to_run = [n for n in names if n not in self.to_delete]

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.fleet.session.request(
            method, self.url + path, timeout=REQUEST_TIMEOUT, **kwargs
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    def note(self, what: str) -> None:
        self.counters.unexpected.append(f"round {self.number}: {what}")

    async def create_lane(self) -> None:
        for i in range(12):
            if self.stop.is_set():
                return
            if len(self.ledger.live) + len(self.ledger.maybe_created) >= (
                knobs.MAX_LIVE_DEPLOYMENTS + 2
            ):
                return
            name = f"r{self.number}-{i}"
            wait = "?wait=30" if self.rng.random() < 0.5 else ""
            try:
                status, body = await self.request(
                    "POST", "/deployments" + wait, json=manifest(name, 0)
                )
            except CUT_OFF:
                self.ledger.maybe_created.add(name)
                self.counters.requests_cut_off += 1
                return
            if status != 201:
                self.note(f"create {name}: HTTP {status} {body}")
                return
            self.ledger.live[name] = str(body["id"])
            self.ledger.variants[name] = {0}
            self.ledger.next_variant[name] = 1
            self.counters.deploys_acknowledged += 1

    async def update_lane(self) -> None:
        for name in self.to_update:
            if self.stop.is_set():
                return
            variant = self.ledger.next_variant[name]
            self.ledger.next_variant[name] = variant + 1
            # Until the answer comes, the deployment may end with either content.
            self.ledger.variants[name] = self.ledger.variants[name] | {variant}
            wait = "?wait=30" if self.rng.random() < 0.5 else ""
            try:
                status, body = await self.request(
                    "POST", "/deployments" + wait, json=manifest(name, variant)
                )
            except CUT_OFF:
                self.counters.requests_cut_off += 1
                return
            if status != 202 or body["id"] != self.ledger.live[name]:
                self.note(f"update {name}: HTTP {status} {body}")
                return
            self.ledger.variants[name] = {variant}
            self.counters.updates_acknowledged += 1

    async def delete_lane(self) -> None:
        for name in self.to_delete:
            if self.stop.is_set():
                return
            dep_id = self.ledger.live[name]
            # Until the answer comes, the deployment may be gone or not.
            self.ledger.maybe_deleted.add(name)
            try:
                status, body = await self.request("DELETE", f"/deployments/{dep_id}")
            except CUT_OFF:
                self.counters.requests_cut_off += 1
                return
            self.ledger.maybe_deleted.discard(name)
            if status != 200:
                self.note(f"delete {name}: HTTP {status} {body}")
                return
            del self.ledger.live[name]
            self.ledger.deleted[name] = dep_id
            self.counters.undeploys_acknowledged += 1

    async def execute_lane(self) -> None:
        for _ in range(200):
            if self.stop.is_set() or not self.to_run:
                return
            name = self.rng.choice(self.to_run)
            n = self.rng.randint(1, 6)
            try:
                status, run = await self.request(
                    "POST", f"/deployments/{self.ledger.live[name]}/executions", json={"param0": n}
                )
            except CUT_OFF:
                self.counters.executions_failed += 1
                await asyncio.sleep(0.05)  # pacing while the orchestrator is down, not a wait
                continue
            if status == 200:
                if run.get("value") != fibo(fibo(n)) or len(run.get("trace") or []) != 2:
                    self.note(f"{name}({n}) returned {run.get('value')}: {run.get('trace')}")
                self.counters.executions_completed += 1
            elif status in (502, 504):
                # A hop was down (502), or a revision kept the deployment changing past the
                # deadline (504, while a device restarts): both allowed during the chaos.
                self.counters.executions_failed += 1
            else:
                self.note(f"execute {name}: HTTP {status} {run}")

    def lanes(self) -> list[Awaitable[None]]:
        return [
            self.create_lane(),
            self.update_lane(),
            self.delete_lane(),
            *(self.execute_lane() for _ in range(knobs.EXECUTION_LANES)),
        ]


def check_durable(fleet: Fleet, ledger: Ledger, where: str) -> None:
    """Right after a kill: every state file parses, and the orchestrator's holds what it
    acknowledged (it persists before it answers)."""
    stored = stored_orchestrator_deployments(
        read_state(fleet.orch.state_dir / "state.json", where), where
    )
    for sup in fleet.sups:
        read_state(sup.state_dir / "state.json", where)
    for name, dep_id in ledger.live.items():
        if name not in ledger.maybe_deleted:
            assert stored.get(name) == dep_id, (where, "acknowledged, not stored", name, stored)
    for name in ledger.deleted:
        assert name not in stored, (where, "deletion acknowledged but still stored", name)


async def converge(fleet: Fleet, ledger: Ledger, where: str) -> dict[str, dict[str, Any]]:
    """Wait until every deployment is ACTIVE on its latest revision and every device holds
    exactly what is placed on it; then check the ledger. Returns name -> deployment."""
    orch_url = fleet.orch.url
    snapshot: dict[str, Any] = {}

    async def settled() -> dict[str, dict[str, Any]] | None:
        status, listed = await get_json(fleet.session, orch_url + "/deployments")
        assert status == 200, (where, listed)
        snapshot["deployments"] = listed
        if any(d["state"] != "ACTIVE" or d["active"] != d["revision"] for d in listed):
            return None
        by_name = {d["name"]: d for d in listed}
        assert len(by_name) == len(listed), (where, "one name twice", listed)
        expected: dict[str, set[str]] = {dev: set() for dev in fleet.by_id}
        for dep in listed:
            for step in dep["placement"]["steps"]:
                if step["device"] == "orchestrator":
                    # The built-in datalist, on the orchestrator's own core device: its
                    # bootstrap after every restart must leave it ACTIVE (checked above).
                    continue
                expected[step["device"]].add(dep["id"])
        snapshot["expected"] = expected
        held: dict[str, Any] = {}
        for dev_id, sup in fleet.by_id.items():
            listing = set(await fleet.listing(sup, where))
            stored = stored_deployment_ids(read_state(sup.state_dir / "state.json", where))
            held[sup.name] = (sorted(listing), sorted(stored))
            if listing != expected[dev_id] or stored != expected[dev_id]:
                snapshot["held"] = held
                return None
        orch_state = read_state(fleet.orch.state_dir / "state.json", where)
        if stored_orchestrator_deployments(orch_state, where) != {
            n: d["id"] for n, d in by_name.items()
        }:
            return None
        return {name: dict(dep) for name, dep in by_name.items()}

    try:
        by_name = await until(settled, knobs.CONVERGE_S, f"{where}: convergence")
    except AssertionError as err:
        detail = [
            (d["name"], d["state"], d["active"], d["revision"], d["error"])
            for d in snapshot.get("deployments", [])
        ]
        raise AssertionError(f"{err}; deployments={detail} held={snapshot.get('held')}") from err

    for name in sorted(ledger.maybe_created):  # cut off: it happened or it did not
        if name in by_name:
            ledger.live[name] = by_name[name]["id"]
            ledger.variants[name] = {0}
            ledger.next_variant[name] = 1
    ledger.maybe_created.clear()
    for name in sorted(ledger.maybe_deleted):
        if name not in by_name:
            ledger.deleted[name] = ledger.live.pop(name)
    ledger.maybe_deleted.clear()

    # The built-in datalist, bootstrapped at every start: exactly one revision, ever.
    datalist = by_name.pop("datalist")
    assert [r["number"] for r in datalist["revisions"]] == [1], (where, datalist["revisions"])
    assert set(by_name) == set(ledger.live), (where, sorted(by_name), sorted(ledger.live))
    for name, dep in by_name.items():
        assert dep["id"] == ledger.live[name], (where, name, dep["id"], ledger.live[name])
        numbers = [r["number"] for r in dep["revisions"]]
        assert numbers == list(range(1, len(numbers) + 1)), (where, name, numbers)
        events = [(e["revision"], e["from"], e["to"], e["at"]) for e in dep["events"]]
        assert len(events) == len(set(events)), (where, name, "an event twice", events)
        check_history(dep, f"{where} {name}")
        latest = dep["revisions"][-1]["digest"]
        allowed = {v: digest_of(name, v) for v in ledger.variants[name]}
        assert latest in allowed.values(), (where, name, "content", latest, allowed)
        ledger.variants[name] = {v for v, d in allowed.items() if d == latest}
    for name in ledger.deleted:
        assert name not in by_name, (where, "deleted but back", name)
    return by_name


async def check_runs(fleet: Fleet, by_name: dict[str, dict[str, Any]], where: str) -> int:
    """Every deployment runs end to end with the right value."""
    rng = random.Random(where)
    runs = 0
    for name, dep in sorted(by_name.items()):
        n = rng.randint(1, 6)
        async with fleet.session.post(
            f"{fleet.orch.url}/deployments/{dep['id']}/executions",
            json={"param0": n},
            timeout=REQUEST_TIMEOUT,
        ) as resp:
            run = await resp.json()
        assert resp.status == 200 and run["value"] == fibo(fibo(n)), (where, name, n, run)
        hosts = [step["device"] for step in dep["placement"]["steps"]]
        names = [fleet.by_id[h].name for h in hosts]
        assert [hop["device"] for hop in run["trace"]] == names, (where, name, run["trace"])
        runs += 1
    return runs


async def kill_and_restart(
    fleet: Fleet,
    victim: SupervisorProcess | None,
    delay: float,
    outage_s: float,
    ledger: Ledger,
    counters: Counters,
    where: str,
) -> None:
    """SIGKILL ``victim`` (None: the orchestrator) ``delay`` s from now, check the state files
    at once, leave a supervisor down for ``outage_s``, start it again on the same port and
    state, and wait until it answers."""
    await asyncio.sleep(delay)  # the moment of the kill, not a synchronisation
    if victim is None:
        fleet.orch.kill()
        counters.orchestrator_kills += 1
        check_durable(fleet, ledger, where)
        fleet.orch.start()
        await fleet.orch.wait_healthy(fleet.session, timeout=30)
    else:
        victim.kill()
        counters.supervisor_kills += 1
        check_durable(fleet, ledger, where)
        if outage_s:
            counters.long_outages += 1
            await asyncio.sleep(outage_s)  # the outage itself, not a synchronisation
        victim.start()
        await victim.wait_healthy(timeout=30)
    counters.kills += 1


async def test_sigkill_during_deploy_undeploy_and_execute_loops_converges(tmp_path: Path) -> None:
    seed = knobs.seed()
    rng = random.Random(seed)
    print(f"{knobs.SEED_ENV}={seed}")
    ledger, counters = Ledger(), Counters()
    failovers: dict[str, int] = {}  # deployment id -> failover revisions it went through
    started = time.monotonic()
    async with running_fleet(tmp_path, devices=3, orch_flags=ORCH_FLAGS, modules=["fibo"]) as fleet:
        for number in range(knobs.KILL_ROUNDS):
            rnd = Round(fleet, ledger, counters, number, random.Random(rng.random()))
            victim: SupervisorProcess | None = None
            if number % 2 == 1:
                victim = rng.choice(fleet.sups)
            delay = rng.uniform(0.0, knobs.KILL_WINDOW_S)
            outage = rng.choice([0.0, knobs.LONG_OUTAGE_S]) if victim else 0.0
            where = (
                f"{knobs.SEED_ENV}={seed} round {number} "
                f"kill {victim.name if victim else 'orchestrator'} at +{delay:.3f}s"
                f" for {outage:g}s"
            )
            lanes = asyncio.gather(*rnd.lanes())
            try:
                await kill_and_restart(fleet, victim, delay, outage, ledger, counters, where)
            finally:
                rnd.stop.set()
                if not lanes.done():
                    await asyncio.wait_for(lanes, 90)
            assert not counters.unexpected, "\n".join([where, *counters.unexpected])
            by_name = await converge(fleet, ledger, where)
            for dep in by_name.values():
                failovers[dep["id"]] = sum(
                    (r["cause"] or "").startswith("failover") for r in dep["revisions"]
                )
            counters.checked_runs += await check_runs(fleet, by_name, where)
            print(f"{where}: {len(by_name)} deployments converged")

        # Over all the rounds: never a wrong value, and real traffic was served.
        assert counters.executions_completed > 0, (seed, counters)
        assert counters.deploys_acknowledged > 0 and counters.undeploys_acknowledged > 0, (
            seed,
            counters,
        )
        for log in [fleet.orch.log, *(sup.log for sup in fleet.sups)]:
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, (seed, log.name, text[-3000:])
    wall = round(time.monotonic() - started, 1)
    counters.failovers = sum(failovers.values())
    stats = {
        "seed": seed,
        "rounds": knobs.KILL_ROUNDS,
        "kills survived": counters.kills,
        "orchestrator kills": counters.orchestrator_kills,
        "supervisor kills": counters.supervisor_kills,
        "supervisor outages past the detection window": counters.long_outages,
        "failover revisions": counters.failovers,
        "deploys acknowledged": counters.deploys_acknowledged,
        "updates acknowledged": counters.updates_acknowledged,
        "undeploys acknowledged": counters.undeploys_acknowledged,
        "requests cut off by a kill": counters.requests_cut_off,
        "concurrent executions completed": counters.executions_completed,
        "executions failed during kills": counters.executions_failed,
        "runs checked after convergence": counters.checked_runs,
        "wall seconds": wall,
    }
    knobs.record("kill_loops", stats)
    print(knobs.summary("kill_loops", stats))
