"""The OpenAPI 3.1 document of the orchestrator's REST API (``GET /openapi.json``).

Route modules describe each operation they register in :data:`OPERATIONS` (built with
:func:`_op`) and add the types their bodies use to :data:`SCHEMA_TYPES_EXTRA`;
:func:`openapi_document` walks the route table it is given, so a route nobody described
still appears (as "see source"). Nothing here reads a request.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

import msgspec
from aiohttp import web

from orchestrator.executions import Execution
from orchestrator.lifecycle import State, Transition
from orchestrator.model import Manifest, ModuleRecord
from orchestrator.placement import Infeasible, Placement
from orchestrator.request_input import (
    JSON,
    MAX_WAIT_S,
    MSGPACK,
    ManualDevice,
    ReferenceRegistration,
)


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
# Route modules (orchestrator.routes_apps, …) add the types their bodies use.
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
def openapi_document(routes: web.RouteTableDef) -> bytes:
    """The OpenAPI 3.1 description of every route in ``routes``, built once per table (call
    it after every route module has registered its routes and operations)."""
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
