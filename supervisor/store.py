"""Crash-safe persistence of the supervisor's state (tinydb behind an atomic storage).

tinydb's own JSONStorage rewrites its file in place, so a power cut or SIGKILL mid-write can
leave a truncated file. :class:`AtomicJSONStorage` writes a temporary file, fsyncs it and
``os.replace``-s it over the old one, so the file on disk is always either the previous or the
next complete state. tinydb is neither thread-safe nor async: every access goes through one
single-thread executor, which both serialises writers and keeps fsync off the event loop.

Documents:

* table ``device``: one document ``{"id": ..., "orchestratorUrl": ...}``
* table ``deployments``: ``{"id", "digest", "node" (the mini-manifest as received),
  "blobs": {module: sha256}, "files": {module: {mount: sha256}}, "installedAt"}``
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from supervisor.atomic import atomic_write, remove_stale_temporaries

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


class AtomicJSONStorage(Storage):
    """tinydb storage that replaces its file atomically on every write."""

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


class StateStore:
    """The supervisor's state file. Every method is a coroutine run on one writer thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        self._path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="state-store")
        self._db = self._open(path)
        self._device = self._db.table("device")
        self._deployments = self._db.table("deployments")

    @staticmethod
    def _open(path: Path) -> TinyDB:
        try:
            db = TinyDB(str(path), storage=AtomicJSONStorage)
            db.tables()  # forces a read: an unreadable file fails here, not later
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            # Atomic writes make this unreachable short of disk corruption; keep the evidence.
            broken = path.with_suffix(".corrupt")
            _LOGGER.error(
                "state file %s is unreadable; moved to %s and starting empty", path, broken
            )
            os.replace(path, broken)
            db = TinyDB(str(path), storage=AtomicJSONStorage)
        return db

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def device(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            docs = self._device.all()
            return dict(docs[0]) if docs else {}

        return await self._run(read)

    async def update_device(self, fields: dict[str, Any]) -> None:
        def write() -> None:
            if self._device.all():
                self._device.update(fields)
            else:
                self._device.insert(fields)

        await self._run(write)

    async def deployments(self) -> list[dict[str, Any]]:
        return await self._run(lambda: [dict(d) for d in self._deployments.all()])

    async def put_deployment(self, doc: dict[str, Any]) -> None:
        """Insert or replace the deployment ``doc["id"]`` in one atomic write."""
        await self._run(lambda: self._deployments.upsert(doc, Query().id == doc["id"]))

    async def remove_deployment(self, deployment_id: str) -> None:
        await self._run(lambda: self._deployments.remove(Query().id == deployment_id))

    async def close(self) -> None:
        await self._run(self._db.close)
        self._pool.shutdown(wait=True)
