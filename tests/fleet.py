"""The example fleet: one in-process supervisor per device profile, registered with an orchestrator.

``FLEET`` names every profile in ``devices/``; ``tests/test_devices.py`` fails when a profile is
added there without being added here, so the pipeline tests always run on every profile.
"""

from __future__ import annotations

from typing import Any

from supervisor.config import load_profile
from tests.conftest import ROOT
from tests.orchestration import Orchestrator
from tests.stack import Device, Stack

DEVICES = ROOT / "devices"
MANIFESTS = ROOT / "manifests"
FLEET = ("camera-node", "sensor-node", "compute-node")


async def start_fleet(stack: Stack, orch: Orchestrator) -> dict[str, Device]:
    """Start a supervisor from each profile in FLEET (named after it) and register it."""
    fleet: dict[str, Device] = {}
    for name in FLEET:
        profile = load_profile(DEVICES / f"{name}.toml")
        device = await stack.make_device(profile=profile, profile_dir=DEVICES, name=name)
        port = int(device.url.rsplit(":", 1)[1])
        status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": port})
        assert status == 201, body
        fleet[name] = device
    return fleet


async def deploy_file(orch: Orchestrator, name: str) -> dict[str, Any]:
    """Deploy ``manifests/<name>`` as its file's bytes and content type; assert it is ACTIVE."""
    path = MANIFESTS / name
    content_type = "application/toml" if path.suffix == ".toml" else "application/json"
    status, dep = await orch.post(
        "/deployments?wait=30", data=path.read_bytes(), headers={"Content-Type": content_type}
    )
    assert status == 201 and dep["state"] == "ACTIVE", dep
    return dict(dep)


async def fetch(stack: Stack, url: str) -> bytes:
    """The body of a GET that must succeed (an output file, say)."""
    async with stack.session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def hop_entries(stack: Stack, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The final history entry of each hop of an execution, in order."""
    entries = []
    for hop in run["trace"]:
        status, entry = await stack.entry(hop["url"])
        assert status == 200 and entry["success"] is True, entry
        entries.append(entry)
    return entries
