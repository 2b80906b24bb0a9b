"""Waiting for device-registry changes through its listeners, with deadlines, not sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from orchestrator.devices import Device, DeviceRegistry


class Changes:
    """Waits on registry listener calls instead of sleeping."""

    def __init__(self, registry: DeviceRegistry) -> None:
        self.seen: list[tuple[str, str]] = []
        self._event = asyncio.Event()
        registry.on_change.append(self._on_change)

    def _on_change(self, device: Device, kind: str) -> None:
        self.seen.append((device.id, kind))
        self._event.set()

    async def until(self, pred: Callable[[], bool], within_s: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while not pred():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {within_s} s waiting for {what}")
            self._event.clear()
            if pred():
                return
            try:
                await asyncio.wait_for(self._event.wait(), remaining)
            except TimeoutError:
                continue
