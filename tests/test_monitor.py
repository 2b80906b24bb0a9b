"""orchestrator.monitor against a real supervisor process (SIGKILL and restart) and a slow
fake device, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.devices import Device, DeviceRegistry
from orchestrator.discovery import Discovery
from orchestrator.health import HealthState
from orchestrator.monitor import HealthMonitor
from supervisor.protocol import DESCRIPTION_PATH
from tests.registry_wait import Changes
from tests.support import SupervisorProcess


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def kinds(device: Device) -> list[str]:
    return [e["kind"] for e in device.events]


def status(device: Device) -> str:
    """Read through a call: mypy would otherwise keep narrowing a field the monitor mutates."""
    return device.health.status


def last_error(device: Device) -> str | None:
    return device.last_error


async def test_sigkilled_supervisor_is_lost_then_healthy_after_restart(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    sup = SupervisorProcess(tmp_path / "s", name="mon")
    again: SupervisorProcess | None = None
    registry = DeviceRegistry()
    monitor = HealthMonitor(
        registry, session, interval_s=0.2, lost_after=3, back_after=2, timeout_s=1.0
    )
    try:
        sup.start()
        await sup.wait_healthy()
        device = await Discovery(registry, session, interfaces=None).register_manual(
            "127.0.0.1", sup.port
        )
        changes = Changes(registry)
        await monitor.check_now()  # one round by hand, then the periodic task
        await monitor.start()
        assert device.health_report is not None
        assert device.rtt_ms is not None and device.rtt_ms > 0
        assert 0.0 <= device.view(0).cpu <= 1.0
        assert device.health.status == "healthy"

        sup.kill()
        await changes.until(
            lambda: device.health.status == "lost", monitor.detection_window_s + 5, "lost"
        )
        assert device.health.fail_streak >= 3
        assert device.last_error
        assert changes.seen == [(device.id, "lost")]
        assert kinds(device) == ["registered", "lost"]
        assert device.view(0).status == "lost"

        again = SupervisorProcess(sup.state_dir, port=sup.port, name="mon")
        again.start()
        await changes.until(lambda: device.health.status == "healthy", 20, "healthy again")
        assert device.health.ok_streak >= 2
        assert last_error(device) is None
        assert changes.seen == [(device.id, "lost"), (device.id, "healthy")]
        assert kinds(device) == ["registered", "lost", "healthy"]
    finally:
        await monitor.stop()
        sup.kill()
        if again is not None:
            again.kill()


async def test_slow_answer_counts_as_failure_and_check_now_applies_hysteresis(
    session: aiohttp.ClientSession,
) -> None:
    release = asyncio.Event()  # the slow handler never answers before the test ends
    slow = {"on": False}

    async def describe(_: web.Request) -> web.Response:
        return web.json_response({"id": "slow-1", "apiVersion": 1})

    async def health(_: web.Request) -> web.Response:
        if slow["on"]:
            await release.wait()
        return web.json_response({"cpuUsage": 0.5, "memoryUsage": 0.25})

    app = web.Application()
    app.router.add_get(DESCRIPTION_PATH, describe)
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    registry = DeviceRegistry()
    monitor = HealthMonitor(registry, session, lost_after=2, back_after=2, timeout_s=0.2)
    try:
        assert server.port is not None
        device = await Discovery(registry, session, interfaces=None).register_manual(
            "127.0.0.1", server.port
        )
        await monitor.check_now()
        assert device.health == HealthState("healthy", ok_streak=1, fail_streak=0)
        assert device.view(0).cpu == 0.5

        slow["on"] = True
        await monitor.check_now()
        assert device.health == HealthState("healthy", ok_streak=0, fail_streak=1)
        assert device.last_error == "no answer within 0.2 s"
        assert device.health_report == {"cpuUsage": 0.5, "memoryUsage": 0.25}  # last good kept
        await monitor.check_now()
        assert device.health.status == "lost"
        assert kinds(device) == ["registered", "lost"]

        slow["on"] = False
        await monitor.check_now()
        assert status(device) == "lost"  # one success is not enough
        await monitor.check_now()
        assert status(device) == "healthy"
        assert kinds(device) == ["registered", "lost", "healthy"]
    finally:
        release.set()
        await monitor.stop()
        await server.close()


async def test_bad_reports_fail_and_moved_devices_are_skipped(
    session: aiohttp.ClientSession,
) -> None:
    registry = DeviceRegistry()

    def move_while_checked() -> web.Response:
        # Discovery moves the device while its check is in flight: the outcome belongs to
        # the old address and must not count for (or against) the new one.
        registry.upsert_from_description({"id": "bad-1"}, host="127.0.0.1", port=1, source="manual")
        return web.Response(status=503)

    answers = [
        lambda: web.Response(text="nope"),
        lambda: web.json_response([1]),
        lambda: web.Response(status=503),
        move_while_checked,
    ]

    async def health(_: web.Request) -> web.Response:
        return answers.pop(0)()

    app = web.Application()
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monitor = HealthMonitor(registry, session, lost_after=4, back_after=1, timeout_s=1.0)
    try:
        assert server.port is not None
        device = registry.upsert_from_description(
            {"id": "bad-1"}, host="127.0.0.1", port=server.port, source="manual"
        )
        for n, error in enumerate(["not JSON", "not a JSON object", "HTTP 503"], start=1):
            await monitor.check_now()
            assert device.last_error is not None and error in device.last_error
            assert device.health.fail_streak == n
        await monitor.check_now()
        assert device.port == 1
        assert device.health.fail_streak == 3  # the moved device's check was not applied
        assert device.health.status == "healthy"
        assert answers == []
    finally:
        await server.close()


def test_rejects_nonsense_settings() -> None:
    registry = DeviceRegistry()
    with pytest.raises(ValueError, match="interval"):
        HealthMonitor(registry, None, interval_s=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thresholds"):
        HealthMonitor(registry, None, lost_after=0)  # type: ignore[arg-type]


async def test_checks_carry_the_fleet_token_when_there_is_one(
    session: aiohttp.ClientSession,
) -> None:
    """A supervisor with a token counts only authenticated checks as the orchestrator's;
    without the token on its checks every device would re-register each renewal period."""
    seen: list[str | None] = []

    async def health(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"cpuUsage": 0.1})

    app = web.Application()
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        with_token = HealthMonitor(DeviceRegistry(), session, token="fleet-s3cret")
        without = HealthMonitor(DeviceRegistry(), session)
        assert (await with_token.check(url)).ok
        assert (await without.check(url)).ok
        assert seen == ["Bearer fleet-s3cret", None]
    finally:
        await server.close()
