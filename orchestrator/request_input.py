"""Reading and checking what a request to the orchestrator's API carries.

Input is untrusted. These helpers turn bodies, forms, headers, query parameters and
execution arguments into values, or refuse them with a 4xx problem (:mod:`orchestrator.errors`)
naming the field: not the format, bad UTF-8, nested too deeply, the wrong shape, unknown
fields, unsafe names, too large. They change nothing, so a refusal leaves no trace; handlers
(:mod:`orchestrator.routes` and its siblings) call them before anything is accepted or any
device is called.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, TypeVar

import msgspec
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from orchestrator.errors import BadRequest, PayloadTooLarge, Unprocessable
from orchestrator.manifests import ManifestError, parse_manifest
from orchestrator.model import Manifest

JSON = "application/json"
MSGPACK = "application/msgpack"
# The MessagePack aliases the manifest parser accepts too (there is no registered media type).
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
MAX_WAIT_S = 300.0  # the longest ``?wait=`` a request may hold a connection for
T = TypeVar("T")


async def read_bytes(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge("request body is too large") from err


def manifest_from(request: web.Request, body: bytes) -> Manifest:
    try:
        return parse_manifest(body, request.content_type or JSON)
    except ManifestError as err:
        exc = BadRequest if err.status == 400 else Unprocessable
        raise exc(str(err), field=err.field) from err
    except RecursionError as err:  # a TOML body nested thousands deep
        raise BadRequest("body is nested too deeply") from err


# msgspec ends a validation message with "- at `$.a.b`" when the error is below the root, and
# names an unknown or missing field in the message itself.
_ERROR_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]*)`")


def _error_field(message: str) -> str | None:
    match = _ERROR_PATH.search(message)
    path = match["path"] if match else ""
    named = _NAMED_FIELD.match(message)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
    return path or None


def decode_body(request: web.Request, body: bytes, kind: type[T], what: str) -> T:
    """``body`` as ``kind``: MessagePack when the content type says so, JSON otherwise.

    Whatever the bytes are (not the format, bad UTF-8, nested thousands deep, the wrong
    shape), the answer is a 400 naming the field when there is one.
    """
    msgpack = (request.content_type or "").lower() in MSGPACK_TYPES
    try:
        if msgpack:
            return msgspec.msgpack.decode(body, type=kind)
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as err:  # a subclass of DecodeError: test it first
        raise BadRequest(f"invalid {what}: {err}", field=_error_field(str(err))) from err
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
        fmt = "MessagePack" if msgpack else "JSON"
        raise BadRequest(f"{what} is not valid {fmt}: {err}") from err


async def read_form(request: web.Request, what: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart/form-data body as (text fields, file parts), each name at most once.

    The whole body counts against the request size limit (aiohttp bounds each part only),
    and a malformed body of any kind is a 400.
    """
    if request.content_type != "multipart/form-data":
        raise BadRequest(f"{what} must be multipart/form-data")
    limit = request.client_max_size
    total = 0
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise BadRequest(
                    "every part needs a field name (nested multipart is not supported)"
                )
            name = part.name
            if name in fields or name in files:
                raise BadRequest(f"the part {name!r} appears more than once", field=name)
            data = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
                data += chunk
            content = bytes(part.decode(data))
            if part.filename is None:
                try:
                    fields[name] = content.decode(part.get_charset(default="utf-8"))
                except (UnicodeDecodeError, LookupError) as err:
                    raise BadRequest(
                        f"the field {name!r} is not valid text: {err}", field=name
                    ) from err
            else:
                files[name] = content
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge(f"{what} is too large") from err
    except (ValueError, RuntimeError, LookupError, HttpProcessingError) as err:
        # aiohttp's multipart reader signals malformed input with all of these.
        raise BadRequest(f"malformed multipart body: {err}") from err
    return fields, files


def wait_param(request: web.Request) -> float | None:
    """``?wait=<seconds>``: absent or empty is no wait; anything but 0..MAX_WAIT_S is a 400."""
    raw = request.query.get("wait")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as err:
        raise BadRequest(f"wait must be a number of seconds, got {raw!r}", field="wait") from err
    if not math.isfinite(value) or not 0 <= value <= MAX_WAIT_S:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT_S:g} seconds", field="wait")
    return value


def if_match_param(request: web.Request) -> int | None:
    """``If-Match: <revision>`` (quotes allowed, as an ETag would have them)."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise BadRequest(f"If-Match must be a revision number, got {raw[:40]!r}", field="If-Match")
    return int(text)


# --- device registration bodies ------------------------------------------------------------


class ManualDevice(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /devices``: where a device that mDNS cannot reach listens (``tls``: over HTTPS)."""

    host: str | None = None
    port: int = 5000
    name: str | None = None
    addresses: list[str] = []
    tls: bool = False

    def https(self) -> bool:
        return self.tls


class ReferenceRegistration(ManualDevice, forbid_unknown_fields=False):
    """The wasmiot reference supervisor's registration body: its ``properties`` are the mDNS
    TXT record, whose ``tls`` says ``"1"`` for HTTPS (``type`` and the rest are ignored)."""

    # Any shape is accepted, as before this field was read; only an object's ``tls`` counts.
    properties: Any = None

    def https(self) -> bool:
        txt = self.properties if isinstance(self.properties, dict) else {}
        return self.tls or str(txt.get("tls", "0")).strip() == "1"


# An RFC 1123 host name (``_`` tolerated, as mDNS names carry it), with an optional final dot.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def check_host(value: str, field: str) -> None:
    """An IP address or a host name; anything else (``../x``, spaces, URLs) is a 400."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise BadRequest(
                f"not an IP address or host name: {value[:80]!r}", field=field
            ) from None


def check_device_name(value: str) -> None:
    """A device name is shown and becomes part of an id (``name:<instance>``), never a path;
    still, one that looks like a path (``/``, ``\\``, ``..``) or carries control characters is
    a 400, as the supervisor's and module names are refused."""
    if (
        not value.strip()
        or len(value) > 255
        or not value.isprintable()
        or any(bad in value for bad in ("/", "\\", ".."))
    ):
        raise BadRequest(f"not a usable device name: {value[:80]!r}", field="name")


# --- execution arguments ---------------------------------------------------------------------


def _fits(text: str, kind: str) -> bool:
    """Whether a device would accept ``text`` for a parameter of type ``kind``."""
    try:
        if kind == "integer":
            int(text)
        elif kind in {"number", "float"}:
            return math.isfinite(float(text))
        elif kind == "boolean":
            return text.strip().lower() in {"true", "false", "1", "0"}
        elif kind in {"object", "array"}:
            msgspec.json.decode(text)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return False
    return True


def check_arguments(
    endpoint: dict[str, Any], args: dict[str, str], files: dict[str, bytes]
) -> None:
    """Refuse, before any device is called, what the first hop would refuse: a missing,
    mistyped or unknown argument (by name, or positionally as ``param0``…), a missing or
    unexpected input file."""
    request = endpoint.get("request") or {}
    known: set[str] = set()
    declared: list[str] = []
    for i, param in enumerate(request.get("parameters") or []):
        name = str(param.get("name"))
        kind = str((param.get("schema") or {}).get("type") or "string")
        known |= {name, f"param{i}"}
        declared.append(name)
        text = args.get(name, args.get(f"param{i}"))
        if text is None:
            if param.get("required", True):
                raise BadRequest(f"missing argument {name!r} ({kind})", field=name)
        elif not _fits(text, kind):
            raise BadRequest(f"argument {name!r} must be {kind}, got {text[:40]!r}", field=name)
    unknown = sorted(set(args) - known)
    if unknown:
        takes = ", ".join(declared) or "none"
        raise BadRequest(f"unknown argument {unknown[0]!r} (takes: {takes})", field=unknown[0])
    body = request.get("request_body") or {}
    uploads = set((body.get("schema") or {}).get("properties") or {})
    for name in sorted(set(files) - uploads):
        raise BadRequest(f"unexpected input file {name!r}", field=name)
    for name in sorted(uploads - set(files)):
        raise BadRequest(f"the input file {name!r} is missing", field=name)
