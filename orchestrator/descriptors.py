"""Deployment descriptors: "deploy this app image to that environment, with these params".

Pure functions, no I/O. A descriptor names an app (``name``, ``name@version``, or the
``/apps/{name}/{version}`` URL of another orchestrator, then with its ``digest``), an
environment, and params; :func:`derive` turns it, the stored app and the environment into the
:class:`~orchestrator.model.Manifest` that goes through the ordinary deployment path.

Every refusal is an orchestrator error naming the field: 400 when the body does not decode,
422 when it decodes but is not a usable descriptor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from orchestrator.errors import BadRequest, Unprocessable
from orchestrator.manifests import MAX_PARTITIONS, NAME_PATTERN, locate_error
from orchestrator.model import Constraints, Limits, Manifest, Step
from supervisor.protocol import check_name

if TYPE_CHECKING:
    from orchestrator.apps import AppRecord
    from orchestrator.environments import Environment

__all__ = [
    "SCHEMA_VERSION",
    "Descriptor",
    "Params",
    "derive",
    "descriptor_from",
    "is_descriptor",
    "is_remote",
    "merge_limits",
    "parse_descriptor",
    "sniff_descriptor",
    "split_app",
]

SCHEMA_VERSION = 1
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
_MSGPACK_TYPES = frozenset(
    {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
)
_TOML = "application/toml"


class Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``zones``: a subset of the environment's (default: all of them); ``limitations``:
    ``"package.func"`` → limits overriding the environment's and the pipeline's;
    ``partitions``: independent copies of the pipeline (cannot change once deployed)."""

    zones: list[str] | None = None
    limitations: dict[str, Limits] = {}
    partitions: int = 1


class Descriptor(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``app``: ``name``, ``name@version`` or an ``http(s)://…/apps/{name}/{version}`` URL.
    ``name``: the deployment's (default ``{app name}-{environment}``); ``digest``
    (``sha256:<hex>``) pins the image's content and is required for a URL; ``pipeline``
    picks one of the app's pipelines (default: its first)."""

    schemaVersion: int
    app: str
    environment: str
    params: Params = Params()
    name: str | None = None
    digest: str | None = None
    pipeline: str | None = None


def is_descriptor(doc: Mapping[str, Any]) -> bool:
    """Whether a decoded body is a descriptor rather than a manifest (which has ``sequence``)."""
    return "schemaVersion" in doc and "app" in doc and "environment" in doc


def is_remote(app: str) -> bool:
    return app.lower().startswith(("http://", "https://"))


def split_app(app: str) -> tuple[str, str | None]:
    """``name@version`` → (name, version); ``name`` → (name, None). Not for URLs."""
    name, sep, version = app.partition("@")
    return name, (version if sep else None)


def _decode(body: bytes, content_type: str) -> Any:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _MSGPACK_TYPES:
        return msgspec.msgpack.decode(body)
    if media == _TOML:
        return msgspec.toml.decode(body)
    return msgspec.json.decode(body)


def sniff_descriptor(body: bytes, content_type: str) -> Descriptor | None:
    """The descriptor in ``body``, or None when the body is something else (a manifest, or
    undecodable: the manifest parser then gives its usual answer)."""
    try:
        doc = _decode(body, content_type)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict) or not is_descriptor(doc):
        return None
    return descriptor_from(doc)


def parse_descriptor(body: bytes, content_type: str = "application/json") -> Descriptor:
    """Decode and validate; JSON unless ``content_type`` names MessagePack or TOML."""
    try:
        doc = _decode(body, content_type)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
        raise BadRequest(f"descriptor is not decodable: {err}") from err
    if not isinstance(doc, dict):
        raise Unprocessable("a descriptor is an object")
    return descriptor_from(doc)


def descriptor_from(doc: Mapping[str, Any]) -> Descriptor:
    try:
        descriptor = msgspec.convert(doc, Descriptor)
    except msgspec.ValidationError as err:
        field, message = locate_error(str(err))
        raise Unprocessable(message, field=field or None) from err
    _validate(descriptor)
    return descriptor


def _name(value: str, field: str) -> None:
    if not NAME_PATTERN.fullmatch(value):
        raise Unprocessable(
            f"{value[:80]!r} is not a name: 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            field=field,
        )


def _validate(d: Descriptor) -> None:
    if d.schemaVersion != SCHEMA_VERSION:
        raise Unprocessable(
            f"unsupported schemaVersion {d.schemaVersion} (this orchestrator reads "
            f"{SCHEMA_VERSION})",
            field="schemaVersion",
        )
    if is_remote(d.app):
        if d.digest is None:
            raise Unprocessable("an app given by URL needs its digest", field="digest")
        if len(d.app) > 2048 or not d.app.isprintable() or " " in d.app:
            raise Unprocessable("not a usable URL", field="app")
    else:
        name, version = split_app(d.app)
        _name(name, "app")
        if version is not None:
            try:
                check_name(version, "app")
            except ValueError as err:
                raise Unprocessable(str(err), field="app") from err
    _name(d.environment, "environment")
    if d.name is not None:
        _name(d.name, "name")
    if d.pipeline is not None:
        _name(d.pipeline, "pipeline")
    if d.digest is not None and not DIGEST_PATTERN.fullmatch(d.digest):
        raise Unprocessable("digest must be sha256:<64 lowercase hex digits>", field="digest")
    if not 1 <= d.params.partitions <= MAX_PARTITIONS:
        raise Unprocessable(f"must be between 1 and {MAX_PARTITIONS}", field="params.partitions")
    for i, zone in enumerate(d.params.zones or []):
        if not zone or not zone.isprintable():
            raise Unprocessable("a zone is a non-empty printable name", field=f"params.zones[{i}]")
    for key, limits in d.params.limitations.items():
        if (attr := limits.nonpositive()) is not None:
            raise Unprocessable("must be positive", field=f"params.limitations[{key!r}].{attr}")


def merge_limits(*layers: Limits | None) -> Limits:
    """Field by field, the last layer that sets a field wins."""
    fields: dict[str, int] = {}
    for layer in layers:
        if layer is None:
            continue
        for attr in Limits.__struct_fields__:
            value = getattr(layer, attr)
            if value is not None:
                fields[attr] = value
    return Limits(**fields)


def derive(descriptor: Descriptor, app: AppRecord, env: Environment) -> Manifest:
    """The manifest a descriptor stands for, given the concrete app version and environment.

    Deterministic: the same inputs give an equal manifest (and so the same manifest digest,
    which makes re-posting a descriptor a no-op).
    """
    pipelines = {p.name: p for p in app.pipelines}
    if descriptor.pipeline is None:
        if not app.pipelines:
            raise Unprocessable(f"app {app.name}@{app.version} has no pipeline", field="pipeline")
        pipeline = app.pipelines[0]
    elif descriptor.pipeline in pipelines:
        pipeline = pipelines[descriptor.pipeline]
    else:
        known = ", ".join(sorted(pipelines)) or "none"
        raise Unprocessable(
            f"app {app.name}@{app.version} has no pipeline {descriptor.pipeline!r} (has: {known})",
            field="pipeline",
        )
    sequence: list[Step] = []
    keys: list[str] = []
    for step in pipeline.sequence:
        ref = app.packages.get(step.module) or app.uses.get(step.module)
        if ref is None:  # read_image refuses such an image; a stored record always has it
            raise Unprocessable(f"pipeline step names unknown package {step.module!r}")
        sequence.append(Step(module=ref, func=step.func))
        keys.append(f"{step.module}.{step.func}")
    params = descriptor.params
    if params.zones is not None:
        for i, zone in enumerate(params.zones):
            if env.zones and zone not in env.zones:
                raise Unprocessable(
                    f"zone {zone!r} is not one of environment {env.name}'s "
                    f"({', '.join(env.zones)})",
                    field="params.zones",
                    detail={"index": i},
                )
        zones = list(params.zones)
    else:
        zones = list(env.zones)
    for key in params.limitations:
        if key not in keys:
            raise Unprocessable(
                f"{key!r} is not a step of pipeline {pipeline.name} (steps: {', '.join(keys)})",
                field="params.limitations",
            )
    limits: dict[str, Limits] = {}
    for key in keys:
        merged = merge_limits(env.limits, pipeline.limits.get(key), params.limitations.get(key))
        if merged != Limits():
            limits[key] = merged
    name = descriptor.name or f"{app.name}-{env.name}"
    if not NAME_PATTERN.fullmatch(name):
        raise Unprocessable(
            f"the derived deployment name {name!r} is too long or not a name; set 'name'",
            field="name",
        )
    return Manifest(
        name=name,
        sequence=sequence,
        constraints=Constraints(labels=dict(env.labels), zones=zones),
        limits=dict(sorted(limits.items())),
        spread=pipeline.spread,
        partitions=params.partitions,
        app=f"{app.name}@{app.version}",
    )
