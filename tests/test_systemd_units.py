"""systemd support: the unit files check cleanly, and both daemons speak sd_notify.

The unit checks run ``systemd-analyze`` (``make toolchain`` installs it); any output from
``verify`` is a failure, because it reports unknown keys and bad values on stderr with exit
status 0. The daemon checks start the installed console scripts on 127.0.0.1 with
``NOTIFY_SOCKET`` pointing at a datagram socket bound here, as systemd would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp import web

import orchestrator.service
import supervisor.service
from orchestrator.config import load_settings as orchestrator_settings
from supervisor.config import load_settings as supervisor_settings
from tests.conftest import ROOT, free_port

BIN = Path(sys.executable).parent
UNITS = ROOT / "systemd"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # the targets our units are ordered against
DAEMONS = ["baton-supervisor", "baton-orchestrator"]
SERVICE_MODULES = [supervisor.service, orchestrator.service]


# --- the unit files ------------------------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: `make toolchain` installs it (package systemd)")
    return path


def unit_settings(name: str) -> dict[str, list[str]]:
    """``key -> values`` of the unit's [Service] section (comments and blank lines dropped)."""
    found: dict[str, list[str]]
    section, found = "", {}
    for raw in (UNITS / f"{name}.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root for ``verify --root``: the system's targets, our units, ExecStart stubs."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    bin_dir = root / "opt/baton/venv/bin"
    bin_dir.mkdir(parents=True)
    for daemon in DAEMONS:
        shutil.copy(UNITS / f"{daemon}.service", root / "etc/systemd/system")
        stub = bin_dir / daemon
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def verify(root: Path, unit: str) -> str:
    """Everything ``systemd-analyze verify`` says about ``unit`` inside ``root``."""
    done = subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", f"/etc/systemd/system/{unit}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (done.stdout + done.stderr).strip()


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_verifies_without_a_word(unit_root: Path, daemon: str) -> None:
    assert verify(unit_root, f"{daemon}.service") == ""


def test_verify_does_report_a_misspelt_key_and_a_missing_binary(unit_root: Path) -> None:
    """Negative controls: the empty output above is not a check that cannot fail."""
    units = unit_root / "etc/systemd/system"
    text = (units / "baton-supervisor.service").read_text()
    (units / "misspelt.service").write_text(text.replace("ProtectSystem=", "ProtectSytem="))
    assert "Unknown key 'ProtectSytem'" in verify(unit_root, "misspelt.service")
    (unit_root / "opt/baton/venv/bin/baton-orchestrator").unlink()
    assert "is not executable" in verify(unit_root, "baton-orchestrator.service")


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_exposure_is_at_most_2_0(daemon: str) -> None:
    """``systemd-analyze security`` scores 0 (locked down) to 10; ``--threshold`` is in tenths."""
    done = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            "--threshold=20",
            str(UNITS / f"{daemon}.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert score, done.stdout[-2000:] + done.stderr
    print(f"{daemon}.service exposure {score[1]}")
    assert done.returncode == 0, done.stdout[-2000:]


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_contract(daemon: str) -> None:
    """What the README promises about each unit, and the stop-timeout relation."""
    unit = unit_settings(daemon)
    short = daemon.removeprefix("baton-")
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "DynamicUser": ["yes"],
        "StateDirectory": [daemon],
        "EnvironmentFile": [f"-/etc/baton/{short}.env"],
        "Restart": ["on-failure"],
        "RestartSec": ["2s"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert "MemoryDenyWriteExecute" not in unit  # wasmtime's JIT needs W^X-free memory
    assert seconds(unit["WatchdogSec"][0]) >= 10
    argv = unit["ExecStart"][0].split()
    assert argv[0] == f"/opt/baton/venv/bin/{daemon}"
    shutdown = float(argv[argv.index("--shutdown-timeout") + 1])
    # The daemon may spend its shutdown timeout twice (requests, then the calls behind them).
    assert seconds(unit["TimeoutStopSec"][0]) > 2 * shutdown


def test_state_directory_is_the_default_state_dir(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}
    assert supervisor_settings([], env).state_dir == tmp_path / "a"
    assert orchestrator_settings([], env).state_dir == tmp_path / "a"
    flag = ["--state-dir", str(tmp_path / "flag")]
    assert supervisor_settings(flag, env).state_dir == tmp_path / "flag"
    assert orchestrator_settings(flag, env).state_dir == tmp_path / "flag"
    assert supervisor_settings([], env | {"BATON_STATE_DIR": "/x"}).state_dir == Path("/x")
    assert orchestrator_settings(
        [], env | {"BATON_ORCHESTRATOR_STATE_DIR": "/y"}
    ).state_dir == Path("/y")


def test_orchestrator_shutdown_timeout_and_unit_friendly_environment() -> None:
    s = orchestrator_settings([], {})
    assert s.shutdown_timeout_s == 10.0 and s.public_url is None and s.token is None
    env = {
        "BATON_SHUTDOWN_TIMEOUT": "4",
        "BATON_ORCHESTRATOR_PUBLIC_URL": "http://hub:3000",
        "BATON_TOKEN": "t0k",
    }
    s = orchestrator_settings([], env)
    assert (s.shutdown_timeout_s, s.base_url, s.token) == (4.0, "http://hub:3000", "t0k")
    assert orchestrator_settings(["--shutdown-timeout", "2.5"], env).shutdown_timeout_s == 2.5


# --- sd_notify: a datagram socket standing in for systemd ----------------------------------------


class NotifySocket:
    """The manager's end: a bound AF_UNIX datagram socket, read with deadlines."""

    def __init__(self, address: str) -> None:
        self.address = address  # as written into NOTIFY_SOCKET ('@' = abstract)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.seen: list[str] = []

    async def next(self, within_s: float) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), within_s)
        self.seen.append(data.decode())
        return self.seen[-1]

    async def until(self, first_line: str, within_s: float) -> str:
        """The next message whose first line is ``first_line``; earlier ones stay in ``seen``."""
        deadline = time.monotonic() + within_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {first_line} within {within_s}s; got {self.seen}")
            with contextlib.suppress(TimeoutError):
                message = await self.next(remaining)
                if message.split("\n")[0] == first_line:
                    return message

    def pending(self) -> list[str]:
        """Messages already queued, without waiting."""
        out: list[str] = []
        for _ in range(10_000):
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out
        raise AssertionError("the notify queue never ran dry")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[str]:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
    path = Path("/tmp") / f"baton-notify-{uuid.uuid4().hex[:12]}"
    yield str(path)
    path.unlink(missing_ok=True)


@pytest.fixture
async def manager(notify_path: str) -> AsyncIterator[NotifySocket]:
    sock = NotifySocket(notify_path)
    yield sock
    sock.close()


def fields(message: str) -> dict[str, str]:
    """``READY=1\nSTATUS=x`` as ``{"READY": "1", "STATUS": "x"}``."""
    pairs = (line.partition("=") for line in message.split("\n") if line)
    return {key: value for key, _, value in pairs}


# --- the real daemons ----------------------------------------------------------------------------


def spawn(daemon: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The installed console script on 127.0.0.1:``port``, mDNS off, output to ``log``."""
    argv = [str(BIN / daemon), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*argv, "--mdns-interfaces", "none"], env=env, stdout=out, stderr=out
        )


@pytest.mark.parametrize(
    ("daemon", "abstract"),
    [("baton-supervisor", False), ("baton-orchestrator", True)],
    ids=["supervisor-path-socket", "orchestrator-abstract-socket"],
)
async def test_daemon_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, notify_path: str, daemon: str, abstract: bool
) -> None:
    """READY=1 once /health answers, WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 on SIGTERM.

    The state dir comes from STATE_DIRECTORY alone, as under ``StateDirectory=``.
    """
    address = "@" + Path(notify_path).name if abstract else notify_path
    manager = NotifySocket(address)
    port = free_port()
    state_dir = tmp_path / "state"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BATON_", "WASMIOT_", "NOTIFY_", "WATCHDOG_", "STATE_DIRECTORY"))
    }
    env |= {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000", "STATE_DIRECTORY": str(state_dir)}
    log = tmp_path / f"{daemon}.log"
    proc = spawn(daemon, port, env, log)
    try:
        ready = fields(await manager.until("READY=1", 30))
        assert ready["STATUS"].startswith("serving") and f":{port}" in ready["STATUS"]
        # Listening by the time READY=1 came: one request, no retries.
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/health", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp,
        ):
            assert resp.status == 200
        for _ in range(3):
            assert await manager.until("WATCHDOG=1", 5) == "WATCHDOG=1"

        proc.send_signal(signal.SIGTERM)
        stopping = fields(await manager.until("STOPPING=1", 10))
        assert stopping["STATUS"] == "stopping (SIGTERM)"
        assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()[-3000:]
        assert [m for m in manager.pending() if m.startswith("WATCHDOG")] == []
        assert any(state_dir.iterdir()), "STATE_DIRECTORY was not used as the state dir"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        manager.close()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


# --- the notify helper and serve(), in this process ----------------------------------------------


@pytest.mark.parametrize("service", SERVICE_MODULES, ids=lambda m: m.__name__)
def test_without_notify_socket_everything_is_a_no_op(service: ModuleType) -> None:
    notifier = service.Notifier(env={"WATCHDOG_USEC": "100000"}, pid=42)
    assert not notifier.enabled and notifier.notify("READY=1") is False
    notifier.close()


@pytest.mark.parametrize("service", SERVICE_MODULES, ids=lambda m: m.__name__)
def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid(
    service: ModuleType,
) -> None:
    def interval(**env: str) -> float | None:
        value: float | None = service.Notifier(env=env, pid=42).watchdog_interval_s
        return value

    assert interval(WATCHDOG_USEC="3000000") == 1.5
    assert interval(WATCHDOG_USEC="3000000", WATCHDOG_PID="42") == 1.5
    assert interval(WATCHDOG_USEC="3000000", WATCHDOG_PID="41") is None
    assert interval(WATCHDOG_USEC="0") is None
    assert interval(WATCHDOG_USEC="soon") is None
    assert interval() is None


@pytest.mark.parametrize("service", SERVICE_MODULES, ids=lambda m: m.__name__)
def test_a_bad_notify_socket_is_logged_once_and_never_raises(
    service: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = service.Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger=service.__name__):
        assert notifier.notify("READY=1") is False
        assert notifier.notify("WATCHDOG=1") is False
    assert len(caplog.records) == 1 and "cannot notify systemd" in caplog.text
    notifier.close()


@pytest.mark.parametrize("service", SERVICE_MODULES, ids=lambda m: m.__name__)
async def test_abstract_address(service: ModuleType, notify_path: str) -> None:
    manager = NotifySocket("@" + Path(notify_path).name)
    try:
        notifier = service.Notifier(env={"NOTIFY_SOCKET": manager.address})
        assert notifier.notify("READY=1", "STATUS=up")
        assert await manager.next(5) == "READY=1\nSTATUS=up"
        notifier.close()
    finally:
        manager.close()


def tiny_app() -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/health", health)
    return app


@contextlib.asynccontextmanager
async def serving(
    service: ModuleType, app: web.Application, env: dict[str, str]
) -> AsyncIterator[asyncio.Task[None]]:
    """``service.serve(app)`` as a task; killed by SIGTERM to this very process at the end."""
    task = asyncio.create_task(
        service.serve(
            app,
            host="127.0.0.1",
            port=free_port(),
            shutdown_timeout_s=5,
            status="serving test",
            notifier=service.Notifier(env=env),
        )
    )
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("service", SERVICE_MODULES, ids=lambda m: m.__name__)
async def test_serve_pings_only_when_the_watchdog_is_ours(
    service: ModuleType, manager: NotifySocket
) -> None:
    for pid, pings in ((os.getpid() + 1, False), (os.getpid(), True)):
        env = {
            "NOTIFY_SOCKET": manager.address,
            "WATCHDOG_USEC": "20000",
            "WATCHDOG_PID": str(pid),
        }
        async with serving(service, tiny_app(), env) as task:
            await manager.until("READY=1", 10)
            if pings:
                for _ in range(3):
                    await manager.until("WATCHDOG=1", 5)
            else:  # 15 intervals of silence: nothing was meant for us
                with pytest.raises(TimeoutError):
                    await manager.next(0.3)
            os.kill(os.getpid(), signal.SIGTERM)  # serve() has its handler installed by now
            await manager.until("STOPPING=1", 5)
            await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("service", SERVICE_MODULES, ids=lambda m: m.__name__)
async def test_a_stop_during_start_up_cancels_it_without_ready(
    service: ModuleType, manager: NotifySocket
) -> None:
    entered, cleaned = asyncio.Event(), asyncio.Event()

    async def slow_start(app: web.Application) -> AsyncIterator[None]:
        entered.set()
        try:
            await asyncio.Event().wait()  # start-up that never finishes on its own
            yield
        finally:
            cleaned.set()

    app = tiny_app()
    app.cleanup_ctx.append(slow_start)
    async with serving(service, app, {"NOTIFY_SOCKET": manager.address}) as task:
        await asyncio.wait_for(entered.wait(), 10)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await manager.until("STOPPING=1", 5)
        await asyncio.wait_for(task, 10)
    assert cleaned.is_set()
    assert not [m for m in [*manager.seen, *manager.pending()] if m.startswith("READY")]
