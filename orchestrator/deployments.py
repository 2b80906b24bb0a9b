"""Deployments: manifests under management, applied revision by revision.

Theory of operation. ``submit`` turns a manifest into a revision of its deployment (the name
identifies the deployment): identical content is a no-op, changed content is the next
revision, and a stale ``If-Match`` is refused with 409 naming the current revision. Each
deployment has one worker task that applies its revisions strictly in FIFO order; different
deployments apply in parallel. Applying a revision walks the state machine in
``orchestrator.lifecycle`` (QUEUED → PLANNING → DEPLOYING → ACTIVE, or FAILED → ROLLED_BACK /
BROKEN), and runs the plan from ``orchestrator.plan``: push to every changed device in
parallel, verify each device reports the new digest, switch, then remove from devices no
longer used. Any failure restores the previous active revision everywhere. Every transition
is stored with its time; the deployment document is persisted after every transition, so an
orchestrator killed mid-apply resumes (or rolls back) the same revision after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from orchestrator import lifecycle, plan
from orchestrator.devices import DeviceRegistry
from orchestrator.errors import Conflict, NotFound, OrchestratorError, Unprocessable
from orchestrator.lifecycle import Event, State, Transition
from orchestrator.manifests import ManifestError, check_references, manifest_digest
from orchestrator.model import DeviceView, Manifest
from orchestrator.modules import ModuleRegistry
from orchestrator.placement import Infeasible, Placement, place
from orchestrator.solution import build_nodes
from orchestrator.store import Store
from orchestrator.supervisor_client import SupervisorClient
from supervisor.protocol import DeploymentNode

_LOGGER = logging.getLogger(__name__)


class Revision(msgspec.Struct):
    number: int
    manifest: Manifest
    digest: str
    state: State = State.QUEUED
    placement: Placement | None = None
    nodes: dict[str, DeploymentNode] = {}  # device id -> mini-manifest
    node_digests: dict[
        str, str | None
    ] = {}  # device id -> digest it acknowledged (None: reference)
    error: str | None = None
    failed_step: str | None = None
    timings: dict[str, float] = {}  # plan step id -> seconds
    settled: bool = False  # the whole plan (or its rollback) has run, cleanup included
    cause: str | None = None  # why the orchestrator itself made this revision (failover)


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


@dataclass
class _Queue:
    pending: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class Deployments:
    def __init__(
        self,
        store: Store,
        modules: ModuleRegistry,
        devices: DeviceRegistry,
        client: SupervisorClient,
        blob_url: Callable[[str], str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._modules = modules
        self._devices = devices
        self._client = client
        self._blob_url = blob_url
        self._clock = clock
        self._deployments: dict[str, Deployment] = {}
        self._queues: dict[str, _Queue] = {}
        self._changed = asyncio.Condition()

    # --- queries -------------------------------------------------------------------------

    def get(self, key: str) -> Deployment:
        """By id or by name."""
        dep = self._deployments.get(key) or next(
            (d for d in self._deployments.values() if d.name == key), None
        )
        if dep is None:
            raise NotFound(f"no deployment {key!r}", field="deployment")
        return dep

    def all(self) -> list[Deployment]:
        return sorted(self._deployments.values(), key=lambda d: d.name)

    def load_by_device(self, exclude: str | None = None) -> dict[str, int]:
        """How many active deployments each device hosts (placement spreads by it).

        A deployment's own current placement does not count against it, or each revision
        would push its steps away from where the previous one ran.
        """
        counts: dict[str, int] = {}
        for dep in self._deployments.values():
            if dep.active is not None and dep.id != exclude:
                for device in dep.revision(dep.active).nodes:
                    counts[device] = counts.get(device, 0) + 1
        return counts

    def desired_for(self, device_id: str) -> tuple[dict[str, tuple[str, DeploymentNode]], set[str]]:
        """What ``device_id`` should run (deployment id → (digest, node)), and the deployments
        whose revision is being applied right now (their plan owns the device meanwhile)."""
        desired: dict[str, tuple[str, DeploymentNode]] = {}
        busy: set[str] = set()
        for dep in self._deployments.values():
            if not dep.latest.settled:
                busy.add(dep.id)
                continue
            if dep.active is None:
                continue
            node = dep.revision(dep.active).nodes.get(device_id)
            if node is not None:
                desired[dep.id] = (_node_key(node), node)
        return desired, busy

    async def fail_over(self, device_id: str) -> list[str]:
        """A device was lost: re-place every deployment with a step on it."""
        moved = []
        for dep in list(self._deployments.values()):
            if dep.active is not None and device_id in dep.revision(dep.active).nodes:
                await self._resubmit(dep, f"failover: device {device_id} lost")
                moved.append(dep.id)
        return moved

    async def move_back(self, device_id: str) -> list[str]:
        """A device is back: re-place deployments that pin a step to it but run elsewhere."""
        device = self._devices.find(device_id)
        if device is None:
            return []
        moved = []
        for dep in list(self._deployments.values()):
            if dep.active is None:
                continue
            rev = dep.revision(dep.active)
            pinned = any(s.device in {device.id, device.name} for s in rev.manifest.sequence)
            if pinned and device_id not in rev.nodes:
                await self._resubmit(dep, f"move back: device {device.name} is healthy again")
                moved.append(dep.id)
        return moved

    def _compact(self, dep: Deployment) -> None:
        """Keep full detail (placement explanations, mini-manifests) only where it is used.

        The latest revision keeps everything; the active one keeps its mini-manifests (a
        rollback re-pushes them). Older revisions keep where their steps ran, not why: with
        100 steps over 100 devices the explanations alone are megabytes per revision, and
        the state file is rewritten on every transition.
        """
        for rev in dep.revisions[:-1]:
            if not rev.settled:
                continue  # a revision being applied still needs all of it
            if rev.placement is not None and any(s.candidates for s in rev.placement.steps):
                rev.placement = Placement(
                    steps=[msgspec.structs.replace(s, candidates=[]) for s in rev.placement.steps]
                )
            if rev.number != dep.active:
                rev.nodes = {}

    async def _resubmit(self, dep: Deployment, reason: str) -> None:
        self._compact(dep)
        latest = dep.latest
        revision = Revision(
            number=len(dep.revisions) + 1, manifest=latest.manifest, digest=latest.digest
        )
        revision.cause = reason
        dep.revisions.append(revision)
        _LOGGER.info("deployment %s: revision %d (%s)", dep.name, revision.number, reason)
        await self._persist(dep)
        self._enqueue(dep, revision.number)

    async def wait_settled(self, key: str, revision: int, timeout_s: float) -> Deployment:
        """Wait until ``revision`` reaches a terminal or ACTIVE state (or the deadline)."""
        dep = self.get(key)
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait_for(lambda: dep.revision(revision).settled)
        return dep

    # --- commands ------------------------------------------------------------------------

    async def load(self) -> None:
        """Restore deployments and resume every revision that was not finished."""
        for doc in await self._store.all("deployments"):
            dep = msgspec.convert(doc["deployment"], Deployment)
            self._deployments[dep.id] = dep
            for rev in dep.revisions:
                if not rev.settled:
                    self._enqueue(dep, rev.number)

    async def submit(
        self, manifest: Manifest, if_match: int | None = None
    ) -> tuple[Deployment, bool]:
        """Accept ``manifest``; returns its deployment and whether a revision was added."""
        try:
            check_references(manifest, self._modules.for_manifest(manifest))
        except ManifestError as err:
            raise Unprocessable(str(err), field=err.field) from err
        digest = manifest_digest(manifest)
        dep = next((d for d in self._deployments.values() if d.name == manifest.name), None)
        if dep is None:
            if if_match is not None:
                raise Conflict(f"deployment {manifest.name!r} does not exist yet", field="If-Match")
            dep = Deployment(id=uuid.uuid4().hex[:12], name=manifest.name)
            self._deployments[dep.id] = dep
        else:
            current = dep.latest.number
            if if_match is not None and if_match != current:
                raise Conflict(
                    f"stale revision: the current revision is {current}",
                    field="If-Match",
                    detail={"currentRevision": current},
                )
            if dep.latest.digest == digest and dep.latest.state not in lifecycle.TERMINAL:
                return dep, False
        self._compact(dep)
        revision = Revision(number=len(dep.revisions) + 1, manifest=manifest, digest=digest)
        dep.revisions.append(revision)
        await self._persist(dep)
        self._enqueue(dep, revision.number)
        return dep, True

    async def remove(self, key: str) -> None:
        dep = self.get(key)
        if dep.active is not None:
            rev = dep.revision(dep.active)
            results = await asyncio.gather(
                *(self._remove_from(dev, dep.id) for dev in rev.nodes), return_exceptions=True
            )
            for result in results:
                # A device that is down now is emptied by the reconciler once it answers.
                if isinstance(result, OrchestratorError):
                    _LOGGER.warning("removing %s: %s", dep.name, result.message)
                elif isinstance(result, BaseException):
                    raise result
        queue = self._queues.pop(dep.id, None)
        if queue is not None and queue.task is not None:
            queue.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await queue.task
        del self._deployments[dep.id]
        await self._store.delete("deployments", "id", dep.id)

    async def stop(self) -> None:
        tasks = [q.task for q in self._queues.values() if q.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- applying ------------------------------------------------------------------------

    def _enqueue(self, dep: Deployment, number: int) -> None:
        queue = self._queues.setdefault(dep.id, _Queue())
        queue.pending.put_nowait(number)
        if queue.task is None or queue.task.done():
            queue.task = asyncio.create_task(self._worker(dep.id), name=f"apply {dep.name}")

    async def _worker(self, dep_id: str) -> None:
        queue = self._queues[dep_id]
        while not queue.pending.empty():
            number = queue.pending.get_nowait()
            dep = self._deployments.get(dep_id)
            if dep is None:
                return
            rev = dep.revision(number)
            try:
                await self._apply(dep, rev)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must fail this revision, not the worker
                _LOGGER.exception("applying %s revision %d crashed", dep.name, number)
                if rev.state in {State.PLANNING, State.DEPLOYING}:
                    await self._fail(dep, rev, "internal error", "apply")
            rev.settled = True
            await self._persist(dep)
            async with self._changed:
                self._changed.notify_all()

    async def _transition(
        self,
        dep: Deployment,
        rev: Revision,
        event: Event,
        reason: str | None = None,
        step: str | None = None,
    ) -> None:
        record = lifecycle.apply(
            dep.events, rev.number, event, self._clock(), reason=reason, step=step
        )
        dep.events.append(record)
        rev.state = record.to
        await self._persist(dep)
        async with self._changed:
            self._changed.notify_all()

    async def _apply(self, dep: Deployment, rev: Revision) -> None:
        if rev.state == State.QUEUED:
            await self._transition(dep, rev, Event.START)
        if rev.state == State.PLANNING:
            try:
                await self._plan(dep, rev)
            except OrchestratorError as err:
                await self._fail(dep, rev, err.message, "plan")
                return
            await self._transition(dep, rev, Event.PLANNED)
        if rev.state == State.DEPLOYING:
            await self._deploy(dep, rev)
        elif rev.state == State.FAILED:  # resumed after a crash between FAIL and rollback
            await self._rollback(dep, rev, pushed=set(rev.nodes))

    async def _plan(self, dep: Deployment, rev: Revision) -> None:
        modules = self._modules.for_manifest(rev.manifest)
        load = self.load_by_device(exclude=dep.id)
        views = [d.view(load.get(d.id, 0)) for d in self._devices.all()]
        # Pure and CPU-bound (~0.1 s for 10,000 devices): off the event loop.
        result = await asyncio.to_thread(
            place, _relax_lost_pins(rev.manifest, views), modules, views
        )
        if isinstance(result, Infeasible):
            raise Unprocessable(result.message, detail=msgspec.to_builtins(result))
        rev.placement = result
        urls = {d.id: d.url for d in self._devices.all()}
        rev.nodes = build_nodes(
            dep.id, rev.manifest, result.devices(), modules, urls, self._blob_url
        )

    def _keys(self, dep: Deployment, number: int | None) -> dict[str, str]:
        """device id -> digest of the mini-manifest revision ``number`` puts there."""
        if number is None:
            return {}
        return {d: _node_key(n) for d, n in dep.revision(number).nodes.items()}

    async def _deploy(self, dep: Deployment, rev: Revision) -> None:
        steps = plan.plan_apply(self._keys(dep, dep.active), self._keys(dep, rev.number))
        pushed: set[str] = set()
        failure = await self._run_plan(dep, rev, steps, rev.nodes, pushed)
        if failure is not None:
            step, reason = failure
            await self._fail(dep, rev, reason, step, pushed)
            return
        _LOGGER.info("deployment %s revision %d is active", dep.name, rev.number)

    async def _run_plan(
        self,
        dep: Deployment,
        rev: Revision,
        steps: list[plan.PlanStep],
        nodes: Mapping[str, DeploymentNode],
        pushed: set[str],
    ) -> tuple[str, str] | None:
        """Run ``steps`` with every ready step in parallel; the first failure stops it."""
        done: set[str] = set()
        while len(done) < len(steps):
            ready = plan.ready(steps, done, set())
            pushed.update(s.device for s in ready if s.kind == "push" and s.device)
            results = await asyncio.gather(
                *(self._run_step(dep, rev, s, nodes) for s in ready), return_exceptions=True
            )
            for step, result in zip(ready, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    if not isinstance(result, OrchestratorError):
                        _LOGGER.error("plan step %s failed", step.id, exc_info=result)
                    reason = (
                        result.message if isinstance(result, OrchestratorError) else repr(result)
                    )
                    return step.id, reason
                done.add(step.id)
        return None

    async def _run_step(
        self,
        dep: Deployment,
        rev: Revision,
        step: plan.PlanStep,
        nodes: Mapping[str, DeploymentNode],
    ) -> None:
        started = time.perf_counter()
        try:
            if step.kind == "switch":
                await self._switch(dep, rev)
            elif step.kind == "remove" and step.device:
                # After the switch the revision stands; a device that cannot be emptied now
                # (e.g. it is down) is emptied by the reconciler when it answers again.
                try:
                    await self._remove_from(step.device, dep.id)
                except OrchestratorError as err:
                    _LOGGER.warning(
                        "leaving %s on %s for the reconciler: %s",
                        dep.name,
                        step.device,
                        err.message,
                    )
            elif step.device:
                device = self._devices.get(step.device)
                if step.kind == "push":
                    rev.node_digests[step.device] = await self._client.deploy(
                        device, nodes[step.device]
                    )
                else:
                    await self._client.verify(device, dep.id, rev.node_digests.get(step.device))
        finally:
            rev.timings[step.id] = round(time.perf_counter() - started, 4)

    async def _switch(self, dep: Deployment, rev: Revision) -> None:
        """Every device runs the new revision: it becomes the active one."""
        previous, dep.active = dep.active, rev.number
        self._update_jobs(dep, rev)
        if previous is not None and previous != rev.number:
            await self._transition(dep, dep.revision(previous), Event.SUPERSEDE)
        await self._transition(dep, rev, Event.APPLIED)

    async def _remove_from(self, device_id: str, dep_id: str) -> None:
        try:
            device = self._devices.get(device_id)
        except NotFound:
            return
        await self._client.undeploy(device, dep_id)

    async def _fail(
        self, dep: Deployment, rev: Revision, reason: str, step: str, pushed: set[str] | None = None
    ) -> None:
        rev.error, rev.failed_step = reason, step
        await self._transition(dep, rev, Event.FAIL, reason=reason, step=step)
        await self._rollback(dep, rev, pushed or set())

    async def _rollback(self, dep: Deployment, rev: Revision, pushed: set[str]) -> None:
        """Restore the previous active revision on every device the new one touched."""
        steps = plan.rollback_plan(self._keys(dep, dep.active), self._keys(dep, rev.number), pushed)
        old_nodes = dep.revision(dep.active).nodes if dep.active is not None else {}
        scratch = Revision(number=rev.number, manifest=rev.manifest, digest=rev.digest)
        failure = await self._run_plan(dep, scratch, steps, old_nodes, set())
        if failure is not None:
            await self._transition(
                dep, rev, Event.ROLLBACK_FAILED, reason=failure[1], step=failure[0]
            )
            return
        await self._transition(dep, rev, Event.ROLLED_BACK)

    def _update_jobs(self, dep: Deployment, rev: Revision) -> None:
        dep.jobs = {
            device: {
                "scheduled": f"sha256:{_node_key(node)}",
                "current": rev.node_digests.get(device),  # as the device reported it
            }
            for device, node in rev.nodes.items()
        }

    async def _persist(self, dep: Deployment) -> None:
        await self._store.put(
            "deployments", "id", {"id": dep.id, "deployment": msgspec.to_builtins(dep)}
        )


def _relax_lost_pins(manifest: Manifest, views: list[DeviceView]) -> Manifest:
    """Steps pinned to a lost device may run elsewhere until it is back (then they move back)."""
    lost = {v.id for v in views if v.status == "lost"} | {
        v.name for v in views if v.status == "lost"
    }
    if not any(step.device in lost for step in manifest.sequence):
        return manifest
    steps = [
        msgspec.structs.replace(s, device=None) if s.device in lost else s
        for s in manifest.sequence
    ]
    return msgspec.structs.replace(manifest, sequence=steps)


def _node_key(node: DeploymentNode) -> str:
    """A stable digest of a mini-manifest (what plan_apply compares between revisions)."""
    return hashlib.sha256(
        msgspec.json.encode(msgspec.to_builtins(node), order="sorted")
    ).hexdigest()


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
