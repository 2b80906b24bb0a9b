"""What this device is and how busy it is: real numbers from psutil.

The reference supervisor reported random fake platform data; Baton reports the machine it
runs on. The shapes keep the reference's keys (``cpu.clockSpeed.Hz``, ``memory.bytes``) so a
wasmiot orchestrator reads them unchanged, and add more around them.

Anything a board may lack (CPU frequency, temperatures, link speed, MAC) is ``None`` or left
out rather than invented: a VM or a container typically has none of them, and psutil
reports a missing value as ``0`` or ``{}``. Every function here is synchronous and cheap
(a few tens of ms at most, no sampling sleeps), so handlers may call them on the loop.
"""

from __future__ import annotations

import contextlib
import os
import platform as _pyplatform
import socket
import time
from pathlib import Path
from typing import Any

import psutil  # psutil ships no type hints; results are cast

__all__ = [
    "CpuSampler",
    "describe_platform",
    "health_snapshot",
    "local_ipv4_addresses",
]

# psutil names link-layer addresses with its own constant (AF_PACKET on Linux, AF_LINK on BSD).
_AF_LINK: int = int(psutil.AF_LINK)


def _fraction(part: float, whole: float) -> float:
    """``part / whole`` clamped into 0..1; 0 when ``whole`` is not positive."""
    if whole <= 0:
        return 0.0
    return min(1.0, max(0.0, part / whole))


def _cpu_model_name() -> str:
    """A human-readable CPU name: /proc/cpuinfo on Linux, else what ``platform`` knows."""
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f,
    ):
        for line in f:
            key, sep, value = line.partition(":")
            # x86 says "model name"; many ARM kernels only say "Hardware" or "Model".
            if sep and key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return _pyplatform.processor() or _pyplatform.machine() or "unknown"


def _cpu_hz() -> float | None:
    """Current CPU clock in Hz, or ``None`` where the kernel does not expose it."""
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        return None
    if freq is None or not freq.current:
        return None
    return float(freq.current) * 1_000_000.0  # psutil reports MHz


def _storage(state_dir: Path) -> dict[str, int]:
    """Total and free bytes of the file system that holds ``state_dir``."""
    # The state dir may not exist yet on first start; measure its nearest existing parent.
    path = state_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = psutil.disk_usage(str(path))
    return {"bytes": int(usage.total), "freeBytes": int(usage.free)}


def _interfaces() -> list[dict[str, Any]]:
    """Every network interface with its IP addresses, MAC, MTU, state and link speed."""
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    out: list[dict[str, Any]] = []
    for name in sorted(addrs):
        ips: list[str] = []
        mac: str | None = None
        for a in addrs[name]:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ips.append(str(a.address))
            elif a.family == _AF_LINK and a.address:
                mac = str(a.address)
        st = stats.get(name)
        out.append(
            {
                "name": name,
                "addresses": ips,
                "mac": mac,
                "mtu": int(st.mtu) if st is not None else None,
                "up": bool(st.isup) if st is not None else False,
                # psutil says 0 when the speed is unknown (virtual NICs, Wi-Fi on many boards).
                "speedMbps": int(st.speed) if st is not None and st.speed else None,
            }
        )
    return out


def _temperatures() -> dict[str, list[dict[str, Any]]]:
    """Temperature sensors by chip, in °C; empty where there are none (VMs, containers)."""
    read = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    if read is None:
        return {}
    try:
        sensors = read()
    except (OSError, NotImplementedError):
        return {}
    return {
        chip: [
            {"label": e.label or chip, "celsius": float(e.current)}
            for e in entries
            if e.current is not None
        ]
        for chip, entries in sensors.items()
    }


def describe_platform(state_dir: Path) -> dict[str, Any]:
    """The ``platform`` object of the device description.

    Keys: ``cpu`` (``humanReadableName``, ``architecture``, ``cores``, ``physicalCores``,
    ``clockSpeed.Hz``), ``memory.bytes``, ``storage`` (``bytes``, ``freeBytes`` of the file
    system holding ``state_dir``), ``network.interfaces`` (``name``, ``addresses``, ``mac``,
    ``mtu``, ``up``, ``speedMbps``), ``os`` (``system``, ``release``, ``python``) and
    ``sensors`` (``temperatures`` only when the device has any). Values a device cannot
    report are ``None``, never made up.
    """
    temps = _temperatures()
    physical = psutil.cpu_count(logical=False)
    logical = psutil.cpu_count(logical=True)
    return {
        "cpu": {
            "humanReadableName": _cpu_model_name(),
            "architecture": _pyplatform.machine(),
            "cores": int(logical) if logical else (os.cpu_count() or 1),
            "physicalCores": int(physical) if physical else None,
            "clockSpeed": {"Hz": _cpu_hz()},
        },
        "memory": {"bytes": int(psutil.virtual_memory().total)},
        "storage": _storage(state_dir),
        "network": {"interfaces": _interfaces()},
        "os": {
            "system": _pyplatform.system(),
            "release": _pyplatform.release(),
            "python": _pyplatform.python_version(),
        },
        "sensors": {"temperatures": temps} if temps else {},
    }


class CpuSampler:
    """Non-blocking system CPU usage as a 0..1 fraction.

    ``psutil.cpu_percent(interval=None)`` measures since its previous call and its very first
    result is meaningless, so the constructor makes that first call. Each :meth:`sample` then
    covers the time since the previous one (or since construction). One sampler per process:
    psutil keeps the reference point globally, so two samplers would shorten each other's
    windows (harmless, just noisier).
    """

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)

    def sample(self) -> float:
        """CPU busy fraction since the previous sample, in 0..1."""
        return _fraction(float(psutil.cpu_percent(interval=None)), 100.0)


def health_snapshot(
    state_dir: Path, sampler: CpuSampler, started_at_monotonic: float
) -> dict[str, Any]:
    """The device part of ``GET /health``; every usage is a 0..1 fraction.

    ``cpuUsage`` (the reference's key; 0..1 like the Rust supervisor, not the Python
    reference's 0..100), ``memoryUsage`` (used/total), ``uptimeSeconds`` since
    ``started_at_monotonic`` (a ``time.monotonic()`` value), ``storage`` (``bytes``,
    ``freeBytes``, ``usage``) and ``loadAverage`` (1, 5, 15 minutes).
    """
    mem = psutil.virtual_memory()
    storage: dict[str, Any] = dict(_storage(state_dir))
    storage["usage"] = _fraction(storage["bytes"] - storage["freeBytes"], storage["bytes"])
    try:
        load = [float(x) for x in psutil.getloadavg()]
    except (OSError, AttributeError):
        load = [0.0, 0.0, 0.0]
    return {
        "cpuUsage": sampler.sample(),
        "memoryUsage": _fraction(float(mem.total - mem.available), float(mem.total)),
        "uptimeSeconds": max(0.0, time.monotonic() - started_at_monotonic),
        "storage": storage,
        "loadAverage": load,
    }


def local_ipv4_addresses(include_loopback: bool = False) -> list[str]:
    """This machine's IPv4 addresses, sorted and de-duplicated (loopback only if asked)."""
    found: set[str] = set()
    for entries in psutil.net_if_addrs().values():
        for a in entries:
            if a.family != socket.AF_INET:
                continue
            address = str(a.address)
            if not include_loopback and address.startswith("127."):
                continue
            found.add(address)
    # Sort numerically so "10.0.0.9" precedes "10.0.0.10"; the first one ends up in mDNS TXT.
    return sorted(found, key=lambda s: tuple(int(p) for p in s.split(".")))
