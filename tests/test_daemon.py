"""The installed ``baton-supervisor`` command, as a user runs it, end to end on 127.0.0.1."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from supervisor.protocol import SERVICE_TYPE
from tests.mdns_browser import Browser
from tests.support import SupervisorProcess

BIN = Path(sys.executable).parent


async def test_command_serves_health_description_and_mdns_until_sigterm(
    tmp_path: Path, browser_for: Callable[[str], Any]
) -> None:
    """Acceptance: health + real description; another process sees the mDNS record and its goodbye."""
    name = f"baton-daemon-{uuid.uuid4().hex[:8]}"
    browser: Browser = await browser_for(name)
    sup = SupervisorProcess(tmp_path / "state", name=name, extra=["--mdns-interfaces", "127.0.0.1"])
    sup.argv0 = [str(BIN / "baton-supervisor")]
    sup.start()
    try:
        await sup.wait_healthy()
        async with aiohttp.ClientSession() as session:
            async with session.get(sup.url + "/health") as resp:
                health = await resp.json()
            async with session.get(sup.url + "/.well-known/wasmiot-device-description") as resp:
                desc = await resp.json()
        assert 0 <= health["cpuUsage"] <= 1 and health["storage"]["bytes"] > 0
        platform = desc["platform"]
        assert platform["memory"]["bytes"] == psutil.virtual_memory().total
        assert platform["storage"]["bytes"] == psutil.disk_usage(str(tmp_path)).total
        assert platform["network"]["interfaces"]
        assert desc["name"] == name

        added = await browser.wait_for(lambda e: e["event"] == "added", 15)
        assert added["name"] == f"{name}.{SERVICE_TYPE}" and added["port"] == sup.port
        assert added["txt"]["id"] == desc["id"] and added["txt"]["address"] == "127.0.0.1"
        assert (
            added["txt"]["path"] == "/"
            and added["txt"]["tls"] == "0"
            and added["txt"]["api"] == "1"
        )

        assert sup.terminate() == 0
        await browser.wait_for(lambda e: e["event"] == "removed", 10)
    finally:
        sup.kill()
    assert "Traceback" not in sup.log.read_text()


async def test_bad_configuration_exits_with_a_message(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('[drivers.camera]\nkind = "simulated"\nimages = "nowhere"\n')
    sup = SupervisorProcess(tmp_path / "state", extra=["--profile", str(profile)])
    sup.argv0 = [str(BIN / "baton-supervisor")]
    sup.start()
    assert sup.proc is not None
    assert sup.proc.wait(30) == 2
    text = sup.log.read_text()
    assert "nowhere" in text and "Traceback" not in text
