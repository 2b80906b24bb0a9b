"""supervisor.platform reports this machine's real numbers, with plausible ranges."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import psutil

from supervisor.platform import (
    CpuSampler,
    describe_platform,
    health_snapshot,
    local_ipv4_addresses,
)


def test_describe_platform_is_real(tmp_path: Path) -> None:
    desc = describe_platform(tmp_path)
    json.dumps(desc)  # the description goes out as JSON as-is

    assert desc["memory"]["bytes"] == psutil.virtual_memory().total
    cpu = desc["cpu"]
    assert cpu["cores"] == psutil.cpu_count() >= 1
    assert cpu["humanReadableName"]
    assert cpu["architecture"]
    hz = cpu["clockSpeed"]["Hz"]
    assert hz is None or hz > 1_000_000  # absent, or at least a MHz
    assert desc["storage"]["bytes"] > 0
    assert 0 <= desc["storage"]["freeBytes"] <= desc["storage"]["bytes"]
    assert desc["os"]["system"]
    assert desc["os"]["python"].startswith("3.")

    ifaces = {i["name"]: i for i in desc["network"]["interfaces"]}
    assert "lo" in ifaces
    assert "127.0.0.1" in ifaces["lo"]["addresses"]
    assert ifaces["lo"]["up"] is True
    for iface in ifaces.values():
        assert iface["speedMbps"] is None or iface["speedMbps"] > 0  # psutil's 0 means unknown
        for a in iface["addresses"]:
            ipaddress.ip_address(a.split("%")[0])  # link-local IPv6 carries a %scope


def test_storage_of_a_state_dir_that_does_not_exist_yet(tmp_path: Path) -> None:
    storage = describe_platform(tmp_path / "not" / "yet")["storage"]
    assert storage["bytes"] == psutil.disk_usage(str(tmp_path)).total


def test_health_snapshot_ranges(tmp_path: Path) -> None:
    sampler = CpuSampler()
    started = time.monotonic()
    sum(i * i for i in range(200_000))  # some CPU work so the window is not empty
    h = health_snapshot(tmp_path, sampler, started)
    json.dumps(h)
    assert 0.0 <= h["cpuUsage"] <= 1.0
    assert 0.0 < h["memoryUsage"] <= 1.0
    assert h["uptimeSeconds"] >= 0.0
    assert h["storage"]["bytes"] > 0
    assert 0.0 <= h["storage"]["usage"] <= 1.0
    assert len(h["loadAverage"]) == 3
    assert all(x >= 0.0 for x in h["loadAverage"])
    # Uptime is measured from the caller's monotonic start, not the process start.
    assert health_snapshot(tmp_path, sampler, started - 100.0)["uptimeSeconds"] >= 100.0


def test_cpu_sampler_stays_in_range() -> None:
    sampler = CpuSampler()
    values = [sampler.sample() for _ in range(5)]
    assert all(0.0 <= v <= 1.0 for v in values)


def test_local_ipv4_addresses() -> None:
    without = local_ipv4_addresses()
    with_lo = local_ipv4_addresses(include_loopback=True)
    assert "127.0.0.1" in with_lo
    assert "127.0.0.1" not in without
    assert set(without) <= set(with_lo)
    assert with_lo == local_ipv4_addresses(include_loopback=True)  # deterministic
    for a in with_lo:
        assert isinstance(ipaddress.ip_address(a), ipaddress.IPv4Address)
    assert with_lo == sorted(with_lo, key=lambda s: tuple(int(p) for p in s.split(".")))
