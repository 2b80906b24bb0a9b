"""A typed async client for the orchestrator's REST API (what the ``baton`` CLI talks through).

::

    async with OrchestratorClient("http://127.0.0.1:3000", token=token) as api:
        for device in await api.list_devices():
            print(device.get("name"), device.get("status"))

An ``https://`` orchestrator is verified against ``ssl_context`` when one is given (e.g.
``ssl.create_default_context(cafile="fleet-ca.pem")``), else against the system trust store;
verification is never turned off.

Every method is one route. Results are the API's JSON exactly as sent (so ``baton --json``
can print them unchanged), typed as ``TypedDict``s whose keys are all optional: read them
with ``.get`` and a default, since an older or newer orchestrator may omit or add keys.

Every failure is an :class:`ApiError`: the server's problem body (``status``, ``result``,
``field``, ``detail``, ``type``) for an HTTP error, or status 0 when the orchestrator could
not be reached or did not answer in time. Two routes answer an error status with a body of
their own kind, and return it instead of raising: a dry run that cannot be placed (422 with
an :data:`Infeasible` explanation) and an execution whose chain failed (502 with the
:data:`Execution` and its trace so far).

Imports only the standard library, aiohttp and msgspec.
"""

from __future__ import annotations

import errno
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypedDict, cast
from urllib.parse import quote

import aiohttp
import msgspec

__all__ = [
    "JSON",
    "TOML",
    "ApiError",
    "Candidate",
    "Deployment",
    "Device",
    "Execution",
    "Hop",
    "Infeasible",
    "ModuleRecord",
    "OrchestratorClient",
    "Placement",
    "PlacementResult",
    "Revision",
    "StepPlacement",
    "Submission",
    "Transition",
]

JSON = "application/json"
TOML = "application/toml"


# --- response shapes (the orchestrator's JSON; every key optional) -----------------------------


class Device(TypedDict, total=False):
    id: str
    name: str
    url: str
    apiVersion: int | None
    status: str  # healthy | lost
    cordoned: bool
    labels: dict[str, str]
    zone: str | None
    rttMs: float | None
    health: Any
    lastError: str | None
    interfaces: list[str]
    events: list[Any]
    description: Any  # GET /devices/{id} only


class ModuleRecord(TypedDict, total=False):
    name: str
    version: str
    digest: str
    imports: list[list[str]]
    exports: dict[str, int]
    functions: dict[str, Any]
    data_files: dict[str, str]


class Candidate(TypedDict, total=False):
    device: str
    name: str
    feasible: bool
    reasons: list[str]
    score: float
    parts: dict[str, float]


class StepPlacement(TypedDict, total=False):
    index: int
    module: str
    func: str
    device: str
    candidates: list[Candidate]
    kept: bool


class PartitionDevices(TypedDict, total=False):
    partition: int
    devices: list[str]


class Placement(TypedDict, total=False):
    type: Literal["placement"]
    steps: list[StepPlacement]
    partitions: list[PartitionDevices]


class Infeasible(TypedDict, total=False):
    type: Literal["infeasible"]
    step: int
    module: str
    func: str
    candidates: list[Candidate]
    message: str


PlacementResult = Placement | Infeasible

# ``from`` is a keyword, hence the functional form.
Transition = TypedDict(
    "Transition",
    {
        "revision": int,
        "from": str,
        "to": str,
        "event": str,
        "at": float,
        "reason": str | None,
        "step": str | None,
    },
    total=False,
)


class Revision(TypedDict, total=False):
    number: int
    state: str
    digest: str
    error: str | None


class Deployment(TypedDict, total=False):
    id: str
    name: str
    revision: int
    state: str
    active: int | None
    placement: Placement | None
    partitions: list[PartitionDevices]
    error: str | None
    failedStep: str | None
    timings: dict[str, float]
    jobs: dict[str, dict[str, Any]]
    revisions: list[Revision]
    events: list[Transition]


class Hop(TypedDict, total=False):
    device: str | None
    url: str
    requestId: str | None
    ms: float
    value: Any
    success: bool | None


class Execution(TypedDict, total=False):
    id: str
    deployment: str
    status: str  # running | done | failed
    value: Any
    result: Any
    outputs: list[str]
    error: str | None
    trace: list[Hop]
    startedAt: float
    ms: float


@dataclass(frozen=True)
class Submission:
    """The answer to ``POST /deployments``: the deployment and what the post did."""

    status: int  # 201 new deployment, 202 new revision, 200 identical manifest (no-op)
    deployment: Deployment

    @property
    def changed(self) -> bool:
        return self.status != 200


class ApiError(Exception):
    """The orchestrator refused a request (``status`` >= 400) or was not reached (``status`` 0)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        detail: Any = None,
        *,
        type: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.detail = detail
        self.type = type
        self.body = body  # the decoded response body, when there was one

    def __str__(self) -> str:
        return self.message


# --- the client ---------------------------------------------------------------------------------


class OrchestratorClient:
    """One method per route of the orchestrator's API; use as ``async with``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout_s: float = 60,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the token
        return f"OrchestratorClient({self.url!r})"

    async def __aenter__(self) -> OrchestratorClient:
        headers = {"Accept": JSON}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        connector = (
            aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context is not None else None
        )
        self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- service --------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return _object(await self._checked("GET", "/health"))

    # --- devices --------------------------------------------------------------------------

    async def list_devices(self) -> list[Device]:
        return cast(list[Device], _objects(await self._checked("GET", "/devices")))

    async def get_device(self, device: str) -> Device:
        return cast(Device, _object(await self._checked("GET", f"/devices/{_seg(device)}")))

    async def register_device(
        self, host: str, port: int = 5000, name: str | None = None, *, tls: bool = False
    ) -> Device:
        """Register a device by address; ``tls`` when it serves HTTPS."""
        body: dict[str, Any] = {"host": host, "port": port}
        if name is not None:
            body["name"] = name
        if tls:
            body["tls"] = True
        return cast(Device, _object(await self._checked("POST", "/devices", json_body=body)))

    async def cordon(self, device: str) -> Device:
        path = f"/devices/{_seg(device)}/cordon"
        return cast(Device, _object(await self._checked("POST", path)))

    async def uncordon(self, device: str) -> Device:
        path = f"/devices/{_seg(device)}/uncordon"
        return cast(Device, _object(await self._checked("POST", path)))

    # --- modules --------------------------------------------------------------------------

    async def push_module(
        self,
        name: str,
        wasm: bytes,
        *,
        version: str | None = None,
        functions: bytes | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> ModuleRecord:
        """Upload a module: its binary, its ``functions.json`` and data files by mount name."""
        form = aiohttp.FormData()
        form.add_field("name", name)
        if version is not None:
            form.add_field("version", version)
        form.add_field("wasm", wasm, filename=f"{name}.wasm", content_type="application/wasm")
        if functions is not None:
            form.add_field("functions", functions, filename="functions.json", content_type=JSON)
        for mount, data in (files or {}).items():
            form.add_field(
                mount, data, filename=Path(mount).name, content_type="application/octet-stream"
            )
        return cast(ModuleRecord, _object(await self._checked("POST", "/modules", data=form)))

    async def list_modules(self) -> list[ModuleRecord]:
        return cast(list[ModuleRecord], _objects(await self._checked("GET", "/modules")))

    async def get_module(self, ref: str) -> ModuleRecord:
        return cast(ModuleRecord, _object(await self._checked("GET", f"/modules/{_seg(ref)}")))

    # --- applications -------------------------------------------------------------------------

    async def push_app(self, data: bytes) -> dict[str, Any]:
        """Upload an app image (zip bytes); the answer says ``created`` false for known bytes."""
        status, body = await self._request(
            "POST", "/apps", data=data, headers={"Content-Type": "application/zip"}
        )
        _raise_for(status, body)
        return _object(body)

    async def list_apps(self) -> list[dict[str, Any]]:
        return _objects(await self._checked("GET", "/apps"))

    async def get_app(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``{name, versions: [...]}``, or one version's detail when ``version`` is given."""
        path = f"/apps/{_seg(name)}" + ("" if version is None else f"/{_seg(version)}")
        return _object(await self._checked("GET", path))

    # --- environments -----------------------------------------------------------------------

    async def list_environments(self) -> list[dict[str, Any]]:
        return _objects(await self._checked("GET", "/environments"))

    async def get_environment(self, name: str) -> dict[str, Any]:
        return _object(await self._checked("GET", f"/environments/{_seg(name)}"))

    async def put_environment(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an environment (labels, zones, limits, description)."""
        path = f"/environments/{_seg(name)}"
        return _object(await self._checked("PUT", path, json_body=dict(spec)))

    async def delete_environment(self, name: str) -> dict[str, Any]:
        return _object(await self._checked("DELETE", f"/environments/{_seg(name)}"))

    # --- placements and deployments ---------------------------------------------------------

    # --- results (datalist) -----------------------------------------------------------------

    async def result_counts(self) -> dict[str, int]:
        """Deployment id → number of results stored (``GET /results``)."""
        body = _object(await self._checked("GET", "/results"))
        return {str(k): int(v) for k, v in body.items()}

    async def get_results(
        self, deployment: str, *, limit: int | None = None, after: int | None = None
    ) -> dict[str, Any]:
        """``{deployment, name, count, entries}`` of one deployment (by id or name)."""
        params = {k: str(v) for k, v in (("limit", limit), ("after", after)) if v is not None}
        path = f"/results/{_seg(deployment)}"
        return _object(await self._checked("GET", path, params=params or None))

    async def clear_results(self, deployment: str) -> dict[str, Any]:
        return _object(await self._checked("DELETE", f"/results/{_seg(deployment)}"))

    async def place(
        self, manifest: bytes | Mapping[str, Any], content_type: str = JSON
    ) -> PlacementResult:
        """Dry run: where the manifest would run and why; an :data:`Infeasible` is returned."""
        data, ctype = _manifest(manifest, content_type)
        status, body = await self._request(
            "POST", "/placements", data=data, headers={"Content-Type": ctype}
        )
        if status == 422 and isinstance(body, dict) and body.get("type") == "infeasible":
            return cast(Infeasible, body)
        _raise_for(status, body)
        return cast(Placement, _object(body))

    async def deploy(
        self,
        manifest: bytes | Mapping[str, Any],
        content_type: str = JSON,
        *,
        wait_s: float | None = None,
        if_match: int | None = None,
    ) -> Submission:
        """Submit a manifest; ``wait_s`` holds the answer until the revision settles."""
        data, ctype = _manifest(manifest, content_type)
        headers = {"Content-Type": ctype}
        if if_match is not None:
            headers["If-Match"] = str(if_match)
        status, body = await self._request(
            "POST",
            "/deployments",
            data=data,
            headers=headers,
            params=_wait(wait_s),
            extra_timeout_s=wait_s or 0.0,
        )
        _raise_for(status, body)
        return Submission(status, cast(Deployment, _object(body)))

    async def list_deployments(self) -> list[Deployment]:
        return cast(list[Deployment], _objects(await self._checked("GET", "/deployments")))

    async def get_deployment(self, deployment: str, *, wait_s: float | None = None) -> Deployment:
        """By id or name; ``wait_s`` waits (at most) until the latest revision settles."""
        body = await self._checked(
            "GET",
            f"/deployments/{_seg(deployment)}",
            params=_wait(wait_s),
            extra_timeout_s=wait_s or 0.0,
        )
        return cast(Deployment, _object(body))

    async def undeploy(self, deployment: str) -> dict[str, Any]:
        return _object(await self._checked("DELETE", f"/deployments/{_seg(deployment)}"))

    # --- executions -------------------------------------------------------------------------

    async def execute(
        self,
        deployment: str,
        args: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        *,
        asynchronous: bool = False,
    ) -> Execution:
        """Run the pipeline with named ``args`` (and input ``files`` by mount name).

        Returns the finished execution, also when its chain failed (``status`` "failed",
        ``error`` and the trace so far); with ``asynchronous`` only ``id`` and ``status``.
        """
        path = f"/deployments/{_seg(deployment)}/executions"
        params = {"async": "1"} if asynchronous else None
        if files:
            form = aiohttp.FormData()
            for key, value in (args or {}).items():
                form.add_field(key, value if isinstance(value, str) else json.dumps(value))
            for mount, data in files.items():
                form.add_field(
                    mount, data, filename=Path(mount).name, content_type="application/octet-stream"
                )
            status, body = await self._request("POST", path, data=form, params=params)
        else:
            status, body = await self._request(
                "POST", path, json_body=dict(args or {}), params=params
            )
        if status == 502 and isinstance(body, dict) and "trace" in body:
            return cast(Execution, body)
        _raise_for(status, body)
        return cast(Execution, _object(body))

    async def get_execution(self, execution: str) -> Execution:
        return cast(
            Execution, _object(await self._checked("GET", f"/executions/{_seg(execution)}"))
        )

    # --- plumbing -----------------------------------------------------------------------------

    async def _checked(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        params: Mapping[str, str] | None = None,
        extra_timeout_s: float = 0.0,
    ) -> Any:
        status, body = await self._request(
            method,
            path,
            json_body=json_body,
            data=data,
            params=params,
            extra_timeout_s=extra_timeout_s,
        )
        _raise_for(status, body)
        return body

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        extra_timeout_s: float = 0.0,
    ) -> tuple[int, Any]:
        """Send one request; the status and the decoded JSON body (None when empty)."""
        if self._session is None:
            raise RuntimeError("use OrchestratorClient as `async with OrchestratorClient(...)`")
        hdrs = dict(headers or {})
        if json_body is not None:
            data = msgspec.json.encode(json_body)
            hdrs["Content-Type"] = JSON
        timeout = self.timeout_s + extra_timeout_s
        try:
            async with self._session.request(
                method,
                self.url + path,
                data=data,
                headers=hdrs,
                params=params,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                ctype = resp.content_type
                reason = resp.reason or ""
        except aiohttp.ClientSSLError as err:
            raise ApiError(
                0, f"TLS with the orchestrator at {self.url} failed: {_tls_why(err)}"
            ) from err
        except aiohttp.ClientConnectorError as err:
            raise ApiError(0, f"cannot reach the orchestrator at {self.url}: {_why(err)}") from err
        except aiohttp.InvalidURL as err:
            raise ApiError(0, f"invalid orchestrator URL {self.url!r}") from err
        except TimeoutError as err:
            raise ApiError(
                0,
                f"the orchestrator at {self.url} did not answer {method} {path} "
                f"within {timeout:g} s",
            ) from err
        except aiohttp.ClientError as err:
            raise ApiError(
                0, f"request {method} {path} to the orchestrator at {self.url} failed: {err}"
            ) from err
        if not raw:
            return status, None
        try:
            return status, msgspec.json.decode(raw)
        except msgspec.DecodeError as err:
            text = raw.decode(errors="replace").strip().splitlines()
            first = text[0][:200] if text else reason
            if status >= 400:
                raise ApiError(status, f"HTTP {status}: {first}") from err
            raise ApiError(
                status,
                f"{method} {path} answered {ctype or 'an unknown type'}, not JSON: {first}",
            ) from err


def _raise_for(status: int, body: Any) -> None:
    if status < 400:
        return
    if isinstance(body, dict):
        message = body.get("result") if body.get("status") == "error" else body.get("message")
        raise ApiError(
            status,
            str(message or body.get("error") or f"HTTP {status}"),
            _str_or_none(body.get("field")),
            body.get("detail"),
            type=_str_or_none(body.get("type")),
            body=body,
        )
    raise ApiError(status, f"HTTP {status}", body=body)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(0, f"the orchestrator answered {type(body).__name__}, expected an object")
    return body


def _objects(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise ApiError(0, "the orchestrator answered something other than a list of objects")
    return body


def _seg(value: str) -> str:
    """One path segment, percent-encoded (ids and names never contain a slash)."""
    return quote(value, safe="@")


def _wait(wait_s: float | None) -> dict[str, str] | None:
    return None if wait_s is None else {"wait": f"{wait_s:g}"}


def _manifest(manifest: bytes | Mapping[str, Any], content_type: str) -> tuple[bytes, str]:
    if isinstance(manifest, bytes):
        return manifest, content_type
    return msgspec.json.encode(dict(manifest)), JSON


def _tls_why(err: aiohttp.ClientSSLError) -> str:
    cause = (
        err.certificate_error
        if isinstance(err, aiohttp.ClientConnectorCertificateError)
        else err.os_error
    )
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return str(cause.reason)
    return str(cause) or str(err)


def _why(err: aiohttp.ClientConnectorError) -> str:
    os_error = err.os_error
    if os_error.errno == errno.ECONNREFUSED or "refused" in str(os_error).lower():
        return "connection refused (is baton-orchestrator running there?)"
    return os_error.strerror or str(os_error) or type(os_error).__name__
