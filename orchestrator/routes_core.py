"""The REST API of the orchestrator's core device and of the results it keeps.

The core device's function endpoints are served exactly where a supervisor serves them
(``{GET,POST,PUT} /{deployment}/modules/{module}/{func}`` answering ``{"resultUrl"}``, and
``GET /request-history/{id}``), so a chain can hop onto the orchestrator and an execution can
follow it there. ``/results`` reads and clears what ``datalist.push`` stored. Registered on
:data:`orchestrator.routes.routes` and documented in
:data:`orchestrator.api_doc.OPERATIONS`; importing this module is what adds them.

Without the core device (built-in apps disabled) these routes answer 404.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from orchestrator.api_doc import OPERATIONS, _json, _op
from orchestrator.core_device import CORE_ID, CoreDevice
from orchestrator.errors import BadRequest, NotFound
from orchestrator.request_input import (
    JSON,
    MSGPACK_TYPES,
    decode_body,
    read_bytes,
    read_form,
    wait_param,
)
from orchestrator.results import ResultStore
from orchestrator.routes import Context, authorize, ctx, reply, routes

MAX_LIMIT = 10_000
_FUNCTION = "/{deployment}/modules/{module}/{func}"


def _core(c: Context) -> CoreDevice:
    if c.core is None:
        raise NotFound("the orchestrator runs no built-in packages (built-in apps disabled)")
    return c.core


def _results(c: Context) -> ResultStore:
    if c.results is None:
        raise NotFound("the orchestrator keeps no results (built-in apps disabled)")
    return c.results


def _base_url(c: Context, request: web.Request) -> str:
    """Where the core device is reached: its registry URL (executions match hops by it)."""
    device = c.devices.find(CORE_ID)
    if device is not None and device.core:
        return device.url
    return str(request.url.origin())


async def _arguments(request: web.Request) -> dict[str, str]:
    """Query arguments, plus a POST/PUT body's: form fields, or a JSON/MessagePack object."""
    args = {k: v for k, v in request.query.items() if k != "wait"}
    if request.method == "GET" or not request.can_read_body:
        return args
    ctype = (request.content_type or "").lower()
    if ctype == "multipart/form-data":
        fields, files = await read_form(request, "function arguments")
        if files:
            name = sorted(files)[0]
            raise BadRequest(f"built-in functions take no files, got {name!r}", field=name)
        return {**fields, **args}
    raw = await read_bytes(request)
    if not raw:
        return args
    if ctype != JSON and ctype not in MSGPACK_TYPES:
        raise BadRequest(f"arguments must be JSON, MessagePack or a form, not {ctype or 'untyped'}")
    decoded = decode_body(request, raw, dict[str, Any], "arguments")
    body = {
        k: v if isinstance(v, str) else msgspec.json.encode(v).decode() for k, v in decoded.items()
    }
    return {**body, **args}


# --- the core device's function endpoints ---------------------------------------------------


@routes.route("GET", _FUNCTION)
@routes.route("POST", _FUNCTION)
@routes.route("PUT", _FUNCTION)
async def call_core_function(request: web.Request) -> web.Response:
    c = ctx(request)
    core = _core(c)
    wait = wait_param(request)
    info = request.match_info
    core.endpoint(info["deployment"], info["module"], info["func"])  # 404 before any read
    args = await _arguments(request)
    entry = await core.call(info["deployment"], info["module"], info["func"], request.method, args)
    url = f"{_base_url(c, request)}/request-history/{entry.request_id}"
    if wait is None:
        return reply(request, {"resultUrl": url})
    # Built-in calls are final at once: ``?wait=`` gets the result inline, as on a supervisor.
    return reply(
        request,
        {
            "resultUrl": url,
            "status": entry.status,
            "result": entry.result,
            "value": entry.value,
            "success": entry.success,
            "outputs": entry.outputs,
            "next": entry.next,
        },
    )


@routes.get("/request-history/{request_id}")
async def core_history(request: web.Request) -> web.Response:
    wait_param(request)  # accepted (and checked) like a supervisor's; entries are final
    entry = _core(ctx(request)).history(request.match_info["request_id"])
    return reply(request, msgspec.to_builtins(entry), status=200 if entry.success else 500)


# --- results -----------------------------------------------------------------------------------


def _int_param(
    request: web.Request, name: str, default: int | None, low: int, high: int
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise BadRequest(f"{name} must be a whole number, got {raw[:40]!r}", field=name)
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", field=name)
    return value


def _deployment_key(c: Context, results: ResultStore, key: str) -> tuple[str, str | None]:
    """(deployment id, name) by id or name; a removed deployment's results stay by its id."""
    try:
        dep = c.deployments.get(key)
    except NotFound:
        if results.has(key):
            return key, None
        raise
    return dep.id, dep.name


@routes.get("/results")
async def result_counts(request: web.Request) -> web.Response:
    return reply(request, await _results(ctx(request)).counts())


@routes.get("/results/{deployment}")
async def read_results(request: web.Request) -> web.Response:
    c = ctx(request)
    results = _results(c)
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT) or 100
    after = _int_param(request, "after", None, 0, 2**62)
    dep_id, name = _deployment_key(c, results, request.match_info["deployment"])
    entries = await results.read(dep_id, limit=limit, after=after)
    count = (await results.counts()).get(dep_id, 0)
    return reply(request, {"deployment": dep_id, "name": name, "count": count, "entries": entries})


@routes.delete("/results/{deployment}")
async def clear_results(request: web.Request) -> web.Response:
    authorize(request)
    c = ctx(request)
    results = _results(c)
    dep_id, _ = _deployment_key(c, results, request.match_info["deployment"])
    removed = await results.clear(dep_id)
    return reply(request, {"deployment": dep_id, "removed": removed})


# --- OpenAPI -----------------------------------------------------------------------------------

_ARGS: dict[str, Any] = {
    "required": False,
    "content": {
        **_json({"type": "object", "additionalProperties": True})["content"],
        "multipart/form-data": {
            "schema": {"type": "object", "additionalProperties": {"type": "string"}}
        },
    },
}
_RESULT_URL: dict[str, Any] = {
    "type": "object",
    "required": ["resultUrl"],
    "properties": {
        "resultUrl": {"type": "string"},
        "status": {"type": "string"},
        "value": {},
        "result": {},
        "success": {"type": "boolean"},
    },
}
_HISTORY: dict[str, Any] = {
    "type": "object",
    "required": ["request_id", "success", "status"],
    "properties": {
        "request_id": {"type": "string"},
        "deployment_id": {"type": "string"},
        "module_name": {"type": "string"},
        "function_name": {"type": "string"},
        "status": {"type": "string"},
        "success": {"type": "boolean"},
        "value": {},
        "result": {},
    },
}
_ENTRY: dict[str, Any] = {
    "type": "object",
    "required": ["seq", "value", "at", "deployment"],
    "properties": {
        "seq": {"type": "integer"},
        "value": {},
        "at": {"type": "number"},
        "deployment": {"type": "string"},
        "partition": {"type": "integer"},
        "requestId": {"type": "string"},
    },
}
_WAIT = (
    "wait",
    "seconds to wait for the result (built-in calls are final at once)",
    {"type": "number", "minimum": 0, "maximum": 300},
)
_CALL: dict[int, tuple[str, dict[str, Any] | None]] = {
    200: ("Where the result is (inline too with ?wait=)", _RESULT_URL),
}
for _method in ("GET", "POST", "PUT"):
    OPERATIONS[(_method, _FUNCTION)] = _op(
        "Call a built-in function of a deployment held by the orchestrator's core device",
        _CALL,
        body=_ARGS if _method != "GET" else None,
        query=(_WAIT,),
        errors=(400, 404, 413),
    )
OPERATIONS.update(
    {
        ("GET", "/request-history/{request_id}"): _op(
            "A built-in call's history entry, shaped like a supervisor's",
            {200: ("The final entry", _HISTORY), 500: ("The call failed", _HISTORY)},
            query=(_WAIT,),
            errors=(400, 404),
        ),
        ("GET", "/results"): _op(
            "How many results each deployment has stored (datalist.push)",
            {
                200: (
                    "Deployment id to count",
                    {"type": "object", "additionalProperties": {"type": "integer"}},
                )
            },
            errors=(404,),
        ),
        ("GET", "/results/{deployment}"): _op(
            "A deployment's stored results (by id or name), newest last",
            {
                200: (
                    "The entries",
                    {
                        "type": "object",
                        "required": ["deployment", "count", "entries"],
                        "properties": {
                            "deployment": {"type": "string"},
                            "name": {"type": ["string", "null"]},
                            "count": {"type": "integer"},
                            "entries": {"type": "array", "items": _ENTRY},
                        },
                    },
                )
            },
            query=(
                (
                    "limit",
                    f"at most this many entries (1..{MAX_LIMIT}, default 100)",
                    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                ),
                (
                    "after",
                    "only entries with a greater seq, oldest first (paging forward)",
                    {"type": "integer", "minimum": 0},
                ),
            ),
            errors=(400, 404),
        ),
        ("DELETE", "/results/{deployment}"): _op(
            "Drop a deployment's stored results",
            {
                200: (
                    "Removed",
                    {
                        "type": "object",
                        "properties": {
                            "deployment": {"type": "string"},
                            "removed": {"type": "integer"},
                        },
                    },
                )
            },
            errors=(404,),
            auth=True,
        ),
    }
)
