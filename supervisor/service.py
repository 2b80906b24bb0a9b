"""Serving the supervisor as a systemd ``Type=notify`` service, without a systemd library.

:func:`serve` runs an aiohttp application until SIGTERM or SIGINT and tells the service
manager what is happening through :class:`Notifier` (the sd_notify datagram protocol):

* ``READY=1`` once the app's start-up (its cleanup contexts) has finished **and** the HTTP
  site is listening, so ``systemctl start`` returns when the daemon really answers;
* ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` from a task on the event loop, so a blocked loop
  stops the pings and systemd restarts the daemon (only when ``WATCHDOG_USEC`` is set and
  ``WATCHDOG_PID``, if set, is this process);
* ``STOPPING=1`` as soon as a stop signal arrives, before the graceful shutdown runs.

Without ``NOTIFY_SOCKET`` (not started by systemd) every notification is a no-op. A failed
send is logged once and never stops the daemon: readiness is a courtesy, serving is the job.

``orchestrator/service.py`` is a near copy on purpose: the orchestrator may import only the
supervisor's protocol module (an import-linter contract), and this is too small to share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Mapping

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

_LOGGER = logging.getLogger(__name__)

# aiohttp's run_app default, kept so idle keep-alive connections behave as before.
_KEEPALIVE_TIMEOUT_S = 75.0


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; every method is safe to call anytime.

    ``env`` and ``pid`` default to the process's own; tests pass their own. The socket is
    non-blocking: if the manager's queue is full the message is dropped (and logged once)
    rather than stalling the event loop.
    """

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self._pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET", "")
        # '@name' is an abstract socket address: a leading NUL byte on the wire.
        self.address: str | None = ("\0" + raw[1:] if raw.startswith("@") else raw) or None
        self.watchdog_interval_s = _watchdog_interval(env, self._pid)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; True if sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as err:
            if not self._failed:
                self._failed = True
                _LOGGER.warning(
                    "cannot notify systemd at %r (%s); further failures are not logged",
                    self.address.replace("\0", "@"),
                    err,
                )
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, or None if the watchdog is not ours or not on."""
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid.strip() != str(pid):
        return None  # the watchdog is meant for another process (e.g. our parent)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request its HTTP parser refuses (a line or header too long, bad bytes)
    at ERROR with a traceback; a client's malformed bytes are not a fault of ours. Keep one
    INFO line naming the kind of refusal, never the bytes (they may hold a header's value)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "refused a malformed request (%s, HTTP %s)"
            record.args = (type(exc).__name__, exc.code)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


_MALFORMED = _MalformedRequests()


async def _ping_watchdog(notifier: Notifier, interval_s: float) -> None:
    """``WATCHDOG=1`` every ``interval_s`` until cancelled; runs on the loop it vouches for."""
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    status: str,
    notifier: Notifier | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM/SIGINT, then shut down gracefully.

    With ``ssl_context`` the port speaks HTTPS only (a plain HTTP client fails its handshake).

    The shutdown is aiohttp's: stop listening, let in-flight requests finish within
    ``shutdown_timeout_s``, then tear down the app's cleanup contexts (which bound their own
    work). A stop signal during start-up cancels the start-up. Errors while starting (e.g. the
    port is taken) propagate after whatever started has been cleaned up. Returns once
    everything is torn down.
    """
    notifier = Notifier() if notifier is None else notifier
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    watchdog: asyncio.Task[None] | None = None

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            _LOGGER.info("%s: already stopping", signum.name)
            return
        # Tell systemd first: the shutdown below may take up to the shutdown timeout. Pinging
        # ends here too (no WATCHDOG=1 after STOPPING=1): from now on TimeoutStopSec= bounds us.
        notifier.notify("STOPPING=1", f"STATUS=stopping ({signum.name})")
        if watchdog is not None:
            watchdog.cancel()
        _LOGGER.info("%s: stopping", signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED)  # idempotent: one instance
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=_KEEPALIVE_TIMEOUT_S,
    )
    try:
        if await _start(runner, host, port, stop, ssl_context):
            notifier.notify("READY=1", f"STATUS={status}")
            if notifier.enabled and notifier.watchdog_interval_s is not None:
                watchdog = asyncio.create_task(
                    _ping_watchdog(notifier, notifier.watchdog_interval_s), name="sd-watchdog"
                )
            await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()  # already, if a signal stopped us
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        notifier.close()


async def _start(
    runner: web.AppRunner,
    host: str,
    port: int,
    stop: asyncio.Event,
    ssl_context: ssl.SSLContext | None,
) -> bool:
    """Run the app's start-up and bind the site; False if a stop signal came first."""

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()

    starting = asyncio.create_task(start(), name="http-start")
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        starting.cancel()  # no-op once it is done
        await asyncio.wait({starting, stopping})
    if not starting.cancelled():
        starting.result()  # re-raises a start-up error
    return not stop.is_set()
