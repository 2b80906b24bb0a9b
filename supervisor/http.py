"""HTTP edge helpers: content negotiation, problem bodies, bearer-token checks.

Requests and replies are JSON by default; a client that sends ``Content-Type:
application/msgpack`` or asks ``Accept: application/msgpack`` gets MessagePack instead.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, TypeVar

from aiohttp import web

from supervisor import protocol
from supervisor.errors import (
    BadRequest,
    PayloadTooLarge,
    SupervisorError,
    Unauthorized,
    Unprocessable,
)

T = TypeVar("T")

_LOGGER = logging.getLogger(__name__)


def wants_msgpack(request: web.Request) -> bool:
    return protocol.MSGPACK in request.headers.get("Accept", "")


def reply(
    request: web.Request, obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Encode ``obj`` (Structs, dicts, lists) in the representation the client accepts."""
    content_type = protocol.MSGPACK if wants_msgpack(request) else protocol.JSON
    return web.Response(
        body=protocol.encode(obj, content_type),
        status=status,
        content_type=content_type,
        headers=headers,
    )


def problem_body(err: SupervisorError) -> protocol.Problem:
    return protocol.Problem(
        status="error", result=err.message, type=err.type, detail=err.detail, field=err.field
    )


def problem(request: web.Request, err: SupervisorError) -> web.Response:
    return reply(request, problem_body(err), status=err.status)


async def read_body(request: web.Request, type_: type[T]) -> T:
    """Read and decode the whole body into ``type_``; map decoding failures to 400/413/422."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge("request body is too large", detail=err.text) from err
    if not raw:
        raise BadRequest("request body is empty")
    try:
        return protocol.decode(raw, type_, request.content_type)
    except protocol.ProtocolError as err:
        exc = BadRequest if err.status == 400 else Unprocessable
        raise exc(str(err), field=err.field) from err


def has_token(request: web.Request, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


def check_token(request: web.Request, token: str | None) -> None:
    """Refuse a control request without the configured bearer token (no token = open).

    Missing and wrong tokens are both 401 (the client has not authenticated). The refusal is
    logged with the route and peer, never with what the client sent.
    """
    if token is None or has_token(request, token):
        return
    _LOGGER.info(
        "refused %s %s from %s: %s",
        request.method,
        request.path,
        request.remote,
        "wrong bearer token" if "Authorization" in request.headers else "no bearer token",
    )
    raise Unauthorized("a valid bearer token is required for this route")


def base_url(request: web.Request) -> str:
    """The URL clients used to reach us, as the reference builds its resultUrls (Host header)."""
    return f"{request.scheme}://{request.host}"
