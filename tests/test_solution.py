"""orchestrator.solution: mini-manifests shaped like the reference's, deployed on real supervisors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from orchestrator.model import Limits, Manifest, ModuleRecord, Step
from orchestrator.solution import build_nodes
from orchestrator.wasm_inspect import inspect_wasm, parse_functions
from supervisor.protocol import DeploymentNode, RequestBody, Schema, decode, validate_node
from tests.conftest import ROOT, wasm_path
from tests.stack import ServerFactory, Stack

CAPTURES = Path(__file__).parent / "fixtures" / "wasmiot-captures"
DEP = "6b03fffe3b5aa082ff949acc"


def _record(name: str) -> ModuleRecord:
    """A ModuleRecord for a module built from ``modules/<name>``, as an upload would make it."""
    wasm = wasm_path(name).read_bytes()
    imports, exports = inspect_wasm(wasm)
    functions = parse_functions((ROOT / "modules" / name / "functions.json").read_bytes(), exports)
    data = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((ROOT / "modules" / name).glob("*.txt"))
    }
    digest = hashlib.sha256(wasm).hexdigest()
    return ModuleRecord(name, "1.0.0", digest, imports, exports, functions, data)


def _blob_url(sha: str) -> str:
    return f"http://orch:3000/blobs/{sha}"


def _chain(
    steps: list[tuple[str, str]], devices: list[str], **kwargs: Any
) -> dict[str, DeploymentNode]:
    manifest = Manifest("m", [Step(m, f) for m, f in steps], **kwargs)
    modules = {m: _record(m) for m, _ in steps}
    urls = {d: f"http://{d.lower()}.local:500{i}" for i, d in enumerate(sorted(set(devices)))}
    return build_nodes(DEP, manifest, devices, modules, urls, _blob_url)


# --- document shape ------------------------------------------------------------------------


def _paths(obj: Any, prefix: str = "") -> Iterator[str]:
    """Every key path in ``obj``; list items share the path ``<list>[]``."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield f"{prefix}.{key}"
            yield from _paths(value, f"{prefix}.{key}")
    elif isinstance(obj, list):
        for item in obj:
            yield from _paths(item, f"{prefix}[]")


def _shape_diff(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(paths only in ours, paths only in theirs) under endpoints, instructions and mounts."""
    mine: set[str] = set()
    ref: set[str] = set()
    for key in ("endpoints", "instructions", "mounts"):
        mine |= set(_paths(ours[key], key))
        ref |= set(_paths(theirs[key], key))
    return mine - ref, ref - mine


def _fibo_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    nodes = _chain([("fibo", "fibo"), ("fibo", "fibo")], ["A", "B"])
    return msgspec.to_builtins(nodes["A"]), msgspec.to_builtins(nodes["B"])


FIXTURES = ("chain-first-deviceA.deploy.json", "chain-last-deviceB.deploy.json")


def test_fibo_chain_has_exactly_the_reference_shape() -> None:
    for ours, name in zip(_fibo_pair(), FIXTURES, strict=True):
        assert _shape_diff(ours, json.loads((CAPTURES / name).read_text())) == (set(), set())


def test_nodes_round_trip_through_the_wire_and_validate() -> None:
    nodes = _chain(
        [("textfile", "upper"), ("textfile", "prefix"), ("textfile", "size"), ("strings", "mean")],
        ["A", "B", "A", "B"],
    )
    for node in nodes.values():
        again = decode(msgspec.json.encode(node), DeploymentNode)
        validate_node(again)
        assert again == node


def test_baton_extension_carries_digests_limits_and_typed_params() -> None:
    limits = {"fibo.fibo": Limits(timeoutMs=500), "strings.mean": Limits(fuel=10_000)}
    nodes = _chain([("fibo", "fibo"), ("strings", "mean")], ["A", "A"], limits=limits)
    baton = nodes["A"].baton
    assert baton is not None and baton.apiVersion == 1
    fibo_sha = hashlib.sha256(wasm_path("fibo").read_bytes()).hexdigest()
    assert baton.modules["fibo"].digest == f"sha256:{fibo_sha}"
    assert baton.limits["fibo"]["fibo"].timeoutMs == 500
    assert baton.limits["strings"]["mean"].fuel == 10_000
    assert [(p.name, p.type) for p in baton.params["strings"]["mean"]] == [
        ("a", "number"),
        ("b", "number"),
    ]
    mean = nodes["A"].endpoints["strings"]["mean"]
    # the reference's spelling in OpenAPI schemas; its SchemaType has no "number"
    assert [p.schema.type for p in mean.request.parameters if isinstance(p.schema, Schema)] == [
        "float",
        "float",
    ]
    assert isinstance(mean.response.schema, Schema) and mean.response.schema.type == "float"
    assert nodes["A"].modules[0].id == fibo_sha
    assert nodes["A"].modules[0].urls.binary == _blob_url(fibo_sha)


def test_file_functions_and_data_files() -> None:
    nodes = _chain([("textfile", "upper"), ("textfile", "prefix")], ["A", "B"])
    upper = nodes["A"].endpoints["textfile"]["upper"]
    assert upper.method == "post"
    assert upper.response.media_type == "text/plain"
    assert isinstance(upper.response.schema, Schema) and upper.response.schema.format == "binary"
    body = upper.request.request_body
    assert isinstance(body, RequestBody) and body.media_type == "multipart/form-data"
    assert body.encoding == {"input.txt": {"contentType": "text/plain"}}
    assert body.schema == {
        "type": "object",
        "properties": {"input.txt": {"type": "string", "format": "binary"}},
    }
    mounts = nodes["B"].mounts["textfile"]["prefix"]
    assert [m.path for m in mounts.deployment] == ["prefix.txt"]
    assert [m.path for m in mounts.execution] == ["input.txt"]
    assert [(m.path, m.stage, m.media_type) for m in mounts.output] == [
        ("prefixed.txt", "output", "text/plain")
    ]
    sha = hashlib.sha256((ROOT / "modules/textfile/prefix.txt").read_bytes()).hexdigest()
    assert nodes["B"].modules[0].urls.other == {"prefix.txt": _blob_url(sha)}
    assert nodes["B"].module_extension("textfile").files == {"prefix.txt": f"sha256:{sha}"}


def test_one_module_entry_per_device_and_name_without_version() -> None:
    manifest = Manifest("m", [Step("fibo@1.0.0", "fibo"), Step("fibo@1.0.0", "add")])
    modules = {"fibo@1.0.0": _record("fibo")}
    nodes = build_nodes(
        DEP,
        manifest,
        ["A", "A"],
        modules,
        {"A": "http://a:1/"},
        _blob_url,
        description_url=lambda r: f"http://orch/modules/{r.ref}/description",
    )
    node = nodes["A"]
    assert [m.name for m in node.modules] == ["fibo"]
    assert node.modules[0].urls.description == "http://orch/modules/fibo@1.0.0/description"
    assert set(node.endpoints["fibo"]) == {"fibo", "add"}
    assert node.endpoints["fibo"]["add"].url == "http://a:1"
    assert node.next_hop("fibo", "fibo") == node.endpoints["fibo"]["add"]


def test_impossible_placements_are_refused() -> None:
    with pytest.raises(ValueError, match=r"fibo\.fibo is already on device 'A'"):
        _chain([("fibo", "fibo"), ("fibo", "add"), ("fibo", "fibo")], ["A", "B", "A"])
    other = msgspec.structs.replace(_record("fibo"), version="2.0.0", digest="f" * 64)
    manifest = Manifest("m", [Step("fibo@1", "fibo"), Step("fibo@2", "add")])
    modules = {"fibo@1": _record("fibo"), "fibo@2": other}
    with pytest.raises(ValueError, match="two different binaries named 'fibo'"):
        build_nodes(DEP, manifest, ["A", "A"], modules, {"A": "http://a"}, _blob_url)
    with pytest.raises(ValueError, match="2 steps but 1 devices"):
        build_nodes(DEP, manifest, ["A"], modules, {"A": "http://a"}, _blob_url)
    with pytest.raises(ValueError, match="no URL for device 'B'"):
        build_nodes(DEP, manifest, ["A", "B"], modules, {"A": "http://a"}, _blob_url)
    with pytest.raises(ValueError, match="describes no 'nope'"):
        _chain([("fibo", "nope")], ["A"])
    with pytest.raises(ValueError, match="unsafe name"):
        build_nodes("../x", manifest, ["A", "A"], modules, {"A": "http://a"}, _blob_url)


# --- end to end on real supervisors --------------------------------------------------------


async def _blob_server(aiohttp_server: ServerFactory, records: list[ModuleRecord]) -> str:
    """Serves ``/blobs/<sha256>`` for the records' binaries and data files; returns its URL."""
    blobs: dict[str, bytes] = {}
    for record in records:
        blobs[record.digest] = wasm_path(record.name).read_bytes()
        for mount in record.data_files:
            data = (ROOT / "modules" / record.name / mount).read_bytes()
            blobs[hashlib.sha256(data).hexdigest()] = data

    async def serve(request: web.Request) -> web.Response:
        data = blobs.get(request.match_info["sha"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/blobs/{sha}", serve)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def _deploy(
    stack: Stack,
    aiohttp_server: ServerFactory,
    steps: list[tuple[str, str]],
    placement: list[int],
    dep: str,
) -> tuple[dict[str, DeploymentNode], list[str]]:
    """Build nodes for ``steps`` on fresh devices (step i on device ``placement[i]``), push them."""
    devices = [await stack.make_device() for _ in range(max(placement) + 1)]
    modules = {m: _record(m) for m, _ in steps}
    blobs = await _blob_server(aiohttp_server, list(modules.values()))
    ids = [f"dev{i}" for i in range(len(devices))]
    nodes = build_nodes(
        dep,
        Manifest("e2e", [Step(m, f) for m, f in steps]),
        [ids[i] for i in placement],
        modules,
        {ids[i]: d.url for i, d in enumerate(devices)},
        lambda sha: f"{blobs}/blobs/{sha}",
    )
    for i, device in enumerate(devices):
        async with stack.session.post(
            device.url + "/deploy",
            data=msgspec.json.encode(nodes[ids[i]]),
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 200, await resp.text()
    first = nodes[ids[placement[0]]].endpoints[steps[0][0]][steps[0][1]]
    return nodes, [first.full_url]


async def _follow(stack: Stack, reply: dict[str, Any]) -> list[dict[str, Any]]:
    """Every history entry of the chain, first hop first, each fetched with ``?wait=5``."""
    entries: list[dict[str, Any]] = []
    url: str | None = reply["resultUrl"]
    while url is not None:
        assert len(entries) < 10, entries
        status, entry = await stack.entry(url, wait=5)
        assert status == 200 and entry["success"], entry
        entries.append(entry)
        url = entry["next"]
    return entries


async def test_three_hop_fibo_chain_on_real_supervisors(
    stack: Stack, aiohttp_server: ServerFactory
) -> None:
    steps = [("fibo", "fibo")] * 3
    _, (first,) = await _deploy(stack, aiohttp_server, steps, [0, 1, 2], "fibo-e2e")
    assert first.endswith("/fibo-e2e/modules/fibo/fibo")
    reply = await stack.call(first, param0=4)
    entries = await _follow(stack, reply)
    assert [e["value"] for e in entries] == [5, 8, 34]
    assert entries[-1]["result"] == ["34", None]


async def _upload_and_follow(stack: Stack, url: str, data: bytes) -> list[dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("input.txt", data, filename="input.txt", content_type="text/plain")
    async with stack.session.post(url, data=form) as resp:
        assert resp.status == 200, await resp.text()
        reply = dict(await resp.json())
    return await _follow(stack, reply)


async def test_file_pipeline_upper_then_size(stack: Stack, aiohttp_server: ServerFactory) -> None:
    steps = [("textfile", "upper"), ("textfile", "size")]
    _, (first,) = await _deploy(stack, aiohttp_server, steps, [0, 1], "files-e2e")
    data = b"hello, baton pipeline\n" * 7
    entries = await _upload_and_follow(stack, first, data)
    assert len(entries) == 2
    assert entries[-1]["value"] == len(data)


async def test_data_file_step_in_a_chain(stack: Stack, aiohttp_server: ServerFactory) -> None:
    """upper (dev0) → prefix with its shipped prefix.txt (dev1) → size (dev0)."""
    steps = [("textfile", "upper"), ("textfile", "prefix"), ("textfile", "size")]
    nodes, (first,) = await _deploy(stack, aiohttp_server, steps, [0, 1, 0], "data-e2e")
    assert [m.name for m in nodes["dev0"].modules] == ["textfile"]
    data = b"some text"
    entries = await _upload_and_follow(stack, first, data)
    prefix = (ROOT / "modules/textfile/prefix.txt").read_bytes()
    assert [e["function_name"] for e in entries] == ["upper", "prefix", "size"]
    assert entries[-1]["value"] == len(prefix) + len(data)
