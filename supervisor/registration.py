"""Direct HTTP registration with a known orchestrator (no multicast needed).

As the reference supervisor does with ``WASMIOT_ORCHESTRATOR_URL``: POST the service record
to ``<orchestrator>/file/device/discovery/register``, and register again when the
orchestrator seems to have forgotten us, i.e. when it has not health-checked us for
``renewal_s`` (it checks known devices periodically, so silence means we dropped out).

Differences from the reference, on purpose:

- failures are retried with capped exponential backoff instead of being dropped;
- a health check counts whoever sends it: the reference compared ``X-Forwarded-For`` with
  the orchestrator's host, which any client can spoof; the caller decides who counts
  before calling :meth:`Registrar.note_health_check`;
- the renewal timer is an event wait, not a 10 s polling thread, and renewal does not tear
  down mDNS.

Logging: one ERROR when registration starts failing, one INFO when it works again, DEBUG
for each retry. URLs are logged without credentials or query strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

__all__ = ["REGISTER_PATH", "Registrar"]

log = logging.getLogger(__name__)

REGISTER_PATH = "/file/device/discovery/register"


def _redact(url: str) -> str:
    """``url`` without userinfo, query or fragment: safe to log (tokens live there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port is not None else host
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_MAX_REASON_BYTES = 4096


async def _head(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body (an error body is small; a huge one is cut)."""
    data = bytearray()
    async for chunk in resp.content.iter_chunked(limit):
        data += chunk
        if len(data) >= limit:
            break
    return bytes(data[:limit])


def _problem_result(raw: bytes) -> str | None:
    """The ``result`` of a problem body (``{"status": "error", "result": ...}``) on one line,
    shortened: it goes into a log line."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, str):
        return None
    return " ".join(result.split())[:500] or None


class Registrar:
    """Keeps this device registered with one orchestrator.

    ``body`` is the reference's registration body (``name``, ``port``, ``addresses``,
    ``host``, ``properties``), sent as JSON unchanged. :meth:`start` spawns the background
    task; :meth:`stop` cancels it. The ``session`` belongs to the caller and is not closed.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        orchestrator_url: str,
        body: dict[str, Any],
        renewal_s: float = 900.0,
        retry_s: float = 5.0,
        max_retry_s: float = 60.0,
        timeout_s: float = 5.0,
        token: str | None = None,
    ) -> None:
        self._session = session
        # A fleet shares one bearer token: the orchestrator sends it to us on /deploy and
        # asks for it on its own mutating routes, registration included.
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._url = orchestrator_url
        self._body = body
        self._renewal_s = renewal_s
        self._retry_s = retry_s
        self._max_retry_s = max(max_retry_s, retry_s)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Set by note_health_check() and set_url(); the task clears it before each wait.
        self._activity = asyncio.Event()
        self._url_changed = False
        self._registered = False
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def registered(self) -> bool:
        """True once the current URL accepted a registration (stays True across renewals
        until one fails; False again after :meth:`set_url` until the new URL accepts)."""
        return self._registered

    @property
    def last_error(self) -> str | None:
        """Why the latest attempt failed, or None if it succeeded (or none was made yet)."""
        return self._last_error

    @property
    def url(self) -> str:
        """The orchestrator base URL currently registered with."""
        return self._url

    def note_health_check(self) -> None:
        """The orchestrator just checked our health: restart the renewal timer."""
        self._activity.set()

    def set_url(self, url: str) -> None:
        """Switch to another orchestrator and register with it promptly (even mid-backoff)."""
        self._url = url
        self._url_changed = True
        self._registered = False
        self._activity.set()

    async def start(self) -> None:
        """Start the registration task (no-op if it is running). Returns immediately."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._run(), name="orchestrator-registration")
        self._task.add_done_callback(self._task_done)

    async def stop(self) -> None:
        """Cancel the registration task and wait for it. Safe to call repeatedly."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @staticmethod
    def _task_done(task: asyncio.Task[None]) -> None:
        # The loop only ends by cancellation; anything else is a bug worth a traceback.
        if not task.cancelled() and task.exception() is not None:
            log.error("registration task died", exc_info=task.exception())

    async def _run(self) -> None:
        delay = self._retry_s
        failing = False
        while True:
            if self._url_changed:
                # A new orchestrator: fresh backoff, and its first failure is logged as such.
                # (A set_url() during the POST lands here too: that result was for the old URL.)
                delay, failing = self._retry_s, False
                self._url_changed = False
            url = self._url
            error = await self._attempt(url)
            if self._url_changed:
                continue
            self._last_error = error
            if error is None:
                if failing or not self._registered:
                    log.info("registered with orchestrator %s", _redact(url))
                else:
                    log.debug("renewed registration with %s", _redact(url))
                self._registered, failing, delay = True, False, self._retry_s
                await self._wait_renewal_due()
                continue
            self._registered = False
            if not failing:
                log.error(
                    "cannot register with orchestrator %s: %s; retrying with backoff",
                    _redact(url),
                    error,
                )
                failing = True
            else:
                log.debug("registration attempt failed: %s; next try in %.2f s", error, delay)
            await self._sleep_unless_url_changes(delay)
            delay = min(delay * 2, self._max_retry_s)

    async def _attempt(self, url: str) -> str | None:
        """One POST; returns None on a 2xx answer, else a short, credential-free reason."""
        target = url.rstrip("/") + REGISTER_PATH
        try:
            async with self._session.post(
                target, json=self._body, headers=self._headers, timeout=self._timeout
            ) as resp:
                if 200 <= resp.status < 300:
                    return None
                status = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
                why = _problem_result(await _head(resp, _MAX_REASON_BYTES))
                # The orchestrator says why (e.g. it could not verify our certificate).
                return f"{status}: {why}" if why else status
        except TimeoutError:
            return f"no answer within {self._timeout.total} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # aiohttp messages may quote the whole URL (userinfo, ?token=...): redact it.
            return f"{type(exc).__name__}: {exc}".replace(target, _redact(target)).replace(
                url, _redact(url)
            )

    async def _wait_renewal_due(self) -> None:
        """Return after ``renewal_s`` without a health check, or as soon as the URL changes."""
        while not self._url_changed:
            # No await between the check above and clear(): nothing can be missed.
            self._activity.clear()
            try:
                async with asyncio.timeout(self._renewal_s):
                    await self._activity.wait()
            except TimeoutError:
                return
            # Woken by a health check (timer restarts) or set_url (loop condition ends it).

    async def _sleep_unless_url_changes(self, delay: float) -> None:
        """Back off for ``delay`` seconds; health checks do not shorten it, set_url does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not self._url_changed:
            self._activity.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._activity.wait()
            except TimeoutError:
                return
