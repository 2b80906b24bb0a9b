"""User manifests: decode and validate a posted body, check it against stored modules, digest it.

Pure functions, no I/O. Every rejection is a :class:`ManifestError` that names the offending
field as a JSON path (``sequence[1].func``, ``limits["m.f"].fuel``; ``""`` is the whole
document) and carries the HTTP status the API answers with:

- 400: the body does not decode in the format its content type names;
- 422: the body decodes but is not a valid manifest, or refers to modules or functions the
  orchestrator does not have.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from orchestrator.model import Manifest, ModuleRecord

__all__ = [
    "IMMUTABLE_FIELDS",
    "NAME_PATTERN",
    "ManifestError",
    "check_references",
    "immutable_change",
    "locate_error",
    "manifest_digest",
    "parse_manifest",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Fields that may not change between revisions of one deployment (409 when they do).
IMMUTABLE_FIELDS: tuple[str, ...] = ("name", "partitions", "app")
MAX_PARTITIONS = 64

_JSON = "application/json"
_MSGPACK = "application/msgpack"
_TOML = "application/toml"
# Aliases seen in the wild for MessagePack, which has no single registered media type. Any other
# type means JSON: clients often send none (aiohttp then reports application/octet-stream) or
# curl's default form type, and a 400 saying "not valid json" helps them more than a 415.
_MEDIA_TYPES = {
    _MSGPACK: _MSGPACK,
    "application/x-msgpack": _MSGPACK,
    "application/vnd.msgpack": _MSGPACK,
    _TOML: _TOML,
}

# msgspec reports "<what> - at `$.a[0].b`"; the path is absent when the error is at the root.
_MSGSPEC_ERROR = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
# Errors about a field that is absent or unexpected name it in the message, not in the path.
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]*)`")


class ManifestError(ValueError):
    """A manifest was refused: ``field`` is its JSON path, ``status`` the HTTP status to answer."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status


def parse_manifest(body: bytes, content_type: str = _JSON) -> Manifest:
    """Decode ``body`` as a manifest, JSON unless ``content_type`` says MessagePack or TOML.

    Media-type parameters (``; charset=utf-8``) and case are ignored; any type other than
    MessagePack's or ``application/toml`` means JSON. Unknown fields, wrong types, an empty
    ``name`` or ``sequence``, a name outside :data:`NAME_PATTERN` and a non-positive limit are
    refused with 422; an undecodable body with 400.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    kind = _MEDIA_TYPES.get(media, _JSON)
    try:
        if kind == _MSGPACK:
            manifest = msgspec.msgpack.decode(body, type=Manifest)
        elif kind == _TOML:
            manifest = msgspec.toml.decode(body, type=Manifest)
        else:
            manifest = msgspec.json.decode(body, type=Manifest)
    except msgspec.ValidationError as err:  # a subclass of DecodeError: test it first
        field, message = locate_error(str(err))
        raise ManifestError(field, message, 422) from err
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
        # TOML is decoded as text first, so bad UTF-8 surfaces as UnicodeDecodeError; the
        # TOML parser recurses per nesting level, so a hostile document can exhaust the stack.
        raise ManifestError(
            "", f"body is not valid {kind.removeprefix('application/')}: {err}", 400
        ) from err
    _validate(manifest)
    return manifest


def locate_error(error: str) -> tuple[str, str]:
    """Split a msgspec validation message into (field path, message).

    The path is a JSON path without the leading ``$.`` (``sequence[1].func``), ending in the
    field's name when the message is about a missing or unknown field; ``""`` is the root.
    The message is msgspec's, without its ``- at `$...``` suffix.
    """
    match = _MSGSPEC_ERROR.match(error)
    assert match is not None  # the pattern matches any string
    message, path = match["msg"], (match["path"] or "").removeprefix(".")
    named = _NAMED_FIELD.match(message)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
    return path, message


def _validate(manifest: Manifest) -> None:
    """The rules the schema cannot express."""
    if not manifest.name:
        raise ManifestError("name", "must not be empty")
    if not NAME_PATTERN.fullmatch(manifest.name):
        raise ManifestError(
            "name", "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    if not manifest.sequence:
        raise ManifestError("sequence", "must list at least one step")
    if not 1 <= manifest.partitions <= MAX_PARTITIONS:
        raise ManifestError("partitions", f"must be between 1 and {MAX_PARTITIONS}")
    for key, limits in manifest.limits.items():
        if (attr := limits.nonpositive()) is not None:
            raise ManifestError(f"limits[{_quote(key)}].{attr}", "must be positive")


def _quote(key: str) -> str:
    return msgspec.json.encode(key).decode()


def check_references(manifest: Manifest, modules: Mapping[str, ModuleRecord]) -> None:
    """Raise ManifestError(422) for the first step whose module or function does not exist.

    ``modules`` is keyed by the exact ``step.module`` string (``name`` or ``name@version``), so
    resolving a bare name to its latest version is the caller's job.
    """
    for i, step in enumerate(manifest.sequence):
        record = modules.get(step.module)
        if record is None:
            raise ManifestError(f"sequence[{i}].module", f"unknown module {step.module!r}")
        if step.func not in record.functions:
            known = ", ".join(sorted(record.functions)[:20]) or "none"
            raise ManifestError(
                f"sequence[{i}].func",
                f"module {record.ref} has no described function {step.func!r} (has: {known})",
            )


def manifest_digest(manifest: Manifest) -> str:
    """Sha256 hex of the canonical encoding: equal content gives an equal digest.

    Key order in the posted body does not matter (keys are sorted), and neither does spelling
    out a default: msgspec omits a default only when it is the very default object, so an
    explicit ``"constraints": {}`` or an all-empty ``limits`` entry is dropped here.
    """
    doc: dict[str, Any] = msgspec.to_builtins(manifest)
    if doc.get("constraints") == {}:
        del doc["constraints"]
    if "limits" in doc:
        doc["limits"] = {k: v for k, v in doc["limits"].items() if v}
        if not doc["limits"]:
            del doc["limits"]
    return hashlib.sha256(msgspec.json.encode(doc, order="sorted")).hexdigest()


def immutable_change(old: Manifest, new: Manifest) -> str | None:
    """The first field of :data:`IMMUTABLE_FIELDS` whose value differs, or None.

    ``app`` compares the application *name*: a new version of the same app is the next
    revision, another app under the same deployment name is a conflict.
    """
    for field in IMMUTABLE_FIELDS:
        before, after = getattr(old, field), getattr(new, field)
        if field == "app":
            before = before.partition("@")[0] if before else before
            after = after.partition("@")[0] if after else after
        if before != after:
            return field
    return None
