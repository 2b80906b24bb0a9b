"""The baseline server: bare aiohttp answering the supervisor's call and result requests.

Run as ``python -m bench.bare PORT``; it serves 127.0.0.1 only.
"""

from __future__ import annotations

import sys

from aiohttp import web

RID = "bench:fibo:fibo:0"
ENTRY = {"request_id": RID, "status": "done", "success": True, "result": ["10946", None]}


async def call(request: web.Request) -> web.Response:
    return web.json_response({"resultUrl": f"http://{request.host}/request-history/{RID}"})


async def entry(request: web.Request) -> web.Response:
    return web.json_response(ENTRY)


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/health", entry)
    app.router.add_get("/{deployment}/modules/{module}/{function}", call)
    app.router.add_get("/request-history/{request_id}", entry)
    return app


if __name__ == "__main__":
    web.run_app(build_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
