"""Every size, count and duration of the chaos tests, in one place, and their stats file.

``make test`` runs them at the default scale (about a minute on two cores); ``make soak``
sets ``BATON_SOAK=1`` and the same tests run ten times longer: ten times the kill rounds,
the lost-hop rounds and the concurrent executions. ``BATON_SOAK=<n>`` (an integer > 1) picks
another multiplier.

Randomised tests take their seed from ``BATON_CHAOS_SEED`` when it is set (to replay a
failure: the seed is in every assertion message) and pick one otherwise.

Counters a run produces are merged into ``build/chaos-stats.json`` (one section per test, and
per soak scale; created with ``build/`` when missing) so a report can quote what an actual run
survived.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import time
from typing import Any

from tests.conftest import ROOT

SEED_ENV = "BATON_CHAOS_SEED"
SOAK_ENV = "BATON_SOAK"
STATS_FILE = ROOT / "build" / "chaos-stats.json"


def _scale() -> int:
    raw = os.environ.get(SOAK_ENV, "").strip()
    if raw in ("", "0"):
        return 1
    if raw.isdigit() and int(raw) > 1:
        return int(raw)
    return 10


SCALE = _scale()
SOAK = SCALE > 1
TEST_TIMEOUT_S = 120 * SCALE  # pytest-timeout per test (pyproject's 120 s, scaled)

# test_kill_loops: rounds of deploy / update / undeploy / execute traffic, one SIGKILL each.
KILL_ROUNDS = 10 * SCALE
KILL_WINDOW_S = 0.6  # the SIGKILL lands this long (at most) after a round's traffic starts
EXECUTION_LANES = 3  # executions in flight at once during a round
MAX_LIVE_DEPLOYMENTS = 5  # above this the undeploy lane keeps deleting
CONVERGE_S = 45.0  # after a restart, everything converges within this
# Half the killed supervisors stay down this long: past the orchestrator's detection window
# (3 checks 0.5 s apart), so their steps fail over while the traffic goes on.
LONG_OUTAGE_S = 3.0

# test_lost_hop: kill the middle device of a three-hop chain, this many times.
LOST_HOP_ROUNDS = 2 * SCALE
FAIL_FAST_S = 10.0  # the execution that meets the dead hop fails before this (deadline is 60 s)

# test_concurrency: executions issued at once through a two-hop chain.
CONCURRENT_EXECUTIONS = 1000 * SCALE
# The client's own cap on open requests (all are issued by one gather): a pool of this size
# keeps the orchestrator under the common 1024 open-files limit.
CLIENT_IN_FLIGHT = 200
CONCURRENCY_BUDGET_S = 240.0 * SCALE

# test_flapping: a device behind a proxy whose health checks fail, flap or slow down.
# A soak repeats the outages; the blips and teases around each stay at most 3x, since
# FLAP_OUTAGES x FLAP_BLIPS windows of about a second each would otherwise take 20 minutes.
FLAP_BLIPS = 3 * min(SCALE, 3)  # runs of failed checks one short of lost_after (and short outages)
FLAP_OUTAGES = 1 * SCALE  # real outages: lost, failed over, teased, back, moved back
SLOW_CHECKS = 6 * SCALE  # health checks in a row answered slowly but within the timeout

# test_hostile_guests: every hostile guest at once, mixed with good calls, this many rounds.
HOSTILE_ROUNDS = 5 * SCALE
GOOD_CALLS_PER_ROUND = 8


def seed() -> int:
    """The seed of a randomised test: ``BATON_CHAOS_SEED`` or a fresh one."""
    raw = os.environ.get(SEED_ENV, "").strip()
    return int(raw) if raw else random.randrange(1 << 32)


def record(section: str, counters: dict[str, Any]) -> dict[str, Any]:
    """Merge ``counters`` into ``section`` of ``build/chaos-stats.json``; returns the file's
    whole content. Other sections (other tests, earlier runs) are kept; a soak run writes
    ``<section>@soak<scale>``, so it never hides the default run's numbers."""
    if SOAK:
        section = f"{section}@soak{SCALE}"
    STATS_FILE.parent.mkdir(parents=True, exist_ok=True)
    # Test runs in parallel (several pytest processes) merge one at a time.
    with STATS_FILE.with_name(f".{STATS_FILE.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stats: dict[str, Any] = json.loads(STATS_FILE.read_text())
        except (FileNotFoundError, ValueError):
            stats = {}
        entry = dict(stats.get(section) or {})
        entry.update(counters)
        entry["recordedAt"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        entry["soakScale"] = SCALE
        stats[section] = entry
        tmp = STATS_FILE.with_name(f".{STATS_FILE.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, STATS_FILE)
    return stats


def summary(section: str, counters: dict[str, Any]) -> str:
    """One line for the log (``pytest -s``) and the report: ``chaos <section>: k=v, …``."""
    return f"chaos {section}: " + ", ".join(f"{k}={v}" for k, v in counters.items())
