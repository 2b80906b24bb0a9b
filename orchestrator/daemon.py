"""``baton-orchestrator``: parse settings, set up logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from orchestrator.app import build_app
from orchestrator.config import ConfigError, settings_from_environment


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from_environment(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"baton-orchestrator: {err}", file=sys.stderr)  # noqa: T201
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    web.run_app(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
    return 0
