"""``baton-supervisor``: parse settings, set up logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from supervisor.app import build_app
from supervisor.config import ConfigError, settings_from_environment
from supervisor.drivers import build_drivers


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from_environment(sys.argv[1:] if argv is None else argv)
        # Fail before serving, with the profile named, rather than in the middle of start-up.
        build_drivers(settings.profile.drivers, settings.profile_dir)
    except (ConfigError, ValueError) as err:
        print(f"baton-supervisor: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiohttp turns SIGTERM into a graceful shutdown bounded by shutdown_timeout; the
    # supervisor's own cleanup (in-flight calls, mDNS goodbye, state close) runs inside it.
    web.run_app(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.shutdown_timeout_s,
        handle_signals=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
