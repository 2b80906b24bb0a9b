"""Pure chain logic: how one step's result becomes the next hop's request.

All result fields travel by the next endpoint's parameter names: a scalar goes to its first
parameter, a list is zipped with the parameters in order, an object is matched by name. Output
files travel as multipart parts named after the next step's execution mounts (taken from its
``request_body``); when the names differ and there is exactly one file and one mount, the file
is renamed to fit. The reference sends files on a GET if told to; Baton, like the reference's
Rust port, switches to POST whenever there are files. Arguments always go in the query
string, where every wasmiot supervisor reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.calls import query_text
from supervisor.protocol import Endpoint, RequestBody


@dataclass(frozen=True)
class ForwardRequest:
    method: str
    url: str
    query: dict[str, str]
    files: list[tuple[str, Path]] = field(default_factory=list)


def _param_names(endpoint: Endpoint) -> list[str]:
    return [p.name for p in endpoint.request.parameters if p.in_ == "query"]


def _file_fields(endpoint: Endpoint) -> list[str]:
    body = endpoint.request.request_body
    if not isinstance(body, RequestBody):
        return []
    names: list[str] = []
    if body.encoding:
        names.extend(body.encoding)
    if body.schema and isinstance(body.schema.get("properties"), dict):
        names.extend(n for n in body.schema["properties"] if n not in names)
    return names


def forward_args(endpoint: Endpoint, value: Any) -> dict[str, str]:
    names = _param_names(endpoint)
    if value is None or not names:
        return {}
    if isinstance(value, Mapping):
        return {n: query_text(value[n]) for n in names if n in value}
    if isinstance(value, list):
        return {n: query_text(v) for n, v in zip(names, value, strict=False)}
    return {names[0]: query_text(value)}


def forward_files(endpoint: Endpoint, outputs: Mapping[str, Path]) -> list[tuple[str, Path]]:
    wanted = _file_fields(endpoint)
    if len(outputs) == 1 and len(wanted) == 1:
        return [(wanted[0], next(iter(outputs.values())))]
    return sorted(outputs.items())


def build_forward(endpoint: Endpoint, value: Any, outputs: Mapping[str, Path]) -> ForwardRequest:
    """The request that hands ``value`` and ``outputs`` to ``endpoint``."""
    files = forward_files(endpoint, outputs)
    method = endpoint.method.upper() or "GET"
    if files:
        method = "POST"
    return ForwardRequest(
        method=method, url=endpoint.full_url, query=forward_args(endpoint, value), files=files
    )
