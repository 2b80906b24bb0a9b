"""The orchestrator's REST API: devices, modules, placements, deployments, executions."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import BodyPartReader, web

from orchestrator.deployments import Deployments, explain
from orchestrator.devices import DeviceRegistry
from orchestrator.discovery import DeviceUnreachable, Discovery
from orchestrator.errors import (
    BadRequest,
    DeviceError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unprocessable,
)
from orchestrator.executions import Executions
from orchestrator.manifests import ManifestError, parse_manifest
from orchestrator.modules import ModuleRegistry
from orchestrator.placement import Infeasible, place
from orchestrator.store import Store

JSON = "application/json"
MSGPACK = "application/msgpack"


@dataclass
class Context:
    token: str | None
    store: Store
    devices: DeviceRegistry
    discovery: Discovery
    modules: ModuleRegistry
    deployments: Deployments
    executions: Executions
    execution_deadline_s: float
    started: float


CONTEXT: web.AppKey[Context] = web.AppKey("context", Context)
routes = web.RouteTableDef()


def ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]


def reply(request: web.Request, obj: Any, status: int = 200) -> web.Response:
    if MSGPACK in request.headers.get("Accept", ""):
        return web.Response(body=msgspec.msgpack.encode(obj), status=status, content_type=MSGPACK)
    return web.Response(body=msgspec.json.encode(obj), status=status, content_type=JSON)


def authorize(request: web.Request) -> None:
    token = ctx(request).token
    if token is None:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Unauthorized("a valid bearer token is required for this route")


async def read_bytes(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge("request body is too large") from err


async def read_manifest(request: web.Request) -> Any:
    body = await read_bytes(request)
    try:
        return parse_manifest(body, request.content_type or JSON)
    except ManifestError as err:
        exc = BadRequest if err.status == 400 else Unprocessable
        raise exc(str(err), field=err.field) from err


# --- service ---------------------------------------------------------------------------------


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    c = ctx(request)
    return reply(
        request,
        {
            "status": "ok",
            "uptimeSeconds": round(time.monotonic() - c.started, 3),
            "devices": len(c.devices.all()),
            "deployments": len(c.deployments.all()),
        },
    )


# --- devices ---------------------------------------------------------------------------------


def _device_json(device: Any) -> dict[str, Any]:
    return {
        "id": device.id,
        "name": device.name,
        "url": device.url,
        "apiVersion": device.api_version,
        "status": device.health.status,
        "cordoned": device.cordoned,
        "labels": device.labels,
        "zone": device.zone,
        "rttMs": device.rtt_ms,
        "health": device.health_report,
        "interfaces": sorted(device.view(0).interfaces),
        "events": device.events[-20:],
    }


@routes.get("/devices")
async def list_devices(request: web.Request) -> web.Response:
    return reply(request, [_device_json(d) for d in ctx(request).devices.all()])


@routes.get("/devices/{id}")
async def get_device(request: web.Request) -> web.Response:
    device = ctx(request).devices.get(request.match_info["id"])
    return reply(request, _device_json(device) | {"description": device.description})


class ManualDevice(msgspec.Struct):
    host: str | None = None
    port: int = 5000
    name: str | None = None
    addresses: list[str] = []


@routes.post("/devices")
@routes.post("/file/device/discovery/register")
async def register_device(request: web.Request) -> web.Response:
    authorize(request)
    c = ctx(request)
    try:
        body = msgspec.json.decode(await read_bytes(request) or b"{}", type=ManualDevice)
    except msgspec.DecodeError as err:
        raise BadRequest(f"invalid registration body: {err}") from err
    host = body.host or (body.addresses[0] if body.addresses else request.remote)
    if not host:
        raise BadRequest("host is required", field="host")
    try:
        device = await c.discovery.register_manual(
            host, body.port, body.name, addresses=body.addresses or None
        )
    except ValueError as err:
        raise BadRequest(str(err), field="port") from err
    except DeviceUnreachable as err:
        raise DeviceError(str(err), field="host") from err
    return reply(request, _device_json(device), status=201)


@routes.post("/devices/{id}/cordon")
async def cordon(request: web.Request) -> web.Response:
    authorize(request)
    return reply(request, _device_json(ctx(request).devices.cordon(request.match_info["id"])))


@routes.post("/devices/{id}/uncordon")
async def uncordon(request: web.Request) -> web.Response:
    authorize(request)
    return reply(request, _device_json(ctx(request).devices.uncordon(request.match_info["id"])))


# --- modules ---------------------------------------------------------------------------------


@routes.post("/modules")
async def upload_module(request: web.Request) -> web.Response:
    authorize(request)
    if request.content_type != "multipart/form-data":
        raise BadRequest(
            "upload a module as multipart/form-data: name, version, wasm, functions, data files"
        )
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise BadRequest("every part needs a field name")
            if part.filename is None:
                fields[part.name] = await part.text()
            else:
                files[part.name] = bytes(await part.read())
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge("module upload is too large") from err
    except ValueError as err:
        raise BadRequest(f"malformed multipart body: {err}") from err
    wasm = files.pop("wasm", None)
    if wasm is None:
        raise BadRequest("the 'wasm' file part is missing", field="wasm")
    functions: bytes | str = files.pop("functions", None) or fields.get("functions", "{}")
    name = fields.get("name")
    if not name:
        raise BadRequest("the 'name' field is missing", field="name")
    record, changed = await ctx(request).modules.add(
        name,
        fields.get("version", "1"),
        wasm,
        functions.encode() if isinstance(functions, str) else functions,
        files,
    )
    return reply(request, msgspec.to_builtins(record), status=201 if changed else 200)


@routes.get("/modules")
async def list_modules(request: web.Request) -> web.Response:
    return reply(request, [msgspec.to_builtins(r) for r in ctx(request).modules.all()])


@routes.get("/modules/{ref}")
async def get_module(request: web.Request) -> web.Response:
    return reply(
        request, msgspec.to_builtins(ctx(request).modules.resolve(request.match_info["ref"]))
    )


@routes.get("/blobs/{digest}")
async def blob(request: web.Request) -> web.FileResponse:
    try:
        path = ctx(request).store.blobs.path(request.match_info["digest"])
    except ValueError as err:
        raise NotFound(str(err), field="digest") from err
    if not path.is_file():
        raise NotFound("no such blob", field="digest")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


# --- placements and deployments ---------------------------------------------------------------


@routes.post("/placements")
async def dry_run(request: web.Request) -> web.Response:
    c = ctx(request)
    manifest = await read_manifest(request)
    load = c.deployments.load_by_device()
    result = place(
        manifest,
        c.modules.for_manifest(manifest),
        [d.view(load.get(d.id, 0)) for d in c.devices.all()],
    )
    return reply(
        request, msgspec.to_builtins(result), status=422 if isinstance(result, Infeasible) else 200
    )


@routes.post("/deployments")
async def submit(request: web.Request) -> web.Response:
    authorize(request)
    c = ctx(request)
    manifest = await read_manifest(request)
    if_match = request.headers.get("If-Match")
    try:
        expected = int(if_match.strip('"')) if if_match else None
    except ValueError as err:
        raise BadRequest("If-Match must be a revision number", field="If-Match") from err
    dep, added = await c.deployments.submit(manifest, expected)
    wait = request.query.get("wait")
    if wait and added:
        await c.deployments.wait_settled(dep.id, dep.latest.number, float(wait))
    status = 200 if not added else (201 if len(dep.revisions) == 1 else 202)
    return reply(request, explain(dep), status=status)


@routes.get("/deployments")
async def list_deployments(request: web.Request) -> web.Response:
    return reply(request, [explain(d) for d in ctx(request).deployments.all()])


@routes.get("/deployments/{id}")
async def get_deployment(request: web.Request) -> web.Response:
    c = ctx(request)
    dep = c.deployments.get(request.match_info["id"])
    wait = request.query.get("wait")
    if wait:
        dep = await c.deployments.wait_settled(dep.id, dep.latest.number, float(wait))
    return reply(request, explain(dep))


@routes.delete("/deployments/{id}")
async def delete_deployment(request: web.Request) -> web.Response:
    authorize(request)
    await ctx(request).deployments.remove(request.match_info["id"])
    return reply(request, {"status": "removed"})


# --- executions ---------------------------------------------------------------------------------


@routes.post("/deployments/{id}/executions")
async def execute(request: web.Request) -> web.Response:
    c = ctx(request)
    dep = c.deployments.get(request.match_info["id"])
    if dep.active is None:
        raise Unprocessable(f"deployment {dep.name} has no active revision yet", field="deployment")
    rev = dep.revision(dep.active)
    first_step = rev.manifest.sequence[0]
    first_device = rev.placement.devices()[0] if rev.placement else None
    if first_device is None:
        raise Unprocessable("the active revision has no placement")
    module = c.modules.resolve(first_step.module).name
    endpoint = msgspec.to_builtins(rev.nodes[first_device].endpoints[module][first_step.func])
    args: dict[str, str] = {}
    files: dict[str, bytes] = {}
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        async for part in reader:
            if isinstance(part, BodyPartReader) and part.name:
                if part.filename is None:
                    args[part.name] = await part.text()
                else:
                    files[part.name] = bytes(await part.read())
    elif request.can_read_body:
        raw = await read_bytes(request)
        try:
            decoded = msgspec.json.decode(raw) if raw else {}
        except msgspec.DecodeError as err:
            raise BadRequest(f"arguments must be a JSON object: {err}") from err
        if not isinstance(decoded, dict):
            raise BadRequest("arguments must be a JSON object")
        args = {
            k: v if isinstance(v, str) else msgspec.json.encode(v).decode()
            for k, v in decoded.items()
        }
    if "async" in request.query:
        execution = c.executions.start(
            dep.id, endpoint, args, files, deadline_s=c.execution_deadline_s
        )
        return reply(request, {"id": execution.id, "status": execution.status}, status=202)
    execution = await c.executions.run(
        dep.id, endpoint, args, files, deadline_s=c.execution_deadline_s
    )
    return reply(
        request, msgspec.to_builtins(execution), status=200 if execution.status == "done" else 502
    )


@routes.get("/executions/{id}")
async def get_execution(request: web.Request) -> web.Response:
    return reply(
        request, msgspec.to_builtins(ctx(request).executions.get(request.match_info["id"]))
    )
