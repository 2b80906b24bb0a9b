"""The execution gate of one deployment: executions vs. changes of what its devices run.

Pure asyncio, no I/O: :class:`orchestrator.deployments.Deployments` keeps one gate per
deployment, closes it before a revision (or its rollback) changes the devices and opens it
at the switch; ``POST /deployments/{id}/executions`` takes a slot with :meth:`enter`.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["ExecutionGate"]


class ExecutionGate:
    """Executions of one deployment vs. changes of what its devices run.

    Every device keeps one mini-manifest per deployment, so while a revision is pushed (or
    rolled back) the devices hold a mix of two revisions: a step whose device changed role
    forwards to the new next hop, or stops the chain early. An execution must never follow
    such a chain. The gate is writer-preferring: ``close`` makes new executions wait and
    waits (bounded) until the running ones are done; ``open`` (at the switch, or once the
    rollback ran) lets the waiting ones go, on the revision that is now active.
    """

    def __init__(self) -> None:
        self.running = 0
        self.changing = False
        self._opened = asyncio.Event()
        self._opened.set()
        self._drained = asyncio.Event()
        self._drained.set()

    async def enter(self, wait_s: float) -> bool:
        """Take an execution slot; False if the deployment kept changing for ``wait_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while self.changing:
                    await self._opened.wait()
        if self.changing:
            return False
        self.running += 1
        self._drained.clear()
        return True

    def leave(self) -> None:
        self.running -= 1
        if self.running <= 0:
            self.running = 0
            self._drained.set()

    async def close(self, drain_s: float) -> bool:
        """Start a change; True once no execution runs (False: some still did after
        ``drain_s``, which only happens past their own deadline)."""
        self.changing = True
        self._opened.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                await self._drained.wait()
        return self.running == 0

    def hold(self) -> None:
        """Closed from the start (a change resumed after a restart: nothing runs yet)."""
        self.changing = True
        self._opened.clear()

    def open(self) -> None:
        self.changing = False
        self._opened.set()
