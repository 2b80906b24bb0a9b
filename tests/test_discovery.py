"""orchestrator.discovery against real supervisor processes, over real mDNS on 127.0.0.1.

Network rule: zeroconf binds 127.0.0.1 only, on both sides; HTTP goes to 127.0.0.1 only.
Other tests on this machine may advertise on loopback too, so assertions look only at the
devices these tests started (by id).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.devices import DeviceRegistry
from orchestrator.discovery import (
    TXT_VALUE_MAX,
    DeviceUnreachable,
    Discovery,
    _candidate_addresses,
    decode_txt,
)
from supervisor.protocol import API_VERSION, DESCRIPTION_PATH
from tests.conftest import free_port
from tests.registry_wait import Changes
from tests.support import SupervisorProcess

MDNS_ON = ["--mdns-interfaces", "127.0.0.1"]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def description_of(session: aiohttp.ClientSession, sup: SupervisorProcess) -> dict[str, Any]:
    async with session.get(sup.url + DESCRIPTION_PATH) as r:
        assert r.status == 200
        data: dict[str, Any] = await r.json()
        return data


async def test_three_supervisors_found_restart_on_other_port_and_manual_fourth(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    tag = uuid.uuid4().hex[:8]
    sups = [
        SupervisorProcess(tmp_path / f"s{i}", name=f"bt-{tag}-{i}", extra=MDNS_ON) for i in range(3)
    ]
    manual = SupervisorProcess(tmp_path / "s3", name=f"bt-{tag}-3")  # mDNS off
    restarted: list[SupervisorProcess] = []
    registry = DeviceRegistry()
    changes = Changes(registry)
    discovery = Discovery(registry, session, interfaces=["127.0.0.1"], timeout_s=2.0)
    try:
        # Browse first, then start everything at once: the ~2 s mDNS probes overlap.
        await discovery.start()
        for sup in [*sups, manual]:
            sup.start()
        await asyncio.gather(*(sup.wait_healthy() for sup in [*sups, manual]))
        ids = [(await description_of(session, sup))["id"] for sup in sups]
        assert len(set(ids)) == 3

        await changes.until(
            lambda: all(registry.find(i) is not None for i in ids), 15, "three devices"
        )
        for sup, device_id in zip(sups, ids, strict=True):
            device = registry.find(device_id)
            assert device is not None
            assert (device.host, device.port) == ("127.0.0.1", sup.port)
            assert device.url == sup.url
            assert device.name == sup.name
            assert device.api_version == API_VERSION
            assert device.mdns_name is not None and device.mdns_name.startswith(sup.name)
            assert device.addresses[0] == "127.0.0.1"
            assert device.description["platform"]["memory"]["bytes"] > 0
            view = device.view(deployments=0)
            assert view.id == device_id and view.status == "healthy"
            assert "fd_write" in view.interfaces  # WASI is always offered
            assert [e["kind"] for e in device.events] == ["discovered"]
            assert discovery.announced_at[device_id] > 0

        # Restart two on other ports with the same state (same id): one stopped cleanly
        # (its mDNS goodbye is a recorded hint), one SIGKILLed (no goodbye; its old
        # records are still cached when the new announcement replaces them).
        sups[0].terminate()
        sups[1].kill()
        restarted = [
            SupervisorProcess(sup.state_dir, name=sup.name, extra=MDNS_ON) for sup in sups[:2]
        ]
        for old, new in zip(sups, restarted, strict=False):
            assert new.port != old.port
            new.start()
        await asyncio.gather(*(new.wait_healthy() for new in restarted))
        moved = [registry.find(i) for i in ids[:2]]
        await changes.until(
            lambda: [d.port if d else None for d in moved] == [r.port for r in restarted],
            15,
            "the new ports",
        )
        for old, new, device in zip(sups, restarted, moved, strict=False):
            assert device is not None
            change = next(e for e in device.events if e["kind"] == "address-changed")
            assert change["detail"] == f"{old.url} -> {new.url}"
            assert (device.id, "address-changed") in changes.seen
        stopped_cleanly = moved[0]
        assert stopped_cleanly is not None
        assert "mdns-removed" in [e["kind"] for e in stopped_cleanly.events]
        assert sum(registry.find(i) is not None for i in ids) == 3  # no duplicate device

        # The fourth, mDNS off, registered by hand.
        fourth_id = (await description_of(session, manual))["id"]
        assert registry.find(fourth_id) is None
        device = await discovery.register_manual("127.0.0.1", manual.port)
        assert device.id == fourth_id
        assert registry.find(fourth_id) is device
        assert device.url == manual.url
        assert [e["kind"] for e in device.events] == ["registered"]
        assert (fourth_id, "registered") in changes.seen
        # Registering again changes nothing and tells nobody.
        before = len(changes.seen)
        assert await discovery.register_manual("127.0.0.1", manual.port) is device
        assert len(changes.seen) == before
    finally:
        await discovery.stop()
        for sup in [*sups, manual, *restarted]:
            sup.kill()


async def test_unreachable_manual_registration(session: aiohttp.ClientSession) -> None:
    discovery = Discovery(DeviceRegistry(), session, interfaces=["127.0.0.1"], timeout_s=1.0)
    port = free_port()  # nothing listens there
    with pytest.raises(DeviceUnreachable, match=f"127.0.0.1:{port}"):
        await discovery.register_manual("127.0.0.1", port)
    with pytest.raises(ValueError, match="port"):
        await discovery.register_manual("127.0.0.1", 0)


async def fake_device(routes: dict[str, Callable[[web.Request], Any]]) -> TestServer:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_reference_supervisor_without_id_gets_a_derived_id(
    session: aiohttp.ClientSession,
) -> None:
    """A wasmiot reference description: no id, no apiVersion, cpuUsage in percent."""
    description = {
        "platform": {"memory": {"bytes": 4 << 30}},
        "supervisorInterfaces": ["takeImage"],
    }

    async def describe(_: web.Request) -> web.Response:
        return web.json_response(description)

    server = await fake_device({DESCRIPTION_PATH: describe})
    registry = DeviceRegistry()
    discovery = Discovery(registry, session, interfaces=["127.0.0.1"], timeout_s=1.0)
    try:
        assert server.port is not None
        device = await discovery.register_manual(
            "127.0.0.1", server.port, name="camera1._webthing._tcp.local."
        )
        assert device.id == "name:camera1"
        assert device.name == "camera1"
        assert device.api_version is None
        device.health_report = {"cpuUsage": 50.0, "memoryUsage": 0.25}
        view = device.view(deployments=2)
        assert view.cpu == 0.5 and view.memory == 0.25
        assert view.interfaces == frozenset({"takeImage"})
        # The same device registering again by its own name lands on the same record.
        again = await discovery.register_manual(
            "127.0.0.1", server.port, name="camera1._webthing._tcp.local."
        )
        assert again is device
    finally:
        await server.close()


async def test_bad_descriptions_are_unreachable(session: aiohttp.ClientSession) -> None:
    answers: list[web.Response] = [
        web.Response(text="<html>hi</html>"),
        web.json_response([1, 2]),
        web.json_response({"error": "nope"}, status=404),
    ]

    async def describe(_: web.Request) -> web.Response:
        return answers.pop(0)

    server = await fake_device({DESCRIPTION_PATH: describe})
    registry = DeviceRegistry()
    discovery = Discovery(registry, session, interfaces=["127.0.0.1"], timeout_s=1.0)
    try:
        assert server.port is not None
        for reason in ["not JSON", "not a JSON object", "HTTP 404"]:
            with pytest.raises(DeviceUnreachable, match=reason):
                await discovery.register_manual("127.0.0.1", server.port)
        assert registry.all() == []
    finally:
        await server.close()


def test_txt_decoding_is_lenient_and_bounded() -> None:
    out = decode_txt({b"id": b"dev", b"flag": None, b"bad": b"\xffok", b"long": b"x" * 999})
    assert out == {"id": "dev", "flag": "", "bad": "\ufffdok", "long": "x" * TXT_VALUE_MAX}


def test_candidate_addresses() -> None:
    assert _candidate_addresses(["10.0.0.2", "10.0.0.1"], "10.0.0.1") == ["10.0.0.1", "10.0.0.2"]
    assert _candidate_addresses(["10.0.0.2"], "10.0.0.9") == ["10.0.0.2", "10.0.0.9"]
    assert _candidate_addresses(["10.0.0.2", "10.0.0.2"], "not-an-ip") == ["10.0.0.2"]
    assert _candidate_addresses([], None) == []
