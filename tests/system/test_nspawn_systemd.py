"""Boots real systemd in systemd-nspawn with the shipped unit and checks it keeps Baton alive.

The container gets the repo's ``systemd/baton-supervisor.service`` unchanged (plus a drop-in with
a short watchdog so the test is quick), Baton installed the way the README says (a venv at
/opt/baton/venv, wheels, /etc/baton/supervisor.env), and a oneshot unit running
``container_check.py``, which freezes the daemon with SIGSTOP and records how systemd reacts.
``systemd/baton-orchestrator.service`` runs beside it unchanged (/etc/baton/orchestrator.env):
the check then stores a value through its bootstrapped built-in datalist and reads it back.
Needs root; run it with ``make test-system`` (deselected from ``make test``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.system.nspawn import build_wheels, copy_root, ensure_root, nspawn_run

pytestmark = [pytest.mark.system, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
UNIT = "baton-supervisor.service"
ORCH_UNIT = "baton-orchestrator.service"
ORCH_PORT = 3000
CHECK_UNIT = "baton-system-check.service"
# --private-network leaves the container only its own loopback, so the default port cannot
# collide with anything on the host and no mDNS packet reaches the host's network.
PORT = 5000
WATCHDOG_S = 3
BOOT_TIMEOUT_S = 180
CHECK_SCRIPT = "/usr/local/lib/baton-system-test/container_check.py"
# What the container recorded, kept after the run for a look (the root itself is deleted).
ARTIFACTS = REPO / "build" / "system-test"
DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= pool

SUPERVISOR_ENV = f"""\
# Written by tests/system: what an operator puts in /etc/baton/supervisor.env.
BATON_PROFILE=/etc/baton/compute-node.toml
BATON_HOST=127.0.0.1
BATON_PORT={PORT}
BATON_MDNS_INTERFACES=127.0.0.1
"""

ORCHESTRATOR_ENV = f"""\
# Written by tests/system: what an operator puts in /etc/baton/orchestrator.env.
BATON_ORCHESTRATOR_HOST=127.0.0.1
BATON_ORCHESTRATOR_PORT={ORCH_PORT}
BATON_MDNS_INTERFACES=127.0.0.1
"""

# Test-only values; everything else comes from the shipped unit as is.
DROP_IN = f"""\
[Service]
WatchdogSec={WATCHDOG_S}s
"""

CHECK_UNIT_TEXT = f"""\
[Unit]
Description=Baton system test: hang the supervisor, record how systemd restarts it
# Power off either way, so the container (and nspawn) ends as soon as the check is done.
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 {CHECK_SCRIPT} --port {PORT} --orchestrator-port {ORCH_PORT} \
    --results /results
# The script bounds each wait itself; this only stops a wedged script from holding the boot.
TimeoutStartSec=150

[Install]
WantedBy=multi-user.target
"""


def _checked(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _install_baton(root: Path, wheels: Path) -> None:
    env = ["PIP_DISABLE_PIP_VERSION_CHECK=1"]
    _checked(
        nspawn_run(root, ["/usr/bin/python3", "-m", "venv", "/opt/baton/venv"], setenv=env),
        "creating /opt/baton/venv in the container",
    )
    _checked(
        nspawn_run(
            root,
            [
                "/opt/baton/venv/bin/pip",
                "install",
                "-q",
                "--no-index",
                "--find-links",
                "/mnt/wheels",
                "baton",
            ],
            binds_ro=[(wheels, "/mnt/wheels")],
            setenv=env,
        ),
        "pip install in the container",
    )
    etc = root / "etc" / "baton"
    etc.mkdir(parents=True)
    shutil.copy2(REPO / "devices" / "compute-node.toml", etc / "compute-node.toml")
    (etc / "supervisor.env").write_text(SUPERVISOR_ENV, encoding="utf-8")
    (etc / "supervisor.env").chmod(0o600)  # as the README says: it may hold BATON_TOKEN
    (etc / "orchestrator.env").write_text(ORCHESTRATOR_ENV, encoding="utf-8")
    (etc / "orchestrator.env").chmod(0o600)


def _install_units(root: Path) -> None:
    units = root / "etc" / "systemd" / "system"
    shutil.copy2(REPO / "systemd" / UNIT, units / UNIT)
    shutil.copy2(REPO / "systemd" / ORCH_UNIT, units / ORCH_UNIT)  # unchanged, no drop-in
    drop_in = units / f"{UNIT}.d"
    drop_in.mkdir()
    (drop_in / "test.conf").write_text(DROP_IN, encoding="utf-8")
    script = root / CHECK_SCRIPT.lstrip("/")
    script.parent.mkdir(parents=True)
    shutil.copy2(Path(__file__).with_name("container_check.py"), script)
    (units / CHECK_UNIT).write_text(CHECK_UNIT_TEXT, encoding="utf-8")
    # `systemctl enable` follows the units' [Install] sections, as on a real device.
    _checked(
        subprocess.run(
            ["systemctl", f"--root={root}", "enable", UNIT, ORCH_UNIT, CHECK_UNIT],
            capture_output=True,
            text=True,
            check=False,
        ),
        "systemctl --root enable",
    )


def _boot(root: Path, results: Path) -> subprocess.CompletedProcess[str]:
    """Boot the container until the check unit powers it off; bounded by `timeout -k`."""
    argv = [
        "timeout",
        "-k",
        "10",
        str(BOOT_TIMEOUT_S),
        "systemd-nspawn",
        "-q",
        "--register=no",  # there is no host systemd/machined to register with
        "--keep-unit",
        "--private-network",
        "-D",
        str(root),
        f"--bind={results}:/results",
        "-b",
        "--console=pipe",
    ]
    # Its own session, so a Ctrl-C meant for pytest reaches nspawn only through the handler below.
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=BOOT_TIMEOUT_S + 30)
    except BaseException:
        # Interrupted (Ctrl-C, pytest-timeout) or wedged: SIGTERM reaches nspawn through
        # `timeout`, and nspawn halts the container; SIGKILL if that does not finish. Either way
        # the container's PID namespace dies with it, before the caller deletes the root.
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else f"<{path.name} missing>"


def test_systemd_keeps_supervisor_alive_and_restarts_it_on_watchdog() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (systemd-nspawn, debootstrap); run `sudo make test-system`")
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn is not installed; `make test-system` installs it")
    assert (REPO / "systemd" / UNIT).is_file(), f"systemd/{UNIT} is missing"

    timings: dict[str, float] = {}
    started = time.monotonic()
    cached, built_s = ensure_root()
    timings["debootstrap" if built_s is not None else "cached root"] = built_s or 0.0

    work = Path(tempfile.mkdtemp(prefix="baton-nspawn-", dir="/var/tmp"))
    try:
        mark = time.monotonic()
        root, wheels, results = work / "root", work / "wheels", work / "results"
        copy_root(cached, root)
        results.mkdir()
        probe = nspawn_run(root, ["/bin/true"])
        if probe.returncode != 0:
            pytest.skip(f"systemd-nspawn cannot run here: {probe.stderr.strip()}")
        timings["copy root"] = time.monotonic() - mark

        mark = time.monotonic()
        build_wheels(REPO, wheels)
        _install_baton(root, wheels)
        _install_units(root)
        timings["install baton"] = time.monotonic() - mark

        mark = time.monotonic()
        boot = _boot(root, results)
        timings["boot, check, poweroff"] = time.monotonic() - mark
        (results / "console.txt").write_text(boot.stdout + boot.stderr, encoding="utf-8")
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        shutil.copytree(results, ARTIFACTS)

        journal = _read(results / "journal.txt")
        context = (
            f"\n--- nspawn exit {boot.returncode}, console tail ---\n{boot.stdout[-4000:]}"
            f"{boot.stderr[-2000:]}\n--- journal -u {UNIT} ---\n{journal[-6000:]}"
            f"\n--- status ---\n{_read(results / 'status.txt')}"
            f"\n(all of it, and the whole boot's journal, in {ARTIFACTS})"
        )
        assert (results / "check.json").exists(), (
            "the in-container check wrote no results" + context
        )
        report: dict[str, Any] = json.loads((results / "check.json").read_text(encoding="utf-8"))

        before = report.get("before", {})
        assert before.get("active"), f"service not active before the hang: {before}" + context
        assert before.get("health") == 200, f"/health before the hang: {before}" + context
        assert before.get("uid") in DYNAMIC_UIDS, (
            f"daemon ran as uid {before.get('uid')}, not a DynamicUser" + context
        )
        assert report["state_dir"]["is_dir"], f"no StateDirectory: {report['state_dir']}" + context
        assert report["state_dir"]["owner_uid"] in DYNAMIC_UIDS, report["state_dir"]
        assert (root / "var/lib/private/baton-supervisor").is_dir()
        assert (root / "var/lib/baton-supervisor").is_symlink()

        assert "Watchdog timeout" in journal, "systemd never saw the hang" + context
        assert "Failed with result 'watchdog'" in journal, "stopped for another reason" + context
        after = report.get("after", {})
        assert after.get("restarts", 0) >= 1, f"no restart after the hang: {after}" + context
        assert after["restarts"] > before["restarts"], (before, after)
        assert after.get("pid") not in (0, before["pid"]), f"same MainPID: {after}" + context
        assert after.get("active"), f"not active after the restart: {after}" + context
        assert after.get("health") == 200, f"/health after the restart: {after}" + context
        assert after.get("uid") in DYNAMIC_UIDS, after
        assert boot.returncode == 0, "the container did not power off cleanly" + context

        # The orchestrator under its shipped unit, from the same wheels: the built-in
        # datalist bootstrapped (so the wheel carries orchestrator/builtin/), a value stored
        # under DynamicUser + ProtectSystem=strict and read back.
        orch = report.get("orchestrator", {})
        orch_context = (
            f"\n--- journal -u {ORCH_UNIT} ---\n"
            f"{_read(results / 'orchestrator-journal.txt')[-6000:]}"
        )
        assert orch.get("active") and orch.get("health") == 200, f"{orch}" + orch_context
        assert orch.get("uid") in DYNAMIC_UIDS, orch
        assert orch.get("datalist") == "ACTIVE", f"{orch}" + orch_context
        assert orch.get("run") == [200, 7], f"{orch}" + orch_context
        assert orch.get("results") == [7], f"{orch}" + orch_context
        assert {"results", "state.json", "blobs"} <= set(orch.get("state_entries", [])), orch

        timings["ready after boot"] = report["ready_after_s"]
        timings["hang to healthy again"] = report["recovered_after_s"]
        timings["total"] = time.monotonic() - started
        print("\nsystem test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
