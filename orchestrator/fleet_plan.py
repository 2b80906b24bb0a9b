"""What ``baton simulate`` starts, decided before anything runs.

The pure part of :mod:`orchestrator.simulate`: the :class:`Spec` and its validation, device
names, device URLs, and each child's command line and environment. Nothing here starts a
process, binds a port or talks HTTP; the only I/O is reading the profiles given (to name the
devices and refuse a missing or broken one) and checking where the supervisor's console
script is. It never imports the supervisor: it starts supervisors, it does not embed them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "MAX_COUNT",
    "Ready",
    "Registration",
    "SimulatedDevice",
    "SimulationError",
    "Spec",
    "SpecError",
    "check",
    "child_argv",
    "child_env",
    "device_names",
    "profile_name",
    "registration",
    "supervisor_command",
    "url_host",
]

MAX_COUNT = 256  # a typo such as --count 2000 should not fork two thousand interpreters
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
# Kept for the children: they tune the supervisor and name nothing about this machine's setup.
_PASSED_ENV = frozenset(
    {"BATON_LOG_LEVEL", "BATON_REGISTER_RENEWAL_TIME", "BATON_SHUTDOWN_TIMEOUT"}
)
# systemd hands these to the simulator's own unit; a child using them would speak for it.
_DROPPED_ENV = frozenset(
    {
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "STATE_DIRECTORY",
    }
)

Registration = Literal["direct", "mdns"]


class SpecError(ValueError):
    """The simulation cannot be set up as asked; nothing was started."""


class SimulationError(Exception):
    """The fleet failed (a device died, was not ready in time, or a port was taken).

    Raised only after every child has been stopped and reaped.
    """


@dataclass(frozen=True)
class Spec:
    """What to simulate. ``profiles`` round-robin over the devices; none = no profile."""

    count: int
    profiles: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    base_port: int | None = None  # None: free ports chosen by the kernel
    state_root: Path | None = None  # None: a temporary directory, removed on exit
    orchestrator_url: str | None = None
    token: str | None = None
    mdns: bool = False
    name_prefix: str | None = None
    wait_s: float = 60.0
    stop_timeout_s: float = 15.0
    ready_file: Path | None = None


@dataclass(frozen=True)
class SimulatedDevice:
    """One running device, as reported once the fleet is ready."""

    name: str
    id: str
    url: str
    port: int
    pid: int
    profile: Path | None
    state_dir: Path
    log: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "url": self.url,
            "port": self.port,
            "pid": self.pid,
            "profile": str(self.profile) if self.profile else None,
            "stateDir": str(self.state_dir),
            "log": str(self.log),
        }


@dataclass(frozen=True)
class Ready:
    """The fleet once every device is up (and listed, if the orchestrator answered)."""

    devices: tuple[SimulatedDevice, ...]
    state_root: Path
    temporary: bool  # the state root is removed on exit
    orchestrator_url: str | None
    registration: Registration
    listed: bool  # the orchestrator listed every device healthy
    seconds: float  # from the first spawn until ready

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": [d.to_json() for d in self.devices],
            "stateRoot": str(self.state_root),
            "temporary": self.temporary,
            "orchestrator": self.orchestrator_url,
            "registration": self.registration,
            "listed": self.listed,
            "seconds": round(self.seconds, 3),
        }


# --- the spec ----------------------------------------------------------------------------------


def profile_name(path: Path) -> str:
    """The profile's ``name``, made safe as a file name; the file's stem if it has none.

    Raises :class:`SpecError` if the file cannot be read or is not TOML. Whether the
    supervisor accepts its fields is the supervisor's business: a profile it refuses makes
    the devices exit at start, which is reported with their log.
    """
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"profile {path} does not exist") from None
    except IsADirectoryError:
        raise SpecError(f"profile {path} is a directory, not a .toml file") from None
    except OSError as err:
        raise SpecError(f"cannot read profile {path}: {err.strerror or err}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SpecError(f"profile {path} is not valid TOML: {err}") from None
    raw = doc.get("name")
    name = raw if isinstance(raw, str) and raw.strip() else path.stem
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:40]
    return safe or "sim"


def device_names(count: int, prefixes: Sequence[str]) -> list[str]:
    """``<prefix>-01`` ... for ``count`` devices, prefixes taken round-robin.

    The number is the device's position in the fleet (so the names stay distinct whatever the
    prefixes), zero-padded to at least two digits.
    """
    width = max(2, len(str(count)))
    return [f"{prefixes[i % len(prefixes)]}-{i + 1:0{width}d}" for i in range(count)]


def check(spec: Spec) -> list[str]:
    """Validate ``spec``; the name prefix of each device (raises :class:`SpecError`)."""
    if not 1 <= spec.count <= MAX_COUNT:
        raise SpecError(f"--count must be between 1 and {MAX_COUNT}, got {spec.count}")
    if not spec.wait_s > 0 or not spec.stop_timeout_s > 0:
        raise SpecError("wait and stop timeouts must be positive")
    if spec.base_port is not None and not (
        spec.base_port >= 1 and spec.base_port + spec.count - 1 <= 65535
    ):
        raise SpecError(
            f"--base-port {spec.base_port} with --count {spec.count} leaves the port range 1..65535"
        )
    if not spec.host or any(c.isspace() or c in "/?#@" for c in spec.host):
        raise SpecError(f"--host {spec.host!r} is not an address")
    if spec.name_prefix is not None:
        if not _NAME.fullmatch(spec.name_prefix):
            raise SpecError(
                f"--name-prefix {spec.name_prefix!r}: use letters, digits, '.', '_' and '-' "
                "(at most 48, starting with a letter or digit)"
            )
        for path in spec.profiles:
            profile_name(path)  # still refuse a missing or broken profile
        return [spec.name_prefix]
    if not spec.profiles:
        return ["sim"]
    return [profile_name(path) for path in spec.profiles]


def url_host(host: str) -> str:
    """The host as it appears in a device URL (a wildcard bind is reached on loopback)."""
    bare = host.strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return host
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{bare}]" if address.version == 6 else bare


def registration(spec: Spec) -> Registration:
    """How the devices reach the orchestrator: they advertise over mDNS, or register."""
    return "mdns" if spec.mdns else "direct"


# --- a child's command line and environment ----------------------------------------------------


def supervisor_command() -> list[str]:
    """How to start a supervisor: the console script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).with_name("baton-supervisor")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "supervisor"]


def child_env() -> dict[str, str]:
    """This environment minus what would configure the children behind the simulator's back
    (``BATON_TOKEN`` is the CLI's orchestrator token, not a device's) or speak for its unit."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED_ENV and (k in _PASSED_ENV or not k.startswith(("BATON_", "WASMIOT_")))
    }


def child_argv(
    spec: Spec,
    *,
    name: str,
    port: int,
    state_dir: Path,
    profile: Path | None,
    token_file: Path | None,
) -> list[str]:
    """The supervisor's command line for one device.

    A device registers itself (``--orchestrator``) unless the fleet advertises over mDNS; the
    token file, if any, is what it sends when it registers and requires on ``/deploy``.
    """
    mode = registration(spec)
    argv = [
        *supervisor_command(),
        "--host",
        spec.host,
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
        "--name",
        name,
        "--mdns-interfaces",
        _mdns_interfaces(spec.host) if mode == "mdns" else "none",
    ]
    if profile is not None:
        argv += ["--profile", str(profile)]
    if mode == "direct" and spec.orchestrator_url:
        argv += ["--orchestrator", spec.orchestrator_url]
    if token_file is not None:
        argv += ["--token-file", str(token_file)]
    return argv


def _mdns_interfaces(host: str) -> str:
    try:
        specific = not ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        specific = False  # a host name: let zeroconf pick the interfaces
    return host.strip("[]") if specific else "all"
