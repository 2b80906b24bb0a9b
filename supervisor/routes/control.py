"""Control routes: description, health, deployments and orchestrator registration."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from supervisor import __version__, protocol
from supervisor.errors import BadRequest
from supervisor.http import check_token, has_token, read_body, reply
from supervisor.platform import describe_platform, health_snapshot
from supervisor.routes.context import services

routes = web.RouteTableDef()

# psutil's platform scan takes ~25 ms; descriptions are fetched rarely but in bursts.
_DESCRIPTION_TTL_S = 30.0


class RegisterBody(msgspec.Struct):
    url: str | None = None


@routes.get(protocol.DESCRIPTION_PATH)
async def description(request: web.Request) -> web.Response:
    svc = services(request)
    cached = svc.description_cache
    now = time.monotonic()
    if cached is None or now - cached[0] > _DESCRIPTION_TTL_S:
        platform = await asyncio.to_thread(describe_platform, svc.settings.state_dir)
        cached = svc.description_cache = (now, platform)
    profile = svc.settings.profile
    return reply(
        request,
        {
            "id": svc.device_id,
            "name": svc.settings.name,
            "apiVersion": protocol.API_VERSION,
            "version": __version__,
            "labels": dict(profile.labels),
            "zone": profile.zone,
            "platform": cached[1],
            "supervisorInterfaces": svc.drivers.interfaces(),
            "drivers": sorted(svc.drivers.namespaces()),
        },
    )


@routes.get("/health")
@routes.get("//health")
async def health(request: web.Request) -> web.Response:
    svc = services(request)
    if svc.registrar is not None and _from_orchestrator(request, svc.settings.token):
        svc.registrar.note_health_check()
    snapshot = await asyncio.to_thread(
        health_snapshot, svc.settings.state_dir, svc.cpu, svc.started
    )
    snapshot["deployments"] = [
        {"deploymentId": d.id, "digest": f"sha256:{d.digest}"} for d in svc.deployments.all()
    ]
    snapshot["callsInFlight"] = svc.executions.in_flight
    header = "true" if svc.orchestrator_url else "false"
    return reply(request, snapshot, headers={"Custom-Orchestrator-Set": header})


def _from_orchestrator(request: web.Request, token: str | None) -> bool:
    """Whether a health check counts as the orchestrator's (it postpones re-registration).

    With a token configured only an authenticated check counts; without one any check does.
    The reference compared ``X-Forwarded-For``, which any client can set.
    """
    return token is None or has_token(request, token)


@routes.post("/deploy")
@routes.post("//deploy")
async def deploy(request: web.Request) -> web.Response:
    svc = services(request)
    check_token(request, svc.settings.token)
    node = await read_body(request, protocol.DeploymentNode)
    installed, changed = await svc.deployments.deploy(node)
    return reply(
        request,
        {
            "status": "success",
            "deploymentId": installed.id,
            "digest": f"sha256:{installed.digest}",
            "changed": changed,
        },
    )


@routes.get("/deploy")
async def list_deployments(request: web.Request) -> web.Response:
    return reply(request, {"deployments": services(request).deployments.listing()})


@routes.delete("/deploy/{deployment_id}")
async def delete_deployment(request: web.Request) -> web.Response:
    svc = services(request)
    check_token(request, svc.settings.token)
    dep_id = request.match_info["deployment_id"]
    await svc.deployments.remove(dep_id)
    svc.history.drop_deployment(dep_id)
    svc.metrics.forget(dep_id)
    return reply(request, {"status": "success", "message": f"deployment {dep_id} removed"})


@routes.post("/register")
async def register(request: web.Request) -> web.Response:
    svc = services(request)
    check_token(request, svc.settings.token)
    body = await read_body(request, RegisterBody)
    if not body.url:
        raise BadRequest("No url found", field="url")
    parts = urlsplit(body.url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise BadRequest("Orchestrator url is invalid", field="url")
    url = body.url.rstrip("/")
    await svc.store.update_device({"orchestratorUrl": url})
    svc.orchestrator_url = url
    if svc.registrar is not None:
        svc.registrar.set_url(url)
    return reply(request, {"status": "success"})
