"""Start-up of the orchestrator's own state: its identity, then its built-in apps.

Theory of operation. Both run inside the application's start-up (``orchestrator.app``'s
lifecycle, before it yields), and aiohttp binds the listening socket only after start-up,
so nothing is served until they are done; a failure stops start-up (the daemon logs one
line naming the cause and exits with status 2).

1. :func:`init_state` reads or creates the ``meta`` document ``orchestrator``:
   ``{"schemaVersion", "orchestratorId", "createdAt"}``. The id is a random uuid4, made once
   and never changed; a state written by a newer schema than :data:`SCHEMA_VERSION` is refused
   (an older orchestrator must not rewrite what it does not understand).
2. :func:`bootstrap` goes through the built-in apps folder (each subfolder, sorted, is an
   app source: ``application.json``, package folders, and an optional ``deploy.json``
   descriptor). Each is packed reproducibly (same sources, same bytes, same digest) and
   stored through the same path as an uploaded image (with core packages allowed), then
   its descriptor is deployed through the same path as ``POST /deployments`` and the revision
   is awaited. A restart is a no-op all the way down: the same digest stores nothing, the
   same manifest adds no revision, and the core device restored its mini-manifests from the
   store, so nothing is pushed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from orchestrator.app_build import BuildError, pack
from orchestrator.app_deploy import AppDeployer
from orchestrator.app_image import ImageError
from orchestrator.apps import AppRegistry
from orchestrator.config import BUILTIN_APPS
from orchestrator.core_device import CORE_LABELS
from orchestrator.deployments import Deployments
from orchestrator.descriptors import parse_descriptor
from orchestrator.environments import Environment, EnvironmentRegistry
from orchestrator.errors import OrchestratorError
from orchestrator.lifecycle import State
from orchestrator.store import Store

__all__ = [
    "CORE_ENVIRONMENT",
    "DEFAULT_BUILTIN_APPS",
    "SCHEMA_VERSION",
    "BootstrapError",
    "Bootstrapped",
    "StateMeta",
    "bootstrap",
    "ensure_core_environment",
    "init_state",
]

SCHEMA_VERSION = 1
META_TABLE = "meta"
META_KEY = "orchestrator"
CORE_ENVIRONMENT = "orchestrator"
DEFAULT_BUILTIN_APPS = BUILTIN_APPS
DESCRIPTOR = "deploy.json"


class BootstrapError(Exception):
    """Start-up cannot go on; the message names the app (or the state) to blame."""


@dataclass(frozen=True)
class StateMeta:
    schema_version: int
    orchestrator_id: str
    created_at: float


@dataclass(frozen=True)
class Bootstrapped:
    """One built-in app after :func:`bootstrap`: what it stored and deployed."""

    app: str  # name@version
    stored: bool  # False: the same image was already stored
    deployment: str | None  # deployment id (None: the app has no deploy.json)
    revision: int | None  # revision added by this start (None: nothing changed)


async def init_state(store: Store, *, clock: float | None = None) -> StateMeta:
    """The orchestrator's identity, created on the first start; refuses a newer schema."""
    docs = [d for d in await store.all(META_TABLE) if d.get("key") == META_KEY]
    if docs:
        doc = docs[0]
        version = doc.get("schemaVersion")
        if not isinstance(version, int) or version < 1:
            raise BootstrapError(f"the state's schemaVersion {version!r} is not a version")
        if version > SCHEMA_VERSION:
            raise BootstrapError(
                f"the state was written by a newer orchestrator (schema {version}; this one "
                f"understands up to {SCHEMA_VERSION}): upgrade, or use another --state-dir"
            )
        return StateMeta(version, str(doc["orchestratorId"]), float(doc.get("createdAt", 0.0)))
    meta = StateMeta(SCHEMA_VERSION, uuid.uuid4().hex, time.time() if clock is None else clock)
    await store.put(
        META_TABLE,
        "key",
        {
            "key": META_KEY,
            "schemaVersion": meta.schema_version,
            "orchestratorId": meta.orchestrator_id,
            "createdAt": meta.created_at,
        },
    )
    return meta


async def ensure_core_environment(environments: EnvironmentRegistry) -> None:
    """The built-in environment ``orchestrator`` (the core device's label), if missing.

    An operator's own definition of it (stored, or from the environments file) is kept.
    """
    if environments.find(CORE_ENVIRONMENT) is None:
        await environments.put(
            Environment(
                name=CORE_ENVIRONMENT,
                labels=dict(CORE_LABELS),
                description="the orchestrator itself: runs the built-in packages",
            )
        )


async def bootstrap(
    folder: Path,
    *,
    apps: AppRegistry,
    environments: EnvironmentRegistry,
    deployer: AppDeployer,
    deployments: Deployments,
    settle_s: float = 60.0,
) -> list[Bootstrapped]:
    """Store and deploy every built-in app in ``folder`` (see the module docstring).

    Raises :class:`BootstrapError` naming the app when one is refused, its descriptor is
    unusable, or its revision does not become ACTIVE within ``settle_s``.
    """
    await ensure_core_environment(environments)
    done: list[Bootstrapped] = []
    for source in await asyncio.to_thread(_app_folders, folder):
        try:
            done.append(await _one(source, apps, deployer, deployments, settle_s))
        except BootstrapError as err:
            raise BootstrapError(f"built-in app {source.name}: {err}") from err
        except OrchestratorError as err:
            where = f" (field {err.field})" if err.field else ""
            raise BootstrapError(f"built-in app {source.name}: {err.message}{where}") from err
        except ImageError as err:
            raise BootstrapError(
                f"built-in app {source.name}: {err.message} (field {err.field})"
            ) from err
        except (BuildError, OSError, ValueError) as err:
            raise BootstrapError(f"built-in app {source.name}: {err}") from err
    return done


def _app_folders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise BootstrapError(f"cannot read the built-in apps folder {folder}: {err}") from err


async def _one(
    source: Path,
    apps: AppRegistry,
    deployer: AppDeployer,
    deployments: Deployments,
    settle_s: float,
) -> Bootstrapped:
    data = await asyncio.to_thread(pack, source, allow_core=True)
    record, stored = await apps.add(data, allow_core=True)
    descriptor_path = source / DESCRIPTOR
    if not await asyncio.to_thread(descriptor_path.is_file):
        return Bootstrapped(record.ref, stored, None, None)
    body = await asyncio.to_thread(descriptor_path.read_bytes)
    descriptor = parse_descriptor(body, "application/json")
    dep, added = await deployer.deploy(descriptor)
    if added is not None:
        dep = await deployments.wait_settled(dep.id, added, settle_s)
        rev = dep.revision(added)
        if not rev.settled:
            raise BootstrapError(
                f"deployment {dep.name} revision {added} did not settle within {settle_s:g} s "
                f"(state {rev.state.value})"
            )
        if rev.state != State.ACTIVE:
            raise BootstrapError(
                f"deployment {dep.name} revision {added} is {rev.state.value}: {rev.error}"
            )
    return Bootstrapped(record.ref, stored, dep.id, added)
