"""The control loop that converges what devices run to what the deployments schedule.

Theory of operation. Level-triggered: each cycle for a device re-reads the desired state
(every settled, active revision's mini-manifest for that device) and the observed state (the
device's own ``GET /deploy``), and applies :func:`orchestrator.plan.reconcile` — deploy what
is missing or different, remove what should not be there. So a missed event costs at most
one interval, never correctness. One serial worker per device, all devices in parallel;
a worker is woken early by device events (found, back, address changed) and sleeps with
capped exponential backoff after failures. Deployments whose latest revision is still being
applied are left alone: their plan owns those devices until it settles.

Failover: when a device is lost, every deployment with a step there gets a new revision
(same manifest; placement skips lost devices and relaxes pins to them). When the device is
healthy again, deployments that pinned a step to it get a new revision that moves it back.

Reference wasmiot supervisors have no ``GET /deploy``; they are not reconciled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from orchestrator import plan
from orchestrator.deployments import Deployments
from orchestrator.devices import Device, DeviceRegistry
from orchestrator.errors import OrchestratorError
from orchestrator.supervisor_client import SupervisorClient

_LOGGER = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        deployments: Deployments,
        devices: DeviceRegistry,
        client: SupervisorClient,
        *,
        interval_s: float = 10.0,
        base_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._deployments = deployments
        self._devices = devices
        self._client = client
        self._interval = interval_s
        self._base = base_backoff_s
        self._cap = max_backoff_s
        self._wake: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self.cycles = 0  # completed reconcile cycles, for tests and metrics

    def start(self) -> None:
        self._running = True
        for device in self._devices.all():
            self._ensure_worker(device.id)

    def on_device_event(self, device: Device, kind: str) -> None:
        """Registry listener: wake the device's worker, and fail over or back as needed."""
        if not self._running:
            return
        if kind == "removed":
            worker = self._workers.pop(device.id, None)
            if worker is not None:
                worker.cancel()
            return
        self._ensure_worker(device.id)
        self.wake(device.id)
        if kind == "lost":
            self._spawn(self._deployments.fail_over(device.id), f"failover {device.name}")
        elif kind == "healthy":
            self._spawn(self._deployments.move_back(device.id), f"move back {device.name}")

    def wake(self, device_id: str | None = None) -> None:
        """Run a cycle now for one device (or all)."""
        for dev_id, event in self._wake.items():
            if device_id is None or dev_id == device_id:
                event.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    def _ensure_worker(self, device_id: str) -> None:
        worker = self._workers.get(device_id)
        if worker is None or worker.done():
            self._wake.setdefault(device_id, asyncio.Event())
            self._workers[device_id] = asyncio.create_task(
                self._worker(device_id), name=f"reconcile {device_id}"
            )

    async def _worker(self, device_id: str) -> None:
        failures = 0
        event = self._wake[device_id]
        while self._running:
            event.clear()
            device = self._devices.find(device_id)
            if device is None:
                return
            delay = self._interval
            try:
                await self.reconcile(device)
                failures = 0
            except OrchestratorError as err:
                failures += 1
                delay = min(self._base * 2 ** (failures - 1), self._cap)
                log = _LOGGER.warning if failures == 1 else _LOGGER.debug
                log(
                    "reconciling %s failed (%s); retrying in %.1f s",
                    device.name,
                    err.message,
                    delay,
                )
            self.cycles += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await event.wait()

    async def reconcile(self, device: Device) -> list[plan.Action]:
        """One cycle for ``device``; returns the actions it took."""
        if not device.api_version or device.health.status != "healthy":
            return []
        desired, busy = self._deployments.desired_for(device.id)
        observed = {
            dep: digest.removeprefix("sha256:")
            for dep, digest in (await self._client.listing(device)).items()
            if dep not in busy
        }
        actions = plan.reconcile({d: key for d, (key, _) in desired.items()}, observed)
        taken = []
        for action in actions:
            async with self._deployments.holding(action.deployment) as held:
                # What to do was decided before the listing came back: a revision may have
                # started (or the deployment gone) since. Decide again, holding it still.
                desired, busy = self._deployments.desired_for(device.id)
                if not held or action.deployment in busy:
                    continue
                if action.kind == "remove":
                    if action.deployment in desired:
                        continue
                    _LOGGER.info("removing leftover %s from %s", action.deployment, device.name)
                    await self._client.undeploy(device, action.deployment)
                else:
                    if action.deployment not in desired:
                        continue
                    _LOGGER.info("redeploying %s to %s", action.deployment, device.name)
                    await self._client.deploy(device, desired[action.deployment][1])
                taken.append(action)
        return taken

    async def stop(self) -> None:
        self._running = False
        tasks = [*self._workers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("%s failed: %s", task.get_name(), task.exception())
