"""The orchestrator driving real supervisors on 127.0.0.1: modules, placement, deploy, run."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from supervisor.config import load_profile
from tests.conftest import ROOT
from tests.orchestration import Orchestrator
from tests.stack import Device, Stack

ServerFactory = Callable[..., Awaitable[TestServer]]


async def _fleet(stack: Stack, orch: Orchestrator) -> dict[str, Device]:
    fleet = {}
    for kind in ("camera-node", "sensor-node", "compute-node"):
        profile = load_profile(ROOT / "devices" / f"{kind}.toml")
        device = await stack.make_device(profile=profile, profile_dir=ROOT / "devices", name=kind)
        port = int(device.url.rsplit(":", 1)[1])
        status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": port})
        assert status == 201, body
        fleet[kind] = device
    return fleet


def fibo_wrapped(n: int) -> int:
    a, b = 1, 1
    for _ in range(n):
        a, b = b, (a + b) & 0xFFFFFFFFFFFFFFFF
    return a - 2**64 if a >= 2**63 else a


PIPELINE = {
    "name": "camera-pipeline",
    "sequence": [
        {"module": "fibo", "func": "fibo"},
        {"module": "camera", "func": "image_size"},
        {"module": "fibo", "func": "fibo"},
    ],
}


async def test_place_deploy_run_update_and_refuse(stack: Stack, orchestrator: Orchestrator) -> None:
    orch = orchestrator
    fleet = await _fleet(stack, orch)
    await orch.push_module("fibo")
    await orch.push_module("camera")

    # Dry run: the camera step can only go to the camera node, and every rejection is explained.
    status, placement = await orch.post("/placements", json=PIPELINE)
    assert status == 200, placement
    middle = placement["steps"][1]
    status, devices = await orch.get("/devices")
    by_id = {d["id"]: d["name"] for d in devices}
    assert by_id[middle["device"]] == "camera-node"
    rejected = {c["device"]: c for c in middle["candidates"] if not c["feasible"]}
    # The orchestrator's own core device runs only built-in packages.
    assert rejected.pop("orchestrator")["reasons"] == [
        "the orchestrator runs only built-in packages"
    ]
    assert len(rejected) == 2 and all(
        "takeImageDynamicSize" in " ".join(c["reasons"]) for c in rejected.values()
    )

    # Impossible: nothing offers a host function no module of ours... pin to a missing device.
    impossible = {
        "name": "nowhere",
        "sequence": [{"module": "camera", "func": "image_size", "device": "compute-node"}],
    }
    status, body = await orch.post("/placements", json=impossible)
    assert status == 422 and len(body["candidates"]) == 4  # three supervisors + the core device
    assert all(c["reasons"] for c in body["candidates"])

    # Deploy: ACTIVE, verified on each device, and a three-hop run on three devices.
    status, dep = await orch.deploy(PIPELINE)
    assert status == 201 and dep["state"] == "ACTIVE", dep
    assert dep["revision"] == 1 and set(dep["jobs"]) == set(dep_devices(dep))
    status, run = await orch.run(dep["id"], param0=5)
    assert status == 200, run
    image = sorted((ROOT / "devices" / "images").glob("*.ppm"))[0].stat().st_size
    assert run["value"] == fibo_wrapped(image)
    # Three hops; the first fibo step shares the camera node (co-location saves a hop), the
    # second fibo step cannot (one device serves a module.func once per deployment).
    assert [hop["device"] for hop in run["trace"]] == [by_id[d] for d in dep_devices(dep)]
    assert len(run["trace"]) == 3 and all(hop["requestId"] for hop in run["trace"])

    # Identical re-post: nothing changes on any device.
    status, again = await orch.deploy(PIPELINE)
    assert status == 200 and again["revision"] == 1

    # An edited manifest is revision 2 and replaces revision 1; a stale If-Match is refused.
    edited = PIPELINE | {"limits": {"fibo.fibo": {"timeoutMs": 3000}}}
    status, rev2 = await orch.deploy(edited, headers={"If-Match": "1"})
    assert status == 202 and rev2["revision"] == 2 and rev2["state"] == "ACTIVE", rev2
    status, stale = await orch.deploy(
        PIPELINE | {"limits": {"fibo.fibo": {"timeoutMs": 4000}}}, headers={"If-Match": "1"}
    )
    assert status == 409 and "2" in stale["result"]
    used = {by_id[d] for d in dep_devices(rev2)}
    for kind, device in fleet.items():
        async with stack.session.get(device.url + "/deploy") as resp:
            listed = (await resp.json())["deployments"]
        assert [d["deploymentId"] for d in listed] == ([dep["id"]] if kind in used else []), (
            kind,
            used,
            sorted(rev2["timings"]),
            dep_devices(dep),
            dep_devices(rev2),
        )

    # A device that refuses the push (corrupted blob → digest mismatch) fails the revision;
    # revision 2 keeps running everywhere.
    busy = {
        "count": {
            "method": "get",
            "parameters": [{"name": "n", "type": "integer"}],
            "output": "integer",
        }
    }
    record = await orch.push_module("busy", functions=json.dumps(busy).encode())
    blob = orch.state_dir / "blobs" / record["digest"]
    blob.write_bytes(b"\0asm" + b"\0" * 16)
    extended = PIPELINE | {"sequence": [*PIPELINE["sequence"], {"module": "busy", "func": "count"}]}
    status, rev3 = await orch.deploy(extended)
    assert rev3["revision"] == 3 and rev3["state"] == "ROLLED_BACK", rev3
    assert "digest mismatch" in (rev3["error"] or "")
    assert rev3["active"] == 2
    status, run = await orch.run(dep["id"], param0=5)
    assert status == 200 and run["value"] == fibo_wrapped(image)
    kinds = [(e["revision"], e["to"]) for e in rev3["events"]]
    assert (3, "FAILED") in kinds and (3, "ROLLED_BACK") in kinds and (2, "ACTIVE") in kinds
    # Only the latest revision keeps its explanations and only the active one its documents.
    state = json.loads((orch.state_dir / "state.json").read_text())
    (stored,) = [
        d["deployment"] for d in state["deployments"].values() if d["deployment"]["id"] == dep["id"]
    ]
    first, active, latest = stored["revisions"]
    assert all(not s["candidates"] for s in first["placement"]["steps"]) and first["nodes"] == {}
    assert active["nodes"] and all(s["candidates"] for s in latest["placement"]["steps"])


def dep_devices(dep: dict[str, Any]) -> list[str]:
    return [step["device"] for step in dep["placement"]["steps"]]


async def test_bad_input_is_a_problem_body(orchestrator: Orchestrator) -> None:
    orch = orchestrator
    for path, kwargs, status in (
        (
            "/deployments",
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        ("/deployments", {"json": {"name": "x", "sequence": []}}, 422),
        (
            "/deployments",
            {"json": {"name": "x", "sequence": [{"module": "nope", "func": "f"}]}},
            422,
        ),
        ("/placements", {"json": {"sequence": []}}, 422),
        ("/modules", {"data": b"x"}, 400),
        ("/devices", {"json": {"host": "127.0.0.1", "port": 1}}, 502),
    ):
        code, body = await orch.post(path, **kwargs)
        assert code == status, (path, body)
        assert body["status"] == "error" and body["result"], body
    for path in ("/deployments/nope", "/executions/nope", "/modules/nope", "/devices/nope"):
        code, body = await orch.get(path)
        assert code == 404 and body["status"] == "error", path
    form = aiohttp.FormData()
    form.add_field("name", "bad")
    form.add_field("wasm", b"\0asm\x01\0\0\0\x01", filename="bad.wasm")
    code, body = await orch.post("/modules", data=form)
    assert code == 422 and body["field"] == "wasm"
    json.dumps(body)


MANIFEST_ARGS: dict[str, tuple[dict[str, Any], Callable[[Any], bool]]] = {
    "fibo-chain": ({"param0": 5}, lambda v: v == 34),
    "camera-size": (
        {},
        lambda v: (
            v == fibo_wrapped(sorted((ROOT / "devices" / "images").glob("*.ppm"))[0].stat().st_size)
        ),
    ),
    "sensor-comfort": ({}, lambda v: v in (0, 1)),
    # The two example pipelines: every hop recomputed in tests/test_image_pipeline.py and
    # tests/test_sensor_pipeline.py; here, only that they run as shipped.
    "image-pipeline": ({}, lambda v: (v["width"], v["height"], v["pixels"]) == (32, 24, 768)),
    "sensor-pipeline": (
        {"count": 3, "interval_ms": 0},
        lambda v: v["alert"] is bool(v["reasons"]),
    ),
}


def test_every_shipped_manifest_has_a_check() -> None:
    shipped = {p.stem for p in (ROOT / "manifests").glob("*.*")}
    assert shipped == set(MANIFEST_ARGS), "add the new manifest's arguments and check above"


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").glob("*.*")), ids=lambda p: p.stem)
async def test_every_shipped_manifest_deploys_and_runs(
    path: Path, stack: Stack, orchestrator: Orchestrator
) -> None:
    orch = orchestrator
    await _fleet(stack, orch)
    for module in ("fibo", "camera", "sensors", "image", "climate"):
        await orch.push_module(module)
    content_type = "application/toml" if path.suffix == ".toml" else "application/json"
    status, dep = await orch.post(
        "/deployments?wait=30", data=path.read_bytes(), headers={"Content-Type": content_type}
    )
    assert status == 201 and dep["state"] == "ACTIVE", dep
    args, check = MANIFEST_ARGS[path.stem]
    status, run = await orch.run(dep["id"], **args)
    assert status == 200 and check(run["value"]), run


async def test_wrong_method_and_hostile_nesting_are_problem_bodies(
    orchestrator: Orchestrator,
) -> None:
    async with orchestrator.session.put(orchestrator.url + "/deployments") as resp:
        body = await resp.json()
        assert resp.status == 405 and body["type"] == "method-not-allowed"
    deep = b"a = " + b"[" * 5000 + b"]" * 5000
    code, body = await orchestrator.post(
        "/placements", data=deep, headers={"Content-Type": "application/toml"}
    )
    assert code == 400 and body["status"] == "error"


async def test_a_dead_hop_fails_the_execution_naming_it(
    stack: Stack, orchestrator: Orchestrator
) -> None:
    orch = orchestrator
    devices = [await stack.make_device() for _ in range(2)]
    for device in devices:
        status, body = await orch.post(
            "/devices", json={"host": "127.0.0.1", "port": int(device.url.rsplit(":", 1)[1])}
        )
        assert status == 201, body
    await orch.push_module("fibo")
    status, dep = await orch.deploy(
        {"name": "fragile", "sequence": [{"module": "fibo", "func": "fibo"}] * 2}
    )
    assert dep["state"] == "ACTIVE", dep
    _, listed = await orch.get("/devices")
    name_of = {d["id"]: d["name"] for d in listed}
    second = name_of[dep["placement"]["steps"][1]["device"]]
    dead = next(d for d in devices if d.settings.name == second)
    dead_address = dead.url.removeprefix("http://")
    await dead.server.close()  # gone before any health check notices
    status, run = await orch.run(dep["id"], param0=5)
    assert status == 502 and run["status"] == "failed"
    assert dead_address in run["error"], run["error"]
