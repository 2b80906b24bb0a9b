"""Slow and flapping devices: hysteresis holds, deployments do not flap, slow is not dead.

A real supervisor process ("flaky") sits behind a :class:`~tests.chaos.flaky_link.FlakyLink`
proxy and is registered with an in-process orchestrator at the proxy's address, so the test
owns that device's network; a second supervisor ("steady", behind a proxy of its own that
only one test slows down) takes over during outages. One deployment pins its step to flaky: a
real outage must move it to steady once (failover) and back once when flaky is healthy again
(move back), and nothing shorter than the hysteresis may move it at all.

The orchestrator's own record is the evidence: the device's status events
(``GET /devices/{id}``, stamped with the wall clock) lined up against the health checks the
proxy saw, and the deployment's revisions with their causes. Outcomes are observed by polling
with deadlines; the only sleeps are the outages themselves (and the proxy's delays).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import daemons
from tests.chaos import knobs
from tests.chaos.flaky_link import FlakyLink
from tests.orchestration import Orchestrator, OrchestratorFactory
from tests.support import SupervisorProcess

# Soak runs scale the work, so they scale the per-test timeout with it.
pytestmark = pytest.mark.timeout(knobs.TEST_TIMEOUT_S)

HEALTH_TIMEOUT_S = 2.0  # the orchestrator's health-check timeout (HealthMonitor's default)
PINNED = {"name": "pinned", "sequence": [{"module": "fibo", "func": "fibo", "device": "flaky"}]}
FIBO_5 = 8  # fibo(5) with fibo(0) = fibo(1) = 1


@dataclass
class Rig:
    orch: Orchestrator
    link: FlakyLink  # flaky's network
    steady_link: FlakyLink  # steady's (up and fast unless a test says otherwise)
    flaky_id: str
    steady_id: str
    deployment: str
    interval_s: float
    lost_after: int
    back_after: int

    async def device(self, device_id: str) -> dict[str, Any]:
        status, body = await self.orch.get(f"/devices/{device_id}")
        assert status == 200, body
        return dict(body)

    async def status_events(self) -> list[dict[str, Any]]:
        """flaky's ``lost``/``healthy`` events, oldest first (the registry keeps 50)."""
        events = (await self.device(self.flaky_id))["events"]
        return [e for e in events if e["kind"] in ("lost", "healthy")]

    async def dep(self) -> dict[str, Any]:
        status, body = await self.orch.get(f"/deployments/{self.deployment}")
        assert status == 200, body
        return dict(body)

    async def placed_on(self) -> str | None:
        """The device running the pinned step once its latest revision is ACTIVE, else None."""
        dep = await self.dep()
        if dep["state"] != "ACTIVE" or not dep["placement"]:
            return None
        return str(dep["placement"]["steps"][0]["device"])

    async def flaky_lists(self, *, deploying: bool) -> bool:
        """Whether flaky itself (asked directly, not through the proxy) lists the deployment
        as ``deploying`` says."""
        url = f"http://127.0.0.1:{self.link.upstream_port}/deploy"
        async with self.orch.session.get(url) as resp:
            listed = (await resp.json())["deployments"]
        return any(d["deploymentId"] == self.deployment for d in listed) == deploying

    async def run_fibo(self) -> dict[str, Any]:
        status, run = await self.orch.run(self.deployment, param0=5)
        assert status == 200 and run["value"] == FIBO_5, run
        return dict(run)

    async def script_done(self) -> bool:
        """Whether flaky's link has consumed its whole health script."""
        return self.link.scripted == 0

    def after_next_check(self) -> Callable[[], Awaitable[bool]]:
        """A predicate that holds once the proxy has seen one more health check than now.

        Rounds never overlap and apply their outcomes before the next round starts, so a
        later check at the proxy proves every earlier one has been applied.
        """
        seen = len(self.link.checks)

        async def later() -> bool:
            return len(self.link.checks) > seen

        return later


async def until(predicate: Callable[[], Awaitable[Any]], within_s: float, what: str) -> Any:
    # Hysteresis is judged check by check: look twice as often as the shared default.
    return await daemons.until(predicate, within_s, what, poll_s=0.05)


@asynccontextmanager
async def rig(
    tmp_path: Path,
    make_orchestrator: OrchestratorFactory,
    *,
    interval_s: float,
    lost_after: int,
    back_after: int,
) -> AsyncIterator[Rig]:
    """flaky and steady, each behind its own proxy, registered; fibo pushed; PINNED active on
    flaky."""
    flaky = SupervisorProcess(tmp_path / "flaky", name="flaky")
    steady = SupervisorProcess(tmp_path / "steady", name="steady")
    link, steady_link = FlakyLink(flaky.port), FlakyLink(steady.port)
    try:
        flaky.start()
        steady.start()
        await asyncio.gather(flaky.wait_healthy(), steady.wait_healthy())
        await link.up()
        await steady_link.up()
        orch = await make_orchestrator(
            health_interval_s=interval_s,
            lost_after=lost_after,
            back_after=back_after,
            reconcile_interval_s=0.5,
        )
        ids = []
        for port in (link.port, steady_link.port):
            status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": port})
            assert status == 201, body
            ids.append(str(body["id"]))
        await orch.push_module("fibo")
        status, dep = await orch.deploy(PINNED)
        assert status in (200, 201) and dep["state"] == "ACTIVE", dep
        assert dep["placement"]["steps"][0]["device"] == ids[0], dep["placement"]
        yield Rig(
            orch, link, steady_link, ids[0], ids[1], dep["id"], interval_s, lost_after, back_after
        )
    finally:
        await link.close()
        await steady_link.close()
        flaky.kill()
        steady.kill()


def causes(dep: dict[str, Any]) -> list[str]:
    """Why each revision after the first was made: "failover" or "move back"."""
    return [str(r["cause"]).split(":")[0] for r in dep["revisions"][1:]]


async def test_hysteresis_counts_consecutive_failed_checks_exactly(
    tmp_path: Path, make_orchestrator: OrchestratorFactory
) -> None:
    """Scripted health checks: runs of lost_after-1 failures never make flaky lost; the
    lost_after-th failure in a row does, on that very check; single successes between
    failures never bring it back; the back_after-th success in a row does, on that check.
    The pinned deployment moves away exactly once and back exactly once."""
    async with rig(tmp_path, make_orchestrator, interval_s=0.2, lost_after=3, back_after=2) as r:
        link = r.link
        assert await r.status_events() == []

        # Blips: F F . repeated; each run of failures is one short of lost_after.
        blip = "F" * (r.lost_after - 1) + "."
        link.script(blip * knobs.FLAP_BLIPS)
        budget = (len(blip) * knobs.FLAP_BLIPS + 2) * r.interval_s + 5
        await until(r.script_done, budget, "the blips were checked")
        await until(r.after_next_check(), 5, "the last blip's check applied")
        assert await r.status_events() == [], "a sub-threshold run of failures made flaky lost"
        dep = await r.dep()
        assert len(dep["revisions"]) == 1 and await r.placed_on() == r.flaky_id, dep
        failed = [c for c in link.checks if c.fate == "failed"]
        assert len(failed) == (r.lost_after - 1) * knobs.FLAP_BLIPS

        # An outage: lost_after failures in a row, then teasing (one success, one failure),
        # then back_after successes in a row.
        teases = max(2, knobs.FLAP_BLIPS)
        first = len(link.checks)  # the next check consumes the script's first character
        outage = "F" * r.lost_after + ".F" * teases + "." * r.back_after
        link.script(outage)
        budget = (len(outage) + 2) * r.interval_s + 5
        await until(r.script_done, budget, "the outage was checked")
        await until(r.after_next_check(), 5, "the outage's last check applied")
        checks = link.checks[first:]
        assert "".join("F" if c.fate == "failed" else "." for c in checks).startswith(outage)

        events = await r.status_events()
        assert [e["kind"] for e in events] == ["lost", "healthy"], events
        lost, healthy = events
        tripped = r.lost_after - 1  # the check that completed the run of failures
        assert checks[tripped].at < lost["at"] < checks[tripped + 1].at, (lost, checks)
        assert f"{r.lost_after} failed checks in a row" in lost["detail"]
        assert "HTTP 503" in lost["detail"]
        restored = len(outage) - 1  # the back_after-th success in a row
        assert checks[restored].at < healthy["at"] < checks[restored + 1].at, (healthy, checks)

        # The deployment followed: one failover to steady, one move back to flaky.
        async def moved_back() -> bool:
            dep = await r.dep()
            return len(dep["revisions"]) == 3 and await r.placed_on() == r.flaky_id

        await until(moved_back, 15, "the pinned step moved back to flaky")
        dep = await r.dep()
        assert causes(dep) == ["failover", "move back"], dep["revisions"]
        assert [rev["state"] for rev in dep["revisions"]] == ["SUPERSEDED", "SUPERSEDED", "ACTIVE"]
        await r.run_fibo()
        kinds = [e["kind"] for e in await r.status_events()]
        counters = {
            "healthChecksSeen": len(link.checks),
            "failedChecks": sum(c.fate == "failed" for c in link.checks),
            "subThresholdRuns": knobs.FLAP_BLIPS + teases,
            "lostEvents": kinds.count("lost"),
            "healthyEvents": kinds.count("healthy"),
            "revisions": len(dep["revisions"]),
        }
        knobs.record("flapping.hysteresis", counters)
        print(knobs.summary("flapping.hysteresis", counters))


async def test_network_flapping_moves_the_deployment_once_per_real_outage(
    tmp_path: Path, make_orchestrator: OrchestratorFactory
) -> None:
    """The network itself flaps (the proxy stops listening and cuts open connections):
    short outages never make flaky lost; each long one makes it lost once, and brief
    returns while it is lost never make it healthy. Over the whole flapping period the pinned
    deployment moves exactly once away and once back per real outage."""
    interval = 0.25
    async with rig(
        tmp_path, make_orchestrator, interval_s=interval, lost_after=3, back_after=3
    ) as r:
        link = r.link
        # A window of half an interval holds at most two checks (rounds start at least an
        # interval apart), one short of both thresholds; waits between windows hold several.
        short, settle = interval / 2, interval * 4
        blips = teases = 0
        for outage in range(knobs.FLAP_OUTAGES):
            for _ in range(knobs.FLAP_BLIPS):
                await link.down()
                await asyncio.sleep(short)
                await link.up()
                await asyncio.sleep(settle)
                blips += 1
            events = await r.status_events()
            assert len(events) == 2 * outage, f"a short outage changed flaky's status: {events}"

            await link.down()
            window = interval * r.lost_after + HEALTH_TIMEOUT_S + 3

            async def lost(n: int = outage) -> bool:
                return len(await r.status_events()) == 2 * n + 1

            await until(lost, window, "flaky lost during a real outage")

            async def moved_away() -> bool:
                return await r.placed_on() == r.steady_id

            await until(moved_away, 15, "the pinned step failed over to steady")
            for _ in range(knobs.FLAP_BLIPS):  # brief returns: flaky must stay lost
                # The script caps each return at one good check even when the event loop
                # lags (a loaded soak run stretched `short` past several check rounds); the
                # checks after it in the same window fail, as on a link that drops again.
                link.script("." + "F" * 50)
                await link.up()
                await asyncio.sleep(short)
                await link.down()
                link.unscript()
                await asyncio.sleep(settle)
                teases += 1
            events = await r.status_events()
            assert events[-1]["kind"] == "lost" and len(events) == 2 * outage + 1, events

            await link.up()

            async def back(n: int = outage) -> bool:
                return len(await r.status_events()) == 2 * n + 2

            await until(back, interval * r.back_after + 5, "flaky healthy again")

            async def moved_back(n: int = outage) -> bool:
                dep = await r.dep()
                return len(dep["revisions"]) == 1 + 2 * (n + 1) and (
                    await r.placed_on() == r.flaky_id
                )

            await until(moved_back, 15, "the pinned step moved back to flaky")
            await r.run_fibo()

        events = await r.status_events()
        kinds = [e["kind"] for e in events]
        assert kinds == ["lost", "healthy"] * knobs.FLAP_OUTAGES, events
        dep = await r.dep()
        assert causes(dep) == ["failover", "move back"] * knobs.FLAP_OUTAGES, dep["revisions"]
        assert all(rev["state"] == "SUPERSEDED" for rev in dep["revisions"][:-1]), dep
        counters = {
            "shortOutages": blips,
            "briefReturns": teases,
            "realOutages": knobs.FLAP_OUTAGES,
            "lostEvents": kinds.count("lost"),
            "healthyEvents": kinds.count("healthy"),
            "revisions": len(dep["revisions"]),
            "severedConnections": link.severed,
            "healthChecksSeen": len(link.checks),
        }
        knobs.record("flapping.network", counters)
        print(knobs.summary("flapping.network", counters))


async def test_slow_device_stays_healthy_but_slower_than_the_timeout_is_failing(
    tmp_path: Path, make_orchestrator: OrchestratorFactory
) -> None:
    """Every request to flaky delayed 0.4 s: it stays healthy through many checks, its RTT
    shows the delay and executions still succeed, only slower. Delayed beyond the health
    timeout, its checks fail and it becomes lost after lost_after of them; without the delay
    it comes back, and the pinned deployment moved once each way."""
    slow_s, too_slow_s = 0.4, HEALTH_TIMEOUT_S + 0.5
    async with rig(tmp_path, make_orchestrator, interval_s=0.25, lost_after=2, back_after=2) as r:
        link = r.link
        fast = await r.run_fibo()

        link.delay_s = slow_s
        first = len(link.checks)

        async def slow_checks() -> bool:
            return sum(c.delay_s == slow_s for c in link.checks[first:]) > knobs.SLOW_CHECKS

        await until(slow_checks, knobs.SLOW_CHECKS * (slow_s + 0.25) + 10, "slow checks")
        assert await r.status_events() == [], "a slow but timely device was marked lost"
        flaky = await r.device(r.flaky_id)
        assert flaky["status"] == "healthy"
        assert flaky["rttMs"] >= slow_s * 1000, flaky["rttMs"]
        slow = await r.run_fibo()
        # The call and its result long-poll each cross the slow link at least once.
        assert slow["ms"] >= slow_s * 1000 and slow["ms"] > fast["ms"], (fast["ms"], slow["ms"])
        assert await r.placed_on() == r.flaky_id

        link.delay_s = too_slow_s
        first = len(link.checks)
        window = r.lost_after * (HEALTH_TIMEOUT_S + r.interval_s) + 5
        await until(
            lambda: _has_status_events(r, 1), window, "flaky lost once slower than the timeout"
        )
        (lost,) = await r.status_events()
        assert f"no answer within {HEALTH_TIMEOUT_S:g} s" in lost["detail"], lost
        timed_out = [
            c for c in link.checks[first:] if c.delay_s == too_slow_s and c.at < lost["at"]
        ]
        assert len(timed_out) >= r.lost_after, (lost, link.checks[first:])

        link.delay_s = 0.0
        await until(lambda: _has_status_events(r, 2), 10, "flaky healthy without the delay")

        async def moved_back() -> bool:
            dep = await r.dep()
            return len(dep["revisions"]) == 3 and await r.placed_on() == r.flaky_id

        await until(moved_back, 20, "the pinned step moved back to flaky")
        dep = await r.dep()
        assert causes(dep) == ["failover", "move back"], dep["revisions"]
        await r.run_fibo()
        counters = {
            "slowChecks": sum(c.delay_s == slow_s for c in link.checks),
            "timedOutChecks": sum(c.delay_s == too_slow_s for c in link.checks),
            "fastExecutionMs": round(fast["ms"], 1),
            "slowExecutionMs": round(slow["ms"], 1),
            "slowRttMs": round(flaky["rttMs"], 1),
            "revisions": len(dep["revisions"]),
        }
        knobs.record("flapping.slow", counters)
        print(knobs.summary("flapping.slow", counters))


async def test_status_changes_while_a_revision_deploys_are_not_lost(
    tmp_path: Path, make_orchestrator: OrchestratorFactory
) -> None:
    """Flaps faster than a revision deploys. (1) flaky is back while its failover revision
    is still being pushed to a slow steady: the step must still move back (it used to stay
    on steady for good). (2) flaky is lost while its move-back revision is being pushed to it
    (slowly, but successfully): the step must not stay on the lost device. Every move is
    matched by a status change: one failover per lost, one move back per healthy."""
    async with rig(tmp_path, make_orchestrator, interval_s=0.1, lost_after=1, back_after=1) as r:
        link = r.link
        # (1) Pushes to steady take two slow turns (deploy, verify): > 0.6 s. flaky is lost
        # on one check and healthy on the next, 0.1 s later.
        r.steady_link.delay_s = 0.3
        link.script("F.")

        async def settled_on(device_id: str, revisions: int) -> bool:
            dep = await r.dep()
            return len(dep["revisions"]) == revisions and await r.placed_on() == device_id

        await until(lambda: settled_on(r.flaky_id, 3), 15, "step back on flaky after (1)")
        assert [e["kind"] for e in await r.status_events()] == ["lost", "healthy"]
        assert causes(await r.dep()) == ["failover", "move back"]

        # (2) Lost for a while (the step fails over to steady); then back for two slow checks
        # (a move back to flaky starts: two slow turns, deploy and verify) and lost on the
        # next one, while that move is under way; then lost until the script is dropped.
        r.steady_link.delay_s = 0.0
        link.delay_s = 0.3
        link.script("F" * 1000)
        await until(lambda: settled_on(r.steady_id, 4), 15, "failover to steady in (2)")
        await until(lambda: r.flaky_lists(deploying=False), 10, "the failover's cleanup on flaky")
        link.unscript()
        link.script("..F" + "F" * 1000)

        async def lost_again() -> bool:
            return [e["kind"] for e in await r.status_events()][2:] == ["lost", "healthy", "lost"]

        await until(lost_again, 10, "flaky back and lost again in (2)")

        async def off_lost_flaky() -> bool:
            dep = await r.dep()
            return len(dep["revisions"]) == 6 and await r.placed_on() == r.steady_id

        await until(off_lost_flaky, 15, "the step off the lost flaky")
        dep = await r.dep()
        assert causes(dep)[2:] == ["failover", "move back", "failover"], dep["revisions"]
        assert (await r.device(r.flaky_id))["status"] == "lost"

        link.unscript()
        link.delay_s = 0.0

        async def home() -> bool:
            dep = await r.dep()
            return dep["revisions"][-1]["cause"].startswith("move back") and (
                await r.placed_on() == r.flaky_id
            )

        await until(home, 15, "step back on flaky after (2)")
        kinds = [e["kind"] for e in await r.status_events()]
        assert kinds == ["lost", "healthy"] * 3, kinds
        dep = await r.dep()
        moves = causes(dep)
        # Each move answers one status change: never more failovers than losses, nor more
        # moves back than returns; and (1) needed both of its moves.
        assert moves[:2] == ["failover", "move back"], dep["revisions"]
        assert moves.count("failover") <= kinds.count("lost"), dep["revisions"]
        assert moves.count("move back") <= kinds.count("healthy"), dep["revisions"]
        assert all(a != b for a, b in itertools.pairwise(moves)), moves
        await r.run_fibo()
        counters = {
            "lostEvents": kinds.count("lost"),
            "healthyEvents": kinds.count("healthy"),
            "revisions": len(dep["revisions"]),
            "revisionStates": [rev["state"] for rev in dep["revisions"]],
        }
        knobs.record("flapping.mid_apply", counters)
        print(knobs.summary("flapping.mid_apply", counters))


async def _has_status_events(r: Rig, n: int) -> bool:
    return len(await r.status_events()) >= n
