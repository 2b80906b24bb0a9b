"""Function endpoints, request history (with long-poll) and result files.

A call answers ``{"resultUrl"}`` at once, as the reference does; ``?wait=S`` (or the header
``Prefer: wait=S``) holds the reply until the local result is ready, at most ``S`` seconds,
and then carries it inline. ``GET /request-history/{id}`` keeps the reference's statuses
(200 done, 500 failed, 404 unknown); a still-running entry answers 202 with a ``resultUrl``
that long-polls, so a reference orchestrator following ``resultUrl`` waits efficiently
instead of sleeping 5 s between polls.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from supervisor import protocol
from supervisor.errors import BadRequest, NotFound, PayloadTooLarge
from supervisor.history import Record
from supervisor.http import base_url, reply
from supervisor.routes.context import services

routes = web.RouteTableDef()

MAX_WAIT_S = 300.0
# How long a pending history entry's resultUrl asks to be held: under the reference
# orchestrator's own request timeout, long enough that it rarely has to come back.
PENDING_WAIT_S = 20.0
_PREFER_WAIT = re.compile(r"wait=(\d+(?:\.\d+)?)")


def _wait_seconds(request: web.Request) -> float | None:
    """``?wait=S`` or ``Prefer: wait=S``; ``wait`` is therefore reserved as a parameter name."""
    text = request.query.get("wait")
    if text is None:
        match = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
        text = match.group(1) if match else None
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds, got {text!r}", field="wait") from None
    if not 0 <= value <= MAX_WAIT_S:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT_S:g} seconds", field="wait")
    return value


async def _read_inputs(request: web.Request) -> tuple[dict[str, str], dict[str, bytes]]:
    """Named arguments and uploaded files from a POST body (multipart, JSON or MessagePack)."""
    args: dict[str, str] = {}
    files: dict[str, bytes] = {}
    if not request.can_read_body:
        return args, files
    try:
        if request.content_type == "multipart/form-data":
            await _read_form(request, args, files)
        elif request.content_type in {protocol.JSON, protocol.MSGPACK}:
            raw = await request.read()
            if raw:
                decoded = protocol.decode(raw, dict[str, Any], request.content_type)
                args = {
                    k: v if isinstance(v, str) else msgspec.json.encode(v).decode()
                    for k, v in decoded.items()
                }
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge("request body is too large", detail=err.text) from err
    except protocol.ProtocolError as err:
        raise BadRequest(str(err), field=err.field) from err
    except (ValueError, LookupError, RuntimeError, HttpProcessingError) as err:
        # aiohttp's multipart reader signals malformed input with all of these (a part header
        # that is not a header, an unknown charset or transfer encoding, a cut-off body).
        raise BadRequest(f"malformed request body: {err}") from err
    return args, files


async def _read_form(request: web.Request, args: dict[str, str], files: dict[str, bytes]) -> None:
    """A multipart/form-data body into text fields and files, each name at most once.

    The whole body counts against the request size limit, read a chunk at a time (aiohttp
    bounds each part only), so a many-part upload is refused without being held in memory.
    """
    limit = request.client_max_size
    total = 0
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise BadRequest("every multipart part needs a field name")
        name = part.name
        if name in args or name in files:
            raise BadRequest(f"the part {name[:80]!r} appears more than once", field=name)
        data = bytearray()
        while chunk := await part.read_chunk(1 << 16):
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            data += chunk
        if part.filename is not None:
            files[name] = bytes(data)  # as sent, like the chain's own uploads
            continue
        try:
            args[name] = bytes(part.decode(data)).decode(part.get_charset(default="utf-8"))
        except (UnicodeDecodeError, LookupError) as err:
            message = f"the field {name[:80]!r} is not valid text: {err}"
            raise BadRequest(message, field=name) from err


def _result_url(request: web.Request, request_id: str) -> str:
    return f"{base_url(request)}/request-history/{request_id}"


def _inline(record: Record, url: str) -> dict[str, Any]:
    entry = record.entry
    body: dict[str, Any] = {"resultUrl": url, "status": entry.status}
    if record.finished:
        body.update(
            result=entry.result,
            value=entry.value,
            success=entry.success,
            outputs=entry.outputs,
            next=entry.next,
        )
        if entry.error is not None:
            body["error"] = entry.error
    return body


@routes.route("GET", "/{deployment}/modules/{module}/{function}")
@routes.route("POST", "/{deployment}/modules/{module}/{function}")
async def call_function(request: web.Request) -> web.Response:
    svc = services(request)
    info = request.match_info
    query = dict(request.query)
    wait = _wait_seconds(request)
    if wait is not None:
        query.pop("wait", None)
    form_args, uploads = await _read_inputs(request) if request.method == "POST" else ({}, {})
    record = svc.executions.start(
        deployment_id=info["deployment"],
        module=info["module"],
        function=info["function"],
        method=request.method,
        query={**form_args, **query},
        uploads=uploads,
        base_url=base_url(request),
    )
    url = _result_url(request, record.entry.request_id)
    if wait is None:
        return reply(request, {"resultUrl": url})
    await svc.history.wait(record, wait)
    return reply(request, _inline(record, url))


@routes.get("/request-history")
async def history_list(request: web.Request) -> web.Response:
    return reply(request, services(request).history.entries())


@routes.get("/request-history/{request_id}")
async def history_entry(request: web.Request) -> web.Response:
    svc = services(request)
    record = svc.history.get(request.match_info["request_id"])
    if record is None:
        raise NotFound("no matching entry in history", field="request_id")
    wait = _wait_seconds(request)
    if wait is not None:
        await svc.history.wait(record, wait)
    if not record.finished:
        body = msgspec.to_builtins(record.entry)
        body["resultUrl"] = (
            f"{_result_url(request, record.entry.request_id)}?wait={PENDING_WAIT_S:g}"
        )
        return reply(request, body, status=202)
    return reply(request, record.entry, status=200 if record.entry.success else 500)


def _send(path: Path | None) -> web.FileResponse:
    if path is None or not path.is_file():
        raise NotFound("Module result file not found", field="filename")
    return web.FileResponse(path)


@routes.get("/{deployment}/modules/{module}/{function}/{filename}")
async def function_file(request: web.Request) -> web.FileResponse:
    info = request.match_info
    history = services(request).history
    return _send(history.latest_outputs.get((info["deployment"], info["module"], info["filename"])))


@routes.get("/module_results/{module}/{filename}")
async def module_result(request: web.Request) -> web.FileResponse:
    info = request.match_info
    return _send(services(request).history.latest_outputs.get((info["module"], info["filename"])))


@routes.get("/module_results/{deployment}/{module}/{filename}")
async def deployment_result(request: web.Request) -> web.FileResponse:
    info = request.match_info
    key = (info["deployment"], info["module"], info["filename"])
    return _send(services(request).history.latest_outputs.get(key))


@routes.get("/module_results/{deployment}/{module}/{request_id}/{filename}")
async def request_result(request: web.Request) -> web.FileResponse:
    info = request.match_info
    record = services(request).history.get(info["request_id"])
    name = info["filename"]
    if record is None or record.entry.deployment_id != info["deployment"]:
        raise NotFound("Module result file not found", field="request_id")
    return _send(record.output_files.get(name))
