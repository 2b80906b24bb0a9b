"""Installing, restoring and removing deployments (mini-manifests) on this device.

Theory of operation. ``deploy`` validates the mini-manifest, then — under a per-deployment
lock — fetches every module binary and data file in parallel (skipping blobs already on disk
when the ``baton`` key names their digest), verifies the sha256 digests, compiles each module
(cached on disk by the runtime), checks every endpoint against the module's real exports, and
only then persists the document atomically and swaps it in. So a failed deploy installs
nothing, a changed deployment replaces the old one only once the new one is ready, and an
acknowledged deploy (200) survives a kill -9 at any later moment. Re-posting the same content
(same canonical digest) is a no-op.

Blobs live content-addressed in ``<state>/blobs/<sha256>``; a blob no deployment references is
garbage-collected after removals and at start-up (left behind by a crash mid-deploy).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from supervisor import protocol
from supervisor.atomic import atomic_write, remove_stale_temporaries
from supervisor.calls import returns_bytes, wasm_arity
from supervisor.errors import NotFound, Unprocessable
from supervisor.fetch import fetch
from supervisor.protocol import DeploymentNode
from supervisor.runtime import ModuleInfo, Runtime
from supervisor.store import StateStore

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Installed:
    """A deployment ready to serve calls."""

    node: DeploymentNode
    digest: str
    blobs: dict[str, str]  # module name -> sha256 of its wasm
    files: dict[str, dict[str, str]]  # module name -> mount name -> sha256 of the data file
    modules: dict[str, ModuleInfo]
    installed_at: str

    @property
    def id(self) -> str:
        return self.node.deploymentId

    def summary(self) -> dict[str, Any]:
        return {
            "deploymentId": self.id,
            "status": "ready",
            "digest": f"sha256:{self.digest}",
            "installedAt": self.installed_at,
            "modules": [
                {"name": n, "digest": f"sha256:{d}"} for n, d in sorted(self.blobs.items())
            ],
            "endpoints": {m: sorted(fs) for m, fs in self.node.endpoints.items()},
        }


class Deployments:
    """The set of deployments installed on this device."""

    def __init__(
        self,
        state_dir: Path,
        store: StateStore,
        runtime: Runtime,
        session: aiohttp.ClientSession,
        *,
        max_blob_bytes: int = 64 * 1024 * 1024,
        fetch_timeout_s: float = 30.0,
    ) -> None:
        self._blob_dir = state_dir / "blobs"
        self._blob_dir.mkdir(parents=True, exist_ok=True)
        self.requests_dir = state_dir / "requests"
        self._store = store
        self._runtime = runtime
        self._session = session
        self._max_blob = max_blob_bytes
        self._fetch_timeout = fetch_timeout_s
        self._installed: dict[str, Installed] = {}
        self._broken: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_flight = 0  # deploys holding fetched blobs that are not yet referenced
        # Blobs that running calls still use after their deployment was replaced or removed.
        self.busy_blobs: Callable[[], set[str]] = set
        self._gc_lock = asyncio.Lock()  # a sweep and the start of a deploy exclude each other

    def blob_path(self, sha: str) -> Path:
        return self._blob_dir / sha

    def get(self, deployment_id: str) -> Installed:
        try:
            return self._installed[deployment_id]
        except KeyError:
            raise NotFound("deployment does not exist", field="deploymentId") from None

    def all(self) -> list[Installed]:
        return list(self._installed.values())

    def listing(self) -> list[dict[str, Any]]:
        items = [d.summary() for d in self._installed.values()]
        items += [
            {"deploymentId": i, "status": "failed", "error": e} for i, e in self._broken.items()
        ]
        return sorted(items, key=lambda d: str(d["deploymentId"]))

    async def restore(self) -> None:
        """Reload every persisted deployment (no orchestrator needed) and collect garbage."""
        remove_stale_temporaries(self._blob_dir)
        # Per-call directories belong to the in-memory history, which a restart empties.
        await asyncio.to_thread(shutil.rmtree, self.requests_dir, True)
        for doc in await self._store.deployments():
            dep_id = str(doc.get("id"))
            try:
                node = msgspec.convert(doc["node"], DeploymentNode)
                modules = {name: await self._load(sha, name) for name, sha in doc["blobs"].items()}
                self._installed[dep_id] = Installed(
                    node, doc["digest"], doc["blobs"], doc["files"], modules, doc["installedAt"]
                )
            except (KeyError, msgspec.ValidationError, Unprocessable, OSError) as err:
                _LOGGER.error("deployment %s could not be restored: %s", dep_id, err)
                self._broken[dep_id] = f"restore failed: {err}"
        await self._collect_garbage()
        _LOGGER.info("restored %d deployment(s)", len(self._installed))

    async def deploy(self, node: DeploymentNode) -> tuple[Installed, bool]:
        """Install ``node``; return it and whether anything changed."""
        try:
            protocol.validate_node(node)
        except protocol.ProtocolError as err:
            raise Unprocessable(str(err), field=err.field) from err
        digest = protocol.node_digest(node)
        lock = self._locks.setdefault(node.deploymentId, asyncio.Lock())
        async with lock:
            current = self._installed.get(node.deploymentId)
            if current is not None and current.digest == digest:
                return current, False
            async with self._gc_lock:
                self._in_flight += 1
            failed = True
            try:
                installed = await self._install(node, digest)
                failed = False
            finally:
                self._in_flight -= 1
                if failed:
                    # A refused deploy keeps none of what it fetched (a binary that does not
                    # compile, say): swept now rather than at the next start.
                    await self._collect_garbage()
        _LOGGER.info("deployment %s installed (%s)", node.deploymentId, digest[:12])
        await self._collect_garbage()
        return installed, True

    async def _install(self, node: DeploymentNode, digest: str) -> Installed:
        """Fetch, verify, compile and check everything, then persist and swap in."""
        blobs, files = await self._fetch_all(node)
        modules = {name: await self._load(sha, name) for name, sha in blobs.items()}
        self._check_endpoints(node, modules)
        installed = Installed(
            node, digest, blobs, files, modules, datetime.now(UTC).isoformat(timespec="seconds")
        )
        await self._store.put_deployment(
            {
                "id": node.deploymentId,
                "digest": digest,
                "node": msgspec.to_builtins(node),
                "blobs": blobs,
                "files": files,
                "installedAt": installed.installed_at,
            }
        )
        self._installed[node.deploymentId] = installed
        self._broken.pop(node.deploymentId, None)
        return installed

    async def remove(self, deployment_id: str) -> None:
        """Delete a deployment, its files and its per-request directories."""
        lock = self._locks.setdefault(deployment_id, asyncio.Lock())
        async with lock:
            if deployment_id not in self._installed and deployment_id not in self._broken:
                raise NotFound("deployment does not exist", field="deploymentId")
            await self._store.remove_deployment(deployment_id)
            self._installed.pop(deployment_id, None)
            self._broken.pop(deployment_id, None)
        # The lock stays: a deploy of this id may be waiting on it, and a fresh lock for the
        # next one would let the two install at once (memory says one, state.json the other).
        await asyncio.to_thread(shutil.rmtree, self.requests_dir / deployment_id, True)
        await self._collect_garbage()
        _LOGGER.info("deployment %s removed", deployment_id)

    async def _fetch_all(
        self, node: DeploymentNode
    ) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        jobs: dict[tuple[str, str], Awaitable[str]] = {}
        for mod in node.modules:
            ext = node.module_extension(mod.name)
            jobs[(mod.name, "")] = self._blob(mod.urls.binary, ext.digest, f"modules.{mod.name}")
            for mount, url in mod.urls.other.items():
                jobs[(mod.name, mount)] = self._blob(
                    url, ext.files.get(mount), f"modules.{mod.name}.urls.other.{mount}"
                )
        results = await asyncio.gather(*jobs.values())
        blobs: dict[str, str] = {}
        files: dict[str, dict[str, str]] = {m.name: {} for m in node.modules}
        for (mod_name, mount), sha in zip(jobs, results, strict=True):
            if mount:
                files[mod_name][mount] = sha
            else:
                blobs[mod_name] = sha
        return blobs, files

    async def _blob(self, url: str, expected: str | None, field: str) -> str:
        want = protocol.normalise_digest(expected) if expected else None
        if want is not None and self.blob_path(want).exists():
            return want
        data, sha = await fetch(
            self._session, url, max_bytes=self._max_blob, timeout_s=self._fetch_timeout
        )
        if want is not None and sha != want:
            raise Unprocessable(
                f"digest mismatch for {url}: expected sha256:{want}, got sha256:{sha}", field=field
            )
        path = self.blob_path(sha)
        if not path.exists():
            await asyncio.to_thread(atomic_write, path, data)
        return sha

    async def _load(self, sha: str, name: str) -> ModuleInfo:
        info = self._runtime.info(sha)
        if info is not None:
            return info
        data = await asyncio.to_thread(self.blob_path(sha).read_bytes)
        try:
            return await asyncio.to_thread(self._runtime.load, sha, data)
        except Unprocessable as err:
            raise Unprocessable(f"module {name}: {err.message}", field=f"modules.{name}") from err

    @staticmethod
    def _check_endpoints(node: DeploymentNode, modules: dict[str, ModuleInfo]) -> None:
        for mod_name, funcs in node.endpoints.items():
            for func, endpoint in funcs.items():
                where = f"endpoints.{mod_name}.{func}"
                sig = modules[mod_name].exports.get(func)
                if sig is None:
                    raise Unprocessable(
                        f"module {mod_name} exports no function {func!r}", field=where
                    )
                params = node.params_for(mod_name, func)
                if params and wasm_arity(params) != len(sig.params):
                    raise Unprocessable(
                        f"{mod_name}.{func} takes {len(sig.params)} Wasm value(s), "
                        f"but its parameters need {wasm_arity(params)}",
                        field=f"{where}.request.parameters",
                    )
                if returns_bytes(endpoint.result_type) and sig.results != ("i64",):
                    raise Unprocessable(
                        f"{mod_name}.{func} must return an i64 (pointer << 32 | length) "
                        "for a string or JSON result",
                        field=f"{where}.response.schema.type",
                    )

    async def _collect_garbage(self) -> None:
        """Delete blobs no deployment references (never while a deploy holds unreferenced ones)."""
        async with self._gc_lock:
            if not self._in_flight:
                await self._sweep()

    async def _sweep(self) -> None:
        live: set[str] = self.busy_blobs()
        for dep in self._installed.values():
            live.update(dep.blobs.values())
            for mounts in dep.files.values():
                live.update(mounts.values())

        def sweep() -> list[str]:
            dead = [
                p
                for p in self._blob_dir.iterdir()
                if p.name not in live and not p.name.startswith(".")
            ]
            for path in dead:
                path.unlink(missing_ok=True)
            return [p.name for p in dead]

        for sha in await asyncio.to_thread(sweep):
            self._runtime.unload(sha)
