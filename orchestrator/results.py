"""The result store: values built-in steps (``datalist.push``) keep, per deployment.

Theory of operation. One JSON-lines file per deployment id, ``<dir>/<deployment>.jsonl``,
one entry per line: ``{"seq", "value", "at", "deployment", "partition", "requestId"}``.
``seq`` counts up per deployment from 1 (it restarts after :meth:`ResultStore.clear`).
Appends go through one writer thread (off the event loop, never two writes at once) and are
fsynced before they are acknowledged. Each file is bounded: when it holds more than twice
:attr:`ResultStore.keep` entries it is rewritten atomically with the newest ``keep``, so a
file never exceeds ``2 * keep`` lines and the rewrite cost is amortised over ``keep`` appends.

Crash safety: a crash mid-append can leave a torn last line. Readers skip any line that is
not a whole JSON object, and the next append first cuts the file back to its last complete
line, so a torn line never glues itself to a new one.

Results outlive their deployment: removing a deployment leaves its file (results are data
the user wanted kept); ``DELETE /results/{deployment}`` (:meth:`ResultStore.clear`) drops it.
Not in the tinydb state file on purpose: every state write rewrites that whole file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from orchestrator.store import atomic_write

__all__ = ["DEFAULT_KEEP", "ResultStore"]

DEFAULT_KEEP = 10_000
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SUFFIX = ".jsonl"
T = TypeVar("T")


@dataclass
class _File:
    lines: int  # complete entries in the file
    last_seq: int


class ResultStore:
    """Per-deployment result files in ``directory``; every file operation runs on one thread."""

    def __init__(self, directory: Path, *, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self._dir = directory
        self.keep = keep
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="orchestrator-results")
        self._files: dict[str, _File] = {}  # only touched on the writer thread

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _path(self, deployment: str) -> Path:
        if not _KEY.match(deployment):
            raise ValueError(f"not a deployment id: {deployment[:80]!r}")
        return self._dir / f"{deployment}{_SUFFIX}"

    # --- public API (event loop) ---------------------------------------------------------

    async def append(
        self, deployment: str, value: Any, *, request_id: str, partition: int = 0, at: float
    ) -> dict[str, Any]:
        """Store ``value`` for ``deployment``; returns the entry once it is on disk."""
        path = self._path(deployment)
        entry = {
            "seq": 0,  # numbered on the writer thread
            "value": value,
            "at": at,
            "deployment": deployment,
            "partition": partition,
            "requestId": request_id,
        }
        return await self._run(lambda: self._append(path, entry))

    async def read(
        self, deployment: str, *, limit: int = 100, after: int | None = None
    ) -> list[dict[str, Any]]:
        """Entries of ``deployment``, oldest first (newest last).

        Without ``after``: the newest ``limit`` entries. With ``after``: the first ``limit``
        entries whose ``seq`` is greater (so a reader pages forward without gaps).
        """
        path = self._path(deployment)
        entries = await self._run(lambda: _read_entries(path))
        if after is not None:
            return [e for e in entries if e["seq"] > after][:limit]
        return entries[-limit:] if limit > 0 else []

    async def counts(self) -> dict[str, int]:
        """Deployment id → number of entries stored, for every deployment with a file."""
        return await self._run(self._counts)

    def has(self, deployment: str) -> bool:
        try:
            return self._path(deployment).is_file()
        except ValueError:
            return False

    async def clear(self, deployment: str) -> int:
        """Drop every entry of ``deployment``; returns how many there were."""
        path = self._path(deployment)
        return await self._run(lambda: self._clear(path, deployment))

    async def close(self) -> None:
        await self._run(lambda: None)
        self._pool.shutdown(wait=True)

    # --- the writer thread ---------------------------------------------------------------

    def _state(self, path: Path, deployment: str) -> _File:
        state = self._files.get(deployment)
        if state is None:
            _repair(path)
            entries = _read_entries(path)
            state = _File(len(entries), entries[-1]["seq"] if entries else 0)
            self._files[deployment] = state
        return state

    def _append(self, path: Path, entry: dict[str, Any]) -> dict[str, Any]:
        self._dir.mkdir(parents=True, exist_ok=True)
        state = self._state(path, entry["deployment"])
        entry["seq"] = state.last_seq + 1
        line = msgspec.json.encode(entry) + b"\n"
        with path.open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        state.last_seq += 1
        state.lines += 1
        if state.lines > 2 * self.keep:
            newest = _read_entries(path)[-self.keep :]
            atomic_write(path, b"".join(msgspec.json.encode(e) + b"\n" for e in newest))
            state.lines = len(newest)
        return entry

    def _counts(self) -> dict[str, int]:
        if not self._dir.is_dir():
            return {}
        counts: dict[str, int] = {}
        for path in sorted(self._dir.glob(f"*{_SUFFIX}")):
            deployment = path.name.removesuffix(_SUFFIX)
            if _KEY.match(deployment):
                counts[deployment] = self._state(path, deployment).lines
        return counts

    def _clear(self, path: Path, deployment: str) -> int:
        count = self._state(path, deployment).lines
        path.unlink(missing_ok=True)
        self._files.pop(deployment, None)
        return count


def _read_entries(path: Path) -> list[dict[str, Any]]:
    """Every whole entry of a results file; torn or foreign lines are skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    entries: list[dict[str, Any]] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        with contextlib.suppress(msgspec.DecodeError, RecursionError):
            entry = msgspec.json.decode(line)
            if isinstance(entry, dict) and isinstance(entry.get("seq"), int):
                entries.append(entry)
    return entries


def _repair(path: Path) -> None:
    """Cut a torn last line (a crash mid-append) so the next append starts a fresh line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1  # 0 when the only line is torn
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
