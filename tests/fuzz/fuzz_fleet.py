"""Real daemons for the fuzz tests: an orchestrator and a supervisor as processes on 127.0.0.1.

``seed`` gives the stateful routes something real to hit: the supervisor registered with the
orchestrator, ``fibo`` and ``textfile`` pushed, one ACTIVE deployment of each, an execution,
and a supervisor call that wrote an output file. Both daemons run with mDNS off, so every
packet of these tests stays on the loopback interface.

The orchestrator process is ``tests.daemons.OrchestratorProcess``, the supervisor
``tests.support.SupervisorProcess``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from supervisor.protocol import DESCRIPTION_PATH
from tests.daemons import OrchestratorProcess, module_form
from tests.support import SupervisorProcess

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass
class Seeded:
    """Ids of the real things the daemons hold after :func:`seed`."""

    orchestrator: str
    supervisor: str
    device_id: str
    fibo_deployment: str  # orchestrator deployment id, also the supervisor's deploymentId
    text_deployment: str
    fibo_digest: str
    execution_id: str
    request_id: str  # a finished textfile.upper call on the supervisor
    output_file: str


async def _json(resp: aiohttp.ClientResponse, *ok: int) -> Any:
    body = await resp.json()
    assert resp.status in ok, (resp.method, str(resp.url), resp.status, body)
    return body


class PortTaken(Exception):
    """Another process got a daemon's free port first (tests run side by side)."""


async def _check_identity(
    s: aiohttp.ClientSession, orch: OrchestratorProcess, sup: SupervisorProcess
) -> None:
    """The daemons that answered are ours: each still running, each the kind we started."""
    for proc in (orch.proc, sup.proc):
        if proc is None or proc.poll() is not None:
            raise PortTaken(f"a daemon exited after another process answered its port: {proc}")
    async with s.get(orch.url + "/openapi.json") as r:
        title = (await r.json())["info"]["title"] if r.status == 200 else None
    async with s.get(sup.url + DESCRIPTION_PATH) as r:
        name = (await r.json()).get("name") if r.status == 200 else None
    if title != "Baton orchestrator" or name != sup.name:
        raise PortTaken(f"{orch.url} is {title!r}, {sup.url} is {name!r}")


async def seed(orch: OrchestratorProcess, sup: SupervisorProcess) -> Seeded:
    """Wait for both daemons, then register, push, deploy and run real things."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as s:
        await asyncio.gather(orch.wait_healthy(s), sup.wait_healthy())
        await _check_identity(s, orch, sup)
        async with s.post(orch.url + "/devices", json={"host": "127.0.0.1", "port": sup.port}) as r:
            device = await _json(r, 201)
        digests = {}
        for name in ("fibo", "textfile"):
            async with s.post(orch.url + "/modules", data=module_form(name)) as r:
                digests[name] = (await _json(r, 201))["digest"]
        deployments = {}
        for name, func in (("fibo", "fibo"), ("textfile", "upper")):
            manifest = {"name": f"fz-{name}", "sequence": [{"module": name, "func": func}]}
            async with s.post(orch.url + "/deployments?wait=30", json=manifest) as r:
                dep = await _json(r, 201)
            assert dep["state"] == "ACTIVE", dep
            deployments[name] = dep["id"]
        async with s.post(
            f"{orch.url}/deployments/{deployments['fibo']}/executions", json={"param0": 6}
        ) as r:
            execution = await _json(r, 200)
        form = aiohttp.FormData()
        form.add_field("input.txt", b"fuzz me", filename="input.txt")
        call = f"{sup.url}/{deployments['textfile']}/modules/textfile/upper?wait=10"
        async with s.post(call, data=form) as r:
            result = await _json(r, 200)
        assert result["status"] == "done", result
        request_id = result["resultUrl"].rsplit("/", 1)[1]
        output = result["outputs"][0].rsplit("/", 1)[1]
    return Seeded(
        orchestrator=orch.url,
        supervisor=sup.url,
        device_id=device["id"],
        fibo_deployment=deployments["fibo"],
        text_deployment=deployments["textfile"],
        fibo_digest=digests["fibo"].removeprefix("sha256:"),
        execution_id=execution["id"],
        request_id=request_id,
        output_file=output,
    )
