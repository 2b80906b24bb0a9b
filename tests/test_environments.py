"""Environments: the registry, the TOML file, the REST routes and ``baton env``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.config import ConfigError, load_settings
from orchestrator.environments import (
    Environment,
    EnvironmentFileError,
    EnvironmentRegistry,
    load_environments_file,
    parse_environments_file,
)
from orchestrator.model import Limits
from orchestrator.store import Store
from tests.daemons import BIN, OrchestratorProcess
from tests.orchestration import Orchestrator, OrchestratorFactory

FILE = """
[lab]
labels = { site = "lab", tier = "edge" }
zones = ["bench"]
limits = { timeoutMs = 2000 }
description = "the test bench"

[factory-a]
zones = ["line-1", "line-2"]
"""


async def call(orch: Orchestrator, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with orch.session.request(method, orch.url + path, **kwargs) as resp:
        return resp.status, await resp.json()


def test_file_parses_and_bad_files_are_refused(tmp_path: Path) -> None:
    envs = parse_environments_file(FILE)
    assert [e.name for e in envs] == ["factory-a", "lab"]
    assert envs[1] == Environment(
        name="lab",
        labels={"site": "lab", "tier": "edge"},
        zones=["bench"],
        limits=Limits(timeoutMs=2000),
        description="the test bench",
    )
    for bad in (
        "[lab\n",
        "lab = 1\n",
        "[lab]\nzones = 3\n",
        "[lab]\nlimits = { fuel = 0 }\n",
        '["../x"]\n',
        "[lab]\nextra = 1\n",
        '[lab]\nzones = ["a", "a"]\n',
    ):
        with pytest.raises(EnvironmentFileError):
            parse_environments_file(bad)
    # The daemon refuses to start with a bad or missing file, naming it.
    broken = tmp_path / "envs.toml"
    broken.write_text("[lab]\nzones = 3\n")
    for path in (broken, tmp_path / "missing.toml"):
        with pytest.raises(ConfigError, match=str(path)):
            load_settings(["--environments", str(path)], {})
    ok = tmp_path / "ok.toml"
    ok.write_text(FILE)
    assert load_settings([], {"BATON_ENVIRONMENTS": str(ok)}).environments_file == ok


async def test_registry_persists_and_the_file_wins(tmp_path: Path) -> None:
    file = tmp_path / "envs.toml"
    file.write_text(FILE)
    store = Store(tmp_path / "state")
    try:
        registry = EnvironmentRegistry(store)
        await registry.load()
        assert await registry.put(Environment(name="lab", zones=["elsewhere"])) is True
        assert await registry.put(Environment(name="lab", zones=["elsewhere"])) is False
        assert await registry.put(Environment(name="home")) is True

        with_file = EnvironmentRegistry(store, file)
        await with_file.load()
        assert [e.name for e in with_file.all()] == ["factory-a", "home", "lab"]
        assert with_file.get("lab").zones == ["bench"]  # the file's, not the stored one

        await with_file.delete("home")
        again = EnvironmentRegistry(store)
        await again.load()
        assert [e.name for e in again.all()] == ["factory-a", "lab"]
    finally:
        await store.close()


async def test_routes_crud(make_orchestrator: OrchestratorFactory, tmp_path: Path) -> None:
    file = tmp_path / "envs.toml"
    file.write_text(FILE)
    orch = await make_orchestrator(environments_file=file, token="t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    status, envs = await call(orch, "GET", "/environments")
    assert status == 200 and {"factory-a", "lab"} <= {e["name"] for e in envs}

    spec = {"labels": {"site": "home"}, "zones": ["attic"], "limits": {"fuel": 1000}}
    status, problem = await call(orch, "PUT", "/environments/home", json=spec)
    assert status == 401, problem
    status, env = await call(orch, "PUT", "/environments/home", json=spec, headers=auth)
    assert status == 201 and env == {"name": "home", **spec}, env
    status, env = await call(
        orch, "PUT", "/environments/home", json=spec | {"description": "mine"}, headers=auth
    )
    assert status == 200 and env["description"] == "mine"
    status, env = await call(orch, "GET", "/environments/home")
    assert status == 200 and env["description"] == "mine"

    for path, body, code, field in (
        ("/environments/home", {"zones": "attic"}, 400, "zones"),
        ("/environments/home", {"limits": {"fuel": 0}}, 422, "limits.fuel"),
        ("/environments/home", {"name": "other"}, 422, "name"),
        ("/environments/-bad", {}, 422, "name"),
        ("/environments/home", {"what": 1}, 400, "what"),
    ):
        status, problem = await call(orch, "PUT", path, json=body, headers=auth)
        assert (status, problem.get("field")) == (code, field), (body, problem)
    status, problem = await call(
        orch,
        "PUT",
        "/environments/home",
        data=b"\xff{",
        headers=auth | {"Content-Type": "application/json"},
    )
    assert status == 400, problem

    status, _ = await call(orch, "DELETE", "/environments/home", headers=auth)
    assert status == 200
    for method in ("GET", "DELETE"):
        status, problem = await call(orch, method, "/environments/home", headers=auth)
        assert status == 404 and problem["field"] == "environment", problem


async def test_cli_env_commands(tmp_path: Path) -> None:
    orch = OrchestratorProcess(tmp_path / "orchestrator")
    orch.start()
    try:
        async with aiohttp.ClientSession() as session:
            await orch.wait_healthy(session)

        def baton(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "baton"), "--url", orch.url, *argv],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        done = baton("env", "set", "lab", "--label", "site=lab", "--zone", "bench", "--fuel", "99")
        assert done.returncode == 0, done.stderr
        assert "created" in done.stdout and "site=lab" in done.stdout
        done = baton("env", "set", "lab", "--label", "tier=edge", "--timeout-ms", "500")
        assert done.returncode == 0 and "updated" in done.stdout, done.stderr
        done = baton("--json", "env", "show", "lab")
        assert json.loads(done.stdout) == {
            "name": "lab",
            "labels": {"site": "lab", "tier": "edge"},
            "zones": ["bench"],
            "limits": {"timeoutMs": 500, "fuel": 99},
        }
        done = baton("env", "set", "lab", "--label", "site=")
        assert done.returncode == 0
        done = baton("env", "list")
        assert done.returncode == 0 and "lab" in done.stdout and "tier=edge" in done.stdout
        assert "site=lab" not in done.stdout
        done = baton("env", "delete", "lab")
        assert done.returncode == 0, done.stderr
        done = baton("env", "show", "lab")
        assert done.returncode == 1 and done.stderr.startswith("baton: error:"), done.stderr
        done = baton("env", "set", "lab", "--fuel", "0")
        assert done.returncode == 2  # a usage error, caught by the parser
    finally:
        orch.kill()


def test_the_example_environments_file_is_what_the_readme_says() -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "environments.toml"
    envs = {e.name: e for e in load_environments_file(path)}
    assert set(envs) == {"lab", "factory-a"}
    assert envs["lab"].labels == {"role": "compute"} and envs["lab"].zones == []
    factory = envs["factory-a"]
    assert factory.labels == {"site": "factory-a"} and factory.zones == ["line-1", "line-2"]
    assert factory.limits == Limits(timeoutMs=2000, memoryBytes=32 * 1024 * 1024)
