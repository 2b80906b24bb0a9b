"""The orchestrator's own vocabulary: manifests, modules and devices as the pure cores see them.

These are plain frozen msgspec Structs with no behaviour beyond small derived properties, so
the decision modules (``manifests``, ``placement``, ``lifecycle``, ``plan``, ``solution``)
can be pure functions over them. Wire types shared with devices live in
``supervisor.protocol``, the only part of the supervisor the orchestrator imports.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Stage = Literal["deployment", "execution", "output"]
DeviceStatus = Literal["healthy", "lost"]


class Step(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step: ``module`` (``name`` or ``name@version``) and ``func``; ``device`` pins it."""

    module: str
    func: str
    device: str | None = None


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    timeoutMs: int | None = None
    fuel: int | None = None
    memoryBytes: int | None = None

    def nonpositive(self) -> str | None:
        """The first field set to zero or less, or None. Such a budget would make every call
        fail: a typo, not a wish, so every place that accepts limits refuses it."""
        for attr in self.__struct_fields__:
            value = getattr(self, attr)
            if value is not None and value <= 0:
                return attr
        return None


class Constraints(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Where the pipeline may run: every label must match; ``zones`` empty = anywhere."""

    labels: dict[str, str] = {}
    zones: list[str] = []


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a user asks for: a named sequence of ``module.function`` steps.

    ``spread`` asks placement to put each step on a different device when another feasible
    one exists (spreading a pipeline's work over small devices), instead of the default
    preference for keeping consecutive steps on one device.

    ``partitions`` runs that many independent copies of the whole chain, on distinct devices
    where the fleet allows; executions are spread over the healthy ones. ``app`` names the
    application a deployment descriptor derived this manifest from. Neither may change once
    deployed (409).
    """

    name: str
    sequence: list[Step]
    constraints: Constraints = Constraints()
    limits: dict[str, Limits] = {}  # "module.func" -> limits
    spread: bool = False
    partitions: int = 1
    app: str | None = None


class Mount(msgspec.Struct, frozen=True):
    name: str
    stage: Stage
    mediaType: str = "application/octet-stream"


class Param(msgspec.Struct, frozen=True):
    name: str
    type: str = "integer"  # integer | number | string | boolean | object | array


class FunctionSpec(msgspec.Struct, frozen=True):
    """A described function of a module (from its functions.json)."""

    name: str
    params: list[Param] = []
    output: str | None = "integer"  # JSON type of the value; None when the result is a file
    method: str = "get"
    mounts: list[Mount] = []

    def mounts_at(self, stage: Stage) -> list[Mount]:
        return [m for m in self.mounts if m.stage == stage]


class ModuleRecord(msgspec.Struct, frozen=True):
    """A stored module: content-addressed binary, what it imports and exports, its functions."""

    name: str
    version: str
    digest: str  # sha256 hex of the wasm bytes
    imports: list[tuple[str, str]]  # (namespace, name) of function imports
    exports: dict[str, int]  # exported function name -> number of Wasm parameters
    functions: dict[str, FunctionSpec]
    data_files: dict[str, str] = {}  # mount name -> sha256 hex
    # "core": a built-in package the orchestrator runs natively (no wasm; ``digest`` is then
    # the sha256 of its canonical description).
    runtime: Literal["wasm", "core"] = "wasm"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def host_imports(self) -> frozenset[str]:
        """Import *names* the device must offer (WASI included), as wasmiot matches them."""
        return frozenset(name for _, name in self.imports)


class DeviceView(msgspec.Struct, frozen=True):
    """What placement needs to know about one device, at one moment."""

    id: str
    name: str
    interfaces: frozenset[str]
    labels: dict[str, str] = {}
    zone: str | None = None
    status: DeviceStatus = "healthy"
    cordoned: bool = False
    cpu: float = 0.0  # 0..1 busy
    memory: float = 0.0  # 0..1 used
    rtt_ms: float | None = None
    deployments: int = 0  # deployments currently placed on it (for spreading)
    # The orchestrator's own core device: runs only built-in (``runtime == "core"``) packages,
    # and label/zone constraints do not apply to it (see orchestrator.placement).
    core: bool = False
