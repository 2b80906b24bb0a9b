"""``baton simulate`` as users run it: real processes on 127.0.0.1, stopped with real signals.

The acceptance test starts the installed ``baton-orchestrator`` and ``baton simulate --count
20`` as subprocesses and waits, with deadlines, until the orchestrator lists all 20 devices
healthy; then SIGTERM must stop the simulator with status 0 and leave none of its children
running. Smaller runs cover profiles round-robin, ids kept across runs, a device that dies,
devices that register themselves with the fleet's token, and refused options. Every process a
test starts is killed in ``finally``; waits poll with deadlines.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil
import pytest

from orchestrator import cli
from supervisor.app import _advertised_addresses
from supervisor.config import Settings as SupervisorSettings
from supervisor.platform import local_ipv4_addresses
from tests.conftest import ROOT, free_port
from tests.daemons import until
from tests.orchestration import OrchestratorFactory
from tests.support import clean_env

T = TypeVar("T")
BIN = Path(sys.executable).parent
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


class Process:
    """A command of ours in its own process, output to files under ``where``."""

    def __init__(self, where: Path, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.argv, self.env = argv, env
        self.out = where / f"{name}.out"
        self.err = where / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=err)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def signal(self, signum: signal.Signals, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


class Simulator(Process):
    """``baton simulate`` with a ready file; remembers its children to clean up after it."""

    def __init__(self, where: Path, *args: str, env: dict[str, str] | None = None) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ready_file = where / f"ready-{tag}.json"
        argv = [str(BIN / "baton"), "simulate", "--ready-file", str(self.ready_file), *args]
        super().__init__(where, f"simulate-{tag}", argv, env or clean_env())
        self.children: list[psutil.Process] = []

    async def wait_ready(self, within_s: float) -> dict[str, Any]:
        async def ready() -> dict[str, Any] | None:
            if not self.running():
                raise AssertionError(f"baton simulate exited early:\n{self.stderr()}")
            if not self.ready_file.exists():
                return None
            return dict(json.loads(self.ready_file.read_text()))

        doc = await until(ready, within_s, "baton simulate to write its ready file")
        # psutil.Process remembers the start time: a reused pid never counts as our child.
        self.children = [psutil.Process(d["pid"]) for d in doc["devices"]]
        return doc

    def cleanup(self) -> None:
        self.kill()
        for child in self.children:
            if child.is_running():
                child.kill()


def alive(children: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running, zombies included (a zombie means nobody reaped it)."""
    return [c for c in children if c.is_running()]


def processes_under(root: Path) -> list[psutil.Process]:
    """Processes whose command line names ``root`` (the simulated supervisors do)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if str(root) in cmdline and "pytest" not in cmdline:
            found.append(proc)
    return found


@pytest.fixture
def simulators() -> Iterator[list[Simulator]]:
    started: list[Simulator] = []
    yield started
    for sim in started:
        sim.cleanup()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=HTTP_TIMEOUT) as resp:
        assert resp.status == 200, (url, resp.status)
        return await resp.json()


async def listed_healthy(
    session: aiohttp.ClientSession, orchestrator_url: str, devices: list[dict[str, Any]]
) -> bool:
    """Every device in the orchestrator's list, healthy, at the URL the simulator reported."""
    listing = await get_json(session, orchestrator_url + "/devices")
    by_id = {d["id"]: d for d in listing}
    return all(
        d["id"] in by_id
        and by_id[d["id"]]["status"] == "healthy"
        and by_id[d["id"]]["url"] == d["url"]
        for d in devices
    )


# --- acceptance: 20 devices listed healthy ----------------------------------------------------


@pytest.mark.slow
async def test_simulate_twenty_devices_listed_healthy_then_sigterm_leaves_nothing(
    tmp_path: Path, simulators: list[Simulator]
) -> None:
    port = free_port()
    orch_url = f"http://127.0.0.1:{port}"
    orch = Process(
        tmp_path,
        "orchestrator",
        [
            str(BIN / "baton-orchestrator"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "orchestrator"),
            "--mdns-interfaces",
            "none",
            "--health-interval",
            "0.5",
        ],
        clean_env(),
    )
    root = tmp_path / "fleet"
    sim = Simulator(
        tmp_path, "--url", orch_url, "--json", "--count", "20", "--state-root", str(root)
    )
    simulators.append(sim)
    async with aiohttp.ClientSession() as session:
        try:
            orch.start()

            async def orchestrator_up() -> bool:
                assert orch.running(), orch.stderr()
                try:
                    async with session.get(orch_url + "/health", timeout=HTTP_TIMEOUT) as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(orchestrator_up, 30, "the orchestrator to answer /health")
            began = time.monotonic()
            sim.start()
            doc = await sim.wait_ready(120)
            ready_s = time.monotonic() - began
            devices = doc["devices"]
            assert len(devices) == 20 and doc["listed"] and doc["registration"] == "direct"

            # The orchestrator agrees, independently of the simulator's own check.
            async def all_listed() -> bool:
                return await listed_healthy(session, orch_url, devices)

            await until(all_listed, 30, "the orchestrator to list 20 healthy devices")
            listed_s = time.monotonic() - began
            print(
                f"20 devices: ready file after {ready_s:.2f} s (simulator's own figure "
                f"{doc['seconds']:.2f} s), listed healthy after {listed_s:.2f} s"
            )
            rss = sum(c.memory_info().rss for c in sim.children)
            print(
                f"RSS of the 20 supervisors: {rss / 2**20:.0f} MB ({rss / 2**20 / 20:.1f} MB each)"
            )

            # Distinct names, ids, ports and state dirs; state where it was asked to be.
            for key in ("name", "id", "port", "url", "stateDir", "log", "pid"):
                assert len({d[key] for d in devices}) == 20, key
            assert [d["name"] for d in devices] == [f"sim-{i:02d}" for i in range(1, 21)]
            for d in devices:
                assert d["url"] == f"http://127.0.0.1:{d['port']}"
                assert Path(d["stateDir"]).parent == root and Path(d["log"]).parent == root
                assert (Path(d["stateDir"]) / "state.json").is_file()
                description = await get_json(
                    session, d["url"] + "/.well-known/wasmiot-device-description"
                )
                assert description["id"] == d["id"] and description["name"] == d["name"]
            # --json prints the same document the ready file holds.
            assert json.loads(sim.stdout()) == doc
            assert all(c.ppid() == sim.pid for c in sim.children)

            assert sim.signal(signal.SIGTERM) == 0, sim.stderr()
            assert alive(sim.children) == [], alive(sim.children)
            assert processes_under(root) == []
            assert not sim.ready_file.exists()
            assert root.is_dir()  # a --state-root is kept
            assert "Traceback" not in sim.stderr(), sim.stderr()
            for d in devices:
                assert "Traceback" not in Path(d["log"]).read_text(), d["log"]
        finally:
            sim.cleanup()
            orch.kill()


# --- profiles, kept ids, a dying device, a temporary root --------------------------------------


@pytest.mark.slow
async def test_simulate_profiles_kept_ids_and_a_dying_device(
    tmp_path: Path, simulators: list[Simulator]
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # no orchestrator: devices come up regardless
    root = tmp_path / "fleet"
    profiles = ["--profile", "devices/compute-node.toml", "--profile", "devices/sensor-node.toml"]
    common = ["--url", nobody, "--count", "3", *profiles]

    # A temporary state root: reported, and gone after the stop.
    first = Simulator(tmp_path, *common)
    simulators.append(first)
    first.start()
    doc = await first.wait_ready(60)
    temporary = Path(doc["stateRoot"])
    assert doc["temporary"] and temporary.is_dir() and not doc["listed"]
    assert [d["name"] for d in doc["devices"]] == [
        "compute-node-01",
        "sensor-node-02",
        "compute-node-03",
    ]
    assert [Path(d["profile"]).name for d in doc["devices"]] == [
        "compute-node.toml",
        "sensor-node.toml",
        "compute-node.toml",
    ]
    assert "does not answer" in first.stderr()
    out = first.stdout()
    assert "sensor-node-02" in out and "ready: 3 devices up" in out, out
    assert first.signal(signal.SIGINT) == 0, first.stderr()
    assert alive(first.children) == []
    assert not temporary.exists()

    # A given state root: the same devices (ids) on the next run, whatever their ports.
    second = Simulator(tmp_path, *common, "--state-root", str(root), "--name-prefix", "lab")
    simulators.append(second)
    second.start()
    ids = [d["id"] for d in (await second.wait_ready(60))["devices"]]
    assert second.signal(signal.SIGTERM) == 0, second.stderr()
    third = Simulator(tmp_path, *common, "--state-root", str(root), "--name-prefix", "lab")
    simulators.append(third)
    third.start()
    doc = await third.wait_ready(60)
    assert [d["id"] for d in doc["devices"]] == ids
    assert [d["name"] for d in doc["devices"]] == ["lab-01", "lab-02", "lab-03"]

    # A device that dies takes the fleet down: named, with its status and its log's tail.
    third.children[1].kill()
    assert third.proc is not None
    code = third.proc.wait(30)
    err = third.stderr()
    assert code == 1, err
    assert "device lab-02" in err and "killed by SIGKILL" in err, err
    assert "supervisor lab-02 (" in err, err  # the tail of lab-02's log: its start-up line
    assert alive(third.children) == []
    assert processes_under(root) == []
    assert not third.ready_file.exists()
    assert "Traceback" not in err


# --- a token: every device registers itself with it -------------------------------------------


@pytest.mark.slow
async def test_simulate_with_a_token_devices_register_themselves_with_it(
    tmp_path: Path, make_orchestrator: OrchestratorFactory, simulators: list[Simulator]
) -> None:
    token = "simulate-" + uuid.uuid4().hex
    orch = await make_orchestrator(token=token)
    # The orchestrator refuses a registration without the token: a device listed below sent it.
    status, _ = await orch.post("/devices", json={"host": "127.0.0.1", "port": free_port()})
    assert status == 401
    sim = Simulator(tmp_path, "--url", orch.url, "--count", "2", env=clean_env(BATON_TOKEN=token))
    simulators.append(sim)
    sim.start()
    doc = await sim.wait_ready(60)
    assert doc["registration"] == "direct" and doc["listed"], doc
    assert await listed_healthy(orch.session, orch.url, doc["devices"])
    token_file = Path(doc["stateRoot"]) / "token"
    assert token_file.stat().st_mode & 0o077 == 0
    for device in doc["devices"]:
        assert f"--token-file {token_file}" in " ".join(psutil.Process(device["pid"]).cmdline())
        assert "registered with orchestrator" in Path(device["log"]).read_text()
    # The devices require the orchestrator's token on /deploy, as the orchestrator sends it.
    async with orch.session.post(doc["devices"][0]["url"] + "/deploy", json={}) as resp:
        assert resp.status == 401
    assert sim.signal(signal.SIGTERM) == 0, sim.stderr()
    assert alive(sim.children) == []
    assert token not in sim.stderr() + sim.stdout()


async def test_simulate_a_fleet_not_up_in_time_is_stopped_and_reported(
    tmp_path: Path, simulators: list[Simulator]
) -> None:
    root = tmp_path / "slow-fleet"
    # 50 ms is less than an interpreter needs to import aiohttp: the deadline passes first.
    sim = Simulator(
        tmp_path,
        *("--url", f"http://127.0.0.1:{free_port()}", "--count", "2", "--wait", "0.05"),
        *("--state-root", str(root)),
    )
    simulators.append(sim)
    sim.start()
    assert sim.proc is not None
    code = sim.proc.wait(60)
    err = sim.stderr()
    assert code == 1, err
    assert "2 of 2 devices not ready after 0.05 s" in err and "sim-01:" in err, err
    assert processes_under(root) == []
    assert not sim.ready_file.exists() and "Traceback" not in err


def test_a_supervisor_bound_to_one_address_registers_with_that_address_only(
    tmp_path: Path,
) -> None:
    """What lets simulated devices on 127.0.0.1 register on a machine with other addresses."""

    def advertised(host: str, **kw: Any) -> list[str]:
        return _advertised_addresses(SupervisorSettings(state_dir=tmp_path, host=host, **kw))

    assert advertised("127.0.0.1") == ["127.0.0.1"]
    assert advertised("::1") == ["::1"] == advertised("[::1]")
    assert advertised("localhost") == ["localhost"]
    assert advertised("0.0.0.0") == local_ipv4_addresses() == advertised("::")
    assert advertised("0.0.0.0", mdns_interfaces=("127.0.0.1",)) == ["127.0.0.1"]


# --- refused options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "--count must be between 1 and"),
        (["--count", "-3"], "--count must be between 1 and"),
        (["--profile", "devices/no-such-node.toml"], "does not exist"),
        (["--profile", "devices"], "is a directory"),
        (["--profile", "README.md"], "is not valid TOML"),
        (["--name-prefix", "../escape"], "--name-prefix"),
        (["--base-port", "65535", "--count", "2"], "leaves the port range"),
        (["--orchestrator", "ftp://x"], "--orchestrator"),
    ],
)
def test_simulate_refuses_bad_options_with_one_line_and_status_2(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a temporary root would go
    code = cli.main(["--url", f"http://127.0.0.1:{free_port()}", "simulate", *args])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("baton: error:") and message in err, err
    assert out == ""
    assert list(tmp_path.iterdir()) == []  # nothing was started or created
