"""The REST API of apps and environments: ``/apps`` (images, their static pages) and
``/environments``. Registered on :data:`orchestrator.routes.routes`, documented in
:data:`orchestrator.api_doc.OPERATIONS`; importing this module is what adds them.

Static pages are served from the content-addressed blobs the registry extracted at upload:
a request's path is only ever a key into the app record's file map.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from orchestrator.api_doc import OPERATIONS, SCHEMA_TYPES_EXTRA, _json, _op, _ref
from orchestrator.app_image import ImageLimits
from orchestrator.apps import AppRecord
from orchestrator.descriptors import Descriptor
from orchestrator.environments import Environment, EnvironmentSpec, make_environment
from orchestrator.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from orchestrator.request_input import decode_body, read_bytes
from orchestrator.routes import authorize, ctx, reply, routes

ZIP = "application/zip"
_ZIP_TYPES = frozenset({ZIP, "application/octet-stream", "application/x-zip-compressed"})
_MAX_IMAGE = ImageLimits().max_image_bytes


def app_json(request: web.Request, record: AppRecord) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(record)
    path = f"/apps/{record.name}/{record.version}/image"
    doc["imageUrl"] = str(request.url.origin().with_path(path))
    return doc


# --- apps ----------------------------------------------------------------------------------


@routes.post("/apps")
async def push_app(request: web.Request) -> web.Response:
    authorize(request)
    c = ctx(request)
    limit = c.apps.limits.max_image_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"an app image is at most {limit} bytes", field="image")
    ctype = (request.content_type or "").lower()
    if ctype not in _ZIP_TYPES:
        raise BadRequest(f"an app image is sent as {ZIP}, not {ctype[:60]!r}", field="Content-Type")
    data = await read_bytes(request)
    if len(data) > limit:
        raise PayloadTooLarge(f"an app image is at most {limit} bytes", field="image")
    record, created = await c.apps.add(data)
    body = {
        "name": record.name,
        "version": record.version,
        "digest": record.digest,
        "size": record.size,
        "packages": record.packages,
        "pipelines": [p.name for p in record.pipelines],
        "created": created,
    }
    return reply(request, body, status=201 if created else 200)


@routes.get("/apps")
async def list_apps(request: web.Request) -> web.Response:
    by_name: dict[str, list[AppRecord]] = {}
    for record in ctx(request).apps.all():
        by_name.setdefault(record.name, []).append(record)
    return reply(
        request,
        [
            {"name": name, "versions": [r.version for r in records], "latest": records[-1].version}
            for name, records in sorted(by_name.items())
        ],
    )


# Registered before the ``{version}`` routes: ``/apps/x/static/...`` is the latest version's.
@routes.get("/apps/{name}/static/{path:.*}")
async def latest_static_file(request: web.Request) -> web.StreamResponse:
    record = ctx(request).apps.get(request.match_info["name"])
    return _static(request, record)


@routes.get("/apps/{name}")
async def get_app_versions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    records = ctx(request).apps.versions(name)
    return reply(request, {"name": name, "versions": [app_json(request, r) for r in records]})


@routes.get("/apps/{name}/{version}")
async def get_app(request: web.Request) -> web.Response:
    record = ctx(request).apps.get(request.match_info["name"], request.match_info["version"])
    return reply(request, app_json(request, record))


@routes.get("/apps/{name}/{version}/image")
async def get_app_image(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    record = c.apps.get(request.match_info["name"], request.match_info["version"])
    path = c.store.blobs.path(record.blob)
    if not path.is_file():
        raise NotFound(f"the image of {record.ref} is missing from the blob store")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": ZIP,
            "Digest": f"sha256={record.blob}",
            "X-Baton-Digest": record.digest,
        },
    )


@routes.get("/apps/{name}/{version}/static/{path:.*}")
async def static_file(request: web.Request) -> web.StreamResponse:
    record = ctx(request).apps.get(request.match_info["name"], request.match_info["version"])
    return _static(request, record)


def _static(request: web.Request, record: AppRecord) -> web.StreamResponse:
    c = ctx(request)
    blob, ctype = c.apps.static_file(record, request.match_info["path"])
    path = c.store.blobs.path(blob)
    if not path.is_file():
        raise NotFound(f"a static file of {record.ref} is missing from the blob store")
    # The type is the one the image's file name implies; a browser must not guess another
    # (an uploaded .txt sniffed as HTML would run as a page of the orchestrator's origin).
    headers = {"Content-Type": ctype, "X-Content-Type-Options": "nosniff"}
    return web.FileResponse(path, headers=headers)


# --- environments ---------------------------------------------------------------------------


@routes.get("/environments")
async def list_environments(request: web.Request) -> web.Response:
    return reply(request, [msgspec.to_builtins(e) for e in ctx(request).environments.all()])


@routes.get("/environments/{name}")
async def get_environment(request: web.Request) -> web.Response:
    env = ctx(request).environments.get(request.match_info["name"])
    return reply(request, msgspec.to_builtins(env))


@routes.put("/environments/{name}")
async def put_environment(request: web.Request) -> web.Response:
    authorize(request)
    c = ctx(request)
    spec = decode_body(request, await read_bytes(request), EnvironmentSpec, "environment")
    env = make_environment(request.match_info["name"], spec)
    created = await c.environments.put(env)
    return reply(request, msgspec.to_builtins(env), status=201 if created else 200)


@routes.delete("/environments/{name}")
async def delete_environment(request: web.Request) -> web.Response:
    authorize(request)
    c = ctx(request)
    name = request.match_info["name"]
    c.environments.get(name)
    users = c.app_deployer.environment_users(name)
    if users:
        raise Conflict(
            f"environment {name} is used by deployment(s) {', '.join(users)}; undeploy them first",
            field="name",
            detail={"deployments": users},
        )
    await c.environments.delete(name)
    return reply(request, {"status": "removed"})


# --- OpenAPI ----------------------------------------------------------------------------------

SCHEMA_TYPES_EXTRA.extend([AppRecord, Environment, EnvironmentSpec, Descriptor])

_BINARY = {"type": "string", "format": "binary"}
_ANY_FILE = {
    "description": "The file",
    "content": {"*/*": {"schema": _BINARY}},
}
_PUSHED = {
    "type": "object",
    "required": ["name", "version", "digest", "size", "packages", "pipelines", "created"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "digest": {"type": "string"},
        "size": {"type": "integer"},
        "packages": {"type": "object", "additionalProperties": {"type": "string"}},
        "pipelines": {"type": "array", "items": {"type": "string"}},
        "created": {"type": "boolean"},
    },
}
_APP = {"allOf": [_ref("AppRecord"), {"properties": {"imageUrl": {"type": "string"}}}]}
_REMOVED = {"type": "object", "properties": {"status": {"const": "removed"}}}
OPERATIONS.update(
    {
        ("POST", "/apps"): _op(
            "Upload an app image (a zip): its packages become module versions",
            {
                201: ("Stored", _PUSHED),
                200: ("The same image is already stored; nothing changed", _PUSHED),
            },
            body={
                "required": True,
                "content": {
                    ZIP: {"schema": _BINARY},
                    "application/octet-stream": {"schema": _BINARY},
                },
            },
            errors=(409, 422),
            auth=True,
        ),
        ("GET", "/apps"): _op(
            "Stored apps and their versions",
            {
                200: (
                    "Apps",
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "versions": {"type": "array", "items": {"type": "string"}},
                                "latest": {"type": "string"},
                            },
                        },
                    },
                )
            },
        ),
        ("GET", "/apps/{name}"): _op(
            "Every stored version of an app",
            {
                200: (
                    "The app",
                    {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "versions": {"type": "array", "items": _APP},
                        },
                    },
                )
            },
            errors=(404,),
        ),
        ("GET", "/apps/{name}/{version}"): _op(
            "One app version: pipelines, packages, static site, image URL",
            {200: ("The app version", _APP)},
            errors=(404,),
        ),
        ("GET", "/apps/{name}/{version}/image"): {
            "summary": "The app image (zip); headers Digest and X-Baton-Digest carry its sha256",
            "responses": {
                "200": {"description": "The zip", "content": {ZIP: {"schema": _BINARY}}},
                "404": {"$ref": "#/components/responses/Problem404"},
            },
        },
        ("GET", "/apps/{name}/{version}/static/{path:.*}"): {
            "summary": "A file of the app version's static site (empty path: its index)",
            "responses": {"200": _ANY_FILE, "404": {"$ref": "#/components/responses/Problem404"}},
        },
        ("GET", "/apps/{name}/static/{path:.*}"): {
            "summary": "A file of the latest version's static site (empty path: its index)",
            "responses": {"200": _ANY_FILE, "404": {"$ref": "#/components/responses/Problem404"}},
        },
        ("GET", "/environments"): _op(
            "Environments",
            {200: ("Environments", {"type": "array", "items": _ref("Environment")})},
        ),
        ("GET", "/environments/{name}"): _op(
            "One environment", {200: ("The environment", _ref("Environment"))}, errors=(404,)
        ),
        ("PUT", "/environments/{name}"): _op(
            "Create or replace an environment",
            {
                201: ("Created", _ref("Environment")),
                200: ("Replaced (or unchanged)", _ref("Environment")),
            },
            body={"required": True, **_json(_ref("EnvironmentSpec"))},
            errors=(422,),
            auth=True,
        ),
        ("DELETE", "/environments/{name}"): _op(
            "Remove an environment no deployment was derived from",
            {200: ("Removed", _REMOVED)},
            errors=(404, 409),
            auth=True,
        ),
    }
)
