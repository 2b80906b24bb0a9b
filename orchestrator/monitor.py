"""Health checks: ``GET /health`` on every device, every interval, folded through hysteresis.

Liveness comes from here, not from mDNS (a SIGKILLed device's mDNS record lingers ~19
minutes). A check succeeds when the device answers 200 with a JSON object within
``timeout_s``; a refused connection, a timeout, another status or a malformed body is a
failure. :func:`orchestrator.health.observe` turns the outcomes into ``healthy``/``lost``,
so the detection window is about ``interval_s * lost_after + timeout_s``
(:attr:`HealthMonitor.detection_window_s`).

Each round checks all devices concurrently (capped), each against its current URL only:
when a device moves, discovery updates its address and the next round follows it. Results
are applied after the round; a device that was removed or moved while its check ran is
skipped, so a check of a stale address never counts against the new one. Listeners are
told only about status changes; reports and RTTs are updated in place (the lead persists
on status changes and needs no write every few seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from orchestrator.devices import Device, DeviceRegistry
from orchestrator.health import observe

__all__ = ["MAX_REPORT_BYTES", "CheckResult", "HealthMonitor"]

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 1 << 20
"""A health report lists deployments; 1 MiB is far beyond any real one."""


class CheckResult(msgspec.Struct, frozen=True):
    """The outcome of one ``GET /health``."""

    ok: bool
    report: dict[str, Any] | None = None
    rtt_ms: float | None = None
    error: str | None = None


class HealthMonitor:
    """Checks every registered device's health in a background task.

    ``clock`` stamps events and ``checked_at``; RTTs use the loop's monotonic clock.
    :meth:`check_now` runs one round (tests call it directly, and it is safe to call while
    the background task runs: rounds never overlap).
    """

    def __init__(
        self,
        registry: DeviceRegistry,
        session: aiohttp.ClientSession,
        *,
        interval_s: float = 5.0,
        lost_after: int = 3,
        back_after: int = 2,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        concurrency: int = 256,
        token: str | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or lost_after < 1 or back_after < 1:
            raise ValueError("interval and timeout must be > 0, thresholds >= 1")
        self._registry = registry
        self._session = session
        self._interval = interval_s
        self._lost_after = lost_after
        self._back_after = back_after
        self._timeout_s = timeout_s
        self._clock = clock
        # A supervisor with the fleet token counts only authenticated checks as the
        # orchestrator's (anything else would make it re-register every renewal period).
        self._headers = {"Accept": "application/json"} | (
            {"Authorization": f"Bearer {token}"} if token else {}
        )
        # Bounds sockets in flight on a big fleet; the rest queue within the round.
        self._limit = asyncio.Semaphore(concurrency)
        self._round = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def detection_window_s(self) -> float:
        """Worst-case time from a device dying to it being marked lost."""
        return self._interval * self._lost_after + self._timeout_s

    async def start(self) -> None:
        """Start the periodic task (first round at once). Idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        """Cancel the periodic task and wait for it. Safe to call repeatedly."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.check_now()
            except Exception:
                # A bug in one round must not end health checking for good.
                log.exception("health round failed")
            # A period, not synchronisation: rounds start every interval_s (or right away
            # when a round took longer than that).
            await asyncio.sleep(max(0.0, self._interval - (loop.time() - started)))

    async def check_now(self) -> None:
        """Check every device once, concurrently, and apply the outcomes."""
        async with self._round:
            # The orchestrator's core device is this process: always healthy, never checked.
            devices = [d for d in self._registry.all() if not d.core]
            urls = [d.url for d in devices]
            results = await asyncio.gather(*(self.check(url) for url in urls))
            for device, url, result in zip(devices, urls, results, strict=True):
                if self._registry.find(device.id) is not device or device.url != url:
                    continue  # removed or moved while we were checking
                self._apply(device, result)

    async def check(self, base_url: str) -> CheckResult:
        """One ``GET {base_url}/health`` with the timeout; never raises (but cancels)."""
        loop = asyncio.get_running_loop()
        async with self._limit:
            started = loop.time()
            try:
                report = await self._get_report(f"{base_url}/health")
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                detail = str(err) or type(err).__name__
                if isinstance(err, TimeoutError):
                    detail = f"no answer within {self._timeout_s:g} s"
                return CheckResult(ok=False, error=detail)
            rtt_ms = (loop.time() - started) * 1000.0
        return CheckResult(ok=True, report=report, rtt_ms=rtt_ms)

    async def _get_report(self, url: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        async with self._session.get(url, timeout=timeout, headers=self._headers) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_REPORT_BYTES:
                    raise ValueError(f"health report larger than {MAX_REPORT_BYTES} bytes")
        try:
            data = json.loads(body)
        except ValueError as err:
            raise ValueError(f"health report is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError("health report is not a JSON object")
        return data

    def _apply(self, device: Device, result: CheckResult) -> None:
        device.health, changed = observe(
            device.health, result.ok, lost_after=self._lost_after, back_after=self._back_after
        )
        device.checked_at = self._clock()
        if result.ok:
            device.health_report = result.report
            device.rtt_ms = result.rtt_ms
            device.last_error = None
        else:
            # Keep the last good report and RTT: the status says they are stale.
            device.last_error = result.error
        if not changed:
            return
        if device.health.status == "lost":
            detail = f"{self._lost_after} failed checks in a row; last: {result.error}"
            self._registry.record(device, "lost", detail, notify=True)
        else:
            detail = f"{self._back_after} good checks in a row; rtt {result.rtt_ms or 0:.1f} ms"
            self._registry.record(device, "healthy", detail, notify=True)
