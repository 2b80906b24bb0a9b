"""Self-description routes: OpenAPI document and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web

from supervisor.openapi import build_openapi
from supervisor.routes.context import services

routes = web.RouteTableDef()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    svc = services(request)
    text = svc.metrics.render(len(svc.deployments.all()), svc.executions.in_flight)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
