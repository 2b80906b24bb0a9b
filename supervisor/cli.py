"""``baton-supervisor``: parse settings, set up logging, serve until SIGTERM/SIGINT.

Exit status: 0 after a graceful stop, 2 for unusable settings (the message on stderr).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections.abc import Sequence

from supervisor.app import build_app
from supervisor.config import ConfigError, settings_from_environment
from supervisor.drivers import build_drivers
from supervisor.service import serve
from supervisor.tls import TlsError, server_context


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from_environment(sys.argv[1:] if argv is None else argv)
        # Fail before serving, with the profile named, rather than in the middle of start-up.
        build_drivers(settings.profile.drivers, settings.profile_dir)
        ssl_context: ssl.SSLContext | None = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            ssl_context = server_context(settings.tls_cert, settings.tls_key)
    except (ConfigError, TlsError, ValueError) as err:
        print(f"baton-supervisor: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # SIGTERM starts a graceful shutdown bounded by shutdown_timeout; the supervisor's own
    # cleanup (in-flight calls, mDNS goodbye, state close) runs inside it. Under systemd,
    # serve() also reports readiness, pings the watchdog and announces the stop.
    asyncio.run(
        serve(
            build_app(settings),
            host=settings.host,
            port=settings.port,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            status=f"serving {settings.name} on {settings.host}:{settings.port}"
            + (" (https)" if ssl_context is not None else ""),
            ssl_context=ssl_context,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
