"""The orchestrator's state file (tinydb behind an atomic storage) and its blob folder.

Same discipline as the supervisor's store (the orchestrator may not import it: the only
shared code is the wire protocol): every write replaces the file atomically (temporary file,
fsync, ``os.replace``), one writer thread serialises access and keeps fsync off the event
loop. Tables: ``devices``, ``modules``, ``deployments`` (one document per deployment, with its
revisions, jobs and events). Execution traces are *not* kept here: every write rewrites the
whole file, so high-rate data lives in memory (bounded) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tinydb import Query, TinyDB
from tinydb.storages import Storage

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _AtomicJSONStorage(Storage):
    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def read(self) -> dict[str, Any] | None:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return json.loads(text) if text else None

    def write(self, data: dict[str, Any]) -> None:
        atomic_write(self._path, json.dumps(data, separators=(",", ":")).encode())

    def close(self) -> None:
        pass


class Store:
    """Documents by table and key; every method runs on the one writer thread."""

    TABLES = ("devices", "modules", "deployments")

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        for stale in state_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self.blobs = Blobs(state_dir / "blobs")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="orchestrator-store")
        self._db = TinyDB(str(state_dir / "state.json"), storage=_AtomicJSONStorage)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def all(self, table: str) -> list[dict[str, Any]]:
        return await self._run(lambda: [dict(d) for d in self._db.table(table).all()])

    async def put(self, table: str, key: str, doc: dict[str, Any]) -> None:
        """Insert or replace the document whose ``key`` field equals ``doc[key]``."""
        await self._run(lambda: self._db.table(table).upsert(doc, Query()[key] == doc[key]))

    async def delete(self, table: str, key: str, value: str) -> None:
        await self._run(lambda: self._db.table(table).remove(Query()[key] == value))

    async def close(self) -> None:
        await self._run(self._db.close)
        self._pool.shutdown(wait=True)


class Blobs:
    """Content-addressed files: ``<dir>/<sha256 hex>``, written atomically."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self._dir / digest

    async def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if not path.exists():
            await asyncio.to_thread(atomic_write, path, data)
        return digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()
