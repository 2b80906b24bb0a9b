"""The supervisor's OpenAPI 3.1 document, with body schemas generated from the protocol types."""

from __future__ import annotations

from typing import Any

import msgspec

from supervisor import __version__, protocol


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {protocol.JSON: {"schema": schema}, protocol.MSGPACK: {"schema": schema}},
    }


def _problem(description: str) -> dict[str, Any]:
    return _json(_ref("Problem"), description)


def _path(*names: str) -> list[dict[str, Any]]:
    string = {"type": "string"}
    return [{"name": n, "in": "path", "required": True, "schema": string} for n in names]


def _file_responses() -> dict[str, Any]:
    return {
        "200": {
            "description": "the file's bytes; the type is guessed from its name",
            "content": {"*/*": {}},
        },
        "404": _problem("no such file"),
    }


_OBJECT: dict[str, Any] = {"type": "object"}
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "hold the reply up to this many seconds until the result is ready",
    "schema": {"type": "number", "minimum": 0, "maximum": 300},
}


def build_openapi() -> dict[str, Any]:
    """Describe every route and body; regenerated on each request (cheap, always current)."""
    _, components = msgspec.json.schema_components(
        [protocol.DeploymentNode, protocol.HistoryEntry, protocol.Problem],
        ref_template="#/components/schemas/{name}",
    )
    dep_param = {"name": "deployment", "in": "path", "required": True, "schema": {"type": "string"}}
    mod_param = {"name": "module", "in": "path", "required": True, "schema": {"type": "string"}}
    fn_param = {"name": "function", "in": "path", "required": True, "schema": {"type": "string"}}
    call = {
        "summary": "Call a Wasm function; arguments by name (or param0, param1, …) in the query",
        "parameters": [dep_param, mod_param, fn_param, _WAIT],
        "responses": {
            "200": _json(_OBJECT, "{resultUrl}, plus the result inline when ?wait was given"),
            "400": _problem("bad or missing argument, unexpected upload"),
            "404": _problem("unknown deployment, module or function"),
            "413": _problem("body too large"),
        },
    }
    post_call = dict(call)
    post_call["requestBody"] = {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "additionalProperties": True}},
            protocol.JSON: {"schema": _OBJECT},
        }
    }
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    paths: dict[str, Any] = {
        protocol.DESCRIPTION_PATH: {
            "get": {
                "summary": "Device description",
                "responses": {"200": _json(_OBJECT, "description")},
            }
        },
        "/health": {
            "get": {
                "summary": "Health (cpuUsage, memoryUsage in 0..1)",
                "responses": {"200": _json(_OBJECT, "health")},
            }
        },
        "/deploy": {
            "get": {
                "summary": "List deployments",
                "responses": {"200": _json(_OBJECT, "deployments")},
            },
            "post": {
                "summary": "Install a mini-manifest (idempotent by content digest)",
                "security": secured,
                "requestBody": {
                    "required": True,
                    "content": {protocol.JSON: {"schema": _ref("DeploymentNode")}},
                },
                "responses": {
                    "200": _json(_OBJECT, "installed"),
                    "400": _problem("malformed body"),
                    "401": _problem("missing or wrong token"),
                    "413": _problem("body too large"),
                    "422": _problem("invalid mini-manifest, digest mismatch or unusable module"),
                    "502": _problem("a module or data file could not be fetched"),
                },
            },
        },
        "/deploy/{deployment}": {
            "delete": {
                "summary": "Remove a deployment and its files",
                "security": secured,
                "parameters": [dep_param],
                "responses": {
                    "200": _json(_OBJECT, "removed"),
                    "401": _problem("token"),
                    "404": _problem("unknown"),
                },
            }
        },
        "/register": {
            "post": {
                "summary": "Tell the device its orchestrator's URL",
                "security": secured,
                "requestBody": {
                    "required": True,
                    "content": {
                        protocol.JSON: {
                            "schema": {"type": "object", "properties": {"url": {"type": "string"}}}
                        }
                    },
                },
                "responses": {
                    "200": _json(_OBJECT, "registered"),
                    "400": _problem("malformed body or bad url"),
                    "401": _problem("token"),
                    "413": _problem("body too large"),
                    "422": _problem("a body of the wrong shape (url not a string)"),
                },
            }
        },
        "/{deployment}/modules/{module}/{function}": {"get": call, "post": post_call},
        "/request-history": {
            "get": {
                "summary": "Recent calls",
                "responses": {
                    "200": _json({"type": "array", "items": _ref("HistoryEntry")}, "entries")
                },
            }
        },
        "/request-history/{id}": {
            "get": {
                "summary": "One call's entry; long-poll with ?wait",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    _WAIT,
                ],
                "responses": {
                    "200": _json(_ref("HistoryEntry"), "succeeded"),
                    "202": _json(_ref("HistoryEntry"), "still running; follow resultUrl"),
                    "400": _problem("wait is not a number of seconds in range"),
                    "404": _problem("no such entry"),
                    "500": _json(_ref("HistoryEntry"), "the call failed (reference status)"),
                },
            }
        },
        "/module_results/{deployment}/{module}/{id}/{file}": {
            "get": {
                "summary": "An output file of one call",
                "parameters": _path("deployment", "module", "id", "file"),
                "responses": _file_responses(),
            }
        },
        "/module_results/{deployment}/{module}/{file}": {
            "get": {
                "summary": "An output file of the deployment's latest call that wrote it",
                "parameters": _path("deployment", "module", "file"),
                "responses": _file_responses(),
            }
        },
        "/module_results/{module}/{file}": {
            "get": {
                "summary": "The reference's path: an output file of the module's latest call",
                "parameters": _path("module", "file"),
                "responses": _file_responses(),
            }
        },
        "/{deployment}/modules/{module}/{function}/{file}": {
            "get": {
                "summary": "An output file of the function's latest call (reference path)",
                "parameters": _path("deployment", "module", "function", "file"),
                "responses": _file_responses(),
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text/plain exposition"}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json(_OBJECT, "OpenAPI")}}
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Baton supervisor",
            "version": __version__,
            "description": "wasmiot-compatible device supervisor",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
