"""What the route handlers share: the services the composition root wires together."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.deployments import Deployments
    from supervisor.drivers import HostDrivers
    from supervisor.executions import Executions
    from supervisor.history import History
    from supervisor.metrics import Metrics
    from supervisor.platform import CpuSampler
    from supervisor.registration import Registrar
    from supervisor.store import StateStore


@dataclass
class Services:
    settings: Settings
    device_id: str
    store: StateStore
    drivers: HostDrivers
    deployments: Deployments
    executions: Executions
    history: History
    metrics: Metrics
    cpu: CpuSampler
    session: aiohttp.ClientSession
    registrar: Registrar | None = None
    orchestrator_url: str | None = None
    started: float = field(default_factory=time.monotonic)
    description_cache: tuple[float, dict[str, Any]] | None = None


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
