"""Deploying a descriptor: resolve the app (local, or fetched from another orchestrator),
resolve the environment, derive the manifest, submit it as any manifest.

A remote app (``"app": "https://site-a/apps/thermo/1.0.0"``) is fetched from
``{url}/image`` with a bounded, streamed read, checked against the descriptor's ``digest``
before anything is stored, then added to the local registry (idempotent) and deployed from
there. Every failure to get it (unreachable, an error status, a timeout) is a 422 naming
``app``: the request cannot be carried out as written, and the orchestrator itself did not
fail. An image larger than the image limit is a 413; a digest mismatch a 422 on ``digest``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from orchestrator.apps import AppRecord, AppRegistry
from orchestrator.deployments import Deployment, Deployments
from orchestrator.descriptors import Descriptor, derive, is_remote, split_app
from orchestrator.environments import Environment, EnvironmentRegistry
from orchestrator.errors import NotFound, PayloadTooLarge, Unprocessable
from orchestrator.model import Manifest
from orchestrator.store import Store

TABLE = "app_deployments"
_CHUNK = 64 * 1024


class AppDeployer:
    def __init__(
        self,
        apps: AppRegistry,
        environments: EnvironmentRegistry,
        deployments: Deployments,
        session: aiohttp.ClientSession,
        *,
        store: Store | None = None,
        fetch_timeout_s: float = 30.0,
    ) -> None:
        self._apps = apps
        self._environments = environments
        self._deployments = deployments
        self._session = session
        self._store = store or apps.store
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout_s)
        self._environment_of: dict[str, str] = {}  # deployment name -> environment name

    async def load(self) -> None:
        for doc in await self._store.all(TABLE):
            self._environment_of[str(doc["deployment"])] = str(doc["environment"])

    async def deploy(
        self, descriptor: Descriptor, *, if_match: int | None = None
    ) -> tuple[Deployment, int | None]:
        """Submit what ``descriptor`` stands for; the answer is :meth:`Deployments.submit`'s
        (the deployment, and the revision added or None when nothing changed)."""
        app, env, manifest = await self.derived(descriptor)
        dep, added = await self._deployments.submit(manifest, if_match)
        if self._environment_of.get(dep.name) != env.name:
            self._environment_of[dep.name] = env.name
            await self._store.put(
                TABLE,
                "deployment",
                {"deployment": dep.name, "environment": env.name, "app": app.ref},
            )
        return dep, added

    async def derived(
        self, descriptor: Descriptor, *, fetch: bool = True
    ) -> tuple[AppRecord, Environment, Manifest]:
        """The app, environment and manifest ``descriptor`` stands for, deploying nothing.

        With ``fetch=False`` (a dry run) a remote app must already be stored here: a dry
        run changes nothing, not even the local copy of another site's image.
        """
        if (
            not fetch
            and is_remote(descriptor.app)
            and (descriptor.digest is None or self._apps.by_digest(descriptor.digest) is None)
        ):
            raise Unprocessable(
                "a dry run does not download another site's app: deploy it once, or push "
                "its image here first",
                field="app",
            )
        app = await self.resolve_app(descriptor)
        env = self._environments.find(descriptor.environment)
        if env is None:
            raise Unprocessable(f"no environment {descriptor.environment!r}", field="environment")
        return app, env, derive(descriptor, app, env)

    def environment_users(self, environment: str) -> list[str]:
        """Deployments (by name) derived from ``environment`` that still exist."""
        users = []
        for name, env in sorted(self._environment_of.items()):
            if env != environment:
                continue
            try:
                self._deployments.get(name)
            except NotFound:
                continue
            users.append(name)
        return users

    async def resolve_app(self, descriptor: Descriptor) -> AppRecord:
        """The concrete app version, fetched and stored first when it is remote."""
        if is_remote(descriptor.app):
            assert descriptor.digest is not None  # descriptors.py requires it for a URL
            record = self._apps.by_digest(descriptor.digest)
            if record is None:
                record = await self._fetch(descriptor.app, descriptor.digest)
        else:
            name, version = split_app(descriptor.app)
            try:
                record = self._apps.get(name, version)
            except NotFound as err:
                raise Unprocessable(err.message, field="app") from err
        if descriptor.digest is not None and record.digest != descriptor.digest:
            raise Unprocessable(
                f"digest mismatch: expected {descriptor.digest}, got {record.digest}",
                field="digest",
            )
        return record

    async def _fetch(self, url: str, digest: str) -> AppRecord:
        base = url.rstrip("/")
        data = await self._download(f"{base}/image")
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest:
            raise Unprocessable(
                f"digest mismatch: expected {digest}, got {got} from {url}", field="digest"
            )
        record, _ = await self._apps.add(data)
        _check_names(url, record)
        return record

    async def _download(self, url: str) -> bytes:
        limit = self._apps.limits.max_image_bytes
        try:
            target = URL(url)
        except ValueError as err:
            raise Unprocessable(f"not a usable URL: {err}", field="app") from err
        if target.host is None:
            raise Unprocessable("the app URL has no host", field="app")
        try:
            async with self._session.get(
                target, timeout=self._timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    problem = await _problem_text(resp)
                    raise Unprocessable(f"{url} answered {resp.status}{problem}", field="app")
                declared = resp.content_length
                if declared is not None and declared > limit:
                    raise PayloadTooLarge(
                        f"the image at {url} is {declared} bytes, more than {limit}", field="app"
                    )
                data = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    data += chunk
                    if len(data) > limit:
                        raise PayloadTooLarge(
                            f"the image at {url} is larger than {limit} bytes", field="app"
                        )
                return bytes(data)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise Unprocessable(
                f"cannot fetch the app image from {url}: {type(err).__name__}: {err}",
                field="app",
            ) from err


def _check_names(url: str, record: AppRecord) -> None:
    """A URL ending in ``/apps/{name}/{version}`` must have served that app."""
    parts = URL(url.rstrip("/")).path.split("/")
    if (
        len(parts) >= 3
        and parts[-3] == "apps"
        and (parts[-2], parts[-1])
        != (
            record.name,
            record.version,
        )
    ):
        raise Unprocessable(f"{url} served {record.ref}, not {parts[-2]}@{parts[-1]}", field="app")


async def _problem_text(resp: aiohttp.ClientResponse) -> str:
    """The remote's problem message, when it sent one (short, for the error we raise)."""
    try:
        body: Any = msgspec.json.decode(await resp.content.read(4096))
    except (msgspec.DecodeError, aiohttp.ClientError, TimeoutError, ValueError):
        return ""
    if isinstance(body, dict) and isinstance(body.get("result"), str):
        return f": {body['result'][:200]}"
    return ""
