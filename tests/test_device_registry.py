"""orchestrator.devices: the registry's events, listeners, persistence and views (no I/O)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.devices import MAX_EVENTS, Device, DeviceRegistry, derive_id
from orchestrator.errors import NotFound
from orchestrator.health import HealthState

DESC: dict[str, Any] = {
    "id": "dev-1",
    "name": "kitchen",
    "apiVersion": 1,
    "labels": {"room": "kitchen"},
    "zone": "home",
    "supervisorInterfaces": ["takeImage", "fd_write"],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def make() -> tuple[DeviceRegistry, list[tuple[str, str]]]:
    registry = DeviceRegistry(clock=Clock())
    seen: list[tuple[str, str]] = []
    registry.on_change.append(lambda d, kind: seen.append((d.id, kind)))
    return registry, seen


def test_upsert_new_same_moved_and_updated() -> None:
    registry, seen = make()
    d = registry.upsert_from_description(DESC, host="10.0.0.5", port=5000, addresses=["10.0.0.6"])
    assert (d.id, d.name, d.url, d.addresses) == (
        "dev-1",
        "kitchen",
        "http://10.0.0.5:5000",
        ["10.0.0.5", "10.0.0.6"],
    )
    assert (d.labels, d.zone, d.api_version) == ({"room": "kitchen"}, "home", 1)
    assert seen == [("dev-1", "discovered")]
    assert d.events == [{"at": 1001.0, "kind": "discovered", "detail": "at http://10.0.0.5:5000"}]

    assert registry.upsert_from_description(dict(DESC), host="10.0.0.5", port=5000) is d
    assert seen == [("dev-1", "discovered")]  # nothing changed: silent

    registry.upsert_from_description(DESC, host="10.0.0.7", port=5001)
    assert seen[-1] == ("dev-1", "address-changed")
    assert d.events[-1]["detail"] == "http://10.0.0.5:5000 -> http://10.0.0.7:5001"

    registry.upsert_from_description(DESC | {"zone": "garden"}, host="10.0.0.7", port=5001)
    assert seen[-1] == ("dev-1", "updated")
    assert d.zone == "garden"
    before = len(seen)
    live = DESC | {"zone": "garden", "platform": {"storage": {"freeBytes": 1}}}
    registry.upsert_from_description(live, host="10.0.0.7", port=5001)
    assert len(seen) == before  # live figures only: stored, but no event
    assert d.description["platform"] == {"storage": {"freeBytes": 1}}
    assert len(registry.all()) == 1


def test_manual_registration_records_registered() -> None:
    registry, seen = make()
    registry.upsert_from_description(DESC, host="127.0.0.1", port=1, source="manual")
    assert seen == [("dev-1", "registered")]


def test_derived_ids() -> None:
    assert derive_id({"id": "x"}, "n._webthing._tcp.local.", "h", 1) == "x"
    assert derive_id({}, "cam._webthing._tcp.local.", "h", 1) == "name:cam"
    assert derive_id({}, "cam", "h", 1) == "name:cam"
    assert derive_id({"id": 7}, None, "h", 1) == "addr:h:1"
    assert derive_id({"id": "x" * 500}, None, "h", 1) == "addr:h:1"
    assert derive_id({"id": ""}, None, "h", 1) == "addr:h:1"


def test_events_are_bounded_newest_last() -> None:
    registry, _ = make()
    d = registry.upsert_from_description(DESC, host="h", port=1)
    for i in range(MAX_EVENTS * 2):
        registry.record(d, "lost" if i % 2 else "healthy", str(i), notify=False)
    assert len(d.events) == MAX_EVENTS
    assert d.events[-1]["detail"] == str(MAX_EVENTS * 2 - 1)


def test_cordon_uncordon_and_remove() -> None:
    registry, seen = make()
    registry.upsert_from_description(DESC, host="h", port=1)
    assert registry.cordon("dev-1").cordoned
    registry.cordon("dev-1")  # already cordoned: no second event
    assert registry.get("dev-1") is not None
    assert registry.uncordon("dev-1").cordoned is False
    assert [k for _, k in seen] == ["discovered", "cordoned", "uncordoned"]
    with pytest.raises(NotFound, match="nope"):
        registry.cordon("nope")
    with pytest.raises(NotFound):
        registry.get("nope")
    assert registry.remove("dev-1") is not None
    assert registry.find("dev-1") is None and seen[-1] == ("dev-1", "removed")
    assert registry.remove("dev-1") is None


def test_a_failing_listener_does_not_stop_the_others() -> None:
    registry, seen = make()

    def broken(_: Device, __: str) -> None:
        raise RuntimeError("disk full")

    registry.on_change.insert(0, broken)
    registry.upsert_from_description(DESC, host="h", port=1)
    assert seen == [("dev-1", "discovered")]


def test_builtins_round_trip_through_json() -> None:
    registry, _ = make()
    d = registry.upsert_from_description(
        DESC, host="h", port=1, mdns_name="k._webthing._tcp.local."
    )
    d.health = HealthState("lost", 0, 4)
    d.health_report = {"cpuUsage": 0.5}
    d.rtt_ms = 1.5
    registry.cordon("dev-1")
    registry.upsert_from_description({"name": "ref"}, host="h2", port=2, name="ref")
    data = json.loads(json.dumps(registry.to_builtins()))
    loaded = DeviceRegistry.from_builtins(data)
    assert loaded.all() == registry.all()
    assert loaded.get("dev-1") == d
    assert loaded.by_mdns_name("k._webthing._tcp.local.") == d
    one = DeviceRegistry()
    assert one.restore(data[0]) == d and one.all() == [d]


async def test_async_listeners_run_as_tasks_and_drain() -> None:
    registry = DeviceRegistry()
    stored: list[tuple[str, str]] = []
    release = asyncio.Event()

    async def persist(device: Device, kind: str) -> None:
        await release.wait()
        stored.append((device.id, kind))

    async def broken(_: Device, __: str) -> None:
        raise RuntimeError("disk full")

    registry.on_change += [broken, persist]
    registry.upsert_from_description(DESC, host="h", port=1)
    registry.cordon("dev-1")
    assert stored == []
    release.set()
    await registry.drain()
    assert stored == [("dev-1", "discovered"), ("dev-1", "cordoned")]


@pytest.mark.parametrize(
    ("api", "report", "cpu"),
    [
        (1, {"cpuUsage": 0.3}, 0.3),  # Baton: fraction
        (None, {"cpuUsage": 30}, 0.3),  # Python reference: percent
        (None, {"cpuUsage": 0.3, "uptime": 5, "networkUsage": {}}, 0.3),  # Rust port: fraction
        (1, {"cpuUsage": "lots"}, 0.0),
        (1, {"cpuUsage": float("nan")}, 0.0),
        (None, {"cpuUsage": 250}, 1.0),
        (1, None, 0.0),
    ],
)
def test_view_normalises_cpu(api: int | None, report: dict[str, Any] | None, cpu: float) -> None:
    desc = {k: v for k, v in DESC.items() if k != "apiVersion"}
    if api is not None:
        desc["apiVersion"] = api
    registry, _ = make()
    d = registry.upsert_from_description(desc, host="h", port=1)
    d.health_report = report
    view = d.view(deployments=3)
    assert view.cpu == pytest.approx(cpu)
    assert view.interfaces == frozenset({"takeImage", "fd_write"})
    assert (view.deployments, view.labels, view.zone) == (3, {"room": "kitchen"}, "home")


@given(
    api=st.sampled_from([None, 1]),
    cpu=st.one_of(st.floats(), st.integers(), st.text(), st.none(), st.booleans()),
    mem=st.one_of(st.floats(), st.integers(), st.text(), st.none()),
)
def test_view_usage_is_always_a_fraction(api: int | None, cpu: Any, mem: Any) -> None:
    d = Device(id="x", name="x", host="h", port=1, api_version=api)
    d.health_report = {"cpuUsage": cpu, "memoryUsage": mem}
    view = d.view(0)
    assert 0.0 <= view.cpu <= 1.0
    assert 0.0 <= view.memory <= 1.0


def test_url_brackets_ipv6_and_honours_tls() -> None:
    assert Device(id="x", name="x", host="::1", port=8).url == "http://[::1]:8"
    assert Device(id="x", name="x", host="a.local", port=8, tls=True).url == "https://a.local:8"
