"""Environments: named device groups a deployment descriptor targets, with their defaults.

An environment says which devices may run an app (every label must match; ``zones`` empty =
any zone) and the default limits of every function deployed there. They are stored in the
state file (``PUT /environments/{name}``) and may also come from a TOML file given with
``--environments`` (``BATON_ENVIRONMENTS``)::

    [lab]
    labels = { site = "lab" }
    zones = ["bench"]
    limits = { timeoutMs = 2000 }
    description = "the test bench"

The file is read at every start-up and wins over a stored environment of the same name (an
operator's file is the source of truth for what it lists; an API change to such an
environment lasts until the next restart).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

import msgspec

from orchestrator.errors import NotFound, Unprocessable
from orchestrator.manifests import NAME_PATTERN
from orchestrator.model import Limits

TABLE = "environments"


class Tables(Protocol):
    """What the registry needs of :class:`orchestrator.store.Store` (kept structural so that
    configuration code can read environment files without depending on the store)."""

    async def all(self, table: str) -> list[dict[str, Any]]: ...

    async def put(self, table: str, key: str, doc: dict[str, Any]) -> None: ...

    async def delete(self, table: str, key: str, value: str) -> None: ...


class EnvironmentFileError(ValueError):
    """A file of environments that cannot be used (the message names the file and entry)."""


class EnvironmentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What ``PUT /environments/{name}`` takes (``name``, when given, must be the path's)."""

    labels: dict[str, str] = {}
    zones: list[str] = []
    limits: Limits = Limits()
    description: str = ""
    name: str | None = None


class Environment(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    name: str
    labels: dict[str, str] = {}
    zones: list[str] = []
    limits: Limits = Limits()  # defaults for every function deployed here
    description: str = ""


def make_environment(name: str, spec: EnvironmentSpec) -> Environment:
    """Validate ``spec`` under ``name``; raises Unprocessable naming the field."""
    if not NAME_PATTERN.fullmatch(name):
        raise Unprocessable(
            f"{name[:80]!r} is not a name: 1-64 letters, digits, '_', '.' or '-'", field="name"
        )
    if spec.name is not None and spec.name != name:
        raise Unprocessable(
            f"the body names {spec.name[:80]!r} but the path names {name!r}", field="name"
        )
    for key, value in spec.labels.items():
        if not key or len(key) > 128 or not key.isprintable() or not value.isprintable():
            raise Unprocessable(f"unusable label {key[:40]!r}", field=f"labels.{key[:40]}")
    if len(set(spec.zones)) != len(spec.zones):
        raise Unprocessable("a zone is listed twice", field="zones")
    for i, zone in enumerate(spec.zones):
        if not zone or len(zone) > 128 or not zone.isprintable():
            raise Unprocessable("a zone is a non-empty printable name", field=f"zones[{i}]")
    if (attr := spec.limits.nonpositive()) is not None:
        raise Unprocessable("must be positive", field=f"limits.{attr}")
    if len(spec.description) > 1000:
        raise Unprocessable("at most 1000 characters", field="description")
    return Environment(
        name=name,
        labels=dict(sorted(spec.labels.items())),
        zones=list(spec.zones),
        limits=spec.limits,
        description=spec.description,
    )


def parse_environments_file(text: str, source: str = "environments file") -> list[Environment]:
    """Every table of a TOML document as an environment; raises :class:`EnvironmentFileError`."""
    try:
        doc = msgspec.toml.decode(text.encode())
    except (msgspec.DecodeError, RecursionError) as err:
        raise EnvironmentFileError(f"{source}: not valid TOML: {err}") from err
    if not isinstance(doc, dict):
        raise EnvironmentFileError(f"{source}: expected tables of environments")
    found: list[Environment] = []
    for name, body in sorted(doc.items()):
        if not isinstance(body, dict):
            raise EnvironmentFileError(f"{source}: [{name}] must be a table")
        try:
            spec = msgspec.convert(body, EnvironmentSpec)
            found.append(make_environment(name, spec))
        except msgspec.ValidationError as err:
            raise EnvironmentFileError(f"{source}: [{name}]: {err}") from err
        except Unprocessable as err:
            raise EnvironmentFileError(f"{source}: [{name}] {err.field}: {err.message}") from err
    return found


def load_environments_file(path: Path) -> list[Environment]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EnvironmentFileError(f"cannot read the environments file {path}: {err}") from err
    return parse_environments_file(text, str(path))


class EnvironmentRegistry:
    """Environments by name, persisted in the ``environments`` table."""

    def __init__(self, store: Tables, file: Path | None = None) -> None:
        self._store = store
        self._file = file
        self._envs: dict[str, Environment] = {}

    async def load(self) -> None:
        """Stored environments, then the file's over them (the file wins)."""
        for doc in await self._store.all(TABLE):
            env = msgspec.convert(doc["environment"], Environment)
            self._envs[env.name] = env
        if self._file is not None:
            for env in await asyncio.to_thread(load_environments_file, self._file):
                await self.put(env)

    async def put(self, env: Environment) -> bool:
        """Store ``env``; returns whether it is new (False: it replaced one)."""
        created = env.name not in self._envs
        if not created and self._envs[env.name] == env:
            return False
        await self._store.put(
            TABLE, "name", {"name": env.name, "environment": msgspec.to_builtins(env)}
        )
        self._envs[env.name] = env
        return created

    def get(self, name: str) -> Environment:
        env = self._envs.get(name)
        if env is None:
            raise NotFound(f"no environment {name[:80]!r}", field="environment")
        return env

    def find(self, name: str) -> Environment | None:
        return self._envs.get(name)

    def all(self) -> list[Environment]:
        return sorted(self._envs.values(), key=lambda e: e.name)

    async def delete(self, name: str) -> None:
        self.get(name)
        del self._envs[name]
        await self._store.delete(TABLE, "name", name)
