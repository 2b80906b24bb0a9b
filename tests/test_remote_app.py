"""A descriptor on one orchestrator deploying an app stored on another, by URL and digest.

Two real orchestrator processes (site A holds the image, site B deploys it) and a real
supervisor process registered with B, all on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import free_port
from tests.daemons import OrchestratorProcess, fibo, get_json, post_json
from tests.support import SupervisorProcess
from tests.test_apps_api import image


async def _put(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.put(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_deploy_an_app_from_another_orchestrator(tmp_path: Path) -> None:
    site_a = OrchestratorProcess(tmp_path / "a")
    site_b = OrchestratorProcess(tmp_path / "b")
    sup = SupervisorProcess(tmp_path / "sup", name="remote-sup")
    try:
        for process in (site_a, site_b, sup):
            process.start()
        async with aiohttp.ClientSession() as session:
            await site_a.wait_healthy(session)
            await site_b.wait_healthy(session)
            await sup.wait_healthy()
            status, body = await post_json(
                session, site_b.url + "/devices", json={"host": "127.0.0.1", "port": sup.port}
            )
            assert status == 201, body
            data = image(tmp_path)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            async with session.post(
                site_a.url + "/apps", data=data, headers={"Content-Type": "application/zip"}
            ) as resp:
                assert resp.status == 201, await resp.text()
            status, env = await _put(session, site_b.url + "/environments/lab", {})
            assert status == 201, env
            remote = f"{site_a.url}/apps/fib/1.0.0"
            descriptor = {"schemaVersion": 1, "app": remote, "environment": "lab", "digest": digest}
            deploy = site_b.url + "/deployments?wait=30"

            async def site_b_apps() -> list[str]:
                _, apps = await get_json(session, site_b.url + "/apps")
                return [a["name"] for a in apps if a["name"] == "fib"]

            # Wrong digest: refused, and site B stores nothing.
            status, problem = await post_json(
                session, deploy, json=descriptor | {"digest": "sha256:" + "1" * 64}
            )
            assert status == 422 and problem["field"] == "digest", problem
            assert "digest mismatch" in problem["result"]
            # An unreachable site, or a URL that is no app: 422 naming the app.
            gone = f"http://127.0.0.1:{free_port()}/apps/fib/1.0.0"
            for url in (gone, f"{site_a.url}/apps/fib/9.9.9"):
                status, problem = await post_json(session, deploy, json=descriptor | {"app": url})
                assert status == 422 and problem["field"] == "app", problem
            assert await site_b_apps() == []
            _, modules = await get_json(session, site_b.url + "/modules")
            assert not [m for m in modules if m["name"] in {"fa", "fb"}]

            # The right digest: fetched, stored on B under the same digest, deployed, run.
            status, dep = await post_json(session, deploy, json=descriptor)
            assert status == 201 and dep["state"] == "ACTIVE", dep
            status, record = await get_json(session, site_b.url + "/apps/fib/1.0.0")
            assert status == 200 and record["digest"] == digest
            status, run = await post_json(
                session, f"{site_b.url}/deployments/{dep['id']}/executions", json={"param0": 5}
            )
            assert status == 200 and run["value"] == fibo(fibo(5)), run

            # Again: nothing to fetch (B has that digest) and nothing to change.
            status, same = await post_json(session, deploy, json=descriptor)
            assert status == 200 and same["revision"] == 1, same
            # The local name of the same app is the same manifest too.
            local = descriptor | {"app": "fib@1.0.0"}
            status, same = await post_json(session, deploy, json=local)
            assert status == 200 and same["revision"] == 1, same
    finally:
        for process in (site_a, site_b, sup):
            process.kill()
