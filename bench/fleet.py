"""Helper processes for the orchestrator rows of the bench, all on 127.0.0.1 with mDNS off.

``python -m bench.fleet supervisors STATE_DIR COUNT READY_FILE`` serves ``COUNT`` real
supervisor applications (``supervisor.app.build_app``), one port each, in this one process
and event loop (a hundred supervisor processes would not fit a small machine), named
``fleet000``, ``fleet001``...; once every one listens it writes their ports as JSON to
``READY_FILE``. ``python -m bench.fleet orchestrator STATE_DIR PORT`` serves the real
orchestrator application (``orchestrator.app.build_app``) with the defaults of
``baton-orchestrator`` except a reconcile interval of an hour, so the reconciler does not
remove the bench's direct (baseline) deployments, which it does not know, mid-measurement.
Both run until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

RECONCILE_S = 3600.0


def name_of(i: int) -> str:
    return f"fleet{i:03d}"


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_supervisors(state_dir: Path, count: int, ready: Path) -> None:
    from supervisor.app import build_app  # noqa: PLC0415 - each mode imports only its side
    from supervisor.config import Settings  # noqa: PLC0415

    runners: list[web.AppRunner] = []
    try:
        ports: list[int] = []
        for i in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            settings = Settings(
                state_dir=state_dir / name_of(i),
                port=port,
                host="127.0.0.1",
                name=name_of(i),
                mdns_enabled=False,
            )
            runner = web.AppRunner(build_app(settings), access_log=None)
            runners.append(runner)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            ports.append(port)
        partial = ready.with_suffix(".part")
        partial.write_text(json.dumps(ports), encoding="utf-8")
        os.replace(partial, ready)
        await _until_signalled()
    finally:
        await asyncio.gather(*(r.cleanup() for r in runners), return_exceptions=True)


async def serve_orchestrator(state_dir: Path, port: int) -> None:
    from orchestrator.app import build_app  # noqa: PLC0415
    from orchestrator.config import Settings  # noqa: PLC0415

    settings = Settings(
        state_dir=state_dir,
        port=port,
        host="127.0.0.1",
        mdns_enabled=False,
        reconcile_interval_s=RECONCILE_S,
    )
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await _until_signalled()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if len(argv) == 4 and argv[0] == "supervisors":
        asyncio.run(serve_supervisors(Path(argv[1]), int(argv[2]), Path(argv[3])))
    elif len(argv) == 3 and argv[0] == "orchestrator":
        asyncio.run(serve_orchestrator(Path(argv[1]), int(argv[2])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
