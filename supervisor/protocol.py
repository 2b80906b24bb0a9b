"""The supervisor's wire protocol: every body it accepts or produces, as msgspec Structs.

This is the wasmiot supervisor protocol (DeploymentNode "mini-manifest", request-history
entries, device description, health) as a strict superset. Reference fields keep their
names and meanings; Baton's additions are optional fields, and inside the mini-manifest they
all live under the single top-level key ``baton``, because the reference supervisor builds its
endpoint and mount objects with ``Endpoint(**obj)`` and crashes on unknown keys there.

Unknown keys are ignored everywhere (forward compatibility). Bodies are decoded exactly once,
at the HTTP boundary, with :func:`decode`; a failure raises :class:`ProtocolError` carrying
the JSON path of the offending field. This module is pure and is the only part of
``supervisor`` the orchestrator may import.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal, TypeVar

import msgspec

API_VERSION = 1
"""Baton protocol level, announced in the description, mDNS TXT ``api`` and the mini-manifest."""

SERVICE_TYPE = "_webthing._tcp.local."
DESCRIPTION_PATH = "/.well-known/wasmiot-device-description"

JSON = "application/json"
MSGPACK = "application/msgpack"

Stage = Literal["deployment", "execution", "output"]

# Names that end up in file system paths or URL segments: one safe component each.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}$")
_SHA256 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


class ProtocolError(ValueError):
    """A body that cannot be decoded (``status`` 400) or does not validate (422)."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


# --- mini-manifest (DeploymentNode) -------------------------------------------------------


class Schema(msgspec.Struct, omit_defaults=True):
    """An OpenAPI schema fragment; only ``type`` and ``format`` matter to the supervisor."""

    type: str | None = None
    format: str | None = None


# Structs a reference supervisor builds with ``Cls(**obj)`` always encode their defaults (it
# has no defaults for them); optional keys use UNSET, which msgspec leaves out entirely.


class Parameter(msgspec.Struct):
    """An OpenAPI parameter object describing one function argument."""

    name: str
    in_: str = msgspec.field(name="in", default="query")
    description: str | msgspec.UnsetType = msgspec.UNSET
    required: bool = True
    schema: Schema | msgspec.UnsetType = msgspec.UNSET


class RequestBody(msgspec.Struct, omit_defaults=True):
    media_type: str = "multipart/form-data"
    schema: dict[str, Any] | None = None
    encoding: dict[str, Any] | None = None


class EndpointRequest(msgspec.Struct):
    parameters: list[Parameter] = []
    request_body: RequestBody | msgspec.UnsetType = msgspec.UNSET


class EndpointResponse(msgspec.Struct):
    media_type: str = JSON
    schema: Schema | msgspec.UnsetType = msgspec.UNSET


class Endpoint(msgspec.Struct):
    """Where a function is served: ``url`` + ``path``, with its method and I/O description."""

    url: str
    path: str
    method: str = "get"
    request: EndpointRequest = msgspec.field(default_factory=EndpointRequest)
    response: EndpointResponse = msgspec.field(default_factory=EndpointResponse)

    @property
    def result_type(self) -> str | None:
        """The JSON type of the function's value; ``None`` for file responses (value as is)."""
        schema = self.response.schema
        if not self.response.media_type.startswith(JSON) or not isinstance(schema, Schema):
            return None
        return schema.type

    @property
    def full_url(self) -> str:
        return self.url.rstrip("/") + "/" + self.path.lstrip("/")


class Mount(msgspec.Struct):
    """A file a function reads or writes, by name relative to its working directory."""

    path: str
    stage: Stage
    media_type: str = "application/octet-stream"


class FunctionMounts(msgspec.Struct):
    execution: list[Mount] = []
    deployment: list[Mount] = []
    output: list[Mount] = []


class ModuleUrls(msgspec.Struct):
    binary: str
    description: str | msgspec.UnsetType = msgspec.UNSET
    other: dict[str, str] = {}


class ModuleRef(msgspec.Struct):
    id: str
    name: str
    urls: ModuleUrls


class FunctionLink(msgspec.Struct):
    """Chaining instruction: the function's own endpoint and the next hop (``None`` = last)."""

    from_: Endpoint | None = msgspec.field(name="from", default=None)
    to: Endpoint | None = None


class Instructions(msgspec.Struct):
    modules: dict[str, dict[str, FunctionLink]] = {}


class Limits(msgspec.Struct, omit_defaults=True):
    """Per-function guest limits; ``None`` means the supervisor's default."""

    timeoutMs: int | None = None
    fuel: int | None = None
    memoryBytes: int | None = None


class ModuleExtension(msgspec.Struct, omit_defaults=True):
    """Content digests (``sha256:<hex>``) of a module's binary and of its data files by mount."""

    digest: str | None = None
    files: dict[str, str] = {}


class ParamSpec(msgspec.Struct):
    """Typed parameter metadata: integer, number, string, boolean, object or array."""

    name: str
    type: str = "integer"


class BatonExtension(msgspec.Struct):
    """Everything Baton adds to a mini-manifest, under its single top-level ``baton`` key."""

    apiVersion: int = API_VERSION
    modules: dict[str, ModuleExtension] = {}
    limits: dict[str, dict[str, Limits]] = {}
    params: dict[str, dict[str, list[ParamSpec]]] = {}


class DeploymentNode(msgspec.Struct):
    """The per-device deployment document pushed to ``POST /deploy``."""

    deploymentId: str
    modules: list[ModuleRef]
    endpoints: dict[str, dict[str, Endpoint]]
    instructions: Instructions
    mounts: dict[str, dict[str, FunctionMounts]]
    baton: BatonExtension | None = None

    def limits_for(self, module: str, func: str) -> Limits:
        if self.baton is None:
            return Limits()
        return self.baton.limits.get(module, {}).get(func, Limits())

    def module_extension(self, module: str) -> ModuleExtension:
        if self.baton is None:
            return ModuleExtension()
        return self.baton.modules.get(module, ModuleExtension())

    def params_for(self, module: str, func: str) -> list[ParamSpec]:
        """Typed parameters, from ``baton.params`` or else the endpoint's OpenAPI schema."""
        if self.baton is not None and func in self.baton.params.get(module, {}):
            return self.baton.params[module][func]
        endpoint = self.endpoints[module][func]
        return [
            ParamSpec(
                p.name,
                p.schema.type if isinstance(p.schema, Schema) and p.schema.type else "integer",
            )
            for p in endpoint.request.parameters
            if p.in_ == "query"
        ]

    def mounts_for(self, module: str, func: str) -> FunctionMounts:
        return self.mounts.get(module, {}).get(func, FunctionMounts())

    def next_hop(self, module: str, func: str) -> Endpoint | None:
        link = self.instructions.modules.get(module, {}).get(func)
        return link.to if link is not None else None


def check_name(value: str, field: str) -> None:
    """Refuse a name that could escape a directory or a URL segment."""
    if not _SAFE_NAME.match(value) or value in {".", ".."} or ".." in value:
        raise ProtocolError(f"unsafe name {value!r}", field=field)


def validate_node(node: DeploymentNode) -> None:
    """Check cross-references and names that msgspec's types cannot express.

    Raises :class:`ProtocolError` naming the first offending field.
    """
    check_name(node.deploymentId, "deploymentId")
    if not node.modules:
        raise ProtocolError("no modules listed", field="modules")
    names: set[str] = set()
    for i, mod in enumerate(node.modules):
        check_name(mod.name, f"modules[{i}].name")
        if mod.name in names:
            raise ProtocolError(f"module {mod.name!r} listed twice", field=f"modules[{i}].name")
        names.add(mod.name)
        for mount in mod.urls.other:
            check_name(mount, f"modules[{i}].urls.other.{mount}")
    for mod_name, funcs in node.endpoints.items():
        if mod_name not in names:
            raise ProtocolError(
                f"endpoint for unlisted module {mod_name!r}", field=f"endpoints.{mod_name}"
            )
        for func in funcs:
            check_name(func, f"endpoints.{mod_name}.{func}")
    for mod_name, funcs_mounts in node.mounts.items():
        for func, fm in funcs_mounts.items():
            for stage in ("execution", "deployment", "output"):
                for j, m in enumerate(getattr(fm, stage)):
                    where = f"mounts.{mod_name}.{func}.{stage}[{j}].path"
                    check_name(m.path, where)
                    if m.stage != stage:
                        raise ProtocolError(
                            f"mount listed under {stage} has stage {m.stage}", field=where
                        )
            owner = next((x for x in node.modules if x.name == mod_name), None)
            for j, m in enumerate(fm.deployment):
                if owner is None or m.path not in owner.urls.other:
                    raise ProtocolError(
                        f"deployment mount {m.path!r} has no data file URL",
                        field=f"mounts.{mod_name}.{func}.deployment[{j}].path",
                    )
    for mod_name, funcs_links in node.instructions.modules.items():
        for func in funcs_links:
            if func not in node.endpoints.get(mod_name, {}):
                raise ProtocolError(
                    f"instruction for unknown endpoint {mod_name}.{func}",
                    field=f"instructions.modules.{mod_name}.{func}",
                )
    if node.baton is not None:
        for mod_name, ext in node.baton.modules.items():
            where = f"baton.modules.{mod_name}"
            if mod_name not in names:
                raise ProtocolError(f"digest for unlisted module {mod_name!r}", field=where)
            if ext.digest is not None and not _SHA256.match(ext.digest):
                raise ProtocolError("digest must be sha256:<64 hex>", field=f"{where}.digest")
            for mount, digest in ext.files.items():
                if not _SHA256.match(digest):
                    raise ProtocolError(
                        "digest must be sha256:<64 hex>", field=f"{where}.files.{mount}"
                    )
        for mod_name, funcs_limits in node.baton.limits.items():
            for func, lim in funcs_limits.items():
                for key in ("timeoutMs", "fuel", "memoryBytes"):
                    value = getattr(lim, key)
                    if value is not None and value <= 0:
                        raise ProtocolError(
                            "limits must be positive", field=f"baton.limits.{mod_name}.{func}.{key}"
                        )


def node_digest(node: DeploymentNode) -> str:
    """Hex sha256 of a mini-manifest's canonical form (keys sorted): what a device acknowledges
    a deployment with, and what an orchestrator compares to know a device is up to date. Both
    sides must compute it the same way, so it lives here."""
    canonical = msgspec.json.encode(msgspec.to_builtins(node), order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def normalise_digest(digest: str) -> str:
    """``sha256:<hex>`` or bare hex → bare lowercase hex."""
    return digest.removeprefix("sha256:").lower()


# --- request history ------------------------------------------------------------------------


class HistoryEntry(msgspec.Struct, omit_defaults=False):
    """One function call as ``GET /request-history/{id}`` shows it.

    Reference fields: ``request_id`` … ``success``; ``result`` is the next hop's resultUrl for a
    chained step, ``[json, null]`` / ``[null, [files]]`` for the last one, an error string on
    failure. Baton adds ``status`` (pending|done|failed), the typed ``value``, ``outputs``
    (file URLs), ``next`` (the next hop's resultUrl), ``error`` details and timings in ms.
    """

    request_id: str
    deployment_id: str
    module_name: str
    function_name: str
    method: str
    request_args: dict[str, str]
    request_files: dict[str, str]
    work_queued_at: str
    result: Any = None
    success: bool = False
    status: str = "pending"
    value: Any = None
    outputs: list[str] = []
    next: str | None = None
    error: dict[str, Any] | None = None
    timings: dict[str, float] = {}


# --- device description and health ----------------------------------------------------------


class Problem(msgspec.Struct, omit_defaults=True):
    """Error body: the reference's ``status``/``result`` plus ``type``, ``detail``, ``field``."""

    status: str
    result: str
    type: str
    detail: str | None = None
    field: str | None = None


T = TypeVar("T")


def decode(body: bytes, type_: type[T], content_type: str = JSON) -> T:
    """Decode a request body once, at the boundary, into ``type_``.

    Undecodable bytes raise ``ProtocolError(status=400)``; a body of the wrong shape raises
    ``ProtocolError(status=422)`` naming the JSON path of the field.
    """
    try:
        if content_type.startswith(MSGPACK):
            raw = msgspec.msgpack.decode(body)
        else:
            raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
        # msgspec reports some invalid UTF-8 as a UnicodeDecodeError, not a DecodeError.
        raise ProtocolError(f"body is not valid {_kind(content_type)}: {err}", status=400) from err
    if not isinstance(raw, dict):
        raise ProtocolError("body must be an object", field="$", status=400)
    try:
        return msgspec.convert(raw, type_, str_keys=True)
    except msgspec.ValidationError as err:
        raise ProtocolError(str(err), field=_field_of(str(err))) from err


def encode(obj: Any, content_type: str = JSON) -> bytes:
    if content_type.startswith(MSGPACK):
        return msgspec.msgpack.encode(obj)
    return msgspec.json.encode(obj)


def _kind(content_type: str) -> str:
    return "MessagePack" if content_type.startswith(MSGPACK) else "JSON"


def _field_of(message: str) -> str | None:
    """msgspec says ``... - at `$.modules[0].name``` or ``missing required field `x```."""
    at = re.search(r"at `\$\.?([^`]*)`", message)
    missing = re.search(r"missing required field `([^`]+)`", message)
    if missing:
        prefix = at.group(1) + "." if at and at.group(1) else ""
        return prefix + missing.group(1)
    if at:
        return at.group(1) or "$"
    return None
