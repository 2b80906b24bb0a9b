"""Pure translation between HTTP call arguments and Wasm values.

Arguments arrive as query-string text. They are matched to the function's declared parameters
**by name**; the reference's positional ``param0``, ``param1`` … are accepted too. Each value
is converted by its declared type: ``integer`` and ``boolean`` become one integer Wasm value,
``number``/``float`` one float, ``string``/``object``/``array`` become bytes (passed through the
guest's ``alloc`` as a pointer and a length). A function declared without parameters (the
reference's old modules) gets its query values positionally, converted by the Wasm signature.

Results go the other way: scalars stay scalars, and ``string``/``object``/``array`` results
are read from guest memory and decoded. :func:`reference_result` renders the final value the
way the reference history shows it (``["233", null]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from supervisor.errors import BadRequest, GuestError
from supervisor.protocol import ParamSpec

BYTES_TYPES = frozenset({"string", "object", "array"})
FLOAT_TYPES = frozenset({"number", "float"})
WasmArg = int | float | bytes


def _convert(name: str, text: str, type_: str) -> WasmArg:
    try:
        if type_ == "integer":
            return int(text)
        if type_ in FLOAT_TYPES:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if type_ == "boolean":
            lowered = text.strip().lower()
            if lowered not in {"true", "false", "1", "0"}:
                raise ValueError(text)
            return 1 if lowered in {"true", "1"} else 0
        if type_ in {"object", "array"}:
            json.loads(text)
            return text.encode()
        if type_ == "string":
            return text.encode()
    except ValueError as err:
        raise BadRequest(
            f"parameter {name!r} must be of type {type_}, got {text!r}", field=name
        ) from err
    raise BadRequest(f"parameter {name!r} has unsupported type {type_!r}", field=name)


def wasm_arity(params: Sequence[ParamSpec]) -> int:
    """How many Wasm values the declared parameters take (bytes take a pointer and a length)."""
    return sum(2 if p.type in BYTES_TYPES else 1 for p in params)


def coerce_args(
    params: Sequence[ParamSpec], wasm_params: Sequence[str], query: Mapping[str, str]
) -> list[WasmArg]:
    """Turn query text into Wasm arguments; raise BadRequest naming a missing or bad parameter."""
    if not params:
        return [
            _convert(f"param{i}", text, "number" if kind.startswith("f") else "integer")
            for i, (text, kind) in enumerate(zip(query.values(), wasm_params, strict=False))
        ]
    args: list[WasmArg] = []
    for i, spec in enumerate(params):
        text = query.get(spec.name)
        if text is None:
            text = query.get(f"param{i}")
        if text is None:
            raise BadRequest(f"missing parameter {spec.name!r}", field=spec.name)
        args.append(_convert(spec.name, text, spec.type))
    return args


def returns_bytes(result_type: str | None) -> bool:
    return result_type in BYTES_TYPES


def decode_result(raw: int | float | bytes | None, result_type: str | None) -> Any:
    """Typed value of a Wasm result according to the endpoint's response schema type."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", errors="replace")
        if result_type not in {"object", "array"}:
            return text
        try:
            return json.loads(text)
        except ValueError as err:
            raise GuestError("abi", f"the function returned invalid JSON: {err}") from err
    if result_type == "boolean":
        return bool(raw)
    if result_type in FLOAT_TYPES or isinstance(raw, float):
        return float(raw)
    return raw


def reference_result(value: Any, output_files: Sequence[str]) -> list[Any]:
    """The reference's final result: ``[json, null]``, or ``[null, [files]]`` for file outputs."""
    if output_files:
        return [None, list(output_files)]
    return [json.dumps(value), None]


def query_text(value: Any) -> str:
    """Render a value as query-string text for the next hop."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))
