"""``baton simulate``: a fleet of real supervisor processes on one machine.

For demos and benchmarks. :func:`run` starts ``count`` ``baton-supervisor`` processes, each
with its own state directory under a state root, its own port on one address (127.0.0.1 by
default), a distinct name (``<profile name>-01``, ...) and a log file under the state root.
The profiles given round-robin over the devices. The simulator only manages processes and
talks HTTP: it never imports the supervisor, and reaches the orchestrator only through
:mod:`orchestrator.client`. What to start is decided in :mod:`orchestrator.fleet_plan` (pure);
the children are started, watched and stopped by :mod:`orchestrator.fleet_processes`; this
module sets up the state root and ports and runs the whole.

How the devices reach the orchestrator (``registration`` in :class:`Ready`):

- ``direct`` (the default): each supervisor registers itself (``--orchestrator URL``) and
  renews its registration when the orchestrator forgets it;
- ``mdns``: each supervisor advertises over mDNS on the bind address; the orchestrator must
  browse that address (``--mdns-interfaces 127.0.0.1``).

With a bearer token, every supervisor reads it from ``<state root>/token`` (mode 0600): it
sends it when it registers and requires it on ``/deploy``, where the orchestrator sends it.

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
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.client import ApiError, OrchestratorClient
from orchestrator.fleet_plan import (
    MAX_COUNT,
    Ready,
    SimulatedDevice,
    SimulationError,
    Spec,
    SpecError,
    check,
    device_names,
    profile_name,
    registration,
    url_host,
)
from orchestrator.fleet_processes import (
    Member,
    Signals,
    die_with_parent,
    foreground,
    spawn,
    stop_all,
    wait_ready,
)

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


# --- the ground: state root, ports, members ----------------------------------------------------


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


def _write_token(root: Path, token: str) -> Path:
    """The file every child reads the token from (``--token-file``), for this user only."""
    path = root / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT
    return path


def _members(spec: Spec, root: Path, names: Sequence[str]) -> list[Member]:
    """Every device's name, port, URL, profile, state dir and log (nothing started yet)."""
    profiles = [p.resolve() for p in spec.profiles]
    host = url_host(spec.host)
    return [
        Member(
            name=name,
            port=port,
            url=f"http://{host}:{port}",
            profile=profiles[i % len(profiles)] if profiles else None,
            state_dir=root / name,
            log=root / f"{name}.log",
        )
        for i, (name, port) in enumerate(zip(names, _ports(spec), strict=True))
    ]


# --- the orchestrator and the ready document -----------------------------------------------


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


def _ready(
    spec: Spec, members: Sequence[Member], root: Path, *, listed: bool, seconds: float
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
        registration=registration(spec),
        listed=listed,
        seconds=seconds,
    )


async def run(
    spec: Spec,
    *,
    on_ready: Callable[[Ready], None],
    progress: Callable[[str], None],
) -> None:
    """Run the fleet until SIGINT/SIGTERM (see the module docstring for the full contract)."""
    names = device_names(spec.count, check(spec))
    root = _root(spec)
    loop = asyncio.get_running_loop()
    signals = Signals()

    def on_signal(signum: signal.Signals) -> None:
        if signals.stop.is_set():
            signals.hurry.set()  # a second Ctrl-C: do not wait for graceful stops
            return
        progress(f"{signum.name}: stopping")
        signals.stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    members: list[Member] = []
    client: OrchestratorClient | None = None
    try:
        members = _members(spec, root, names)
        token_file = _write_token(root, spec.token) if spec.token else None
        client = await _orchestrator(spec, progress)
        preexec = die_with_parent()
        began = time.monotonic()
        for member in members:
            if signals.stop.is_set():
                break
            await spawn(spec, member, token_file=token_file, cwd=root, preexec=preexec)
        progress(f"started {len(members)} supervisors; state and logs in {root}")
        if not await wait_ready(spec, members, client=client, signals=signals, progress=progress):
            return
        ready = _ready(
            spec, members, root, listed=client is not None, seconds=time.monotonic() - began
        )
        if client is not None:
            await client.close()  # nothing more to ask; do not hold a connection for hours
        if spec.ready_file is not None:
            _write_ready(spec.ready_file, ready)
        on_ready(ready)
        await foreground(members, signals)
    finally:
        try:
            if client is not None:
                await client.close()  # idempotent
            await stop_all(members, spec.stop_timeout_s, signals.hurry, progress)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            if spec.ready_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    spec.ready_file.unlink()
            if spec.state_root is None:
                shutil.rmtree(root, ignore_errors=True)
