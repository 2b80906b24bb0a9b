"""``baton simulate``: a fleet of real supervisor processes on one machine.

For demos and benchmarks. :func:`run` starts ``count`` ``baton-supervisor`` processes, each
with its own state directory under a state root, its own port on one address (127.0.0.1 by
default), a distinct name (``<profile name>-01``, ...) and a log file under the state root.
The profiles given round-robin over the devices. This module only manages processes and
talks HTTP: it never imports the supervisor, and reaches the orchestrator only through
:mod:`orchestrator.client`.

How the devices reach the orchestrator (``registration`` in :class:`Ready`):

- ``direct`` (the default): each supervisor registers itself (``--orchestrator URL``) and
  renews its registration when the orchestrator forgets it;
- ``api``: with a bearer token, the supervisors' own registration carries no token and would
  be refused, so the simulator registers each device through the API once it is up, and
  gives every supervisor the token to require on ``/deploy`` (which the orchestrator sends);
- ``mdns``: each supervisor advertises over mDNS on the bind address; the orchestrator must
  browse that address (``--mdns-interfaces 127.0.0.1``).

Contract of :func:`run`:

- input that cannot work (count out of range, a profile that is missing or not TOML, a bad
  name prefix, ports out of range) raises :class:`SpecError` before any process starts;
- it waits, at most ``wait_s``, until every device answers ``/health`` and, if the
  orchestrator answered at start, until the orchestrator lists every device as healthy at its
  current URL; then it calls ``on_ready`` once and writes ``ready_file`` (removed again on
  exit);
- it then runs until SIGINT or SIGTERM and returns normally (a stop signal during start-up
  also returns normally, without ``on_ready``);
- a device that exits on its own (during start-up or later) is not restarted: the others are
  stopped and :class:`SimulationError` names the device, its exit status and the tail of its
  log. Not becoming ready in time, or a port taken, raise it too;
- whichever way it ends, every child has been sent SIGTERM, waited for ``stop_timeout_s``,
  SIGKILLed if still running, and reaped; a second stop signal skips the wait. A state root
  the caller did not give is a temporary directory, removed at the end. On Linux the children
  also get SIGTERM from the kernel if the simulator itself dies without cleaning up.

Progress goes to ``progress`` (one line per change), never to the children's terminal:
children run in their own session, so a Ctrl-C reaches only the simulator, which then stops
them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from orchestrator.client import ApiError, Device, OrchestratorClient

__all__ = [
    "MAX_COUNT",
    "Ready",
    "SimulatedDevice",
    "SimulationError",
    "Spec",
    "SpecError",
    "device_names",
    "profile_name",
    "run",
]

# The protocol's description route. Spelled out because this module must not import the
# supervisor package (it starts supervisors, it does not embed them).
DESCRIPTION_PATH = "/.well-known/wasmiot-device-description"
MAX_COUNT = 256  # a typo such as --count 2000 should not fork two thousand interpreters
POLL_INTERVAL_S = 0.2
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)
KILL_WAIT_S = 10.0  # after SIGKILL only the kernel is left to wait for
TAIL_LINES = 20
TAIL_BYTES = 8192
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

Registration = Literal["direct", "api", "mdns"]


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


@dataclass
class _Member:
    """One planned device and, once spawned, its process and what the probes learnt."""

    name: str
    port: int
    url: str
    profile: Path | None
    state_dir: Path
    log: Path
    proc: asyncio.subprocess.Process | None = None
    log_offset: int = 0  # where this run's output starts in an appended log
    device_id: str | None = None
    registered: bool = False  # api mode: the simulator's POST /devices succeeded
    listed: bool = False
    note: str = "no answer on /health yet"

    @property
    def healthy(self) -> bool:
        return self.device_id is not None

    def ready(self, listing: bool) -> bool:
        return self.healthy and (self.listed or not listing)


@dataclass
class _Signals:
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)


# --- planning (pure apart from reading profiles) -----------------------------------------------


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


def _check(spec: Spec) -> list[str]:
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


def _url_host(host: str) -> str:
    """The host as it appears in a device URL (a wildcard bind is reached on loopback)."""
    bare = host.strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return host
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{bare}]" if address.version == 6 else bare


def _ports(spec: Spec) -> list[int]:
    """``count`` distinct ports on ``spec.host``: the requested range, or free ones.

    Free ports are held open together while they are chosen, so they are distinct; between
    closing them and a child binding its port another process could take it, which makes
    that child exit at start (reported, not retried).
    """
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    bind_host = spec.host.strip("[]")
    if spec.base_port is not None:
        ports = list(range(spec.base_port, spec.base_port + spec.count))
        for port in ports:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                try:
                    s.bind((bind_host, port))
                except OSError as err:
                    raise SimulationError(
                        f"port {port} on {spec.host} is not free: {err.strerror or err}"
                    ) from None
        return ports
    held: list[socket.socket] = []
    try:
        for _ in range(spec.count):
            s = socket.socket(family, socket.SOCK_STREAM)
            held.append(s)
            s.bind((bind_host, 0))
        return [int(s.getsockname()[1]) for s in held]
    except OSError as err:
        raise SimulationError(f"cannot bind {spec.host}: {err.strerror or err}") from None
    finally:
        for s in held:
            s.close()


def _registration(spec: Spec) -> Registration:
    if spec.mdns:
        return "mdns"
    return "api" if spec.token else "direct"


# --- processes ---------------------------------------------------------------------------------


def supervisor_command() -> list[str]:
    """How to start a supervisor: the console script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).with_name("baton-supervisor")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "supervisor"]


def _child_env() -> dict[str, str]:
    """This environment minus what would configure the children behind the simulator's back
    (``BATON_TOKEN`` is the CLI's orchestrator token, not a device's) or speak for its unit."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED_ENV and (k in _PASSED_ENV or not k.startswith(("BATON_", "WASMIOT_")))
    }


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the simulator dies.

    It covers the one way :func:`run` cannot clean up itself: being SIGKILLed. The libc
    function is looked up here, in the parent, so the forked child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    set_pdeathsig = 1  # PR_SET_PDEATHSIG from <linux/prctl.h>
    term = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(set_pdeathsig, term)
        if os.getppid() != parent:  # the simulator died before the call took effect
            os.kill(os.getpid(), term)

    return preexec


def _argv(spec: Spec, member: _Member, token_file: Path | None) -> list[str]:
    registration = _registration(spec)
    argv = [
        *supervisor_command(),
        "--host",
        spec.host,
        "--port",
        str(member.port),
        "--state-dir",
        str(member.state_dir),
        "--name",
        member.name,
        "--mdns-interfaces",
        _mdns_interfaces(spec.host) if registration == "mdns" else "none",
    ]
    if member.profile is not None:
        argv += ["--profile", str(member.profile)]
    if registration == "direct" and spec.orchestrator_url:
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


async def _spawn(
    spec: Spec,
    member: _Member,
    *,
    token_file: Path | None,
    cwd: Path,
    preexec: Callable[[], None] | None,
) -> None:
    with member.log.open("ab") as log:
        member.log_offset = log.tell()
        member.proc = await asyncio.create_subprocess_exec(
            *_argv(spec, member, token_file),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=_child_env(),
            start_new_session=True,  # a terminal's Ctrl-C reaches the simulator only
            preexec_fn=preexec,  # only a prctl call, looked up before the fork
        )


def _write_token(root: Path, token: str) -> Path:
    path = root / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT
    return path


def _tail(member: _Member) -> str:
    """The last lines this run wrote to the member's log."""
    try:
        with member.log.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(member.log_offset, end - TAIL_BYTES))
            data = f.read()
    except OSError as err:
        return f"(cannot read {member.log}: {err.strerror or err})"
    lines = data.decode("utf-8", errors="replace").splitlines()[-TAIL_LINES:]
    return "\n".join(lines) if lines else "(the log is empty)"


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _died(member: _Member) -> str:
    assert member.proc is not None
    assert member.proc.returncode is not None
    body = "\n".join("  " + line for line in _tail(member).splitlines())
    return (
        f"device {member.name} (pid {member.proc.pid}, {member.url}) exited with "
        f"{_status(member.proc.returncode)}; the other devices were stopped. "
        f"Last lines of {member.log}:\n{body}"
    )


def _first_dead(members: Sequence[_Member]) -> _Member | None:
    return next((m for m in members if m.proc is not None and m.proc.returncode is not None), None)


async def _stop_all(
    members: Sequence[_Member],
    timeout_s: float,
    hurry: asyncio.Event,
    progress: Callable[[str], None],
) -> None:
    """SIGTERM every running child, wait up to ``timeout_s`` (less after a second signal),
    SIGKILL the rest and reap them all (each wait bounded)."""
    running = [m.proc for m in members if m.proc is not None and m.proc.returncode is None]
    if not running:
        return
    progress(f"stopping {len(running)} device{'s' if len(running) != 1 else ''}")
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    exited: asyncio.Future[Any] = asyncio.ensure_future(
        asyncio.gather(*(p.wait() for p in running))
    )
    hurried: asyncio.Future[Any] = asyncio.ensure_future(hurry.wait())
    try:
        await asyncio.wait(
            {exited, hurried}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        hurried.cancel()
    stragglers = [p for p in running if p.returncode is None]
    if stragglers:
        progress(f"killing {len(stragglers)} device(s) that did not stop in time")
        for proc in stragglers:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), KILL_WAIT_S)
    if not exited.done():
        exited.cancel()
        left = [str(p.pid) for p in running if p.returncode is None]
        progress(f"could not reap pid(s) {', '.join(left)} within {KILL_WAIT_S} s of SIGKILL")


# --- readiness ---------------------------------------------------------------------------------


async def _probe(session: aiohttp.ClientSession, member: _Member) -> None:
    """Record the device's id once it answers ``/health`` and serves its description."""
    try:
        async with session.get(member.url + "/health", timeout=PROBE_TIMEOUT) as resp:
            if resp.status != 200:
                member.note = f"/health answered {resp.status}"
                return
        async with session.get(member.url + DESCRIPTION_PATH, timeout=PROBE_TIMEOUT) as resp:
            doc = await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return  # not listening yet: the next round asks again
    ident = doc.get("id") if isinstance(doc, dict) else None
    if isinstance(ident, str) and ident:
        member.device_id = ident
        member.note = "answering /health"
    else:
        member.note = "its description has no id"


async def _register(client: OrchestratorClient, member: _Member, host: str) -> None:
    try:
        await client.register_device(host, member.port, member.name)
    except ApiError as err:
        member.note = f"registration refused: {err}"
    else:
        member.registered = True


def _mark_listed(members: Sequence[_Member], devices: Sequence[Device]) -> None:
    by_id = {d.get("id"): d for d in devices}
    for m in members:
        if not m.healthy:
            continue
        d = by_id.get(m.device_id)
        if d is None:
            m.listed, m.note = False, "not listed by the orchestrator"
        elif d.get("url", "").rstrip("/") != m.url:
            m.listed, m.note = False, f"listed at {d.get('url')}, not yet at {m.url}"
        elif d.get("status") != "healthy":
            m.listed, m.note = False, f"listed as {d.get('status', '?')}"
        else:
            m.listed, m.note = True, "listed healthy"


async def _wait_ready(
    spec: Spec,
    members: Sequence[_Member],
    *,
    client: OrchestratorClient | None,
    signals: _Signals,
    progress: Callable[[str], None],
) -> bool:
    """Poll until every member is ready; False if a stop signal came first.

    Raises :class:`SimulationError` when a child exits or ``spec.wait_s`` passes.
    """
    deadline = time.monotonic() + spec.wait_s
    listing = client is not None
    shown = ""
    last_error = ""
    async with aiohttp.ClientSession() as session:
        while True:
            dead = _first_dead(members)
            if dead is not None:
                raise SimulationError(_died(dead))
            if signals.stop.is_set():
                return False
            await asyncio.gather(*(_probe(session, m) for m in members if not m.healthy))
            if client is not None:
                if _registration(spec) == "api":
                    host = _url_host(spec.host).strip("[]")
                    await asyncio.gather(
                        *(
                            _register(client, m, host)
                            for m in members
                            if m.healthy and not m.registered
                        )
                    )
                if all(m.healthy for m in members):
                    try:
                        _mark_listed(members, await client.list_devices())
                        last_error = ""
                    except ApiError as err:
                        last_error = f"; the orchestrator's device list failed: {err}"
            up = sum(m.healthy for m in members)
            line = f"{up}/{len(members)} devices answer /health"
            if listing:
                listed = sum(m.listed for m in members)
                line += f", {listed}/{len(members)} listed healthy by the orchestrator"
            if line != shown:
                progress(line)
                shown = line
            if all(m.ready(listing) for m in members):
                return True
            if time.monotonic() >= deadline:
                waiting = [m for m in members if not m.ready(listing)]
                sample = "; ".join(f"{m.name}: {m.note}" for m in waiting[:10])
                more = f" (and {len(waiting) - 10} more)" if len(waiting) > 10 else ""
                raise SimulationError(
                    f"{len(waiting)} of {len(members)} devices not ready after {spec.wait_s:g} s: "
                    f"{sample}{more}{last_error}; logs are in {members[0].log.parent}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signals.stop.wait(), POLL_INTERVAL_S)


async def _orchestrator(spec: Spec, progress: Callable[[str], None]) -> OrchestratorClient | None:
    """An open client if the orchestrator answers now, else None (no listing to wait for)."""
    if not spec.orchestrator_url:
        return None
    client = OrchestratorClient(spec.orchestrator_url, token=spec.token, timeout_s=5)
    await client.__aenter__()
    try:
        await client.health()
    except ApiError as err:
        await client.close()
        what = "registers with it when it comes up" if not spec.mdns else "is advertised"
        progress(
            f"the orchestrator at {spec.orchestrator_url} does not answer ({err}); each "
            f"device {what}, but this run does not wait for it to list them"
        )
        return None
    return client


def _write_ready(path: Path, ready: Ready) -> None:
    """Write the ready document atomically: a reader sees all of it or no file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(ready.to_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- the whole run -----------------------------------------------------------------------------


def _root(spec: Spec) -> Path:
    """The state root: the one asked for (created if needed), else a new temporary one."""
    if spec.state_root is None:
        return Path(tempfile.mkdtemp(prefix="baton-simulate-"))
    try:
        spec.state_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecError(
            f"cannot create --state-root {spec.state_root}: {err.strerror or err}"
        ) from None
    return spec.state_root.resolve()


def _members(spec: Spec, root: Path, names: Sequence[str]) -> list[_Member]:
    """Every device's name, port, URL, profile, state dir and log (nothing started yet)."""
    profiles = [p.resolve() for p in spec.profiles]
    host = _url_host(spec.host)
    return [
        _Member(
            name=name,
            port=port,
            url=f"http://{host}:{port}",
            profile=profiles[i % len(profiles)] if profiles else None,
            state_dir=root / name,
            log=root / f"{name}.log",
        )
        for i, (name, port) in enumerate(zip(names, _ports(spec), strict=True))
    ]


def _ready(
    spec: Spec, members: Sequence[_Member], root: Path, *, listed: bool, seconds: float
) -> Ready:
    return Ready(
        devices=tuple(
            SimulatedDevice(
                name=m.name,
                id=m.device_id or "",
                url=m.url,
                port=m.port,
                pid=m.proc.pid if m.proc else 0,
                profile=m.profile,
                state_dir=m.state_dir,
                log=m.log,
            )
            for m in members
        ),
        state_root=root,
        temporary=spec.state_root is None,
        orchestrator_url=spec.orchestrator_url,
        registration=_registration(spec),
        listed=listed,
        seconds=seconds,
    )


async def _foreground(members: Sequence[_Member], signals: _Signals) -> None:
    """Wait for a stop signal or a child's own exit, whichever comes first (no deadline: the
    fleet runs until it is told to stop). Raises :class:`SimulationError` for the latter."""
    waiters: set[asyncio.Future[Any]] = {
        asyncio.ensure_future(m.proc.wait()) for m in members if m.proc is not None
    }
    waiters.add(asyncio.ensure_future(signals.stop.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    dead = _first_dead(members)
    if dead is not None and not signals.stop.is_set():
        raise SimulationError(_died(dead))


async def run(
    spec: Spec,
    *,
    on_ready: Callable[[Ready], None],
    progress: Callable[[str], None],
) -> None:
    """Run the fleet until SIGINT/SIGTERM (see the module docstring for the full contract)."""
    names = device_names(spec.count, _check(spec))
    root = _root(spec)
    loop = asyncio.get_running_loop()
    signals = _Signals()

    def on_signal(signum: signal.Signals) -> None:
        if signals.stop.is_set():
            signals.hurry.set()  # a second Ctrl-C: do not wait for graceful stops
            return
        progress(f"{signum.name}: stopping")
        signals.stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    members: list[_Member] = []
    client: OrchestratorClient | None = None
    try:
        members = _members(spec, root, names)
        token_file = _write_token(root, spec.token) if spec.token else None
        client = await _orchestrator(spec, progress)
        preexec = _die_with_parent()
        began = time.monotonic()
        for member in members:
            if signals.stop.is_set():
                break
            await _spawn(spec, member, token_file=token_file, cwd=root, preexec=preexec)
        progress(f"started {len(members)} supervisors; state and logs in {root}")
        if not await _wait_ready(spec, members, client=client, signals=signals, progress=progress):
            return
        ready = _ready(
            spec, members, root, listed=client is not None, seconds=time.monotonic() - began
        )
        if client is not None:
            await client.close()  # nothing more to ask; do not hold a connection for hours
        if spec.ready_file is not None:
            _write_ready(spec.ready_file, ready)
        on_ready(ready)
        await _foreground(members, signals)
    finally:
        try:
            if client is not None:
                await client.close()  # idempotent
            await _stop_all(members, spec.stop_timeout_s, signals.hurry, progress)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            if spec.ready_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    spec.ready_file.unlink()
            if spec.state_root is None:
                shutil.rmtree(root, ignore_errors=True)
