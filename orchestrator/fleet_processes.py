"""The running children of ``baton simulate``: spawn, wait until ready, watch, stop.

The process and HTTP half of :mod:`orchestrator.simulate` (which composes these into
:func:`~orchestrator.simulate.run` and states the whole contract). Each :class:`Member` is one
planned device and, once spawned, its process and what the probes learnt. Children run in their
own session with their output appended to their log; a device that exits is reported with the
tail of what this run wrote to that log, never restarted. The orchestrator is reached only
through :mod:`orchestrator.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.client import ApiError, Device, OrchestratorClient
from orchestrator.fleet_plan import SimulationError, Spec, child_argv, child_env

__all__ = [
    "Member",
    "Signals",
    "die_with_parent",
    "foreground",
    "spawn",
    "stop_all",
    "wait_ready",
]

# The protocol's description route. Spelled out because this module must not import the
# supervisor package (it starts supervisors, it does not embed them).
DESCRIPTION_PATH = "/.well-known/wasmiot-device-description"
POLL_INTERVAL_S = 0.2
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)
KILL_WAIT_S = 10.0  # after SIGKILL only the kernel is left to wait for
TAIL_LINES = 20
TAIL_BYTES = 8192


@dataclass
class Member:
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
    listed: bool = False
    note: str = "no answer on /health yet"

    @property
    def healthy(self) -> bool:
        return self.device_id is not None

    def ready(self, listing: bool) -> bool:
        return self.healthy and (self.listed or not listing)


@dataclass
class Signals:
    """``stop``: the first SIGINT/SIGTERM; ``hurry``: a second one (skip graceful waits)."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)


# --- starting ----------------------------------------------------------------------------------


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the simulator dies.

    It covers the one way :func:`~orchestrator.simulate.run` cannot clean up itself: being
    SIGKILLed. The libc function is looked up here, in the parent, so the forked child only
    makes the call.
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


async def spawn(
    spec: Spec,
    member: Member,
    *,
    token_file: Path | None,
    cwd: Path,
    preexec: Callable[[], None] | None,
) -> None:
    """Start the member's supervisor in its own session, its output appended to its log."""
    argv = child_argv(
        spec,
        name=member.name,
        port=member.port,
        state_dir=member.state_dir,
        profile=member.profile,
        token_file=token_file,
    )
    with member.log.open("ab") as log:
        member.log_offset = log.tell()
        member.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env(),
            start_new_session=True,  # a terminal's Ctrl-C reaches the simulator only
            preexec_fn=preexec,  # only a prctl call, looked up before the fork
        )


# --- a device that died ------------------------------------------------------------------------


def _tail(member: Member) -> str:
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


def _died(member: Member) -> str:
    assert member.proc is not None
    assert member.proc.returncode is not None
    body = "\n".join("  " + line for line in _tail(member).splitlines())
    return (
        f"device {member.name} (pid {member.proc.pid}, {member.url}) exited with "
        f"{_status(member.proc.returncode)}; the other devices were stopped. "
        f"Last lines of {member.log}:\n{body}"
    )


def _first_dead(members: Sequence[Member]) -> Member | None:
    return next((m for m in members if m.proc is not None and m.proc.returncode is not None), None)


# --- readiness ---------------------------------------------------------------------------------


async def _probe(session: aiohttp.ClientSession, member: Member) -> None:
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


def _mark_listed(members: Sequence[Member], devices: Sequence[Device]) -> None:
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


async def wait_ready(
    spec: Spec,
    members: Sequence[Member],
    *,
    client: OrchestratorClient | None,
    signals: Signals,
    progress: Callable[[str], None],
) -> bool:
    """Poll until every member answers ``/health`` and, with a ``client``, the orchestrator
    lists it healthy at its URL; False if a stop signal came first.

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
            if client is not None and all(m.healthy for m in members):
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


# --- running and stopping ----------------------------------------------------------------------


async def foreground(members: Sequence[Member], signals: Signals) -> None:
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


async def stop_all(
    members: Sequence[Member],
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
