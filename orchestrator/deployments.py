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
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from orchestrator import jobs, lifecycle, plan
from orchestrator.devices import Device, DeviceRegistry
from orchestrator.errors import (
    Conflict,
    DeviceUnavailable,
    NotFound,
    OrchestratorError,
    Timeout,
    Unprocessable,
)
from orchestrator.gate import ExecutionGate
from orchestrator.lifecycle import Event, State
from orchestrator.manifests import (
    ManifestError,
    check_references,
    immutable_change,
    manifest_digest,
)
from orchestrator.model import DeviceView, Manifest
from orchestrator.modules import ModuleRegistry
from orchestrator.partitions import choose_partition, place_partitions
from orchestrator.placement import Infeasible
from orchestrator.revisions import (
    Deployment,
    Revision,
    explain,
    partition_count,
    without_candidates,
)
from orchestrator.solution import build_nodes
from orchestrator.store import Store
from orchestrator.supervisor_client import SupervisorClient
from supervisor.protocol import DeploymentNode, node_digest

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = ["Deployment", "Deployments", "Revision", "explain"]


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
        drain_s: float = 60.0,
        retry_s: float = 30.0,
    ) -> None:
        """``drain_s``: how long a revision waits for running executions before it changes
        what the devices run (their deadline; they cannot run longer). ``retry_s``: how long
        a push or verify keeps calling a device that does not answer (and is not lost)."""
        self._store = store
        self._modules = modules
        self._devices = devices
        self._client = client
        self._blob_url = blob_url
        self._clock = clock
        self._deployments: dict[str, Deployment] = {}
        self._queues: dict[str, _Queue] = {}
        self._changed = asyncio.Condition()
        self._gates: dict[str, ExecutionGate] = {}
        self._drain_s = drain_s
        self._retry_s = retry_s
        # Held while a revision is applied, and by the reconciler while it changes a device
        # for the deployment: the two never push to one device at once.
        self._locks: dict[str, asyncio.Lock] = {}
        self._turns: dict[str, int] = {}  # deployment id -> executions started (round robin)
        self._unfinished: list[tuple[str, int]] = []  # found by load(), until resume()

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
                for key in dep.revision(dep.active).nodes:
                    device = jobs.device_of(key)
                    counts[device] = counts.get(device, 0) + 1
        return counts

    def desired_for(self, device_id: str) -> tuple[dict[str, tuple[str, DeploymentNode]], set[str]]:
        """What ``device_id`` should run (device-side deployment id → (digest, node)), and the
        device-side ids of deployments whose revision is being applied right now (their plan
        owns the device meanwhile). Device-side ids are per partition (``orchestrator.jobs``)."""
        desired: dict[str, tuple[str, DeploymentNode]] = {}
        busy: set[str] = set()
        for dep in self._deployments.values():
            if not dep.latest.settled:
                busy.update(jobs.remote_id(dep.id, k) for k in range(partition_count(dep)))
                continue
            if dep.active is None:
                continue
            for key, node in dep.revision(dep.active).nodes.items():
                if jobs.device_of(key) == device_id:
                    desired[node.deploymentId] = (node_digest(node), node)
        return desired, busy

    async def fail_over(self, device_id: str) -> list[str]:
        """A device was lost: re-place every deployment with a step on it — in its active
        revision, or in the revision being applied (which cannot finish there now: the
        new revision, queued behind it, places the step elsewhere)."""
        moved = []
        for dep in list(self._deployments.values()):
            if self._deployments.get(dep.id) is not dep:
                continue  # deleted while an earlier one was resubmitted
            active = dep.active is not None and device_id in dep.revision(dep.active).devices()
            applying = not dep.latest.settled and device_id in dep.latest.devices()
            if active or applying:
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
            if dep.active is None or self._deployments.get(dep.id) is not dep:
                continue
            rev = dep.revision(dep.active)
            pinned = any(s.device in {device.id, device.name} for s in rev.manifest.sequence)
            if pinned and device_id not in rev.devices():
                await self._resubmit(dep, f"move back: device {device.name} is healthy again")
                moved.append(dep.id)
        return moved

    async def _recheck(self, dep: Deployment, rev: Revision) -> None:
        """Failover and move-back, level-triggered, for a revision that just became active.

        :meth:`fail_over` and :meth:`move_back` react to one status change, judged against
        the revisions as they stand at that moment; a change that lands while a revision is
        queued, planned or pushed can be judged against the wrong one. (Seen: a pinned
        device healthy again while its failover revision was still deploying kept its step
        on the other device for good, because the active revision then still used it.) So
        once a revision is ACTIVE with nothing queued behind it, the device statuses of now
        are checked against it once more. A failover that cannot be placed makes no revision
        active, so this cannot loop.
        """
        queue = self._queues.get(dep.id)
        if rev.state != State.ACTIVE or dep.active != rev.number:
            return
        if self._deployments.get(dep.id) is not dep:
            return  # deleted meanwhile
        if queue is not None and not queue.pending.empty():
            return  # a later revision is queued: it is checked when it settles
        for device_id in sorted(rev.devices()):
            device = self._devices.find(device_id)
            if device is not None and device.health.status == "lost":
                await self._resubmit(dep, f"failover: device {device_id} lost")
                return
        for device in self._devices.all():
            if device.health.status != "healthy" or device.cordoned:
                continue
            if any(s.device in {device.id, device.name} for s in rev.manifest.sequence) and (
                device.id not in rev.devices()
            ):
                await self._resubmit(dep, f"move back: device {device.name} is healthy again")
                return

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
                rev.placement = without_candidates(rev.placement)
                rev.more = [without_candidates(p) for p in rev.more]
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

    # --- executions ----------------------------------------------------------------------

    async def enter_execution(self, key: str, wait_s: float) -> Deployment:
        """Take an execution slot on deployment ``key`` (id or name) and return it.

        While its devices change revision the slot waits (up to ``wait_s``, then a 504), so
        an execution follows one revision's chain, start to end. Every slot taken must be
        given back with :meth:`leave_execution`.
        """
        dep = self.get(key)
        gate = self._gate(dep.id)
        if not await gate.enter(wait_s):
            raise Timeout(
                f"deployment {dep.name} is still changing revision after {wait_s:g} s; try again",
                field="deployment",
            )
        if self._deployments.get(dep.id) is not dep:  # deleted while the slot waited
            gate.leave()
            raise NotFound(f"no deployment {key!r}", field="deployment")
        return dep

    def entry(self, dep: Deployment) -> tuple[int, str]:
        """Where the next execution of ``dep`` starts: ``(partition, job key of its first
        step)`` in the active revision. Executions take the partitions whose devices are all
        healthy in turn (round robin), so N partitions share the load and a lost device's
        partition is skipped until failover has re-placed it."""
        if dep.active is None:
            raise Unprocessable(
                f"deployment {dep.name} has no active revision yet", field="deployment"
            )
        chains = [p.devices() for p in dep.revision(dep.active).placements()]
        if not chains:
            raise Unprocessable("the active revision has no placement", field="deployment")
        # Only the chains' own devices matter: look those up, not the whole (sorted) fleet,
        # on every execution.
        unhealthy = {
            device_id
            for chain in chains
            for device_id in chain
            if (device := self._devices.find(device_id)) is not None
            and device.health.status != "healthy"
        }
        turn = self._turns.get(dep.id, 0)
        self._turns[dep.id] = turn + 1
        k = choose_partition(chains, unhealthy, turn)
        return k, jobs.job_key(chains[k][0], k)

    def leave_execution(self, dep_id: str) -> None:
        gate = self._gates.get(dep_id)
        if gate is not None:
            gate.leave()

    def _lock(self, dep_id: str) -> asyncio.Lock:
        return self._locks.setdefault(dep_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def holding(self, dep_id: str) -> AsyncIterator[bool]:
        """For the reconciler: keep deployment ``dep_id``'s revisions from being applied
        while it changes a device for it. Yields False, holding nothing, when a revision is
        being applied right now (that plan owns the devices; the next cycle looks again).
        Re-read :meth:`desired_for` inside: it may have changed while the caller waited."""
        lock = self._lock(jobs.parent_deployment(dep_id)[0])  # a device-side id is fine too
        if lock.locked():
            yield False
            return
        async with lock:
            yield True

    def _gate(self, dep_id: str) -> ExecutionGate:
        return self._gates.setdefault(dep_id, ExecutionGate())

    async def _close_gate(self, dep: Deployment) -> None:
        if not await self._gate(dep.id).close(self._drain_s):
            _LOGGER.warning(
                "deployment %s: executions still running after %.0f s; changing it anyway",
                dep.name,
                self._drain_s,
            )

    # --- commands ------------------------------------------------------------------------

    async def load(self, *, resume: bool = True) -> None:
        """Restore deployments; every revision that was not finished is resumed now, or with
        ``resume=False`` by :meth:`resume` (once the API listens: a resumed push makes
        devices download blobs from it)."""
        for doc in await self._store.all("deployments"):
            dep = msgspec.convert(doc["deployment"], Deployment)
            self._deployments[dep.id] = dep
            for rev in dep.revisions:
                if not rev.settled:
                    if rev.state in {State.DEPLOYING, State.FAILED}:
                        # A crash left the devices mid-change: no execution until it is over.
                        self._gate(dep.id).hold()
                    self._unfinished.append((dep.id, rev.number))
        if resume:
            self.resume()

    def resume(self) -> None:
        """Apply the revisions :meth:`load` found unfinished (each once)."""
        unfinished, self._unfinished = self._unfinished, []
        for dep_id, number in unfinished:
            dep = self._deployments.get(dep_id)
            if dep is not None:
                self._enqueue(dep, number)

    async def submit(
        self, manifest: Manifest, if_match: int | None = None
    ) -> tuple[Deployment, int | None]:
        """Accept ``manifest``; returns its deployment and the number of the revision it
        added (None: the same content is already there). The number is this request's even
        when the orchestrator adds a revision of its own (failover) right after it."""
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
                return dep, None
            changed = immutable_change(dep.latest.manifest, manifest)
            if changed is not None:
                was = getattr(dep.latest.manifest, changed)
                raise Conflict(
                    f"{changed} cannot change once deployed (it is {was!r}, the request asks for "
                    f"{getattr(manifest, changed)!r}); undeploy {dep.name} first",
                    field=changed,
                    detail={"field": changed, "deployed": was},
                )
        self._compact(dep)
        revision = Revision(number=len(dep.revisions) + 1, manifest=manifest, digest=digest)
        dep.revisions.append(revision)
        await self._persist(dep)
        self._enqueue(dep, revision.number)
        return dep, revision.number

    async def remove(self, key: str) -> None:
        dep = self.get(key)
        # Stop the revision being applied first, so nothing is pushed after the removal; the
        # devices it may have reached are emptied below with the active ones.
        queue = self._queues.pop(dep.id, None)
        if queue is not None and queue.task is not None:
            queue.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await queue.task
        hosts = set(dep.revision(dep.active).nodes) if dep.active is not None else set()
        if not dep.latest.settled:
            hosts |= set(dep.latest.nodes)
        async with self._lock(dep.id):  # and no reconciler push for it is in flight
            results = await asyncio.gather(
                *(self._remove_job(dep.id, key) for key in sorted(hosts)),
                return_exceptions=True,
            )
        for result in results:
            # A device that is down now is emptied by the reconciler once it answers.
            if isinstance(result, OrchestratorError):
                _LOGGER.warning("removing %s: %s", dep.name, result.message)
            elif isinstance(result, BaseException):
                raise result
        del self._deployments[dep.id]
        self._locks.pop(dep.id, None)
        self._turns.pop(dep.id, None)
        gate = self._gates.pop(dep.id, None)
        if gate is not None:
            gate.open()  # waiting executions wake up and find it gone
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
            lock = self._lock(dep_id)
            await lock.acquire()  # waits for a reconciler push to this deployment to finish
            try:
                await self._apply(dep, rev)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must fail this revision, not the worker
                _LOGGER.exception("applying %s revision %d crashed", dep.name, number)
                if rev.state in {State.PLANNING, State.DEPLOYING}:
                    await self._fail(dep, rev, "internal error", "apply")
            finally:
                lock.release()
                gate = self._gates.get(dep_id)
                if gate is not None:
                    gate.open()
            rev.settled = True
            await self._persist(dep)
            async with self._changed:
                self._changed.notify_all()
            await self._recheck(dep, rev)

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
        keep: list[list[str]] = []
        if rev.cause is not None and dep.active is not None:
            # The orchestrator's own revision (failover, move back): what is fine stays put.
            keep = [p.devices() for p in dep.revision(dep.active).placements()]
        result = await asyncio.to_thread(
            functools.partial(
                place_partitions, _relax_lost_pins(rev.manifest, views), modules, views, keep=keep
            )
        )
        if isinstance(result, Infeasible):
            raise Unprocessable(result.message, detail=msgspec.to_builtins(result))
        rev.placement, rev.more = result[0], result[1:]
        urls = {d.id: d.url for d in self._devices.all()}
        nodes: dict[str, DeploymentNode] = {}
        for k, placement in enumerate(result):
            built = build_nodes(
                jobs.remote_id(dep.id, k),
                rev.manifest,
                placement.devices(),
                modules,
                urls,
                self._blob_url,
            )
            nodes.update({jobs.job_key(device, k): node for device, node in built.items()})
        rev.nodes = nodes

    def _keys(self, dep: Deployment, number: int | None) -> dict[str, str]:
        """device id -> digest of the mini-manifest revision ``number`` puts there."""
        if number is None:
            return {}
        return {d: node_digest(n) for d, n in dep.revision(number).nodes.items()}

    async def _deploy(self, dep: Deployment, rev: Revision) -> None:
        steps = plan.plan_apply(self._keys(dep, dep.active), self._keys(dep, rev.number))
        if any(s.kind == "push" for s in steps):
            await self._close_gate(dep)  # opened again at the switch, or after the rollback
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
                    await self._remove_job(dep.id, step.device)
                except OrchestratorError as err:
                    _LOGGER.warning(
                        "leaving %s on %s for the reconciler: %s",
                        dep.name,
                        step.device,
                        err.message,
                    )
            elif step.device:
                key = step.device  # a job key: the device, and the partition it is for
                device_id, partition = jobs.parse_job_key(key)
                if step.kind == "push":
                    node = nodes[key]
                    rev.node_digests[key] = await self._patiently(
                        device_id, lambda device: self._client.deploy(device, node)
                    )
                else:
                    digest = rev.node_digests.get(key)
                    remote = jobs.remote_id(dep.id, partition)
                    await self._patiently(
                        device_id, lambda device: self._client.verify(device, remote, digest)
                    )
        finally:
            rev.timings[step.id] = round(time.perf_counter() - started, 4)

    async def _patiently(self, device_id: str, call: Callable[[Device], Awaitable[T]]) -> T:
        """``call`` the device; while it does not answer at all (it is restarting, say),
        call again with capped backoff — until it answers, the health monitor declares it
        lost, or ``retry_s`` passes. A refusal is an answer: it fails at once. A device
        that restarted mid-push either kept the deployment (persisted before its 200) or
        never had it; pushing the same content again is a no-op there, so this is safe.
        """
        deadline = time.monotonic() + self._retry_s
        delay = 0.1
        while True:
            device = self._devices.get(device_id)  # its address may have changed meanwhile
            try:
                return await call(device)
            except DeviceUnavailable as err:
                if device.health.status == "lost":
                    raise DeviceUnavailable(f"{err.message} (the device is lost)") from err
                if time.monotonic() + delay > deadline:
                    raise DeviceUnavailable(
                        f"{err.message} (no answer for {self._retry_s:g} s)"
                    ) from err
                await asyncio.sleep(delay)  # backoff before the next attempt
                delay = min(delay * 2, 2.0)

    async def _switch(self, dep: Deployment, rev: Revision) -> None:
        """Every device runs the new revision: it becomes the active one."""
        previous, dep.active = dep.active, rev.number
        self._update_jobs(dep, rev)
        if previous is not None and previous != rev.number:
            await self._transition(dep, dep.revision(previous), Event.SUPERSEDE)
        await self._transition(dep, rev, Event.APPLIED)
        gate = self._gates.get(dep.id)
        if gate is not None:
            gate.open()  # every device runs this revision: executions may follow its chain

    async def _remove_job(self, dep_id: str, key: str) -> None:
        device_id, partition = jobs.parse_job_key(key)
        await self._remove_from(device_id, jobs.remote_id(dep_id, partition))

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
        if steps:
            await self._close_gate(dep)  # already closed when the failure came mid-push
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
                "scheduled": f"sha256:{node_digest(node)}",
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
