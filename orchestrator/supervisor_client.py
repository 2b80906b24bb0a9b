"""The orchestrator's HTTP client for device supervisors (Baton or reference wasmiot).

Every request has a timeout; every failure becomes a :class:`DeviceError` naming the device.
Reference supervisors (no ``apiVersion`` in their description) get the same documents — all
Baton extensions live under the top-level ``baton`` key they ignore — but have no
``GET /deploy`` to verify with, and are sent to ``//deploy`` exactly as the reference
orchestrator does.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp
import msgspec

from orchestrator.errors import DeviceError, DeviceUnavailable
from supervisor.protocol import DeploymentNode


class DeviceAddress(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def api_version(self) -> int | None: ...


class SupervisorClient:
    def __init__(
        self, session: aiohttp.ClientSession, *, token: str | None = None, timeout_s: float = 30.0
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _request(
        self, device: DeviceAddress, method: str, path: str, *, body: Any = None
    ) -> tuple[int, Any]:
        url = device.url.rstrip("/") + path
        data = msgspec.json.encode(body) if body is not None else None
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                try:
                    payload = msgspec.json.decode(raw) if raw else None
                except msgspec.DecodeError:
                    # It answered, just not in JSON (the reference's errors are HTML pages).
                    payload = {"result": raw[:200].decode("utf-8", "replace")}
                return resp.status, payload
        except (aiohttp.ClientError, TimeoutError) as err:
            raise DeviceUnavailable(
                f"device {device.name} ({device.url}) did not answer {method} {path}: "
                f"{type(err).__name__} {err}".rstrip()
            ) from err

    async def deploy(self, device: DeviceAddress, node: DeploymentNode) -> str | None:
        """Push a mini-manifest; returns the digest the device reports (None for reference)."""
        path = "/deploy" if device.api_version else "//deploy"
        status, body = await self._request(device, "POST", path, body=msgspec.to_builtins(node))
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            reason = body.get("result") if isinstance(body, dict) else body
            raise DeviceError(
                f"device {device.name} refused the deployment: HTTP {status} {reason}",
                detail=body,
            )
        digest = body.get("digest")
        return str(digest) if digest else None

    async def verify(self, device: DeviceAddress, deployment_id: str, digest: str | None) -> None:
        """Check the device lists ``deployment_id`` with ``digest`` (Baton devices only)."""
        if not device.api_version:
            return  # the reference has no GET /deploy; its 200 on push is all there is
        status, body = await self._request(device, "GET", "/deploy")
        listed = {
            d.get("deploymentId"): d
            for d in (body or {}).get("deployments", [])
            if isinstance(d, dict)
        }
        entry = listed.get(deployment_id)
        if status != 200 or entry is None or entry.get("status") != "ready":
            raise DeviceError(
                f"device {device.name} does not report deployment {deployment_id} ready"
            )
        if digest is not None and entry.get("digest") != digest:
            raise DeviceError(
                f"device {device.name} reports {entry.get('digest')} for {deployment_id}, "
                f"expected {digest}"
            )

    async def undeploy(self, device: DeviceAddress, deployment_id: str) -> None:
        status, _ = await self._request(device, "DELETE", f"/deploy/{deployment_id}")
        if status not in (200, 404):
            raise DeviceError(
                f"device {device.name} could not remove {deployment_id}: HTTP {status}"
            )

    async def listing(self, device: DeviceAddress) -> dict[str, str]:
        """deployment id → digest as the device reports them (empty for reference devices)."""
        if not device.api_version:
            return {}
        status, body = await self._request(device, "GET", "/deploy")
        if status != 200 or not isinstance(body, dict):
            raise DeviceError(f"device {device.name} answered HTTP {status} to GET /deploy")
        return {
            str(d["deploymentId"]): str(d.get("digest"))
            for d in body.get("deployments", [])
            if isinstance(d, dict) and d.get("status") == "ready"
        }
