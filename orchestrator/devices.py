"""The device registry: every supervisor the orchestrator knows, keyed by its stable id.

A device is identified by the ``id`` in its description (generated once by the supervisor
and persisted), never by its mDNS name or address: names can change on a clash and
addresses change with DHCP, and both must leave the device's deployments where they are.

A reference wasmiot supervisor has no ``id``. For it the id is derived, in this order, from
its mDNS instance name (``name:<instance>``, e.g. ``name:camera1`` for
``camera1._webthing._tcp.local.``), else the ``name`` given at manual registration (the
reference supervisor sends its full instance name there, so both paths give the same id),
and as a last resort its address (``addr:<host>:<port>``). The reference orchestrator keys
devices by mDNS name too, so this is exactly as stable as the reference.

The registry is in-memory and single-threaded (event loop only). Listeners in
:attr:`DeviceRegistry.on_change` are called synchronously with ``(device, kind)`` after
each change worth persisting or reacting to (the app persists and wakes the reconciler
there). A listener may return an awaitable (an ``async def`` persisting the device): it runs
as a task, in notification order, and :meth:`DeviceRegistry.drain` awaits the ones still
running (call it before closing the store). A listener that raises, or whose task fails, is
logged and does not stop the others.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import msgspec

from orchestrator.errors import Conflict, NotFound
from orchestrator.health import HealthState
from orchestrator.model import DeviceView

__all__ = [
    "MAX_EVENTS",
    "Device",
    "DeviceRegistry",
    "EventKind",
    "derive_id",
    "instance_of",
]

log = logging.getLogger(__name__)

MAX_EVENTS = 50
"""Events kept per device (oldest dropped): enough history to debug flapping, bounded size."""

MAX_ID_LEN = 128

EventKind = Literal[
    "discovered",  # first seen over mDNS
    "registered",  # first seen by manual registration
    "address-changed",  # same id, other host/port
    "updated",  # description changed (interfaces, labels, zone, ...)
    "mdns-removed",  # mDNS goodbye: a hint only, health decides liveness
    "lost",
    "healthy",
    "cordoned",
    "uncordoned",
]

_SUFFIX = "._webthing._tcp.local."


def instance_of(name: str) -> str:
    """``camera1._webthing._tcp.local.`` → ``camera1``; other names unchanged."""
    return name.removesuffix(_SUFFIX)


def derive_id(description: dict[str, Any], name: str | None, host: str, port: int) -> str:
    """The device id: the description's ``id``, else derived (see the module docstring)."""
    given = description.get("id")
    if isinstance(given, str) and 0 < len(given) <= MAX_ID_LEN:
        return given
    if name:
        return f"name:{instance_of(name)}"[:MAX_ID_LEN]
    return f"addr:{host}:{port}"


def _interfaces(description: dict[str, Any]) -> frozenset[str]:
    """Host-function names from ``supervisorInterfaces``: strings, or objects with ``name``."""
    raw = description.get("supervisorInterfaces")
    names: set[str] = set()
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                names.add(item["name"])
    return frozenset(names)


def _fraction(value: Any, percent: bool) -> float:
    """A usage figure as 0..1; garbage (non-numbers, NaN) counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return 0.0
    v = float(value) / (100.0 if percent else 1.0)
    return min(1.0, max(0.0, v))


class Device(msgspec.Struct):
    """One supervisor as the orchestrator knows it (a mutable record, owned by the registry).

    ``api_version`` is ``None`` for a reference wasmiot supervisor (no ``apiVersion`` in its
    description). ``health_report`` and ``rtt_ms`` keep the last *successful* check;
    ``health.status`` says whether that is current. ``events`` is bounded to
    :data:`MAX_EVENTS`, newest last.
    """

    id: str
    name: str
    host: str
    port: int
    addresses: list[str] = []
    description: dict[str, Any] = {}
    api_version: int | None = None
    labels: dict[str, str] = {}
    zone: str | None = None
    health: HealthState = HealthState()
    health_report: dict[str, Any] | None = None
    cordoned: bool = False
    rtt_ms: float | None = None
    events: list[dict[str, Any]] = []
    mdns_name: str | None = None  # the instance name it was last seen under, if any
    tls: bool = False  # mDNS TXT tls=1
    checked_at: float | None = None  # clock() of the last health check, whatever its outcome
    last_error: str | None = None  # why the last failed check failed
    # The orchestrator itself (orchestrator.core_device): never health-checked, never lost,
    # and its id is reserved (no supervisor can take it over).
    core: bool = False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080`` (IPv6 literals bracketed)."""
        host = self.host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass  # a host name
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def cpu_is_percent(self) -> bool:
        """Whether this device's ``cpuUsage`` is 0..100 rather than 0..1.

        Baton (``api_version`` set) and the Rust reference port send fractions; the Python
        reference supervisor sends ``psutil.cpu_percent``. Neither reference announces a
        version, so the Rust port is told apart by the extra keys of its health report
        (``uptime``, ``networkUsage``, ``storageUsage``), which the Python one lacks.
        """
        if self.api_version is not None:
            return False
        report = self.health_report or {}
        return not any(k in report for k in ("uptime", "networkUsage", "storageUsage"))

    def view(self, deployments: int) -> DeviceView:
        """What placement sees of this device now; usage figures normalised to 0..1."""
        report = self.health_report or {}
        return DeviceView(
            id=self.id,
            name=self.name,
            interfaces=_interfaces(self.description),
            labels=dict(self.labels),
            zone=self.zone,
            status=self.health.status,
            cordoned=self.cordoned,
            cpu=_fraction(report.get("cpuUsage"), self.cpu_is_percent()),
            memory=_fraction(report.get("memoryUsage"), percent=False),
            rtt_ms=self.rtt_ms,
            deployments=deployments,
            core=self.core,
        )


def _labels(description: dict[str, Any]) -> dict[str, str]:
    raw = description.get("labels")
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str | int | float | bool)}


Listener = Callable[[Device, str], Awaitable[None] | None]


class DeviceRegistry:
    """In-memory devices by id, with change listeners and a builtins form for persistence."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._devices: dict[str, Device] = {}
        self._clock = clock
        self.on_change: list[Listener] = []
        self._listener_tasks: set[asyncio.Task[None]] = set()

    # --- reading ---------------------------------------------------------------------------

    def get(self, device_id: str) -> Device:
        """The device with this id; raises ``NotFound`` (404) when there is none."""
        device = self._devices.get(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}", field="device")
        return device

    def find(self, device_id: str) -> Device | None:
        """The device with this id, or ``None``."""
        return self._devices.get(device_id)

    def all(self) -> list[Device]:
        """Every device, in id order (deterministic for placement and listings)."""
        return [self._devices[k] for k in sorted(self._devices)]

    def by_mdns_name(self, name: str) -> Device | None:
        return next((d for d in self._devices.values() if d.mdns_name == name), None)

    # --- changing --------------------------------------------------------------------------

    def upsert_from_description(
        self,
        description: dict[str, Any],
        *,
        host: str,
        port: int,
        addresses: Iterable[str] = (),
        mdns_name: str | None = None,
        name: str | None = None,
        tls: bool = False,
        source: Literal["mdns", "manual"] = "mdns",
    ) -> Device:
        """Add the device that served ``description`` at ``host:port``, or refresh it.

        A new id records ``discovered`` (``source="mdns"``) or ``registered`` (manual). A
        known id whose host or port differ records ``address-changed``; one whose name,
        protocol level, ``supervisorInterfaces``, labels or zone differ records ``updated``
        (the stored description is refreshed either way). Listeners are told only about
        those; re-announcing an unchanged device is silent. Health is left to the monitor.
        """
        # A reference supervisor registering by hand sends its mDNS instance name as
        # ``name``, so both paths derive the same id for it.
        device_id = derive_id(description, mdns_name or name, host, port)
        addrs = list(dict.fromkeys([host, *addresses]))
        display = description.get("name")
        hint = mdns_name or name
        display_name = (
            display
            if isinstance(display, str) and display
            else (instance_of(hint) if hint else device_id)
        )
        raw_api = description.get("apiVersion")
        api = raw_api if isinstance(raw_api, int) and not isinstance(raw_api, bool) else None
        zone = description.get("zone")
        fields: dict[str, Any] = {
            "name": display_name[:MAX_ID_LEN],
            "description": description,
            "api_version": api,
            "labels": _labels(description),
            "zone": zone if isinstance(zone, str) else None,
        }
        device = self._devices.get(device_id)
        if device is not None and device.core:
            # Taking over the orchestrator's own id would reroute its built-in packages.
            raise Conflict(
                f"device id {device_id!r} is reserved for the orchestrator itself", field="id"
            )
        if device is None:
            device = Device(id=device_id, host=host, port=port, addresses=addrs, tls=tls, **fields)
            device.mdns_name = mdns_name
            self._devices[device_id] = device
            kind: EventKind = "discovered" if source == "mdns" else "registered"
            self._record(device, kind, f"at {device.url}", notify=True)
            return device
        if mdns_name:
            device.mdns_name = mdns_name
        moved = (device.host, device.port, device.tls) != (host, port, tls)
        # Only what placement reads counts as a change: the platform part carries live
        # figures (free storage) that differ on every fetch and are not worth an event.
        changed = _interfaces(device.description) != _interfaces(description) or any(
            getattr(device, k) != fields[k] for k in ("name", "api_version", "labels", "zone")
        )
        old_url = device.url
        device.host, device.port, device.tls, device.addresses = host, port, tls, addrs
        for k, v in fields.items():
            setattr(device, k, v)
        if moved:
            self._record(device, "address-changed", f"{old_url} -> {device.url}", notify=True)
        elif changed:
            self._record(device, "updated", "description changed", notify=True)
        return device

    def add_core(self, device: Device) -> Device:
        """Install the orchestrator's own core device (``device.core`` set), replacing any
        stored copy: it is rebuilt from the settings at every start. Listeners are not told
        (it is not discovered, and its record need not be persisted)."""
        device.core = True
        stored = self._devices.get(device.id)
        if stored is not None and stored.core:
            # An operator's cordon (persisted with its events) outlives the restart.
            device.cordoned, device.events = stored.cordoned, stored.events
        self._devices[device.id] = device
        return device

    def cordon(self, device_id: str) -> Device:
        """Keep new work off a device (it stays monitored). Raises ``NotFound`` if unknown."""
        return self._set_cordon(device_id, True)

    def uncordon(self, device_id: str) -> Device:
        return self._set_cordon(device_id, False)

    def _set_cordon(self, device_id: str, value: bool) -> Device:
        device = self.get(device_id)
        if device.cordoned != value:
            device.cordoned = value
            self._record(device, "cordoned" if value else "uncordoned", "", notify=True)
        return device

    def remove(self, device_id: str) -> Device | None:
        """Forget a device (an operator's decision; mDNS goodbyes never do this)."""
        device = self._devices.pop(device_id, None)
        if device is not None:
            self._notify(device, "removed")
        return device

    def record(self, device: Device, kind: EventKind, detail: str, *, notify: bool) -> None:
        """Append an event to ``device`` (bounded) and optionally tell the listeners."""
        self._record(device, kind, detail, notify=notify)

    def _record(self, device: Device, kind: EventKind, detail: str, *, notify: bool) -> None:
        device.events.append({"at": self._clock(), "kind": kind, "detail": detail})
        del device.events[:-MAX_EVENTS]
        log.info("device %s (%s): %s %s", device.id, device.name, kind, detail)
        if notify:
            self._notify(device, kind)

    def _notify(self, device: Device, kind: str) -> None:
        for listener in list(self.on_change):
            try:
                result = listener(device, kind)
            except Exception:
                # One broken listener (say, a failed persist) must not stop discovery or
                # keep the others from hearing about the change.
                log.exception("device listener failed for %s %s", device.id, kind)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(self._run_listener(result, device.id, kind))
                self._listener_tasks.add(task)
                task.add_done_callback(self._listener_tasks.discard)

    @staticmethod
    async def _run_listener(awaitable: Awaitable[None], device_id: str, kind: str) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("device listener failed for %s %s", device_id, kind)

    async def drain(self) -> None:
        """Wait for the asynchronous listeners still running (bounded: no new ones start
        unless something changes a device meanwhile)."""
        while self._listener_tasks:
            await asyncio.gather(*list(self._listener_tasks))

    # --- persistence -----------------------------------------------------------------------

    def to_builtins(self) -> list[dict[str, Any]]:
        """Every device as JSON-able dicts (msgspec builtins), in id order."""
        out: list[dict[str, Any]] = msgspec.to_builtins(self.all())
        return out

    @classmethod
    def from_builtins(
        cls, data: list[dict[str, Any]], *, clock: Callable[[], float] = time.time
    ) -> DeviceRegistry:
        """A registry holding the devices of :meth:`to_builtins` (raises on a bad shape)."""
        registry = cls(clock=clock)
        for item in data:
            registry.restore(item)
        return registry

    def restore(self, data: dict[str, Any]) -> Device:
        """Add one device from its builtins form (``msgspec.to_builtins(device)``), e.g. a
        stored document at start-up. Listeners are not told (nothing changed)."""
        device = msgspec.convert(data, Device)
        self._devices[device.id] = device
        return device
