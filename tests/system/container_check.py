"""Runs *inside* the nspawn container as a oneshot unit: hang the supervisor, watch systemd heal it.

Standard library only: it runs on the container's own python3, not in Baton's venv. It records
what it saw in ``/results`` for the host-side test to assert on, and never decides pass or fail
itself, so a failure is reported with everything that was observed up to that point.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

UNIT = "baton-supervisor.service"
ORCH_UNIT = "baton-orchestrator.service"
POLL_S = 0.2
# Properties worth keeping from `systemctl show`; the full output is saved as well.
PROPS = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "WatchdogUSec")


def show(unit: str) -> dict[str, str]:
    out = subprocess.run(
        ["systemctl", "show", unit, *(f"--property={p}" for p in PROPS)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def health(port: int) -> int | None:
    """The /health status code, or None if nothing answered (a stopped process never does)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def process_uid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # real uid
    return None


def snapshot(port: int) -> dict[str, Any]:
    props = show(UNIT)
    pid = int(props.get("MainPID", "0") or 0)
    return {
        "props": props,
        "pid": pid,
        "restarts": int(props.get("NRestarts", "0") or 0),
        "active": props.get("ActiveState") == "active",
        "health": health(port),
        "uid": process_uid(pid) if pid else None,
    }


def wait_for(port: int, timeout_s: float, done: Any) -> tuple[dict[str, Any], float]:
    """Poll until ``done(snapshot)`` holds or the deadline passes; returns the last snapshot."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        snap = snapshot(port)
        if done(snap) or time.monotonic() >= deadline:
            return snap, round(time.monotonic() - start, 2)
        time.sleep(POLL_S)


def api(port: int, path: str, body: Any = None) -> tuple[int | None, Any]:
    """(status, decoded JSON) of a GET, or a POST of ``body``; (None, reason) if unreachable."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (OSError, ValueError) as err:
        return None, repr(err)


def check_orchestrator(port: int, timeout_s: float) -> dict[str, Any]:
    """The orchestrator under its shipped unit: up, its built-in datalist bootstrapped from
    the installed wheel, and a value stored and read back through it."""
    deadline = time.monotonic() + timeout_s
    status: int | None = None
    while time.monotonic() < deadline:
        status, _ = api(port, "/health")
        if status == 200:
            break
        time.sleep(POLL_S)
    props = show(ORCH_UNIT)
    pid = int(props.get("MainPID", "0") or 0)
    report: dict[str, Any] = {
        "health": status,
        "active": props.get("ActiveState") == "active",
        "uid": process_uid(pid) if pid else None,
    }
    if status != 200:
        return report
    _, datalist = api(port, "/deployments/datalist")
    report["datalist"] = datalist.get("state") if isinstance(datalist, dict) else datalist
    run_status, run = api(port, "/deployments/datalist/executions", {"value": 7})
    report["run"] = [run_status, run.get("value") if isinstance(run, dict) else run]
    _, results = api(port, "/results/datalist")
    entries = results.get("entries", []) if isinstance(results, dict) else []
    report["results"] = [e.get("value") for e in entries]
    state = Path("/var/lib/private/baton-orchestrator")
    report["state_entries"] = sorted(p.name for p in state.iterdir()) if state.is_dir() else []
    return report


def save(results: Path, name: str, argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    (results / name).write_text(proc.stdout + proc.stderr, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--orchestrator-port", type=int, default=0)
    args = parser.parse_args()
    results: Path = args.results
    report: dict[str, Any] = {}
    try:
        before, waited = wait_for(
            args.port, args.timeout, lambda s: s["active"] and s["health"] == 200
        )
        report["before"] = before
        report["ready_after_s"] = waited
        save(results, "show-before.txt", ["systemctl", "show", UNIT])
        if not (before["active"] and before["pid"]):
            return
        # A stopped process cannot send WATCHDOG=1, which is exactly a hung daemon to systemd.
        os.kill(before["pid"], signal.SIGSTOP)
        report["stopped_pid"] = before["pid"]
        after, waited = wait_for(
            args.port,
            args.timeout,
            lambda s: (
                s["restarts"] > before["restarts"]
                and s["active"]
                and s["pid"] not in (0, before["pid"])
                and s["health"] == 200
            ),
        )
        report["after"] = after
        report["recovered_after_s"] = waited
        save(results, "show-after.txt", ["systemctl", "show", UNIT])
        if args.orchestrator_port:
            report["orchestrator"] = check_orchestrator(args.orchestrator_port, args.timeout)
    finally:
        state = Path("/var/lib/private/baton-supervisor")
        report["state_dir"] = {
            "path": str(state),
            "is_dir": state.is_dir(),
            "owner_uid": state.stat().st_uid if state.exists() else None,
            "entries": sorted(p.name for p in state.iterdir()) if state.is_dir() else [],
        }
        save(
            results,
            "journal.txt",
            ["journalctl", "--no-pager", "-o", "short-precise", "-u", UNIT],
        )
        save(results, "status.txt", ["systemctl", "status", "--no-pager", "-l", UNIT])
        save(
            results,
            "orchestrator-journal.txt",
            ["journalctl", "--no-pager", "-o", "short-precise", "-u", ORCH_UNIT],
        )
        save(results, "boot-journal.txt", ["journalctl", "--no-pager", "-o", "short-precise", "-b"])
        (results / "check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
