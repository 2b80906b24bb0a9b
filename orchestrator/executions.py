"""Executions: call a deployment's first hop and follow the ``resultUrl`` chain to the end.

Following never busy-polls a Baton device: each history read long-polls (``?wait=``) until
that hop is final. A reference wasmiot supervisor has no long-poll, so its entries are polled
with a short, growing interval instead. Every wait is bounded by the execution's deadline;
a hop that fails, or a device that stops answering, ends the execution with an error naming
the device. Executions are kept in memory (bounded), not in the state file, which every
write rewrites.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from orchestrator.errors import BadRequest, NotFound, OrchestratorError, Unprocessable

LONG_POLL_S = 10.0
MAX_HOPS = 64
POLL_START_S = 0.05
POLL_MAX_S = 1.0
_URL = re.compile(r"https?://[^\s'\",)]+")


class Hop(msgspec.Struct):
    device: str | None
    url: str
    requestId: str | None = None
    ms: float = 0.0
    value: Any = None
    success: bool | None = None


class Execution(msgspec.Struct):
    id: str
    deployment: str
    status: str = "running"  # running | done | failed
    value: Any = None
    result: Any = None
    outputs: list[str] = []
    error: str | None = None
    trace: list[Hop] = []
    startedAt: float = 0.0
    ms: float = 0.0


class Executions:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        device_of: Callable[[str], tuple[str, int | None] | None],
        *,
        limit: int = 500,
    ) -> None:
        """``device_of(url)`` → (device name, api level) of the device serving ``url``."""
        self._session = session
        self._device_of = device_of
        self._done: OrderedDict[str, Execution] = OrderedDict()
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, execution_id: str) -> Execution:
        try:
            return self._done[execution_id]
        except KeyError:
            raise NotFound(f"no execution {execution_id!r}", field="execution") from None

    def start(
        self,
        deployment_id: str,
        first: Mapping[str, Any],
        args: Mapping[str, str],
        files: Mapping[str, bytes],
        *,
        deadline_s: float,
        on_done: Callable[[], None] | None = None,
    ) -> Execution:
        """Begin an execution in the background; ``first`` is the first hop's endpoint.
        ``on_done`` is called once it is over (finished, failed or cancelled)."""
        execution = self._new(deployment_id)
        task = asyncio.create_task(
            self._run(execution, first, args, files, deadline_s), name=f"execution {execution.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(lambda _: on_done())
        return execution

    async def run(
        self,
        deployment_id: str,
        first: Mapping[str, Any],
        args: Mapping[str, str],
        files: Mapping[str, bytes],
        *,
        deadline_s: float,
    ) -> Execution:
        """Run an execution to its end (or deadline) and return it."""
        execution = self._new(deployment_id)
        await self._run(execution, first, args, files, deadline_s)
        return execution

    def _new(self, deployment_id: str) -> Execution:
        execution = Execution(
            id=uuid.uuid4().hex[:16], deployment=deployment_id, startedAt=time.time()
        )
        self._remember(execution)
        return execution

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _remember(self, execution: Execution) -> None:
        self._done[execution.id] = execution
        while len(self._done) > self._limit:
            self._done.popitem(last=False)

    async def _run(
        self,
        execution: Execution,
        first: Mapping[str, Any],
        args: Mapping[str, str],
        files: Mapping[str, bytes],
        deadline_s: float,
    ) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_s):
                await self._follow(execution, first, args, files)
        except _Stop:
            pass  # the failure is already recorded
        except OrchestratorError as err:
            raise_failed(execution, err.message)
        except TimeoutError:
            execution.status = "failed"
            hop = execution.trace[-1] if execution.trace else None
            where = f" waiting on device {hop.device} ({hop.url})" if hop else ""
            execution.error = f"no result within {deadline_s:g} s{where}"
        finally:
            execution.ms = round((time.perf_counter() - started) * 1000, 3)

    async def _follow(
        self,
        execution: Execution,
        first: Mapping[str, Any],
        args: Mapping[str, str],
        files: Mapping[str, bytes],
    ) -> None:
        url = str(first["url"]).rstrip("/") + str(first["path"])
        method = "POST" if files else str(first.get("method", "get")).upper()
        form: aiohttp.FormData | None = None
        if files:
            form = aiohttp.FormData()
            for name, data in files.items():
                form.add_field(name, data, filename=name)
        body = await self._json(execution, url, method, params=dict(args), data=form)
        result_url = body.get("resultUrl") if isinstance(body, dict) else None
        if not isinstance(result_url, str):
            raise_failed(execution, f"the first hop {url} answered without a resultUrl: {body}")
            return
        for _ in range(MAX_HOPS):
            hop_started = time.perf_counter()
            device, api = self._device_of(result_url) or (None, None)
            hop = Hop(device=device, url=result_url)
            execution.trace.append(hop)
            entry = await self._entry(execution, result_url, api)
            hop.ms = round((time.perf_counter() - hop_started) * 1000, 3)
            hop.requestId = entry.get("request_id")
            hop.success = bool(entry.get("success"))
            hop.value = entry.get("value")
            if not entry.get("success"):
                reason = str(entry.get("result"))
                raise_failed(
                    execution,
                    f"hop on device {device or result_url} failed: {reason}"
                    + self._devices_named(reason, besides=device),
                )
                return
            result = entry.get("result")
            nxt = entry.get("next") or (
                result if isinstance(result, str) and result.startswith("http") else None
            )
            if nxt:
                result_url = str(nxt)
                continue
            execution.result = result
            execution.value = entry["value"] if "value" in entry else _reference_value(result)
            execution.outputs = list(entry.get("outputs") or [])
            execution.status = "done"
            return
        raise_failed(execution, f"the chain is longer than {MAX_HOPS} hops")

    def _devices_named(self, reason: str, besides: str | None) -> str:
        """`` (http://… is device X)`` for each known device a hop's reason names by URL:
        a hop that could not forward names its next hop by address only."""
        notes = []
        for url in dict.fromkeys(_URL.findall(reason)):
            device = self._device_of(url)
            if device is not None and device[0] != besides:
                notes.append(f"{urlsplit(url).netloc} is device {device[0]}")
        return f" ({'; '.join(notes)})" if notes else ""

    async def _entry(self, execution: Execution, url: str, api: int | None) -> dict[str, Any]:
        """The final history entry at ``url``: long-poll on Baton, growing polls otherwise."""
        delay = POLL_START_S
        while True:
            params = {"wait": f"{LONG_POLL_S:g}"} if api else None
            status, body = await self._get(execution, url, params)
            if (
                status in (200, 500)
                and isinstance(body, dict)
                and body.get("status", "done") != "pending"
            ):
                return body
            device = self._device_of(url)
            name = device[0] if device else urlsplit(url).netloc
            if status == 404 and api:
                # A Baton device records a call before it hands out its resultUrl, so it
                # does not know this one any more: it restarted. Asking again cannot help.
                raise_failed(
                    execution, f"device {name} no longer knows the call {url} (restarted?)"
                )
                raise _Stop
            if status not in (200, 202, 404, 500):
                raise_failed(execution, f"device {name} answered HTTP {status} for {url}")
                raise _Stop
            if not api:
                await asyncio.sleep(delay)  # the reference cannot hold a request open
                delay = min(delay * 2, POLL_MAX_S)

    async def _json(self, execution: Execution, url: str, method: str, **kwargs: Any) -> Any:
        try:
            async with self._session.request(
                method, url, timeout=aiohttp.ClientTimeout(total=LONG_POLL_S + 20), **kwargs
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    detail = body.get("result") if isinstance(body, dict) else body
                    raise Unprocessable(
                        f"the first hop refused the call: HTTP {resp.status} {detail}", detail=body
                    )
                return body
        except (aiohttp.ClientError, ValueError) as err:
            raise BadRequest(
                f"cannot reach the first hop {url}: {type(err).__name__} {err}"
            ) from err

    async def _get(
        self, execution: Execution, url: str, params: Mapping[str, str] | None
    ) -> tuple[int, Any]:
        try:
            async with self._session.get(
                url, params=params, timeout=aiohttp.ClientTimeout(total=LONG_POLL_S + 20)
            ) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, ValueError) as err:
            device = self._device_of(url)
            name = device[0] if device else urlsplit(url).netloc
            raise_failed(execution, f"device {name} stopped answering ({type(err).__name__})")
            raise _Stop from err


class _Stop(Exception):
    """Internal: the execution already holds its failure."""


def raise_failed(execution: Execution, message: str) -> None:
    execution.status = "failed"
    execution.error = message


def _reference_value(result: Any) -> Any:
    """The reference's final ``["<json>", null]`` or ``[null, [files]]`` as a value."""
    if isinstance(result, list) and len(result) == 2 and isinstance(result[0], str):
        with contextlib.suppress(ValueError):
            return json.loads(result[0])
    return result
