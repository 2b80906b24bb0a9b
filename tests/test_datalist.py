"""The built-in ``datalist`` app: the result store, the core device, and a chain that ends on
the orchestrator (a real supervisor runs ``fibo``, the orchestrator stores its result)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core_device import CoreDevice, core_device
from orchestrator.devices import DeviceRegistry
from orchestrator.errors import Conflict, DeviceError
from orchestrator.results import ResultStore
from orchestrator.store import Store
from supervisor.protocol import (
    DeploymentNode,
    Endpoint,
    EndpointRequest,
    EndpointResponse,
    Instructions,
    ModuleRef,
    ModuleUrls,
    Parameter,
    Schema,
    node_digest,
)
from tests.cli_run import baton
from tests.daemons import fibo
from tests.orchestration import OrchestratorFactory
from tests.support import SupervisorProcess

# --- the result store ----------------------------------------------------------------------


async def test_results_are_numbered_bounded_and_survive_a_torn_last_line(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results", keep=5)
    try:
        for i in range(12):
            entry = await store.append("dep1", {"i": i}, request_id=f"r{i}", at=float(i))
            assert entry["seq"] == i + 1
        # Past 2 * keep lines the file is cut back to the newest `keep`: never above 2 * keep.
        lines = (tmp_path / "results" / "dep1.jsonl").read_bytes().splitlines()
        assert 5 <= len(lines) <= 10
        newest = await store.read("dep1", limit=3)
        assert [e["seq"] for e in newest] == [10, 11, 12]
        assert [e["value"] for e in newest] == [{"i": 9}, {"i": 10}, {"i": 11}]
        paged = await store.read("dep1", limit=2, after=9)
        assert [e["seq"] for e in paged] == [10, 11]
        assert (await store.counts())["dep1"] == len(lines)
    finally:
        await store.close()

    # A crash mid-append leaves half a line: readers skip it, the next append starts clean.
    path = tmp_path / "results" / "dep1.jsonl"
    with path.open("ab") as f:
        f.write(b'{"seq": 13, "value": [1, 2')
    reopened = ResultStore(tmp_path / "results", keep=5)
    try:
        assert [e["seq"] for e in await reopened.read("dep1", limit=2)] == [11, 12]
        entry = await reopened.append("dep1", "after crash", request_id="x", at=1.0)
        assert entry["seq"] == 13
        assert [e["value"] for e in await reopened.read("dep1", limit=2)] == [
            {"i": 11},
            "after crash",
        ]
        assert all(json.loads(line) for line in path.read_bytes().splitlines())
        assert await reopened.clear("dep1") >= 1
        assert await reopened.read("dep1") == [] and "dep1" not in await reopened.counts()
    finally:
        await reopened.close()


async def test_a_result_store_refuses_a_path_as_deployment(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    try:
        for bad in ("../x", "a/b", "", ".hidden"):
            with pytest.raises(ValueError, match="not a deployment id"):
                await store.append(bad, 1, request_id="r", at=0.0)
            assert not store.has(bad)
    finally:
        await store.close()


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        min_size=1,
        max_size=15,
    ),
    keep=st.integers(1, 6),
)
def test_the_newest_values_read_back_in_order(
    tmp_path_factory: pytest.TempPathFactory, values: list[object], keep: int
) -> None:
    async def run() -> None:
        store = ResultStore(tmp_path_factory.mktemp("results"), keep=keep)
        try:
            for v in values:
                await store.append("d", v, request_id="r", at=0.0)
            got = await store.read("d", limit=keep)
            assert [e["value"] for e in got] == values[-keep:]
            assert [e["seq"] for e in got] == list(
                range(len(values) + 1 - len(got), len(values) + 1)
            )
        finally:
            await store.close()

    asyncio.run(run())


# --- the core device --------------------------------------------------------------------------


def _node(deployment: str, func: str = "push") -> DeploymentNode:
    url = "http://127.0.0.1:1"
    endpoint = Endpoint(
        url=url,
        path=f"/{deployment}/modules/datalist/{func}",
        method="post",
        request=EndpointRequest(
            parameters=[Parameter(name="value", in_="query", schema=Schema(type="string"))]
        ),
        response=EndpointResponse(media_type="application/json", schema=Schema(type="object")),
    )
    return DeploymentNode(
        deploymentId=deployment,
        modules=[ModuleRef(id="d" * 64, name="datalist", urls=ModuleUrls(binary=f"{url}/b"))],
        endpoints={"datalist": {func: endpoint}},
        instructions=Instructions(modules={}),
        mounts={},
    )


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[tuple[Store, ResultStore]]:
    store = Store(tmp_path / "state")
    results = ResultStore(tmp_path / "state" / "results")
    yield store, results
    await results.close()
    await store.close()


async def test_the_core_device_deploys_like_a_supervisor(
    state: tuple[Store, ResultStore],
) -> None:
    store, results = state
    core = CoreDevice(store, results)
    node = _node("abc123")
    digest = await core.deploy(node)
    assert digest == f"sha256:{node_digest(node)}"
    assert await core.deploy(node) == digest  # same content: same answer, still one entry
    assert core.listing() == {"abc123": digest}
    core.verify("abc123", digest)
    with pytest.raises(DeviceError, match="expected"):
        core.verify("abc123", "sha256:" + "0" * 64)
    # A function the orchestrator does not implement is refused, and nothing is kept.
    with pytest.raises(DeviceError, match=r"no built-in function datalist\.nope"):
        await core.deploy(_node("other", "nope"))
    assert "other" not in core.listing()

    # Kept across a restart without being pushed again; calls are filed under the parent
    # deployment (partition k's device-side id is "<id>-p<k>").
    await core.deploy(_node("abc123-p1"))
    again = CoreDevice(store, results)
    await again.load()
    assert again.listing() == core.listing() and again.pushes == 0
    entry = await again.call("abc123-p1", "datalist", "push", "POST", {"param0": '{"t": 21}'})
    assert entry.success and entry.value == {"t": 21} and entry.deployment_id == "abc123-p1"
    assert again.history(entry.request_id) is entry
    stored = await results.read("abc123")
    assert [(e["value"], e["partition"]) for e in stored] == [({"t": 21}, 1)]
    await again.undeploy("abc123")
    assert set(again.listing()) == {"abc123-p1"}


# --- end to end: fibo on a supervisor, datalist.push on the orchestrator ---------------------


@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[SupervisorProcess]:
    sup = SupervisorProcess(tmp_path / "sup", name="sup")
    sup.start()
    try:
        await sup.wait_healthy()
        yield sup
    finally:
        sup.kill()


async def test_a_chain_ends_on_the_orchestrator_and_its_results_are_kept(
    make_orchestrator: OrchestratorFactory,
    supervisor: SupervisorProcess,
    capsys: pytest.CaptureFixture[str],
) -> None:
    orch = await make_orchestrator()
    status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": supervisor.port})
    assert status == 201, body
    await orch.push_module("fibo")
    # The supervisor is labelled nothing; the constraint must not keep the last step off the
    # orchestrator, and the built-in module resolves by name like any other.
    manifest = {
        "name": "fibo-store",
        "sequence": [{"module": "fibo", "func": "fibo"}, {"module": "datalist", "func": "push"}],
    }
    status, dep = await orch.deploy(manifest)
    assert status == 201 and dep["state"] == "ACTIVE", dep
    assert [s["device"] for s in dep["placement"]["steps"]][1] == "orchestrator"

    for n in (5, 7):
        status, run = await orch.run(dep["id"], param0=n)
        assert status == 200, run
        assert run["value"] == fibo(n), run
        assert [hop["device"] for hop in run["trace"]][-1] == "orchestrator"

    status, stored = await orch.get(f"/results/{dep['name']}")
    assert status == 200, stored
    assert stored["deployment"] == dep["id"] and stored["count"] == 2
    assert [e["value"] for e in stored["entries"]] == [fibo(5), fibo(7)]
    status, counts = await orch.get("/results")
    assert counts[dep["id"]] == 2

    code, out, err = await baton(capsys, orch.url, "results", "fibo-store")
    assert code == 0, err
    assert str(fibo(7)) in out and "fibo-store" in out
    code, out, err = await baton(capsys, orch.url, "results")
    assert code == 0, err
    assert "fibo-store" in out and dep["id"] in out

    # The built-in datalist deployment stores what it is given.
    code, out, err = await baton(capsys, orch.url, "--json", "run", "datalist", "--arg", "value=42")
    assert code == 0, err
    assert json.loads(out)["value"] == 42
    code, out, err = await baton(capsys, orch.url, "--json", "results", "datalist")
    assert code == 0, err
    assert [e["value"] for e in json.loads(out)["entries"]] == [42]

    # Removing a deployment keeps its results; clearing them is explicit.
    async with orch.session.delete(orch.url + "/deployments/fibo-store") as resp:
        assert resp.status == 200
    status, kept = await orch.get(f"/results/{dep['id']}")
    assert status == 200 and kept["count"] == 2 and kept["name"] is None
    code, out, err = await baton(capsys, orch.url, "results", dep["id"], "--clear")
    assert code == 0 and "removed 2" in out, (out, err)
    status, gone = await orch.get(f"/results/{dep['id']}")
    assert status == 404, gone


async def test_core_routes_refuse_bad_input(make_orchestrator: OrchestratorFactory) -> None:
    orch = await make_orchestrator()
    status, dep = await orch.get("/deployments/datalist")
    assert status == 200 and dep["state"] == "ACTIVE", dep
    status, body = await orch.post(f"/{dep['id']}/modules/datalist/nope")
    assert status == 404 and body["field"] == "function"
    status, body = await orch.post("/0123456789ab/modules/datalist/push?value=1")
    assert status == 404 and body["field"] == "deployment"
    status, body = await orch.post(f"/{dep['id']}/modules/datalist/push")
    assert status == 400 and body["field"] == "value"
    status, body = await orch.post(
        f"/{dep['id']}/modules/datalist/push", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert status == 400
    status, body = await orch.get("/results/datalist?limit=0")
    assert status == 400 and body["field"] == "limit"
    status, body = await orch.get("/results/datalist?after=-1")
    assert status == 400 and body["field"] == "after"
    status, body = await orch.get("/results/no-such-thing")
    assert status == 404
    status, body = await orch.get("/request-history/nope")
    assert status == 404
    # A call with ?wait= answers inline, and its history entry reads like a supervisor's.
    status, body = await orch.post(
        f"/{dep['id']}/modules/datalist/push?wait=5", json={"value": [1, "two"]}
    )
    assert status == 200 and body["value"] == [1, "two"] and body["success"] is True, body
    status, entry = await orch.get(body["resultUrl"].removeprefix(orch.url) + "?wait=1")
    assert status == 200 and entry["status"] == "done" and entry["value"] == [1, "two"]
    assert entry["result"] == [json.dumps([1, "two"]), None]


async def test_without_built_in_apps_there_is_no_core_device(
    make_orchestrator: OrchestratorFactory,
) -> None:
    orch = await make_orchestrator(builtin_apps=None)
    status, devices = await orch.get("/devices")
    assert status == 200 and devices == []
    status, deployments = await orch.get("/deployments")
    assert deployments == []
    status, body = await orch.get("/results")
    assert status == 404 and "disabled" in body["result"]


def test_no_supervisor_can_take_the_core_device_id() -> None:
    registry = DeviceRegistry()
    registry.add_core(core_device("http://127.0.0.1:3000"))
    with pytest.raises(Conflict, match="reserved"):
        registry.upsert_from_description(
            {"id": "orchestrator", "apiVersion": 1}, host="127.0.0.1", port=5000
        )
    core = registry.get("orchestrator")
    assert core.core and core.url == "http://127.0.0.1:3000" and core.view(0).core
    # A cordon outlives a restart (the core device is rebuilt from the settings each time).
    registry.cordon("orchestrator")
    restored = DeviceRegistry.from_builtins(registry.to_builtins())
    restored.add_core(core_device("https://orch.example:8443"))
    again = restored.get("orchestrator")
    assert again.cordoned and again.url == "https://orch.example:8443"
