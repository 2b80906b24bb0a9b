"""The bounded request history: one record per function call, with waiters for long-polls.

Request ids keep the reference's ``dep:module:function:<n>`` shape, but ``<n>`` is a random
token, so ids are unique across restarts and devices (the reference's per-process counter
made stale result URLs point at new results). Finished records beyond ``limit`` are evicted
oldest first, and ``on_evict`` lets the owner delete their files; pending records are never
evicted, so a waiter always gets its answer.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.protocol import HistoryEntry


@dataclass
class Record:
    entry: HistoryEntry
    workdir: Path | None = None
    output_files: dict[str, Path] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.done.is_set()


class History:
    """In-memory, bounded, ordered by creation."""

    def __init__(self, limit: int, on_evict: Callable[[Record], None] | None = None) -> None:
        self._limit = limit
        self._records: OrderedDict[str, Record] = OrderedDict()
        # A random nonce per process makes ids unique across restarts and devices; the counter
        # keeps them unique within the process without drawing randomness per call.
        self._nonce = secrets.token_hex(6)
        self._counter = 0
        self.on_evict = on_evict
        # Latest outputs per (module, file) and (deployment, module, file), for the reference's
        # fixed-path result routes.
        self.latest_outputs: dict[tuple[str, ...], Path] = {}

    def new_id(self, deployment: str, module: str, function: str) -> str:
        """``dep:module:function:<boot nonce><counter>``: unique across restarts, cheap."""
        self._counter += 1
        return f"{deployment}:{module}:{function}:{self._nonce}{self._counter:x}"

    def add(self, record: Record) -> None:
        self._records[record.entry.request_id] = record
        self._evict()

    def get(self, request_id: str) -> Record | None:
        return self._records.get(request_id)

    def __len__(self) -> int:
        return len(self._records)

    def entries(self) -> list[HistoryEntry]:
        return [r.entry for r in self._records.values()]

    def finish(self, record: Record) -> None:
        """Mark ``record`` final, wake its waiters and remember its outputs."""
        entry = record.entry
        for name, path in record.output_files.items():
            self.latest_outputs[(entry.module_name, name)] = path
            self.latest_outputs[(entry.deployment_id, entry.module_name, name)] = path
        record.done.set()
        self._evict()

    async def wait(self, record: Record, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``record`` to finish; True if it did."""
        if record.finished or seconds <= 0:
            return record.finished
        try:
            await asyncio.wait_for(record.done.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def drop_deployment(self, deployment_id: str) -> None:
        """Forget every finished record of a removed deployment."""
        for rid, record in list(self._records.items()):
            if record.entry.deployment_id == deployment_id and record.finished:
                del self._records[rid]
                self._evicted(record)

    def _evict(self) -> None:
        excess = len(self._records) - self._limit
        if excess <= 0:
            return
        # Oldest first; pending records are skipped, so usually only the first one is looked at.
        doomed: list[str] = []
        for rid, record in self._records.items():
            if record.finished:
                doomed.append(rid)
                if len(doomed) == excess:
                    break
        for rid in doomed:
            self._evicted(self._records.pop(rid))

    def _evicted(self, record: Record) -> None:
        if not record.output_files:
            stale = []
        else:
            paths = set(record.output_files.values())
            stale = [k for k, p in self.latest_outputs.items() if p in paths]
        for key in stale:
            del self.latest_outputs[key]
        if self.on_evict is not None:
            self.on_evict(record)
