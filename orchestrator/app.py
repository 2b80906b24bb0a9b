"""Composition root of the orchestrator: builds the application and owns its lifecycle.

Start-up: state (devices, modules, deployments restored) → HTTP client → discovery (mDNS
browse) and health monitor → deployments resume any revision a crash interrupted. Shutdown
runs in reverse. The problem middleware is the one place errors become HTTP bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp import web

from orchestrator import routes_apps, routes_core
from orchestrator.app_deploy import AppDeployer
from orchestrator.apps import AppRegistry
from orchestrator.bootstrap import bootstrap, init_state
from orchestrator.config import Settings
from orchestrator.core_device import CoreDevice, RoutingClient, core_device
from orchestrator.deployments import Deployments
from orchestrator.devices import Device, DeviceRegistry
from orchestrator.discovery import Discovery
from orchestrator.environments import EnvironmentRegistry
from orchestrator.errors import NotFound, OrchestratorError, PayloadTooLarge
from orchestrator.executions import Executions
from orchestrator.modules import ModuleRegistry
from orchestrator.monitor import HealthMonitor
from orchestrator.reconciler import Reconciler
from orchestrator.results import ResultStore
from orchestrator.routes import CONTEXT, Context, reply, routes
from orchestrator.store import Store
from orchestrator.tls import client_context

_LOGGER = logging.getLogger(__name__)
_ROUTE_MODULES = (routes_apps, routes_core)  # imported for their registrations on ``routes``
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problem(request: web.Request, err: OrchestratorError) -> web.Response:
    body = {"status": "error", "result": err.message, "type": err.type}
    if err.field is not None:
        body["field"] = err.field
    if err.detail is not None:
        body["detail"] = err.detail
    return reply(request, body, status=err.status)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    declared = request.content_length
    if declared is not None and declared > request.client_max_size:
        # Refused before a byte of it is read; aiohttp then discards the rest unbuffered.
        limit = request.client_max_size
        return _problem(request, PayloadTooLarge(f"request body is larger than {limit} bytes"))
    try:
        return await handler(request)
    except OrchestratorError as err:
        return _problem(request, err)
    except web.HTTPRequestEntityTooLarge:
        return _problem(request, PayloadTooLarge("request body is too large"))
    except web.HTTPNotFound:
        return _problem(request, NotFound(f"no route for {request.path}"))
    except web.HTTPMethodNotAllowed as err:
        failure = OrchestratorError(f"method {request.method} not allowed on {request.path}")
        failure.status, failure.type = err.status, "method-not-allowed"
        return _problem(request, failure)
    except web.HTTPException:
        raise
    except Exception:
        _LOGGER.exception("unhandled error on %s %s", request.method, request.path)
        return _problem(request, OrchestratorError("internal error; see the orchestrator's log"))


def build_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[problem_middleware])
    app.add_routes(routes)
    app.cleanup_ctx.append(lambda app: _lifecycle(app, settings))
    return app


def _client_session(settings: Settings) -> aiohttp.ClientSession:
    """The session for every call to a device: descriptions, health, deploys, executions.

    HTTPS devices are always verified: against ``--tls-ca`` when given, else against the
    system trust store (aiohttp's default context). A device that fails verification is an
    error, never retried over plain HTTP.
    """
    if settings.tls_ca is None:
        return aiohttp.ClientSession()
    connector = aiohttp.TCPConnector(ssl=client_context(settings.tls_ca))
    return aiohttp.ClientSession(connector=connector)


async def _applications(
    settings: Settings,
    store: Store,
    modules: ModuleRegistry,
    deployments: Deployments,
    session: aiohttp.ClientSession,
) -> tuple[AppRegistry, EnvironmentRegistry, AppDeployer]:
    """App images, environments and the descriptor deployer, restored from the state."""
    apps = AppRegistry(store, modules)
    await apps.load()
    environments = EnvironmentRegistry(store, settings.environments_file)
    await environments.load()
    app_deployer = AppDeployer(apps, environments, deployments, session)
    await app_deployer.load()
    return apps, environments, app_deployer


def _core_device(
    settings: Settings, store: Store, devices: DeviceRegistry
) -> tuple[ResultStore, CoreDevice]:
    """The orchestrator as a device (built-in packages run on it, in-process) and the store
    of their results; the device is registered only while built-in apps are enabled."""
    results = ResultStore(settings.state_dir / "results")
    core = CoreDevice(store, results)
    if settings.builtin_apps is not None:
        devices.add_core(core_device(settings.base_url))
    else:
        for device in devices.all():
            if device.core:  # stored while built-in apps were on
                devices.remove(device.id)
    return results, core


async def _open_state(store: Store, core: CoreDevice) -> None:
    await init_state(store)  # refuses a state written by a newer orchestrator
    await core.load()  # what was deployed to the core device survives a restart


async def _bootstrap(settings: Settings, c: Context) -> None:
    if settings.builtin_apps is not None:
        await bootstrap(
            settings.builtin_apps,
            apps=c.apps,
            environments=c.environments,
            deployer=c.app_deployer,
            deployments=c.deployments,
        )


async def _resume_when_listening(
    settings: Settings, deployments: Deployments, within_s: float = 10.0
) -> None:
    """Resume the revisions a restart interrupted once the API accepts connections.

    A resumed push makes each device download its blobs from this API; pushed while the
    orchestrator is still starting (bootstrap runs before it listens), the device would
    refuse the deployment and the revision would fail for nothing. A plain TCP connect
    tells (no TLS or proxy in the way); after ``within_s`` it resumes anyway.
    """
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)  # noqa: S104
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, settings.port)
        except OSError:
            await asyncio.sleep(0.02)  # the site is not bound yet: poll until the deadline
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        break
    deployments.resume()


def _device_index(devices: DeviceRegistry) -> Callable[[str], tuple[str, int | None] | None]:
    """URL -> (device name, API version) of the device it is on, for executions' hops."""
    by_netloc: dict[str, tuple[str, int | None]] = {}

    def index_devices(device: Device, kind: str) -> None:
        # Executions look a device up per hop by its address; rebuilt only when devices change.
        by_netloc.clear()
        by_netloc.update({urlsplit(d.url).netloc: (d.name, d.api_version) for d in devices.all()})

    def device_of(url: str) -> tuple[str, int | None] | None:
        if not by_netloc and devices.all():
            index_devices(devices.all()[0], "indexed")
        return by_netloc.get(urlsplit(url).netloc)

    devices.on_change.append(index_devices)
    return device_of


async def _cancelled(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _lifecycle(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    store = Store(settings.state_dir)
    session = _client_session(settings)
    devices = DeviceRegistry()
    for doc in await store.all("devices"):
        devices.restore(doc["device"])

    async def persist_device(device: Device, kind: str) -> None:
        if kind == "removed":
            await store.delete("devices", "id", device.id)
        else:
            await store.put(
                "devices", "id", {"id": device.id, "device": msgspec.to_builtins(device)}
            )

    devices.on_change.append(persist_device)
    modules = ModuleRegistry(store)
    await modules.load()
    results, core = _core_device(settings, store, devices)
    client = RoutingClient(session, core, token=settings.token)
    deployments = Deployments(
        store,
        modules,
        devices,
        client,
        lambda digest: f"{settings.base_url}/blobs/{digest}",
        drain_s=settings.execution_deadline_s,  # no execution runs longer
    )

    executions = Executions(session, _device_index(devices))
    apps, environments, app_deployer = await _applications(
        settings, store, modules, deployments, session
    )
    reconciler = Reconciler(deployments, devices, client, interval_s=settings.reconcile_interval_s)
    devices.on_change.append(reconciler.on_device_event)
    # Always there for manual registration; it browses only when mDNS is on.
    discovery = Discovery(
        devices,
        session,
        interfaces=list(settings.mdns_interfaces) if settings.mdns_interfaces else None,
    )
    monitor = HealthMonitor(
        devices,
        session,
        interval_s=settings.health_interval_s,
        lost_after=settings.lost_after,
        back_after=settings.back_after,
        token=settings.token,
    )
    app[CONTEXT] = Context(
        token=settings.token,
        store=store,
        devices=devices,
        discovery=discovery,
        modules=modules,
        deployments=deployments,
        executions=executions,
        execution_deadline_s=settings.execution_deadline_s,
        started=time.monotonic(),
        apps=apps,
        environments=environments,
        app_deployer=app_deployer,
        results=results if settings.builtin_apps is not None else None,
        core=core if settings.builtin_apps is not None else None,
    )
    resuming: asyncio.Task[None] | None = None
    try:
        await _open_state(store, core)
        if settings.mdns_enabled:
            await discovery.start()
        await monitor.start()
        await deployments.load(resume=False)
        reconciler.start()
        # Before the yield: aiohttp listens only once start-up is over, so nothing is served
        # until the built-in apps are deployed (or start-up failed).
        await _bootstrap(settings, app[CONTEXT])
        resuming = asyncio.create_task(
            _resume_when_listening(settings, deployments), name="resume deployments"
        )
        yield
    finally:
        await _cancelled(resuming)
        await reconciler.stop()
        await executions.stop()
        await deployments.stop()
        await monitor.stop()
        await discovery.stop()
        await devices.drain()
        await session.close()
        await results.close()
        await store.close()
