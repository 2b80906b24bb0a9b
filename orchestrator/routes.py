"""The orchestrator's REST API: devices, modules, placements, deployments, executions, plus
``/health``, ``/metrics`` (Prometheus text) and ``/openapi.json``.

Input is untrusted: every body, form, header and query parameter is checked here (with
:mod:`orchestrator.request_input`), before anything is accepted or any device is called, and
anything malformed becomes a 4xx problem body naming the field; a 5xx only ever means a
device or the orchestrator failed. Each route is described in
:data:`orchestrator.api_doc.OPERATIONS`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from orchestrator.api_doc import openapi_document
from orchestrator.app_deploy import AppDeployer
from orchestrator.apps import AppRegistry
from orchestrator.core_device import CoreDevice
from orchestrator.deployments import Deployment, Deployments, explain
from orchestrator.descriptors import sniff_descriptor
from orchestrator.devices import DeviceRegistry
from orchestrator.discovery import DeviceUnreachable, Discovery
from orchestrator.environments import EnvironmentRegistry
from orchestrator.errors import BadRequest, DeviceError, NotFound, Unauthorized, Unprocessable
from orchestrator.executions import Executions
from orchestrator.lifecycle import State
from orchestrator.modules import ModuleRegistry
from orchestrator.partitions import place_partitions
from orchestrator.placement import Infeasible
from orchestrator.request_input import (
    JSON,
    MSGPACK,
    ManualDevice,
    ReferenceRegistration,
    check_arguments,
    check_device_name,
    check_host,
    decode_body,
    if_match_param,
    manifest_from,
    read_bytes,
    read_form,
    wait_param,
)
from orchestrator.results import ResultStore
from orchestrator.store import Store
from supervisor.protocol import check_name

__all__ = ["CONTEXT", "Context", "authorize", "check_host", "ctx", "reply", "routes"]


@dataclass
class Context:
    token: str | None = field(repr=False)  # never in a repr (logs, tracebacks)
    store: Store
    devices: DeviceRegistry
    discovery: Discovery
    modules: ModuleRegistry
    deployments: Deployments
    executions: Executions
    execution_deadline_s: float
    started: float
    apps: AppRegistry
    environments: EnvironmentRegistry
    app_deployer: AppDeployer
    # The built-in packages' device and their results (None: built-in apps disabled).
    results: ResultStore | None = None
    core: CoreDevice | None = None


CONTEXT: web.AppKey[Context] = web.AppKey("context", Context)
_LOGGER = logging.getLogger(__name__)
routes = web.RouteTableDef()


def ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]


def reply(request: web.Request, obj: Any, status: int = 200) -> web.Response:
    if MSGPACK in request.headers.get("Accept", ""):
        return web.Response(body=msgspec.msgpack.encode(obj), status=status, content_type=MSGPACK)
    return web.Response(body=msgspec.json.encode(obj), status=status, content_type=JSON)


def authorize(request: web.Request) -> None:
    """Refuse a mutating request without the configured bearer token (no token = open).

    Missing and wrong tokens are both 401. The refusal is logged with the route and peer,
    never with what the client sent.
    """
    token = ctx(request).token
    if token is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        _LOGGER.info(
            "refused %s %s from %s: %s",
            request.method,
            request.path,
            request.remote,
            "wrong bearer token" if header else "no bearer token",
        )
        raise Unauthorized("a valid bearer token is required for this route")


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


def _metric(
    lines: list[str], name: str, help_text: str, samples: list[tuple[str, int | float]]
) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{labels} {value!r}" for labels, value in samples]


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (format 0.0.4)."""
    c = ctx(request)
    devices = {"healthy": 0, "lost": 0}
    for device in c.devices.all():
        devices[device.health.status] = devices.get(device.health.status, 0) + 1
    states = dict.fromkeys(State, 0)
    for dep in c.deployments.all():
        states[dep.latest.state] += 1
    lines: list[str] = []
    _metric(
        lines,
        "baton_orchestrator_devices",
        "Known devices by health status.",
        [(f'{{status="{status}"}}', n) for status, n in sorted(devices.items())],
    )
    _metric(
        lines,
        "baton_orchestrator_deployments",
        "Deployments by the state of their latest revision.",
        [(f'{{state="{state.value}"}}', n) for state, n in states.items()],
    )
    _metric(
        lines, "baton_orchestrator_modules", "Stored module versions.", [("", len(c.modules.all()))]
    )
    if c.core is not None:
        _metric(
            lines,
            "baton_core_pushes_total",
            "Deploy calls the orchestrator's core device received (built-in packages).",
            [("", c.core.pushes)],
        )
        _metric(
            lines,
            "baton_core_calls_total",
            "Built-in function calls the orchestrator ran.",
            [("", c.core.calls)],
        )
    _metric(
        lines,
        "baton_orchestrator_uptime_seconds",
        "Seconds since the orchestrator started.",
        [("", round(time.monotonic() - c.started, 3))],
    )
    return web.Response(
        text="\n".join(lines) + "\n",
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(routes), content_type=JSON)


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
        "lastError": device.last_error,
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


async def _register(request: web.Request, kind: type[ManualDevice]) -> web.Response:
    authorize(request)
    c = ctx(request)
    body = decode_body(request, await read_bytes(request) or b"{}", kind, "registration body")
    for i, address in enumerate(body.addresses):
        check_host(address, f"addresses[{i}]")
    if body.host:
        check_host(body.host, "host")
    if body.name:  # empty: no name given
        check_device_name(body.name)
    host = body.host or (body.addresses[0] if body.addresses else request.remote)
    if not host:
        raise BadRequest("host is required", field="host")
    try:
        device = await c.discovery.register_manual(
            host, body.port, body.name, addresses=body.addresses or None, tls=body.https()
        )
    except ValueError as err:
        raise BadRequest(str(err), field="port") from err
    except DeviceUnreachable as err:
        raise DeviceError(str(err), field="host") from err
    return reply(request, _device_json(device), status=201)


@routes.post("/devices")
async def register_device(request: web.Request) -> web.Response:
    return await _register(request, ManualDevice)


@routes.post("/file/device/discovery/register")
async def register_reference_device(request: web.Request) -> web.Response:
    return await _register(request, ReferenceRegistration)


@routes.post("/devices/{id}/cordon")
async def cordon(request: web.Request) -> web.Response:
    authorize(request)
    return reply(request, _device_json(ctx(request).devices.cordon(request.match_info["id"])))


@routes.post("/devices/{id}/uncordon")
async def uncordon(request: web.Request) -> web.Response:
    authorize(request)
    return reply(request, _device_json(ctx(request).devices.uncordon(request.match_info["id"])))


# --- modules ---------------------------------------------------------------------------------


_MODULE_FIELDS = frozenset({"name", "version", "functions"})


@routes.post("/modules")
async def upload_module(request: web.Request) -> web.Response:
    authorize(request)
    fields, files = await read_form(
        request, "a module upload (name, version, wasm, functions, data files)"
    )
    unknown = sorted(set(fields) - _MODULE_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
    wasm = files.pop("wasm", None)
    if wasm is None:
        raise BadRequest("the 'wasm' file part is missing", field="wasm")
    if "functions" in files and "functions" in fields:
        raise BadRequest("send 'functions' once, as a field or as a file", field="functions")
    raw_functions = files.pop("functions", None) or fields.get("functions", "{}").encode()
    # Decoded here, robustly (bad UTF-8, deep nesting): the registry reports the rest.
    try:
        decoded = decode_body(request, raw_functions, object, "functions")
    except BadRequest as err:
        raise BadRequest(err.message, field="functions") from err
    functions = decoded if isinstance(decoded, dict) else raw_functions
    name = fields.get("name")
    if not name:
        raise BadRequest("the 'name' field is missing", field="name")
    for mount in files:
        try:
            check_name(mount, f"files.{mount}")
        except ValueError as err:
            raise Unprocessable(
                f"unsafe data file name {mount[:80]!r}", field=f"files.{mount}"
            ) from err
    record, changed = await ctx(request).modules.add(
        name, fields.get("version", "1"), wasm, functions, files
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
    raw = await read_bytes(request)
    # A deployment descriptor is placed as the manifest it derives (nothing is stored).
    descriptor = sniff_descriptor(raw, request.content_type or JSON)
    if descriptor is not None:
        _, _, manifest = await c.app_deployer.derived(descriptor, fetch=False)
    else:
        manifest = manifest_from(request, raw)
    load = c.deployments.load_by_device()
    result = await asyncio.to_thread(
        place_partitions,
        manifest,
        c.modules.for_manifest(manifest),
        [d.view(load.get(d.id, 0)) for d in c.devices.all()],
    )
    if isinstance(result, Infeasible):
        # A problem body that also carries every device's reasons.
        problem = {"status": "error", "result": result.message}
        return reply(request, problem | msgspec.to_builtins(result), status=422)
    # Partition 0 with every explanation; the devices of every partition beside it.
    body: dict[str, Any] = msgspec.to_builtins(result[0])
    body["partitions"] = [{"partition": k, "devices": p.devices()} for k, p in enumerate(result)]
    return reply(request, body)


@routes.post("/deployments")
async def submit(request: web.Request) -> web.Response:
    authorize(request)
    c = ctx(request)
    # Every parameter is checked before anything is accepted: a 400 changes nothing.
    wait = wait_param(request)
    expected = if_match_param(request)
    body = await read_bytes(request)
    # A deployment descriptor (app + environment + params) derives the manifest.
    descriptor = sniff_descriptor(body, request.content_type or JSON)
    if descriptor is not None:
        dep, added = await c.app_deployer.deploy(descriptor, if_match=expected)
    else:
        dep, added = await c.deployments.submit(manifest_from(request, body), expected)
    if wait is not None and added is not None:
        await c.deployments.wait_settled(dep.id, added, wait)
    # 201: this request created the deployment (even if a failover revision followed it).
    status = 200 if added is None else (201 if added == 1 else 202)
    return reply(request, explain(dep), status=status)


@routes.get("/deployments")
async def list_deployments(request: web.Request) -> web.Response:
    return reply(request, [explain(d) for d in ctx(request).deployments.all()])


@routes.get("/deployments/{id}")
async def get_deployment(request: web.Request) -> web.Response:
    c = ctx(request)
    wait = wait_param(request)
    dep = c.deployments.get(request.match_info["id"])
    if wait is not None:
        dep = await c.deployments.wait_settled(dep.id, dep.latest.number, wait)
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
    args: dict[str, str] = {}
    files: dict[str, bytes] = {}
    if request.content_type.startswith("multipart/"):
        args, files = await read_form(request, "execution arguments")
    elif request.can_read_body:
        raw = await read_bytes(request)
        decoded = decode_body(request, raw, dict[str, Any], "arguments") if raw else {}
        args = {
            k: v if isinstance(v, str) else msgspec.json.encode(v).decode()
            for k, v in decoded.items()
        }
    # The slot waits while the devices change revision; the chain is read once it holds.
    dep = await c.deployments.enter_execution(dep.id, c.execution_deadline_s)
    handed_over = False
    try:
        endpoint = _first_endpoint(c, dep)
        check_arguments(endpoint, args, files)
        if "async" in request.query:
            execution = c.executions.start(
                dep.id,
                endpoint,
                args,
                files,
                deadline_s=c.execution_deadline_s,
                on_done=lambda: c.deployments.leave_execution(dep.id),
            )
            handed_over = True
            return reply(request, {"id": execution.id, "status": execution.status}, status=202)
        execution = await c.executions.run(
            dep.id, endpoint, args, files, deadline_s=c.execution_deadline_s
        )
    finally:
        if not handed_over:
            c.deployments.leave_execution(dep.id)
    return reply(
        request, msgspec.to_builtins(execution), status=200 if execution.status == "done" else 502
    )


def _first_endpoint(c: Context, dep: Deployment) -> dict[str, Any]:
    """The endpoint of the active revision's first step (where an execution starts)."""
    if dep.active is None:
        raise Unprocessable(f"deployment {dep.name} has no active revision yet", field="deployment")
    rev = dep.revision(dep.active)
    first_step = rev.manifest.sequence[0]
    _, key = c.deployments.entry(dep)  # the partition this execution runs on
    module = c.modules.resolve(first_step.module).name
    endpoint: dict[str, Any] = msgspec.to_builtins(
        rev.nodes[key].endpoints[module][first_step.func]
    )
    return endpoint


@routes.get("/executions/{id}")
async def get_execution(request: web.Request) -> web.Response:
    return reply(
        request, msgspec.to_builtins(ctx(request).executions.get(request.match_info["id"]))
    )
