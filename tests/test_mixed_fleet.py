"""Baton's orchestrator driving a reference-style supervisor next to a Baton one.

The reference Python supervisor cannot be run here, so its part is played by
:mod:`tests.reference_supervisor`, a strict stand-in written from the spec. The first tests
check the stand-in against the captured wire bytes (so it is faithful) and its strictness (so
passing it means something); the last ones run a mixed fleet end to end.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.orchestration import Orchestrator
from tests.reference_supervisor import (
    AUDIT,
    INTERFACES,
    REFUSALS,
    STATE,
    reference_supervisor_app,
)
from tests.stack import Stack

ServerFactory = Callable[..., Awaitable[TestServer]]
CAPTURES = Path(__file__).parent / "fixtures" / "wasmiot-captures"
CAPTURED_BINARY = "http://127.0.0.1:3300/file/module/6b03fffe3b5aa082ff949acb/wasm"
HISTORY_KEYS = {  # wasmiot.md §1.4, the captured SUP chain
    *("deployment_id", "function_name", "method", "module_name", "request_args"),
    *("request_files", "request_id", "result", "success", "work_queued_at"),
}
# Keys the reference's dataclasses accept (wasmiot.md §1.3); parameters are OpenAPI objects.
REFERENCE_KEYS = {
    "Endpoint": {"url", "path", "method", "request", "response"},
    "EndpointRequest": {"parameters", "request_body"},
    "EndpointResponse": {"media_type", "schema", "encoding"},
    "MediaTypeObject": {"media_type", "schema", "encoding"},
    "Schema": {"type", "format", "properties"},
    "MountPathFile": {"path", "media_type", "stage", "encoding", "type"},
    "parameter": {
        *("name", "in", "description", "required", "deprecated", "allowEmptyValue", "style"),
        *("explode", "allowReserved", "schema", "example", "examples", "content"),
    },
}


async def _standin(aiohttp_server: ServerFactory, tmp_path: Path, name: str) -> TestServer:
    return await aiohttp_server(reference_supervisor_app(tmp_path / name), host="127.0.0.1")


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _captured(name: str, binary: str, urls: dict[str, str]) -> dict[str, Any]:
    text = (CAPTURES / name).read_text().replace(CAPTURED_BINARY, binary)
    for old, new in urls.items():
        text = text.replace(old, new)
    return dict(json.loads(text))


async def test_standin_answers_the_wire_log_in_the_captured_shapes(
    stack: Stack, aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    a = await _standin(aiohttp_server, tmp_path, "a")
    b = await _standin(aiohttp_server, tmp_path, "b")
    urls = {"http://127.0.0.1:5010": _url(a), "http://127.0.0.1:5011": _url(b)}
    binary = f"{stack.files_url}/files/fibo.wasm"
    bodies = {
        "A": _captured("chain-first-deviceA.deploy.json", binary, urls),
        "B": _captured("chain-last-deviceB.deploy.json", binary, urls),
    }
    log = [
        json.loads(x) for x in (CAPTURES / "wire-log-first-of-each.jsonl").read_text().splitlines()
    ]
    for record in sorted(log, key=lambda r: (r["tag"] != "B", r["i"])):  # A chains to B
        server = {"A": a, "B": b}[record["tag"]]
        skip = {"host", "content-length", "connection", "accept-encoding"}
        headers = {k: v for k, v in record["req_headers"].items() if k.lower() not in skip}
        is_deploy = record["path"] == "//deploy"
        data = json.dumps(bodies[record["tag"]]) if is_deploy else record["req_body"] or None
        async with stack.session.request(
            record["method"], _url(server) + record["path"], data=data, headers=headers
        ) as resp:
            ours, theirs = await resp.json(), json.loads(record["resp_body"])
            assert resp.status == record["status"], (record["path"], ours)
            assert set(ours) == set(theirs), record["path"]
            if record["path"] == "/health":
                assert resp.headers["Custom-Orchestrator-Set"] == "false"
                assert 0 <= ours["cpuUsage"] <= 100 and 0 <= ours["memoryUsage"] <= 1
            if record["path"].startswith("/.well-known"):
                assert ours["supervisorInterfaces"] == theirs["supervisorInterfaces"]
                assert set(ours["platform"]["cpu"]) == set(theirs["platform"]["cpu"])
        if "modules/fibo/fibo" in record["path"]:
            dep = bodies["A"]["deploymentId"]
            assert ours["resultUrl"].startswith(f"{_url(server)}/request-history/{dep}:fibo:fibo:")

    dep = bodies["A"]["deploymentId"]
    # A's entry points at B's (a URL), B's holds the captured final shape; extra query keys
    # such as ?wait= are ignored, not honoured.
    async with stack.session.get(f"{_url(a)}/{dep}/modules/fibo/fibo?param0=5") as resp:
        first = (await resp.json())["resultUrl"]
    async with stack.session.get(first, params={"wait": "5"}) as resp:
        entry = await resp.json()
    assert resp.status == 200 and set(entry) == HISTORY_KEYS, entry
    assert entry["request_args"] == {"param0": "5"} and entry["request_files"] == {}
    assert entry["result"].startswith(f"{_url(b)}/request-history/{dep}:fibo:fibo:")
    async with stack.session.get(entry["result"]) as resp:
        last = await resp.json()
    assert last["result"] == ["34", None] and last["request_args"] == {"param0": "8"}
    async with stack.session.get(f"{_url(b)}/request-history/{dep}:fibo:fibo:99") as resp:
        assert resp.status == 404
        assert await resp.json() == {"status": "error", "result": "no matching entry in history"}
    async with stack.session.get(f"{_url(b)}/deploy") as resp:
        assert resp.status == 405  # the Python reference has no GET /deploy
    # After /register, a health check from the orchestrator's host is recognised.
    async with stack.session.get(
        f"{_url(a)}/health", headers={"X-Forwarded-For": "127.0.0.1"}
    ) as resp:
        assert resp.headers["Custom-Orchestrator-Set"] == "true"


def _drop(path: tuple[str | int, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        target: Any = body
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        target: Any = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


FIBO = ("endpoints", "fibo", "fibo")
MOUNT = {"path": "f", "media_type": "application/octet-stream", "stage": "execution"}
REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "extra key in an endpoint": _set((*FIBO, "x"), 1),
    "extra key in its request": _set((*FIBO, "request", "x"), 1),
    "extra key in its response": _set((*FIBO, "response", "x"), 1),
    "extra key in its response schema": _set((*FIBO, "response", "schema", "x"), 1),
    "float result": _set((*FIBO, "response", "schema", "type"), "float"),
    "non-binary format": _set((*FIBO, "response", "schema", "format"), "int64"),
    "response without schema": _drop((*FIBO, "response", "schema")),
    "endpoint without request": _drop((*FIBO, "request")),
    "extra key in a chained endpoint": _set(
        ("instructions", "modules", "fibo", "fibo", "from", "x"), 1
    ),
    "extra key in a mount": _set(("mounts", "fibo", "fibo", "execution"), [MOUNT | {"x": 1}]),
    "required key on a mount": _set(
        ("mounts", "fibo", "fibo", "execution"), [MOUNT | {"required": True}]
    ),
    "missing mounts": _drop(("mounts",)),
}


@pytest.mark.parametrize("edit", REFUSED.values(), ids=REFUSED.keys())
async def test_standin_is_as_strict_as_the_reference(
    edit: Callable[[dict[str, Any]], None],
    stack: Stack,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
) -> None:
    server = await _standin(aiohttp_server, tmp_path, "ref")
    body = _captured(
        "chain-last-deviceB.deploy.json",
        f"{stack.files_url}/files/fibo.wasm",
        {"http://127.0.0.1:5011": _url(server)},
    )
    accepted = copy.deepcopy(body) | {"baton": {"apiVersion": 1}, "extra": [1]}
    async with stack.session.post(_url(server) + "//deploy", json=accepted) as resp:
        assert resp.status == 200, server.app[REFUSALS]  # unknown top-level keys are ignored
    edit(body)
    async with stack.session.post(_url(server) + "//deploy", json=body) as resp:
        assert resp.status == 500 and resp.content_type == "text/html"
    assert len(server.app[REFUSALS]) == 1, server.app[REFUSALS]


async def test_orchestrator_drives_a_mixed_fleet(
    stack: Stack, orchestrator: Orchestrator, aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    orch = orchestrator
    baton = await stack.make_device()
    # SUP links all of WASI but its template lists only some of it; operators edit the file
    # (textfile, built with wasi-libc, also imports these three).
    config = tmp_path / "ref" / "configs" / "wasmiot-device-description.json"
    config.parent.mkdir(parents=True)
    wasi = ["fd_fdstat_get", "fd_fdstat_set_flags", "path_filestat_get"]
    config.write_text(json.dumps({"platform": {}, "supervisorInterfaces": INTERFACES + wasi}))
    ref = await _standin(aiohttp_server, tmp_path, "ref")
    ids = {}
    for kind, port in (("baton", baton.server.port), ("ref", ref.port)):
        status, device = await orch.post("/devices", json={"host": "127.0.0.1", "port": port})
        assert status == 201, device
        ids[kind] = device["id"]
    status, devices = await orch.get("/devices")
    listed = {d["id"]: d for d in devices}
    assert listed[ids["ref"]]["apiVersion"] is None
    assert listed[ids["baton"]]["apiVersion"] is not None
    names = {kind: listed[i]["name"] for kind, i in ids.items()}
    await orch.push_module("fibo")

    for name, order in (("baton-then-ref", ("baton", "ref")), ("ref-then-baton", ("ref", "baton"))):
        step = {"module": "fibo", "func": "fibo"}
        manifest = {"name": name, "sequence": [step | {"device": ids[k]} for k in order]}
        status, dep = await orch.deploy(manifest)
        assert status == 201 and dep["state"] == "ACTIVE", (dep, ref.app[REFUSALS])
        assert dep["id"] in ref.app[STATE].deployments
        status, run = await orch.run(dep["id"], param0=5)
        assert status == 200 and run["value"] == 34, run  # fibo(5) = 8, fibo(8) = 34
        assert [hop["device"] for hop in run["trace"]] == [names[k] for k in order], run
        assert all(hop["success"] for hop in run["trace"])

    # An uploaded file (execution mount, request body, POST run by the stand-in's worker).
    await orch.push_module("textfile")
    upload = {"module": "textfile", "func": "size", "device": ids["ref"]}
    status, dep = await orch.deploy({"name": "upload", "sequence": [upload]})
    assert status == 201 and dep["state"] == "ACTIVE", (dep, ref.app[REFUSALS])
    form = aiohttp.FormData()
    form.add_field("input.txt", b"twelve bytes", filename="input.txt")
    status, run = await orch.post(f"/deployments/{dep['id']}/executions", data=form)
    assert status == 200 and run["status"] == "done", run
    assert ref.app[STATE].history[-1].method == "POST"
    assert (
        tmp_path / "ref" / "wasm-params" / "textfile" / "input.txt"
    ).read_bytes() == b"twelve bytes"
    # -1 ("cannot read input.txt"), not 12: the reference instantiates modules without calling
    # a WASI reactor's _initialize (wasmiot.md §2.2), so wasi-libc never sees its preopens.
    assert run["value"] == -1, run

    # The stand-in refused nothing, and everything it built carried reference keys only.
    assert ref.app[REFUSALS] == []
    kinds = {kind for kind, _ in ref.app[AUDIT]}
    assert set(REFERENCE_KEYS) <= kinds
    extra = [(k, sorted(keys - REFERENCE_KEYS[k])) for k, keys in ref.app[AUDIT]]
    assert [e for e in extra if e[1]] == []
