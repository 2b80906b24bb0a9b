"""Running function calls: validate, record, execute off-loop, forward along the chain.

Theory of operation. :meth:`Executions.start` does everything that can refuse a call with a
4xx *before* anything is recorded (unknown deployment/module/function, bad or missing
arguments, unexpected upload fields), then records a pending history entry and starts one
named task per call; the HTTP reply (``{"resultUrl"}``) does not wait for it. The task
prepares an isolated working directory when the function touches files (uploads, the module's
data files, outputs), runs the Wasm function on the runtime's thread pool under its limits,
and then either records the final value or forwards the value and output files to the next
hop and records that hop's ``resultUrl``. Every outcome, including a trapped guest or a dead
next hop, ends in a finished entry; nothing waits forever because every outbound call has a
timeout and every guest a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp

from supervisor.calls import coerce_args, decode_result, reference_result, returns_bytes
from supervisor.chain import ForwardRequest, build_forward
from supervisor.deployments import Deployments, Installed
from supervisor.errors import BadRequest, GuestError, NotFound, SupervisorError, Unavailable
from supervisor.history import History, Record
from supervisor.metrics import Metrics
from supervisor.protocol import Endpoint, HistoryEntry, check_name
from supervisor.runtime import NOT_INLINE, CallLimits, Runtime

_LOGGER = logging.getLogger(__name__)

LOG_BYTES = 1024 * 1024
"""What is kept of a call's stdout.log and stderr.log (diagnostics only, never served)."""


def _http_date() -> str:
    """The reference's HTTP-date timestamp, formatted once per second rather than per call."""
    now = int(time.time())
    if _DATE_CACHE[0] != now:
        _DATE_CACHE[:] = [now, formatdate(now, usegmt=True)]
    return str(_DATE_CACHE[1])


_DATE_CACHE: list[Any] = [0, ""]


@dataclass
class _Call:
    """One call in progress: what it runs with and how far it got."""

    record: Record
    dep: Installed
    args: list[Any]
    uploads: dict[str, bytes]
    base_url: str
    limits: CallLimits
    started: float = field(default_factory=time.perf_counter)
    ran: float | None = None
    executed: bool = False

    @property
    def result_type(self) -> str | None:
        entry = self.record.entry
        return self.dep.node.endpoints[entry.module_name][entry.function_name].result_type

    @property
    def next_hop(self) -> Endpoint | None:
        entry = self.record.entry
        return self.dep.node.next_hop(entry.module_name, entry.function_name)


class Executions:
    def __init__(
        self,
        deployments: Deployments,
        runtime: Runtime,
        history: History,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        default_timeout_ms: int,
        default_memory_bytes: int,
        outbound_timeout_s: float,
        max_result_bytes: int = 1024 * 1024,
        max_output_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._deployments = deployments
        self._runtime = runtime
        self._history = history
        self._session = session
        self._metrics = metrics
        self._default_timeout_ms = default_timeout_ms
        self._default_memory = default_memory_bytes
        self._outbound_timeout = outbound_timeout_s
        self._max_result = max_result_bytes
        self._max_output = max_output_bytes
        self._tasks: dict[asyncio.Task[None], Installed] = {}
        self._trash: deque[Path] = deque()
        self._closing = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def busy_blobs(self) -> set[str]:
        """Blobs of the deployments running calls started on (possibly replaced since)."""
        busy: set[str] = set()
        for dep in self._tasks.values():
            busy.update(dep.blobs.values())
            for files in dep.files.values():
                busy.update(files.values())
        return busy

    def discard_workdir(self, record: Record) -> None:
        """History eviction hook: the directory is deleted later, off the event loop."""
        if record.workdir is not None:
            self._trash.append(record.workdir)

    def start(
        self,
        *,
        deployment_id: str,
        module: str,
        function: str,
        method: str,
        query: dict[str, str],
        uploads: dict[str, bytes],
        base_url: str,
    ) -> Record:
        """Validate a call, record it as pending and start it; raise a 4xx error if invalid."""
        if self._closing:
            raise Unavailable("the supervisor is shutting down")
        dep = self._deployments.get(deployment_id)
        node = dep.node
        if module not in node.endpoints:
            raise NotFound(f"module {module} not found for this deployment", field="module")
        endpoint = node.endpoints[module].get(function)
        if endpoint is None:
            raise NotFound(f"function {function} not found in module {module}", field="function")
        mounts = node.mounts_for(module, function)
        expected = {m.path for m in mounts.execution}
        for name in uploads:
            try:
                check_name(name, name)
            except ValueError as err:
                raise BadRequest(f"unsafe upload field name {name!r}", field=name) from err
            if name not in expected:
                raise BadRequest(f"unexpected input file {name!r}", field=name)
        missing = sorted(expected - set(uploads))
        if missing:
            raise BadRequest(f"missing input file {missing[0]!r}", field=missing[0])
        sig = dep.modules[module].exports[function]
        args = coerce_args(node.params_for(module, function), sig.params, query)

        rid = self._history.new_id(deployment_id, module, function)
        needs_dir = bool(uploads or mounts.deployment or mounts.output or dep.files.get(module))
        workdir = self._deployments.requests_dir / deployment_id / rid if needs_dir else None
        entry = HistoryEntry(
            request_id=rid,
            deployment_id=deployment_id,
            module_name=module,
            function_name=function,
            method=method,
            request_args=dict(query),
            request_files={name: name for name in uploads},
            work_queued_at=_http_date(),
        )
        record = Record(entry, workdir=workdir)
        self._history.add(record)
        call = _Call(record, dep, args, uploads, base_url, self._limits(dep, module, function))
        if workdir is None and self._try_inline(call):
            return record
        task = asyncio.create_task(self._run(call), name=f"call {rid}")
        self._tasks[task] = dep
        task.add_done_callback(self._tasks.pop)
        return record

    def _limits(self, dep: Installed, module: str, function: str) -> CallLimits:
        limits = dep.node.limits_for(module, function)
        return CallLimits(
            timeout_s=(limits.timeoutMs or self._default_timeout_ms) / 1000,
            fuel=limits.fuel,
            memory_bytes=limits.memoryBytes or self._default_memory,
            result_bytes=self._max_result,
        )

    def _try_inline(self, call: _Call) -> bool:
        """Finish a small pure call right away, without a task; False if it needs one."""
        entry = call.record.entry
        try:
            raw = self._runtime.call_inline(
                call.dep.blobs[entry.module_name],
                entry.function_name,
                call.args,
                limits=call.limits,
                returns_bytes=returns_bytes(call.result_type),
            )
        except GuestError as err:
            self._failed(call, err)
            self._finish(call)
            return True
        if raw is NOT_INLINE:
            return False
        call.ran = time.perf_counter()
        entry.value = decode_result(raw, call.result_type)  # type: ignore[arg-type]
        call.executed = True
        if call.next_hop is not None:
            return False  # forwarding needs a task
        entry.result = reference_result(entry.value, [])
        entry.success, entry.status = True, "done"
        self._finish(call)
        return True

    async def _run(self, call: _Call) -> None:
        record, dep = call.record, call.dep
        entry = record.entry
        module, function = entry.module_name, entry.function_name
        try:
            if not call.executed:
                if record.workdir is not None:
                    await asyncio.to_thread(
                        self._prepare, record.workdir, dep, module, call.uploads
                    )
                try:
                    raw = await self._runtime.call(
                        dep.blobs[module],
                        function,
                        call.args,
                        workdir=record.workdir,
                        limits=call.limits,
                        returns_bytes=returns_bytes(call.result_type),
                    )
                finally:
                    if record.workdir is not None:
                        await asyncio.to_thread(self._trim_logs, record.workdir)
                call.ran = time.perf_counter()
                entry.value = decode_result(raw, call.result_type)
            outputs = self._collect_outputs(record, dep)
            entry.outputs = [
                f"{call.base_url}/module_results/{entry.deployment_id}/{module}/{entry.request_id}/{name}"
                for name in outputs
            ]
            if call.next_hop is None:
                entry.result = reference_result(entry.value, list(outputs))
            else:
                entry.next = await self._forward(build_forward(call.next_hop, entry.value, outputs))
                entry.result = entry.next
            entry.success, entry.status = True, "done"
        except SupervisorError as err:
            if isinstance(err, GuestError) and err.kind == "output" and record.workdir:
                # Nothing of a call refused for its output is served: free the disk now,
                # not when the history entry is evicted.
                await asyncio.to_thread(shutil.rmtree, record.workdir, True)
            self._failed(call, err)
        except Exception as err:  # a bug must fail this call, never the daemon
            _LOGGER.exception("call %s failed unexpectedly", entry.request_id)
            self._failed(call, SupervisorError(f"internal error: {type(err).__name__}"))
        finally:
            if entry.status == "pending":  # cancelled at shutdown
                self._failed(
                    call, SupervisorError("the call was cancelled: the supervisor stopped")
                )
            self._finish(call)

    def _failed(self, call: _Call, err: SupervisorError) -> None:
        entry = call.record.entry
        kind = err.kind if isinstance(err, GuestError) else None
        if kind is not None:
            self._metrics.trap(entry.deployment_id, entry.module_name, entry.function_name)
        self._fail(entry, err, kind=kind)

    def _finish(self, call: _Call) -> None:
        entry = call.record.entry
        done = time.perf_counter()
        ran = call.ran if call.ran is not None else done
        entry.timings = {
            "runMs": round((ran - call.started) * 1000, 3),
            "totalMs": round((done - call.started) * 1000, 3),
        }
        self._metrics.call(
            entry.deployment_id,
            entry.module_name,
            entry.function_name,
            done - call.started,
            entry.success,
        )
        self._history.finish(call.record)

    @staticmethod
    def _fail(entry: HistoryEntry, err: SupervisorError, kind: str | None = None) -> None:
        entry.success, entry.status = False, "failed"
        entry.result = err.message
        entry.error = {"type": err.type, "kind": kind, "detail": err.message}

    def _prepare(
        self, workdir: Path, dep: Installed, module: str, uploads: dict[str, bytes]
    ) -> None:
        self._empty_trash()
        workdir.mkdir(parents=True, exist_ok=True)
        for mount, sha in dep.files.get(module, {}).items():
            # A copy, not a link: the guest's directory is writable and must not alter the original.
            shutil.copyfile(self._deployments.blob_path(sha), workdir / mount)
        for name, data in uploads.items():
            (workdir / name).write_bytes(data)

    def _collect_outputs(self, record: Record, dep: Installed) -> dict[str, Path]:
        mounts = dep.node.mounts_for(record.entry.module_name, record.entry.function_name)
        if record.workdir is None:
            return {}
        outputs: dict[str, Path] = {}
        total = 0
        for mount in mounts.output:
            path = record.workdir / mount.path
            if not path.is_file():
                raise GuestError(
                    "output", f"the function did not write its output file {mount.path!r}"
                )
            # Output files are served, and sent to the next hop in one request body (read
            # into memory): the device's output cap keeps both bounded.
            total += path.stat().st_size
            if total > self._max_output:
                raise GuestError(
                    "output",
                    f"the function's output files reach {total} bytes at {mount.path!r}, "
                    f"more than this device's limit of {self._max_output} bytes per call",
                )
            outputs[mount.path] = path
        record.output_files = outputs
        return outputs

    @staticmethod
    def _trim_logs(workdir: Path) -> None:
        """Cut the guest's stdout/stderr files to their first :data:`LOG_BYTES`: nothing
        serves them, and a chatty guest must not keep gigabytes on the device until its
        history entry is evicted."""
        for name in ("stdout.log", "stderr.log"):
            path = workdir / name
            try:
                if path.stat().st_size > LOG_BYTES:
                    os.truncate(path, LOG_BYTES)
            except OSError:
                continue  # never written (or already gone): nothing to trim

    async def _forward(self, fwd: ForwardRequest) -> str:
        """Hand the result to the next hop; return its resultUrl."""
        data: aiohttp.FormData | None = None
        if fwd.files:
            data = aiohttp.FormData()
            for name, path in fwd.files:
                content = await asyncio.to_thread(path.read_bytes)
                data.add_field(
                    name, content, filename=name, content_type="application/octet-stream"
                )
        try:
            async with self._session.request(
                fwd.method,
                fwd.url,
                params=fwd.query,
                data=data,
                timeout=aiohttp.ClientTimeout(total=self._outbound_timeout),
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 300:
                    detail = body.get("result") if isinstance(body, dict) else body
                    raise SupervisorError(
                        f"next hop {fwd.url} answered HTTP {resp.status}: {detail}"
                    )
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise SupervisorError(
                f"forwarding to next hop {fwd.url} failed: {type(err).__name__} {err}".strip()
            ) from err
        if not isinstance(body, dict) or not isinstance(body.get("resultUrl"), str):
            raise SupervisorError(f"next hop {fwd.url} replied without a resultUrl")
        return str(body["resultUrl"])

    def _empty_trash(self) -> None:
        while self._trash:
            shutil.rmtree(self._trash.popleft(), ignore_errors=True)

    async def shutdown(self, timeout_s: float) -> None:
        """Refuse new calls, let in-flight calls finish within ``timeout_s``, fail the rest."""
        self._closing = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.to_thread(self._empty_trash)
