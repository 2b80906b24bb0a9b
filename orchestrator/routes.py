"""The orchestrator's REST API: devices, modules, placements, deployments, executions, plus
``/health``, ``/metrics`` (Prometheus text) and ``/openapi.json``.

Input is untrusted: every body, form, header and query parameter is checked here, before
anything is accepted or any device is called, and anything malformed (not the format, bad
UTF-8, nested too deeply, the wrong shape, unknown fields, unsafe names, too large) becomes a
4xx problem body naming the field; a 5xx only ever means a device or the orchestrator failed.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from orchestrator.app_deploy import AppDeployer
from orchestrator.apps import AppRegistry
from orchestrator.core_device import CoreDevice
from orchestrator.deployments import Deployment, Deployments, explain
from orchestrator.descriptors import sniff_descriptor
from orchestrator.devices import DeviceRegistry
from orchestrator.discovery import DeviceUnreachable, Discovery
from orchestrator.environments import EnvironmentRegistry
from orchestrator.errors import (
    BadRequest,
    DeviceError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unprocessable,
)
from orchestrator.executions import Execution, Executions
from orchestrator.lifecycle import State, Transition
from orchestrator.manifests import ManifestError, parse_manifest
from orchestrator.model import Manifest, ModuleRecord
from orchestrator.modules import ModuleRegistry
from orchestrator.partitions import place_partitions
from orchestrator.placement import Infeasible, Placement
from orchestrator.results import ResultStore
from orchestrator.store import Store
from supervisor.protocol import check_name

JSON = "application/json"
MSGPACK = "application/msgpack"
# The MessagePack aliases the manifest parser accepts too (there is no registered media type).
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
MAX_WAIT_S = 300.0  # the longest ``?wait=`` a request may hold a connection for
T = TypeVar("T")


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


async def read_bytes(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge("request body is too large") from err


def manifest_from(request: web.Request, body: bytes) -> Manifest:
    try:
        return parse_manifest(body, request.content_type or JSON)
    except ManifestError as err:
        exc = BadRequest if err.status == 400 else Unprocessable
        raise exc(str(err), field=err.field) from err
    except RecursionError as err:  # a TOML body nested thousands deep
        raise BadRequest("body is nested too deeply") from err


# msgspec ends a validation message with "- at `$.a.b`" when the error is below the root, and
# names an unknown or missing field in the message itself.
_ERROR_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]*)`")


def _error_field(message: str) -> str | None:
    match = _ERROR_PATH.search(message)
    path = match["path"] if match else ""
    named = _NAMED_FIELD.match(message)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
    return path or None


def decode_body(request: web.Request, body: bytes, kind: type[T], what: str) -> T:
    """``body`` as ``kind``: MessagePack when the content type says so, JSON otherwise.

    Whatever the bytes are (not the format, bad UTF-8, nested thousands deep, the wrong
    shape), the answer is a 400 naming the field when there is one.
    """
    msgpack = (request.content_type or "").lower() in MSGPACK_TYPES
    try:
        if msgpack:
            return msgspec.msgpack.decode(body, type=kind)
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as err:  # a subclass of DecodeError: test it first
        raise BadRequest(f"invalid {what}: {err}", field=_error_field(str(err))) from err
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
        fmt = "MessagePack" if msgpack else "JSON"
        raise BadRequest(f"{what} is not valid {fmt}: {err}") from err


async def read_form(request: web.Request, what: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart/form-data body as (text fields, file parts), each name at most once.

    The whole body counts against the request size limit (aiohttp bounds each part only),
    and a malformed body of any kind is a 400.
    """
    if request.content_type != "multipart/form-data":
        raise BadRequest(f"{what} must be multipart/form-data")
    limit = request.client_max_size
    total = 0
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise BadRequest(
                    "every part needs a field name (nested multipart is not supported)"
                )
            name = part.name
            if name in fields or name in files:
                raise BadRequest(f"the part {name!r} appears more than once", field=name)
            data = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
                data += chunk
            content = bytes(part.decode(data))
            if part.filename is None:
                try:
                    fields[name] = content.decode(part.get_charset(default="utf-8"))
                except (UnicodeDecodeError, LookupError) as err:
                    raise BadRequest(
                        f"the field {name!r} is not valid text: {err}", field=name
                    ) from err
            else:
                files[name] = content
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge(f"{what} is too large") from err
    except (ValueError, RuntimeError, LookupError, HttpProcessingError) as err:
        # aiohttp's multipart reader signals malformed input with all of these.
        raise BadRequest(f"malformed multipart body: {err}") from err
    return fields, files


def wait_param(request: web.Request) -> float | None:
    """``?wait=<seconds>``: absent or empty is no wait; anything but 0..MAX_WAIT_S is a 400."""
    raw = request.query.get("wait")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as err:
        raise BadRequest(f"wait must be a number of seconds, got {raw!r}", field="wait") from err
    if not math.isfinite(value) or not 0 <= value <= MAX_WAIT_S:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT_S:g} seconds", field="wait")
    return value


def if_match_param(request: web.Request) -> int | None:
    """``If-Match: <revision>`` (quotes allowed, as an ETag would have them)."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise BadRequest(f"If-Match must be a revision number, got {raw[:40]!r}", field="If-Match")
    return int(text)


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
    return web.Response(body=openapi_document(), content_type=JSON)


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


class ManualDevice(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /devices``: where a device that mDNS cannot reach listens (``tls``: over HTTPS)."""

    host: str | None = None
    port: int = 5000
    name: str | None = None
    addresses: list[str] = []
    tls: bool = False

    def https(self) -> bool:
        return self.tls


class ReferenceRegistration(ManualDevice, forbid_unknown_fields=False):
    """The wasmiot reference supervisor's registration body: its ``properties`` are the mDNS
    TXT record, whose ``tls`` says ``"1"`` for HTTPS (``type`` and the rest are ignored)."""

    # Any shape is accepted, as before this field was read; only an object's ``tls`` counts.
    properties: Any = None

    def https(self) -> bool:
        txt = self.properties if isinstance(self.properties, dict) else {}
        return self.tls or str(txt.get("tls", "0")).strip() == "1"


# An RFC 1123 host name (``_`` tolerated, as mDNS names carry it), with an optional final dot.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def check_host(value: str, field: str) -> None:
    """An IP address or a host name; anything else (``../x``, spaces, URLs) is a 400."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise BadRequest(
                f"not an IP address or host name: {value[:80]!r}", field=field
            ) from None


def check_device_name(value: str) -> None:
    """A device name is shown and becomes part of an id (``name:<instance>``), never a path;
    still, one that looks like a path (``/``, ``\\``, ``..``) or carries control characters is
    a 400, as the supervisor's and module names are refused."""
    if (
        not value.strip()
        or len(value) > 255
        or not value.isprintable()
        or any(bad in value for bad in ("/", "\\", ".."))
    ):
        raise BadRequest(f"not a usable device name: {value[:80]!r}", field="name")


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


def _fits(text: str, kind: str) -> bool:
    """Whether a device would accept ``text`` for a parameter of type ``kind``."""
    try:
        if kind == "integer":
            int(text)
        elif kind in {"number", "float"}:
            return math.isfinite(float(text))
        elif kind == "boolean":
            return text.strip().lower() in {"true", "false", "1", "0"}
        elif kind in {"object", "array"}:
            msgspec.json.decode(text)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return False
    return True


def check_arguments(
    endpoint: dict[str, Any], args: dict[str, str], files: dict[str, bytes]
) -> None:
    """Refuse, before any device is called, what the first hop would refuse: a missing,
    mistyped or unknown argument (by name, or positionally as ``param0``…), a missing or
    unexpected input file."""
    request = endpoint.get("request") or {}
    known: set[str] = set()
    declared: list[str] = []
    for i, param in enumerate(request.get("parameters") or []):
        name = str(param.get("name"))
        kind = str((param.get("schema") or {}).get("type") or "string")
        known |= {name, f"param{i}"}
        declared.append(name)
        text = args.get(name, args.get(f"param{i}"))
        if text is None:
            if param.get("required", True):
                raise BadRequest(f"missing argument {name!r} ({kind})", field=name)
        elif not _fits(text, kind):
            raise BadRequest(f"argument {name!r} must be {kind}, got {text[:40]!r}", field=name)
    unknown = sorted(set(args) - known)
    if unknown:
        takes = ", ".join(declared) or "none"
        raise BadRequest(f"unknown argument {unknown[0]!r} (takes: {takes})", field=unknown[0])
    body = request.get("request_body") or {}
    uploads = set((body.get("schema") or {}).get("properties") or {})
    for name in sorted(set(files) - uploads):
        raise BadRequest(f"unexpected input file {name!r}", field=name)
    for name in sorted(uploads - set(files)):
        raise BadRequest(f"the input file {name!r} is missing", field=name)


@routes.get("/executions/{id}")
async def get_execution(request: web.Request) -> web.Response:
    return reply(
        request, msgspec.to_builtins(ctx(request).executions.get(request.match_info["id"]))
    )


# --- OpenAPI ----------------------------------------------------------------------------------


class Problem(msgspec.Struct):
    """Every error answer. ``result`` says what went wrong; ``field`` where, when one thing is
    to blame (a JSON path into the body, a form field, a header or a query parameter)."""

    status: Literal["error"]
    result: str
    type: str
    field: str | None = None
    detail: Any = None


_SCHEMA_TYPES: tuple[Any, ...] = (
    Manifest,
    Placement,
    Infeasible,
    ManualDevice,
    ReferenceRegistration,
    ModuleRecord,
    Execution,
    Transition,
    Problem,
)
# Route modules registered on ``routes`` elsewhere (orchestrator.routes_apps) add their types.
SCHEMA_TYPES_EXTRA: list[Any] = []
_PROBLEMS = {
    400: "Malformed input: a body, form field, header or query parameter",
    401: "A valid bearer token is required",
    404: "No such device, module, deployment, execution or route",
    409: "Stale If-Match revision",
    413: "The body is larger than the configured limit",
    422: "Well-formed but invalid (manifest, module, placement)",
    502: "A device refused or did not answer",
    504: "A wait reached its deadline",
}
_DEVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "url", "status", "cordoned"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "url": {"type": "string"},
        "apiVersion": {"type": ["integer", "null"]},
        "status": {"enum": ["healthy", "lost"]},
        "cordoned": {"type": "boolean"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "zone": {"type": ["string", "null"]},
        "rttMs": {"type": ["number", "null"]},
        "health": {"type": ["object", "null"]},
        "lastError": {
            "type": ["string", "null"],
            "description": "why the latest health check failed (null after a good one)",
        },
        "interfaces": {"type": "array", "items": {"type": "string"}},
        "events": {"type": "array", "items": {"type": "object"}},
        "description": {"type": "object", "description": "GET /devices/{id} only"},
    },
}
_DEPLOYMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "revision", "state", "events"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "revision": {"type": "integer"},
        "state": {"enum": [s.value for s in State]},
        "active": {"type": ["integer", "null"]},
        "placement": {"anyOf": [{"$ref": "#/components/schemas/Placement"}, {"type": "null"}]},
        "partitions": {
            "type": "array",
            "description": "the devices of each partition's chain, partition 0 first",
            "items": {
                "type": "object",
                "properties": {
                    "partition": {"type": "integer"},
                    "devices": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "error": {"type": ["string", "null"]},
        "failedStep": {"type": ["string", "null"]},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        "jobs": {"type": "object", "additionalProperties": {"type": "object"}},
        "revisions": {"type": "array", "items": {"type": "object"}},
        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Transition"}},
    },
}
_HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"const": "ok"},
        "uptimeSeconds": {"type": "number"},
        "devices": {"type": "integer"},
        "deployments": {"type": "integer"},
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {JSON: {"schema": schema}, MSGPACK: {"schema": schema}}}


def _op(
    summary: str,
    ok: dict[int, tuple[str, dict[str, Any] | None]],
    *,
    errors: tuple[int, ...] = (),
    body: dict[str, Any] | None = None,
    query: tuple[tuple[str, str, dict[str, Any]], ...] = (),
    headers: tuple[tuple[str, str, dict[str, Any]], ...] = (),
    auth: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    params = [
        {"name": n, "in": "query", "required": False, "description": d, "schema": s}
        for n, d, s in query
    ] + [
        {"name": n, "in": "header", "required": False, "description": d, "schema": s}
        for n, d, s in headers
    ]
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    if auth:
        op["security"] = [{"bearer": []}]
    for status, (description, schema) in ok.items():
        op["responses"][str(status)] = {"description": description} | (
            _json(schema) if schema is not None else {}
        )
    codes = set(errors) | ({401} if auth else set()) | ({400, 413} if body else set())
    for status in sorted(codes):
        op["responses"][str(status)] = {"$ref": f"#/components/responses/Problem{status}"}
    return op


_WAIT = (
    "wait",
    f"seconds (0..{MAX_WAIT_S:g}) to wait for the revision to settle",
    {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
)
_DEPLOYABLE = {"anyOf": [_ref("Manifest"), _ref("Descriptor")]}
_DEPLOY_BODY: dict[str, Any] = {
    "required": True,
    "description": "a manifest, or a deployment descriptor (app + environment + params)",
    "content": {
        JSON: {"schema": _DEPLOYABLE},
        MSGPACK: {"schema": _DEPLOYABLE},
        "application/toml": {"schema": _DEPLOYABLE},
    },
}
_MODULE_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["name", "wasm"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string", "default": "1"},
        "wasm": {"type": "string", "contentMediaType": "application/wasm"},
        "functions": {"type": "string", "description": "functions.json, as a field or a file"},
    },
    "additionalProperties": {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "description": "a data file, named by its mount",
    },
}
_ARGS_BODY: dict[str, Any] = {
    "required": False,
    "content": {
        JSON: {"schema": {"type": "object", "additionalProperties": True}},
        MSGPACK: {"schema": {"type": "object", "additionalProperties": True}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "description": "named arguments as fields, mounted input files as files",
                "additionalProperties": {"type": "string"},
            }
        },
    },
}
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/health"): _op("Liveness and counts", {200: ("Alive", _HEALTH_SCHEMA)}),
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics",
        "responses": {
            "200": {
                "description": "Text exposition format 0.0.4",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
        },
    },
    ("GET", "/devices"): _op(
        "Known devices", {200: ("Devices", {"type": "array", "items": _ref("Device")})}
    ),
    ("GET", "/devices/{id}"): _op(
        "One device with its description", {200: ("The device", _ref("Device"))}, errors=(404,)
    ),
    ("POST", "/devices"): _op(
        "Register a device by hand (it must serve its description)",
        {201: ("Registered (or refreshed)", _ref("Device"))},
        body={"required": False, **_json(_ref("ManualDevice"))},
        errors=(502,),
        auth=True,
    ),
    ("POST", "/file/device/discovery/register"): _op(
        "Registration as the wasmiot reference supervisor sends it",
        {201: ("Registered (or refreshed)", _ref("Device"))},
        body={"required": False, **_json(_ref("ReferenceRegistration"))},
        errors=(502,),
        auth=True,
    ),
    ("POST", "/devices/{id}/cordon"): _op(
        "Stop placing new work on a device",
        {200: ("Cordoned", _ref("Device"))},
        errors=(404,),
        auth=True,
    ),
    ("POST", "/devices/{id}/uncordon"): _op(
        "Allow placing work on a device again",
        {200: ("Uncordoned", _ref("Device"))},
        errors=(404,),
        auth=True,
    ),
    ("POST", "/modules"): _op(
        "Upload a module version: binary, function descriptions, data files",
        {
            201: ("Stored", _ref("ModuleRecord")),
            200: ("Identical upload; nothing changed", _ref("ModuleRecord")),
        },
        body={"required": True, "content": {"multipart/form-data": {"schema": _MODULE_FORM}}},
        errors=(422,),
        auth=True,
    ),
    ("GET", "/modules"): _op(
        "Stored module versions",
        {200: ("Modules", {"type": "array", "items": _ref("ModuleRecord")})},
    ),
    ("GET", "/modules/{ref}"): _op(
        "A module by name (latest version) or name@version",
        {200: ("The module", _ref("ModuleRecord"))},
        errors=(404,),
    ),
    ("GET", "/blobs/{digest}"): {
        "summary": "A stored binary or data file by sha256 (what devices download)",
        "responses": {
            "200": {
                "description": "The bytes",
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            },
            "404": {"$ref": "#/components/responses/Problem404"},
        },
    },
    ("POST", "/placements"): _op(
        "Dry run: where each step would go, and why",
        {
            200: ("Every step placed", _ref("Placement")),
            422: (
                "Infeasible, with every device's reasons (or an invalid manifest)",
                {"anyOf": [_ref("Infeasible"), _ref("Problem")]},
            ),
        },
        body=_DEPLOY_BODY,
    ),
    ("POST", "/deployments"): _op(
        "Deploy a manifest: a new deployment, or the next revision of one",
        {
            201: ("A new deployment", _ref("Deployment")),
            202: ("The next revision, applied in order", _ref("Deployment")),
            200: ("Identical manifest: nothing changed", _ref("Deployment")),
        },
        body=_DEPLOY_BODY,
        query=(_WAIT,),
        headers=(
            (
                "If-Match",
                "the revision this update was made against",
                {"type": "string", "pattern": '^"?[0-9]+"?$'},
            ),
        ),
        errors=(409, 422),
        auth=True,
    ),
    ("GET", "/deployments"): _op(
        "Deployments", {200: ("Deployments", {"type": "array", "items": _ref("Deployment")})}
    ),
    ("GET", "/deployments/{id}"): _op(
        "A deployment by id or name: state, placement, jobs, events",
        {200: ("The deployment", _ref("Deployment"))},
        query=(_WAIT,),
        errors=(400, 404),
    ),
    ("DELETE", "/deployments/{id}"): _op(
        "Remove a deployment from every device",
        {200: ("Removed", {"type": "object", "properties": {"status": {"const": "removed"}}})},
        errors=(404, 502),
        auth=True,
    ),
    ("POST", "/deployments/{id}/executions"): _op(
        "Run the pipeline with named arguments (and input files)",
        {
            200: ("Done: the value, output links and a trace", _ref("Execution")),
            202: (
                "Started (?async)",
                {
                    "type": "object",
                    "properties": {"id": {"type": "string"}, "status": {"type": "string"}},
                },
            ),
            502: ("A hop failed; the trace names the device", _ref("Execution")),
        },
        body=_ARGS_BODY,
        query=(
            (
                "async",
                "start in the background and answer with an execution id",
                {"type": "string"},
            ),
        ),
        errors=(404, 422),
    ),
    ("GET", "/executions/{id}"): _op(
        "An execution: status, value, trace",
        {200: ("The execution", _ref("Execution"))},
        errors=(404,),
    ),
}


_PATTERN_PARAM = re.compile(r"\{([^}:/]+):[^}]*\}")


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{([^}/]+)\}", path)
    ]


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI 3.1 description of every route in :data:`routes`, built once."""
    _, schemas = msgspec.json.schema_components(
        (*_SCHEMA_TYPES, *SCHEMA_TYPES_EXTRA), ref_template="#/components/schemas/{name}"
    )
    schemas |= {"Device": _DEVICE_SCHEMA, "Deployment": _DEPLOYMENT_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, web.RouteDef):
            continue
        op = dict(
            OPERATIONS.get(
                (route.method, route.path),
                {"summary": route.path, "responses": {"default": {"description": "see source"}}},
            )
        )
        path = _PATTERN_PARAM.sub(r"{\1}", route.path)  # "{path:.*}" is "{path}" in OpenAPI
        params = _path_parameters(path) + op.get("parameters", [])
        if params:
            op["parameters"] = params
        op["operationId"] = getattr(route.handler, "__name__", route.path)
        paths.setdefault(path, {})[route.method.lower()] = op
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Baton orchestrator",
            "version": "1",
            "description": "Deploys WebAssembly pipelines to IoT devices. Every error is a "
            "problem body; mutating routes need a bearer token when one is configured.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "responses": {
                f"Problem{status}": {"description": text, **_json(_ref("Problem"))}
                for status, text in _PROBLEMS.items()
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return msgspec.json.encode(doc)
