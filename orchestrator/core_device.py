"""The orchestrator's core device: the orchestrator itself, running built-in packages.

Theory of operation. Built-in packages (``runtime: "core"`` in their package.json, e.g. the
``datalist`` app) are implemented here, natively, instead of in Wasm. They are deployed like
any other step: placement puts every core step on the device with the fixed id
:data:`CORE_ID` (and nothing else there), the plan "pushes" its mini-manifest, and the chain
calls its endpoint, ``/{deployment}/modules/{module}/{func}`` on the orchestrator's own base
URL, exactly where a supervisor would serve it. :class:`RoutingClient` is the
:class:`~orchestrator.supervisor_client.SupervisorClient` that deployments and the reconciler
use: calls for the core device go to :class:`CoreDevice` in-process, the rest over HTTP.

:class:`CoreDevice` keeps the semantics a supervisor has for ``/deploy``: a mini-manifest is
validated, refused when it names a function the orchestrator does not implement, persisted
(store table ``core``) before it is acknowledged, and acknowledged with the digest of its
canonical form (``sha256:<hex>``, the supervisor's own rule), so pushing the same content
again is a no-op and a restart keeps what was deployed (nothing is pushed again). Calls are
recorded in a bounded in-memory history shaped like a supervisor's
(:class:`supervisor.protocol.HistoryEntry`), so an execution can follow a chain that ends here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from orchestrator.devices import Device
from orchestrator.errors import BadRequest, DeviceError, NotFound, PayloadTooLarge
from orchestrator.jobs import parent_deployment
from orchestrator.results import ResultStore
from orchestrator.store import Store
from orchestrator.supervisor_client import DeviceAddress, SupervisorClient
from supervisor import protocol
from supervisor.protocol import DeploymentNode, HistoryEntry, node_digest

__all__ = [
    "CORE_ID",
    "CORE_LABELS",
    "MAX_HISTORY",
    "MAX_VALUE_BYTES",
    "CoreCall",
    "CoreDevice",
    "RoutingClient",
    "core_device",
]

CORE_ID = "orchestrator"
CORE_LABELS = {"baton.core": "true"}
MAX_HISTORY = 10_000
"""Calls kept for ``GET /request-history/{id}`` (oldest dropped), as a supervisor bounds it."""
MAX_VALUE_BYTES = 1 << 20
"""The largest value ``datalist.push`` stores: results are rows, not files."""
TABLE = "core"


def core_device(base_url: str) -> Device:
    """The registry record of the core device, reachable at the orchestrator's ``base_url``.

    Only the scheme, host and port of ``base_url`` count (a device URL has no path).
    """
    parts = urlsplit(base_url)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if tls else 80)
    description: dict[str, Any] = {
        "id": CORE_ID,
        "name": CORE_ID,
        "apiVersion": protocol.API_VERSION,
        "labels": dict(CORE_LABELS),
        "supervisorInterfaces": [],
    }
    return Device(
        id=CORE_ID,
        name=CORE_ID,
        host=host,
        port=port,
        description=description,
        api_version=protocol.API_VERSION,
        labels=dict(CORE_LABELS),
        tls=tls,
        core=True,
    )


@dataclass(frozen=True)
class CoreCall:
    """One call of a built-in function: where it came from and its named arguments."""

    remote_id: str  # the device-side deployment id (``<id>-p<k>`` for partition k)
    deployment: str  # the deployment id the results are filed under
    partition: int
    module: str
    func: str
    args: Mapping[str, str]
    request_id: str


CoreFunction = Callable[[CoreCall], Awaitable[Any]]


class CoreDevice:
    """The mini-manifests the orchestrator deployed to itself, and the functions it runs.

    ``pushes`` counts the deploy calls received (tests check a restart makes none).
    """

    def __init__(
        self, store: Store, results: ResultStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._results = results
        self._clock = clock
        self._nodes: dict[str, DeploymentNode] = {}
        self._digests: dict[str, str] = {}
        self._history: OrderedDict[str, HistoryEntry] = OrderedDict()
        self.pushes = 0
        self.calls = 0
        self.functions: dict[tuple[str, str], CoreFunction] = {
            ("datalist", "push"): self._push,
            ("datalist", "get"): self._get,
        }

    async def load(self) -> None:
        """Restore the deployed mini-manifests (a restart keeps them, like a supervisor)."""
        for doc in await self._store.all(TABLE):
            node = msgspec.convert(doc["node"], DeploymentNode)
            self._nodes[node.deploymentId] = node
            self._digests[node.deploymentId] = node_digest(node)

    # --- the supervisor's /deploy semantics ----------------------------------------------

    async def deploy(self, node: DeploymentNode) -> str:
        """Install ``node``; returns ``sha256:<hex>`` of its canonical form.

        Raises :class:`DeviceError` (as a refusing device would) for an invalid node or one
        naming a function the orchestrator does not implement; nothing is kept then.
        """
        self.pushes += 1
        try:
            protocol.validate_node(node)
        except protocol.ProtocolError as err:
            raise DeviceError(f"the orchestrator refused the deployment: {err}") from err
        for module, funcs in sorted(node.endpoints.items()):
            for func in sorted(funcs):
                if (module, func) not in self.functions:
                    raise DeviceError(
                        f"the orchestrator refused the deployment: it has no built-in "
                        f"function {module}.{func}"
                    )
        digest = node_digest(node)
        if self._digests.get(node.deploymentId) != digest:
            await self._store.put(
                TABLE,
                "deploymentId",
                {"deploymentId": node.deploymentId, "node": msgspec.to_builtins(node)},
            )
            self._nodes[node.deploymentId] = node
            self._digests[node.deploymentId] = digest
        return f"sha256:{digest}"

    def verify(self, deployment_id: str, digest: str | None) -> None:
        held = self._digests.get(deployment_id)
        if held is None:
            raise DeviceError(f"the orchestrator does not hold deployment {deployment_id}")
        if digest is not None and f"sha256:{held}" != digest:
            raise DeviceError(
                f"the orchestrator holds sha256:{held} for {deployment_id}, expected {digest}"
            )

    async def undeploy(self, deployment_id: str) -> None:
        if self._nodes.pop(deployment_id, None) is not None:
            self._digests.pop(deployment_id, None)
            await self._store.delete(TABLE, "deploymentId", deployment_id)

    def listing(self) -> dict[str, str]:
        """Deployment id → ``sha256:<hex>``, as ``GET /deploy`` would list them."""
        return {dep: f"sha256:{digest}" for dep, digest in sorted(self._digests.items())}

    # --- calls ---------------------------------------------------------------------------

    def endpoint(self, remote_id: str, module: str, func: str) -> protocol.Endpoint:
        """The endpoint a held deployment serves; :class:`NotFound` (404) otherwise."""
        node = self._nodes.get(remote_id)
        if node is None:
            raise NotFound(f"no deployment {remote_id!r} on the orchestrator", field="deployment")
        endpoint = node.endpoints.get(module, {}).get(func)
        if endpoint is None:
            raise NotFound(
                f"deployment {remote_id} serves no function {module}.{func}", field="function"
            )
        return endpoint

    async def call(
        self, remote_id: str, module: str, func: str, method: str, args: Mapping[str, str]
    ) -> HistoryEntry:
        """Run a built-in function of a held deployment and record it in the history.

        Arguments are matched by the endpoint's parameter names, or positionally as
        ``param0``…, as a supervisor does. Built-in calls finish synchronously, so the entry
        returned is final.
        """
        endpoint = self.endpoint(remote_id, module, func)
        named: dict[str, str] = {}
        for i, param in enumerate(endpoint.request.parameters):
            text = args.get(param.name, args.get(f"param{i}"))
            if text is not None:
                named[param.name] = text
        dep_id, partition = parent_deployment(remote_id)
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        queued = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds")
        call = CoreCall(remote_id, dep_id, partition, module, func, named, request_id)
        value = await self.functions[(module, func)](call)
        self.calls += 1
        entry = HistoryEntry(
            request_id=request_id,
            deployment_id=remote_id,
            module_name=module,
            function_name=func,
            method=method.lower(),
            request_args=dict(args),
            request_files={},
            work_queued_at=queued,
            result=[json.dumps(value), None],  # the reference's final ``[json, null]``
            success=True,
            status="done",
            value=value,
            timings={"totalMs": round((time.perf_counter() - started) * 1000, 3)},
        )
        self._history[request_id] = entry
        while len(self._history) > MAX_HISTORY:
            self._history.popitem(last=False)
        return entry

    def history(self, request_id: str) -> HistoryEntry:
        entry = self._history.get(request_id)
        if entry is None:
            raise NotFound("no matching entry in history", field="request_id")
        return entry

    # --- the built-in functions ----------------------------------------------------------

    async def _push(self, call: CoreCall) -> Any:
        """``datalist.push``: store the value (JSON text decoded; other text kept as is)."""
        text = call.args.get("value")
        if text is None:
            raise BadRequest("missing argument 'value'", field="value")
        if len(text.encode()) > MAX_VALUE_BYTES:
            raise PayloadTooLarge(f"value is larger than {MAX_VALUE_BYTES} bytes", field="value")
        try:
            value: Any = msgspec.json.decode(text)
        except (msgspec.DecodeError, RecursionError):
            value = text  # a plain-text result: kept as the string it is
        await self._results.append(
            call.deployment,
            value,
            request_id=call.request_id,
            partition=call.partition,
            at=self._clock(),
        )
        return value

    async def _get(self, call: CoreCall) -> Any:
        """``datalist.get``: the deployment's count and newest entries (at most 100)."""
        entries = await self._results.read(call.deployment, limit=100)
        count = (await self._results.counts()).get(call.deployment, 0)
        return {"deployment": call.deployment, "count": count, "entries": entries}


def _is_core(device: DeviceAddress) -> bool:
    # By the registry's mark, not the id alone: without the core device (built-in apps
    # disabled) the id is an ordinary one.
    return isinstance(device, Device) and device.core


class RoutingClient(SupervisorClient):
    """A :class:`SupervisorClient` that serves the core device in-process."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        core: CoreDevice,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__(session, token=token, timeout_s=timeout_s)
        self.core = core

    async def deploy(self, device: DeviceAddress, node: DeploymentNode) -> str | None:
        if _is_core(device):
            return await self.core.deploy(node)
        return await super().deploy(device, node)

    async def verify(self, device: DeviceAddress, deployment_id: str, digest: str | None) -> None:
        if _is_core(device):
            self.core.verify(deployment_id, digest)
            return
        await super().verify(device, deployment_id, digest)

    async def undeploy(self, device: DeviceAddress, deployment_id: str) -> None:
        if _is_core(device):
            await self.core.undeploy(deployment_id)
            return
        await super().undeploy(device, deployment_id)

    async def listing(self, device: DeviceAddress) -> dict[str, str]:
        if _is_core(device):
            return self.core.listing()
        return await super().listing(device)
