"""Composition root: builds the supervisor's aiohttp application and owns its lifecycle.

Start-up order (torn down in reverse): state store and device id → HTTP client session →
Wasm runtime → deployments restored from disk (no orchestrator needed) → call service →
mDNS advertisement → orchestrator registration. On shutdown the call service first refuses
new calls and lets in-flight ones finish within the shutdown timeout, then mDNS sends its
goodbye and the state is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from supervisor import protocol
from supervisor.config import Settings
from supervisor.deployments import Deployments
from supervisor.drivers import build_drivers
from supervisor.errors import NotFound, PayloadTooLarge, SupervisorError
from supervisor.executions import Executions
from supervisor.history import History
from supervisor.http import problem
from supervisor.metrics import Metrics
from supervisor.platform import CpuSampler, local_ipv4_addresses
from supervisor.registration import Registrar
from supervisor.routes import control, functions, meta
from supervisor.routes.context import SERVICES, Services
from supervisor.runtime import Runtime
from supervisor.store import StateStore
from supervisor.tls import client_context

_LOGGER = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become problem bodies; never a traceback on the wire."""
    declared = request.content_length
    if declared is not None and declared > request.client_max_size:
        # Refused before a byte of it is read; aiohttp then discards the rest unbuffered.
        limit = request.client_max_size
        return problem(request, PayloadTooLarge(f"request body is larger than {limit} bytes"))
    try:
        return await handler(request)
    except SupervisorError as err:
        return problem(request, err)
    except web.HTTPRequestEntityTooLarge as err:
        return problem(request, PayloadTooLarge("request body is too large", detail=err.text))
    except web.HTTPNotFound:
        return problem(request, NotFound(f"no route for {request.path}"))
    except web.HTTPMethodNotAllowed as err:
        failure = SupervisorError(f"method {request.method} not allowed on {request.path}")
        failure.status, failure.type = err.status, "method-not-allowed"
        return problem(request, failure)
    except web.HTTPException:
        raise
    except Exception:
        _LOGGER.exception("unhandled error on %s %s", request.method, request.path)
        return problem(request, SupervisorError("internal error; see the supervisor's log"))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("%s failed: %s", task.get_name(), task.exception())


async def _device_id(store: StateStore) -> str:
    """The stable device id: generated once, persisted, never derived from the mDNS name."""
    device = await store.device()
    if device.get("id"):
        return str(device["id"])
    device_id = uuid.uuid4().hex
    await store.update_device({"id": device_id})
    return device_id


def _advertised_addresses(settings: Settings) -> list[str]:
    """The addresses the orchestrator is told to reach this device at.

    A supervisor bound to one address (``--host 127.0.0.1``, as simulated fleets and tests
    run) is reachable only there; advertising the machine's other addresses would make the
    orchestrator's description fetch fail and every registration be refused. A wildcard bind
    advertises the mDNS interfaces if configured, else every non-loopback IPv4 address.
    """
    host = settings.host.strip("[]")
    try:
        wildcard = not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name: the operator chose what peers should use
        wildcard = False
    if not wildcard:
        return [host]
    return list(settings.mdns_interfaces or local_ipv4_addresses())


def _registration_body(
    settings: Settings, device_id: str, addresses: list[str]
) -> dict[str, object]:
    return {
        "name": settings.name,
        "host": addresses[0] if addresses else None,
        "addresses": addresses,
        "port": settings.port,
        "protocol": "https" if settings.tls else "http",
        "type": protocol.SERVICE_TYPE,
        "properties": {
            "path": "/",
            "tls": "1" if settings.tls else "0",
            "address": addresses[0] if addresses else "",
            "id": device_id,
            "api": str(protocol.API_VERSION),
        },
    }


def build_app(settings: Settings) -> web.Application:
    """The application; resources are created when it starts, not here."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[problem_middleware])
    app.add_routes(control.routes)
    app.add_routes(meta.routes)
    app.add_routes(functions.routes)
    # aiohttp tears these down in reverse: registration, then the mDNS goodbye, then calls
    # are drained and the state closed.
    app.cleanup_ctx.append(lambda app: _core(app, settings))
    app.cleanup_ctx.append(lambda app: _announce(app, settings))
    app.cleanup_ctx.append(lambda app: _register(app, settings))
    return app


def _client_session(settings: Settings) -> aiohttp.ClientSession:
    """The session for every outbound call: module downloads, next hops, registration.

    HTTPS peers are always verified: against ``--tls-ca`` when given, else against the
    system trust store (aiohttp's default context, so no second copy of it is loaded).
    """
    if settings.tls_ca is None:
        return aiohttp.ClientSession()
    connector = aiohttp.TCPConnector(ssl=client_context(settings.tls_ca))
    return aiohttp.ClientSession(connector=connector)


async def _core(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    """State, HTTP client, runtime, deployments (restored from disk) and the call service."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = StateStore(settings.state_dir / "state.json")
    session = _client_session(settings)
    drivers = build_drivers(settings.profile.drivers, settings.profile_dir)
    runtime = Runtime(settings.state_dir / "cache", drivers)
    executions: Executions | None = None
    try:
        deployments = Deployments(
            settings.state_dir, store, runtime, session, max_blob_bytes=settings.max_body_bytes
        )
        await deployments.restore()
        metrics = Metrics()
        history = History(settings.history_size)
        executions = Executions(
            deployments,
            runtime,
            history,
            session,
            metrics,
            default_timeout_ms=settings.default_timeout_ms,
            default_memory_bytes=settings.default_memory_bytes,
            max_result_bytes=settings.max_result_bytes,
            max_output_bytes=settings.max_output_bytes,
            outbound_timeout_s=settings.outbound_timeout_s,
        )
        history.on_evict = executions.discard_workdir
        deployments.busy_blobs = executions.busy_blobs
        device_id = await _device_id(store)
        app[SERVICES] = Services(
            settings=settings,
            device_id=device_id,
            store=store,
            drivers=drivers,
            deployments=deployments,
            executions=executions,
            history=history,
            metrics=metrics,
            cpu=CpuSampler(),
            session=session,
            orchestrator_url=(await store.device()).get("orchestratorUrl"),
        )
        _LOGGER.info(
            "supervisor %s (%s) serving %s on %s:%d",
            settings.name,
            device_id,
            "https" if settings.tls else "http",
            settings.host,
            settings.port,
        )
        yield
    finally:
        if executions is not None:
            await executions.shutdown(settings.shutdown_timeout_s)
        # Calls still running past the shutdown timeout are stopped, not waited for.
        runtime.interrupt_all()
        await runtime.aclose()
        await session.close()
        await store.close()


async def _announce(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    """mDNS advertisement; announcing takes ~1.7 s of probing, so HTTP serves meanwhile."""
    if not settings.mdns_enabled:
        yield
        return
    # Imported here: zeroconf costs ~4 MB of memory on devices that run with mDNS off.
    from supervisor.mdns import Advertiser  # noqa: PLC0415

    svc = app[SERVICES]
    advertiser = Advertiser(
        name=settings.name,
        port=settings.port,
        device_id=svc.device_id,
        interfaces=list(settings.mdns_interfaces) if settings.mdns_interfaces else None,
        tls=settings.tls,
    )
    announcing = asyncio.create_task(advertiser.start(), name="mdns-announce")
    announcing.add_done_callback(_log_failure)
    try:
        yield
    finally:
        # A failed announcement was logged already; it must not hide the shutdown.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await announcing
        await advertiser.stop()


async def _register(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    """Direct registration with a configured orchestrator (for networks without multicast)."""
    if not settings.orchestrator_url:
        yield
        return
    svc = app[SERVICES]
    addresses = _advertised_addresses(settings)
    registrar = Registrar(
        svc.session,
        orchestrator_url=settings.orchestrator_url,
        body=_registration_body(settings, svc.device_id, addresses),
        renewal_s=settings.renewal_s,
        token=settings.token,
    )
    svc.registrar = registrar
    await registrar.start()
    try:
        yield
    finally:
        await registrar.stop()
