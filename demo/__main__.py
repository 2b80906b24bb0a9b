"""``python -m demo [--keep]`` (``make demo``): an image pipeline over three simulated devices.

It starts an orchestrator and three supervisors (camera node, compute node, sensor node, from
``devices/``) as separate processes, lets the orchestrator find them over mDNS, then drives
everything with the same ``baton`` commands a user types: push the modules, show the placement
and why, deploy ``manifests/image-pipeline.toml``, run it and print its per-hop trace. Without
``--keep`` it stops every process and removes its temporary state; exit status 0 only if the
pipeline ran with its three hops on three different devices.

Everything stays on this machine: HTTP on 127.0.0.1 and mDNS bound to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WASM = ROOT / "build" / "wasm"
MANIFEST = ROOT / "manifests" / "image-pipeline.toml"
DEPLOYMENT = "image-pipeline"
MODULES = ("camera", "image")
PROFILES = ("camera-node", "compute-node", "sensor-node")
START_DEADLINE_S = 40.0  # start-up on a busy 2-core machine: a few seconds each, usually
STOP_DEADLINE_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fleet:
    """The processes the demo started, so that every one of them is stopped."""

    state: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[TextIO] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "WASMIOT_"))}
        log = (self.state / f"{name}.log").open("w")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.state / f"{name}.log").read_text(errors="replace")[-2000:]
                raise DemoError(f"{name} exited with status {proc.returncode}:\n{tail}")

    def stop(self) -> dict[str, int | None]:
        """SIGTERM everything, wait, SIGKILL stragglers; the exit code of each process."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE_S
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[name] = None  # did not stop in time
        for log in self.logs:
            log.close()
        return codes


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own 127.0.0.1 URL
        return json.load(resp)


def _until(probe: Callable[[], bool], fleet: Fleet, what: str) -> float:
    """Poll ``probe`` (every 0.1 s) until true; seconds taken. Fails fast if a process died."""
    start = time.monotonic()
    while not probe():
        fleet.check_alive()
        if time.monotonic() - start > START_DEADLINE_S:
            raise DemoError(f"timed out after {START_DEADLINE_S:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def _healthy_devices(url: str) -> list[dict[str, Any]]:
    try:
        devices = _get_json(url + "/devices")
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return [d for d in devices if d.get("status") == "healthy"]


def baton(url: str, *args: str) -> str:
    """Run the real ``baton`` CLI, echoing the command and its output; its stdout."""
    print(f"\n$ baton {shlex.join(args)}")
    done = subprocess.run(
        [str(BIN / "baton"), *args],
        cwd=ROOT,
        env={**os.environ, "BATON_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print((done.stdout + done.stderr).rstrip())
    if done.returncode != 0:
        raise DemoError(f"`baton {shlex.join(args)}` failed with status {done.returncode}")
    return done.stdout


def run(keep: bool) -> int:
    missing = [m for m in MODULES if not (WASM / f"{m}.wasm").exists()]
    if missing:
        print(f"build/wasm/{missing[0]}.wasm is missing: run `make modules`", file=sys.stderr)
        return 1
    state = Path(tempfile.mkdtemp(prefix="baton-demo-"))
    fleet = Fleet(state)
    ok = False
    began = time.monotonic()
    try:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        fleet.start(
            "orchestrator",
            [str(BIN / "baton-orchestrator"), "--host", "127.0.0.1", "--port", str(port),
             "--state-dir", str(state / "orchestrator"), "--mdns-interfaces", "127.0.0.1",
             "--health-interval", "1"],
        )  # fmt: skip
        for profile in PROFILES:
            fleet.start(
                profile,
                [str(BIN / "baton-supervisor"), "--host", "127.0.0.1",
                 "--port", str(_free_port()), "--state-dir", str(state / profile),
                 "--name", profile, "--profile", str(ROOT / "devices" / f"{profile}.toml"),
                 "--mdns-interfaces", "127.0.0.1"],
            )  # fmt: skip
        print(f"started an orchestrator on {url} and {len(PROFILES)} simulated devices")
        took = _until(
            lambda: len(_healthy_devices(url)) >= len(PROFILES),
            fleet,
            f"the orchestrator to find {len(PROFILES)} healthy devices over mDNS",
        )
        print(f"the orchestrator found all of them over mDNS (127.0.0.1 only) in {took:.1f} s")
        baton(url, "devices")
        for module in MODULES:
            baton(url, "modules", "push", f"modules/{module}")
        manifest = str(MANIFEST.relative_to(ROOT))
        baton(url, "deploy", manifest, "--dry-run")
        baton(url, "deploy", manifest)
        shown = baton(url, "run", DEPLOYMENT)
        ident = shown.split()[1] if shown.startswith("execution") else ""
        ok = _check(_get_json(f"{url}/executions/{ident}"))
        if keep:
            _keep_running(url, fleet)
    except (DemoError, OSError, ValueError) as err:  # URLError is an OSError
        print(f"demo failed: {err}", file=sys.stderr)
    finally:
        codes = fleet.stop()
        shutil.rmtree(state, ignore_errors=True)
        clean = all(code == 0 for code in codes.values())
        print(
            f"\nstopped {len(codes)} processes "
            + ("cleanly" if clean else f"(exit codes {codes})")
            + f"; temporary state removed; {time.monotonic() - began:.1f} s in all"
        )
    return 0 if ok and clean else 1


def _check(execution: dict[str, Any]) -> bool:
    """Print the result in words; whether it ran with three hops on three devices."""
    trace = execution.get("trace") or []
    devices = [hop.get("device") for hop in trace]
    value = execution.get("value")
    print(f"\nresult: {json.dumps(value)}")
    if execution.get("status") != "done":
        print(f"the execution did not finish: {execution.get('error')}", file=sys.stderr)
        return False
    if len(trace) != 3 or len(set(devices)) != 3:
        print(f"expected 3 hops on 3 devices, got {devices}", file=sys.stderr)
        return False
    print(f"3 hops on 3 devices: {' -> '.join(str(d) for d in devices)}")
    return True


def _keep_running(url: str, fleet: Fleet) -> None:
    print(
        f"\nEverything keeps running (Ctrl-C stops it). In another shell:\n  export BATON_URL={url}"
    )
    for command in (
        "devices",
        f"status {DEPLOYMENT}",
        f"run {DEPLOYMENT}",
        "deploy manifests/sensor-pipeline.json --dry-run",
    ):
        print(f"  .venv/bin/baton {command}")
    stop = {"now": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop["now"]:
            fleet.check_alive()
            time.sleep(0.5)  # only watches for a crashed process while the user plays
    except KeyboardInterrupt:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    args = parser.parse_args()
    return run(args.keep)


if __name__ == "__main__":
    sys.exit(main())
