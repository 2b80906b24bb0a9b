"""What a deployment is, as stored and as the API shows it: its :class:`Revision` list, the
:class:`Deployment` document holding them, :func:`explain` (the ``GET /deployments/{id}``
body), and pure helpers over them. No I/O; :mod:`orchestrator.deployments` applies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from orchestrator import jobs
from orchestrator.lifecycle import State, Transition
from orchestrator.model import Manifest
from orchestrator.placement import Placement
from supervisor.protocol import DeploymentNode

__all__ = ["Deployment", "Revision", "explain", "partition_count", "without_candidates"]


class Revision(msgspec.Struct):
    number: int
    manifest: Manifest
    digest: str
    state: State = State.QUEUED
    placement: Placement | None = None  # partition 0
    more: list[Placement] = []  # partitions 1.. (``Manifest.partitions`` > 1)
    nodes: dict[str, DeploymentNode] = {}  # job key (``orchestrator.jobs``) -> mini-manifest
    node_digests: dict[
        str, str | None
    ] = {}  # device id -> digest it acknowledged (None: reference)
    error: str | None = None
    failed_step: str | None = None
    timings: dict[str, float] = {}  # plan step id -> seconds
    settled: bool = False  # the whole plan (or its rollback) has run, cleanup included
    cause: str | None = None  # why the orchestrator itself made this revision (failover)

    def placements(self) -> list[Placement]:
        """Every partition's placement, partition 0 first (empty before planning)."""
        return [] if self.placement is None else [self.placement, *self.more]

    def devices(self) -> set[str]:
        """The devices this revision puts something on."""
        return {jobs.device_of(key) for key in self.nodes}


class Deployment(msgspec.Struct):
    id: str
    name: str
    revisions: list[Revision] = []
    active: int | None = None  # number of the revision running on the devices
    events: list[Transition] = []
    jobs: dict[
        str, dict[str, Any]
    ] = {}  # device id -> {"scheduled": digest, "current": digest|None}

    def revision(self, number: int) -> Revision:
        return self.revisions[number - 1]

    @property
    def latest(self) -> Revision:
        return self.revisions[-1]


def partition_count(dep: Deployment) -> int:
    """The most partitions any revision of ``dep`` that may be on devices has."""
    numbers = [dep.latest.manifest.partitions]
    if dep.active is not None:
        numbers.append(dep.revision(dep.active).manifest.partitions)
    return max(numbers)


def without_candidates(placement: Placement) -> Placement:
    return Placement(steps=[msgspec.structs.replace(s, candidates=[]) for s in placement.steps])


def explain(dep: Deployment) -> Mapping[str, Any]:
    """The deployment as ``GET /deployments/{id}`` shows it."""
    latest = dep.latest
    return {
        "id": dep.id,
        "name": dep.name,
        "revision": latest.number,
        "state": latest.state,
        "active": dep.active,
        "placement": msgspec.to_builtins(latest.placement) if latest.placement else None,
        "partitions": [
            {"partition": k, "devices": p.devices()} for k, p in enumerate(latest.placements())
        ],
        "error": latest.error,
        "failedStep": latest.failed_step,
        "timings": latest.timings,
        "jobs": dep.jobs,
        "revisions": [
            {
                "number": r.number,
                "state": r.state,
                "digest": r.digest,
                "error": r.error,
                "cause": r.cause,
            }
            for r in dep.revisions
        ],
        "events": msgspec.to_builtins(dep.events),
    }
