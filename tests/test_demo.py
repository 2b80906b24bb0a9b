"""``make demo`` as a new user runs it: the image pipeline over three devices, nothing left behind.

The demo runs in its own session, so every process it started (orchestrator, three
supervisors, the ``baton`` commands) shares that session id; after it exits none may remain.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psutil

from tests.conftest import ROOT
from tests.support import clean_env


def _session_members(sid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def test_demo_runs_the_image_pipeline_on_three_devices_and_cleans_up() -> None:
    env = clean_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, out
    # The placement explanation: each step with every device's verdict.
    for index, step in enumerate(["camera.capture", "image.grayscale", "image.summary"]):
        assert re.search(rf"^step {index}  {re.escape(step)}  -> \S+", out, re.M), out
    assert "rejected: lacks host functions take" in out  # why only the camera node can capture
    # The run: a result, a three-hop trace, three different devices, camera first.
    hops = re.findall(r"^\s+([123])\s+(\S+)\s+\S+\s+[\d.]+\s+ok$", out, re.M)
    assert [h[0] for h in hops] == ["1", "2", "3"], out
    devices = [h[1] for h in hops]
    assert devices[0] == "camera-node" and len(set(devices)) == 3, out
    assert re.search(r'^result: \{.*"mean"', out, re.M), out
    assert "stopped 4 processes cleanly" in out, out
    assert _session_members(proc.pid) == []
