"""Start-up: the orchestrator's identity, its built-in apps deployed before the API opens, a
restart that changes nothing, and a broken built-in app that stops start-up (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from orchestrator.bootstrap import SCHEMA_VERSION, BootstrapError, init_state
from orchestrator.config import BUILTIN_APPS
from orchestrator.store import Store
from tests.daemons import HTTP_TIMEOUT, OrchestratorProcess, get_json, until

pytestmark = pytest.mark.slow


async def test_the_identity_is_made_once_and_a_newer_state_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        first = await init_state(store, clock=100.0)
        assert first.schema_version == SCHEMA_VERSION and len(first.orchestrator_id) == 32
        again = await init_state(store, clock=200.0)
        assert again == first  # same id, same creation time
        await store.put(
            "meta",
            "key",
            {
                "key": "orchestrator",
                "schemaVersion": SCHEMA_VERSION + 1,
                "orchestratorId": first.orchestrator_id,
                "createdAt": 1.0,
            },
        )
        with pytest.raises(BootstrapError, match="newer orchestrator"):
            await init_state(store)
    finally:
        await store.close()


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics", timeout=HTTP_TIMEOUT) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


async def test_a_restart_is_a_no_op(tmp_path: Path) -> None:
    state = tmp_path / "state"
    orch = OrchestratorProcess(state)
    async with aiohttp.ClientSession() as session:
        orch.start()
        try:
            await orch.wait_healthy(session)
            # Deployed before the API answered anything at all.
            status, dep = await get_json(session, orch.url + "/deployments/datalist")
            assert status == 200 and dep["state"] == "ACTIVE" and dep["revision"] == 1, dep
            assert await _metric(session, orch.url, "baton_core_pushes_total") == 1
            async with session.post(
                orch.url + f"/deployments/{dep['id']}/executions",
                json={"value": {"t": 1}},
                timeout=HTTP_TIMEOUT,
            ) as resp:
                assert resp.status == 200, await resp.text()
            status, env = await get_json(session, orch.url + "/environments/orchestrator")
            assert status == 200 and env["labels"] == {"baton.core": "true"}, env
            status, app = await get_json(session, orch.url + "/apps/datalist/1.0.0")
            assert status == 200 and app["builtin"] is True, app
            meta = json.loads((state / "state.json").read_text())["meta"]
            identity = next(iter(meta.values()))["orchestratorId"]
        finally:
            orch.kill()
        stored = (state / "state.json").read_bytes()

        restarted = OrchestratorProcess(state, port=orch.port)
        restarted.start()
        try:
            await restarted.wait_healthy(session)
            status, after = await get_json(session, restarted.url + "/deployments/datalist")
            assert status == 200 and after["state"] == "ACTIVE", after
            assert after["id"] == dep["id"] and after["revision"] == 1
            assert len(after["events"]) == len(dep["events"])
            # The core device restored what it held: nothing was pushed again.
            assert await _metric(session, restarted.url, "baton_core_pushes_total") == 0
            status, results = await get_json(session, restarted.url + "/results/datalist")
            assert [e["value"] for e in results["entries"]] == [{"t": 1}]
            meta = json.loads((state / "state.json").read_text())["meta"]
            assert next(iter(meta.values()))["orchestratorId"] == identity
            # Nothing at all was written: same image, same manifest, same environment.
            assert (state / "state.json").read_bytes() == stored
        finally:
            restarted.kill()


def _broken_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "builtin"
    shutil.copytree(BUILTIN_APPS, folder)
    return folder


async def _refused_start(orch: OrchestratorProcess) -> str:
    """Start ``orch``; it must exit with status 2 having served nothing. Returns its log."""
    served = False
    async with aiohttp.ClientSession() as session:
        orch.start()
        assert orch.proc is not None

        async def exited() -> bool:
            nonlocal served
            try:
                async with session.get(
                    orch.url + "/health", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp:
                    served = served or resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                pass
            return orch.proc is not None and orch.proc.poll() is not None

        try:
            await until(exited, 30, "the orchestrator to give up")
        finally:
            orch.kill()
    assert orch.proc.returncode == 2, orch.tail()
    assert not served
    log = orch.tail()
    assert "Traceback" not in log, log
    return log


@pytest.mark.parametrize(
    "breakage",
    ["package", "environment"],
)
async def test_a_broken_built_in_app_stops_start_up(tmp_path: Path, breakage: str) -> None:
    folder = _broken_copy(tmp_path)
    app = folder / "datalist"
    if breakage == "package":
        meta = json.loads((app / "datalist" / "package.json").read_text())
        meta["functions"]["push"]["method"] = "FETCH"
        (app / "datalist" / "package.json").write_text(json.dumps(meta))
        expected = "method"
    else:
        descriptor = json.loads((app / "deploy.json").read_text())
        descriptor["environment"] = "nowhere"
        (app / "deploy.json").write_text(json.dumps(descriptor))
        expected = "environment"
    log = await _refused_start(
        OrchestratorProcess(tmp_path / "state", extra=["--builtin-apps", str(folder)])
    )
    lines = [line for line in log.splitlines() if "start-up failed" in line]
    assert len(lines) == 1, log
    assert "built-in app datalist" in lines[0] and expected in lines[0], lines


async def test_a_state_from_a_newer_orchestrator_stops_start_up(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    await store.put(
        "meta", "key", {"key": "orchestrator", "schemaVersion": 99, "orchestratorId": "x"}
    )
    await store.close()
    log = await _refused_start(OrchestratorProcess(tmp_path / "state"))
    assert "newer orchestrator" in log and "schema 99" in log, log
