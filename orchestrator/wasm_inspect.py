"""What an uploaded module is: its imports and exports, and its checked function descriptions.

Pure apart from compiling the bytes with wasmtime (no network, no clock, no files).

* :func:`inspect_wasm` reads the function imports ``(namespace, name)`` and the function exports
  with their number of Wasm parameters from a binary module.
* :func:`parse_functions` reads a ``functions.json`` (wasmiot's ModuleManifest) into
  :class:`~orchestrator.model.FunctionSpec` objects and checks it against those exports.

Both raise :class:`InvalidModule` (a 422 for the caller) with a message naming the field.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

import msgspec
import wasmtime

from orchestrator.model import FunctionSpec, Mount, Param
from supervisor.protocol import check_name

WASM_MAGIC = b"\0asm"
TYPES = {
    "integer": "integer",
    "float": "number",  # the reference's name for it
    "number": "number",
    "string": "string",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}
"""Accepted parameter and output types → the canonical name kept in a FunctionSpec."""
BYTES_TYPES = frozenset({"string", "object", "array"})
"""Types passed as a (pointer, length) pair: two Wasm values."""
METHODS = frozenset({"get", "post", "put", "patch", "delete"})
STAGES = ("deployment", "execution", "output")
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
_PARAM_KEY = re.compile(r"^param(\d+)$")

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()


class InvalidModule(ValueError):
    """An uploaded module or description that cannot be served; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def _get_engine() -> wasmtime.Engine:
    global _engine  # noqa: PLW0603 - one lazily created Engine per process
    with _engine_lock:
        if _engine is None:
            _engine = wasmtime.Engine()
        return _engine


def inspect_wasm(wasm: bytes) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Function imports ``[(namespace, name)]`` (in module order) and exports ``{name: arity}``.

    Only *binary* modules are accepted (wasmtime would also compile WAT text). Non-function
    imports and exports (memories, tables, globals) are left out. Anything wasmtime refuses,
    including truncated bytes, raises :class:`InvalidModule`.
    """
    if not bytes(wasm[:4]) == WASM_MAGIC:
        raise InvalidModule("not a WebAssembly binary (no \\0asm header)", field="wasm")
    try:
        module = wasmtime.Module(_get_engine(), bytes(wasm))
    except wasmtime.WasmtimeError as err:
        reason = " ".join(str(err).split())
        raise InvalidModule(f"invalid WebAssembly: {reason}", field="wasm") from err
    imports = [
        (imp.module, imp.name)
        for imp in module.imports
        if isinstance(imp.type, wasmtime.FuncType) and imp.name is not None
    ]
    exports = {
        exp.name: len(exp.type.params)
        for exp in module.exports
        if isinstance(exp.type, wasmtime.FuncType)
    }
    return imports, exports


def parse_functions(
    doc: bytes | Mapping[str, Any], exports: Mapping[str, int]
) -> dict[str, FunctionSpec]:
    """Read a ``functions.json`` and check it against the module's ``exports``.

    Format (one entry per served function)::

        {"<func>": {"method": "GET",
                    "parameters": [{"name": "a", "type": "integer"}],
                    "output": "integer",
                    "mounts": [{"name": "in.txt", "mediaType": "text/plain",
                                "stage": "execution"}]}}

    ``parameters`` may also be a list of bare type names, or be replaced by the reference's
    older ``"param0": "<type>"`` keys in the function object (names ``param0``, ``param1`` …).
    Types are ``integer|float|number|string|boolean|object|array``; ``float`` becomes
    ``number``. ``method`` is required and lowercased. ``output`` is required unless the
    function has an output mount, in which case the result is that file and ``output`` is
    ``None`` in the spec. ``mediaType`` defaults to ``application/octet-stream``.

    Checks: every function is exported; its Wasm arity equals the described parameters (two
    values for string/object/array, one otherwise); function, parameter and mount names are
    single safe path components, unique within their function. The first failure raises
    :class:`InvalidModule` naming ``functions.<func>.<field>``.
    """
    if isinstance(doc, bytes | bytearray | memoryview):
        try:
            doc = msgspec.json.decode(bytes(doc))
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
            raise InvalidModule(f"not valid JSON: {err}", field="functions") from err
    if not isinstance(doc, Mapping):
        raise InvalidModule("must be an object of functions", field="functions")
    if not doc:
        raise InvalidModule("describes no function", field="functions")
    return {str(name): _function(str(name), body, exports) for name, body in doc.items()}


def _function(name: str, body: Any, exports: Mapping[str, int]) -> FunctionSpec:
    where = f"functions.{name}"
    _safe(name, where)
    if not isinstance(body, Mapping):
        raise InvalidModule("must be an object", field=where)
    if name not in exports:
        raise InvalidModule("the module exports no such function", field=where)
    method = body.get("method")
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise InvalidModule(
            f"must be one of {sorted(METHODS)}, got {method!r}", field=f"{where}.method"
        )
    params = _params(body, where)
    arity = sum(2 if p.type in BYTES_TYPES else 1 for p in params)
    if arity != exports[name]:
        raise InvalidModule(
            f"takes {exports[name]} Wasm values, described {arity}", field=f"{where}.parameters"
        )
    mounts = _mounts(body.get("mounts", []), f"{where}.mounts")
    output: str | None = None
    if not any(m.stage == "output" for m in mounts):
        output = _type(body.get("output"), f"{where}.output")
    return FunctionSpec(name, params, output, method.lower(), mounts)


def _params(body: Mapping[str, Any], where: str) -> list[Param]:
    raw = body.get("parameters")
    legacy = sorted(
        (int(m.group(1)), key) for key in body if (m := _PARAM_KEY.match(str(key))) is not None
    )
    params: list[Param] = []
    if raw is None and legacy:
        for expected, (index, key) in enumerate(legacy):
            if index != expected:
                raise InvalidModule(f"param{expected} is missing", field=f"{where}.{key}")
            params.append(Param(key, _type(body[key], f"{where}.{key}")))
        return params
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise InvalidModule("must be a list", field=f"{where}.parameters")
    for i, item in enumerate(raw):
        at = f"{where}.parameters[{i}]"
        if isinstance(item, str):
            params.append(Param(f"param{i}", _type(item, at)))
        elif isinstance(item, Mapping):
            pname = item.get("name")
            if not isinstance(pname, str):
                raise InvalidModule("must be a string", field=f"{at}.name")
            _safe(pname, f"{at}.name")
            params.append(Param(pname, _type(item.get("type"), f"{at}.type")))
        else:
            raise InvalidModule('must be {"name", "type"} or a type name', field=at)
    names = [p.name for p in params]
    for i, pname in enumerate(names):
        if pname in names[:i]:
            raise InvalidModule(
                f"parameter {pname!r} listed twice", field=f"{where}.parameters[{i}]"
            )
    return params


def _mounts(raw: Any, where: str) -> list[Mount]:
    if not isinstance(raw, list):
        raise InvalidModule("must be a list", field=where)
    mounts: list[Mount] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidModule('must be {"name", "mediaType", "stage"}', field=at)
        mname = item.get("name")
        if not isinstance(mname, str):
            raise InvalidModule("must be a string", field=f"{at}.name")
        _safe(mname, f"{at}.name")
        if any(m.name == mname for m in mounts):
            raise InvalidModule(f"mount {mname!r} listed twice", field=f"{at}.name")
        stage = item.get("stage")
        if stage not in STAGES:
            raise InvalidModule(
                f"must be one of {list(STAGES)}, got {stage!r}", field=f"{at}.stage"
            )
        media = item.get("mediaType", "application/octet-stream")
        if not isinstance(media, str) or not _MEDIA_TYPE.match(media):
            raise InvalidModule(f"not a media type: {media!r}", field=f"{at}.mediaType")
        if stage == "output" and media.startswith("application/json"):
            raise InvalidModule(
                "an output file cannot be application/json", field=f"{at}.mediaType"
            )
        mounts.append(Mount(mname, stage, media))
    return mounts


def _type(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in TYPES:
        raise InvalidModule(f"must be one of {sorted(TYPES)}, got {value!r}", field=where)
    return TYPES[value]


def _safe(value: str, where: str) -> None:
    try:
        check_name(value, where)
    except ValueError as err:
        raise InvalidModule(f"unsafe name {value!r}", field=where) from err
