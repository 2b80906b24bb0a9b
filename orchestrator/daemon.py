"""``baton-orchestrator``: parse settings, set up logging, serve until SIGTERM/SIGINT.

Exit status: 0 after a graceful stop, 2 for unusable settings or a start-up that cannot go on
(the state was written by a newer orchestrator, a built-in app is refused): one line on
stderr naming the cause.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections.abc import Sequence

from orchestrator.app import build_app
from orchestrator.bootstrap import BootstrapError
from orchestrator.config import ConfigError, settings_from_environment
from orchestrator.service import serve
from orchestrator.tls import TlsError, server_context


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from_environment(sys.argv[1:] if argv is None else argv)
        ssl_context: ssl.SSLContext | None = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            ssl_context = server_context(settings.tls_cert, settings.tls_key)
    except (ConfigError, TlsError) as err:
        print(f"baton-orchestrator: {err}", file=sys.stderr)  # noqa: T201
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # SIGTERM starts a graceful shutdown bounded by shutdown_timeout. Under systemd, serve()
    # also reports readiness, pings the watchdog and announces the stop.
    try:
        asyncio.run(
            serve(
                build_app(settings),
                host=settings.host,
                port=settings.port,
                shutdown_timeout_s=settings.shutdown_timeout_s,
                status=f"serving on {settings.host}:{settings.port}"
                + (" (https)" if ssl_context is not None else ""),
                ssl_context=ssl_context,
            )
        )
    except BootstrapError as err:
        # Start-up stopped before anything was served (see orchestrator.bootstrap).
        logging.getLogger("orchestrator").error("start-up failed: %s", err)
        return 2
    return 0
