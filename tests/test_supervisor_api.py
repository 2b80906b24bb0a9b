"""The supervisor's HTTP API, served for real on 127.0.0.1 with real Wasm modules."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psutil
from aiohttp.test_utils import TestServer

from supervisor.app import build_app
from supervisor.protocol import DESCRIPTION_PATH
from tests.stack import Stack, fibo_node
from tests.support import Step, mini_manifest, prefix_step, upload, upper_step


async def test_health_and_description_report_real_platform_data(stack: Stack) -> None:
    dev = await stack.make_device()
    async with stack.session.get(dev.url + "/health") as resp:
        health = await resp.json()
        assert resp.headers["Custom-Orchestrator-Set"] == "false"
    assert 0 <= health["cpuUsage"] <= 1 and 0 < health["memoryUsage"] < 1
    assert health["uptimeSeconds"] >= 0 and health["storage"]["bytes"] > 0
    async with stack.session.get(dev.url + "/.well-known/wasmiot-device-description") as resp:
        desc = await resp.json()
    assert desc["platform"]["memory"]["bytes"] == psutil.virtual_memory().total
    assert desc["platform"]["cpu"]["cores"] == psutil.cpu_count()
    assert any(i["name"] == "lo" for i in desc["platform"]["network"]["interfaces"])
    assert {"millis", "fd_write", "path_open"} <= set(desc["supervisorInterfaces"])
    assert len(desc["id"]) == 32 and desc["apiVersion"] == 1


async def test_device_id_is_stable_across_restarts(stack: Stack, tmp_path: Path) -> None:
    dev = await stack.make_device()
    async with stack.session.get(dev.url + "/.well-known/wasmiot-device-description") as resp:
        first = (await resp.json())["id"]
    await dev.server.close()
    again = TestServer(build_app(dev.settings), host="127.0.0.1")
    await again.start_server()
    try:
        async with stack.session.get(
            str(again.make_url("/.well-known/wasmiot-device-description"))
        ) as resp:
            assert (await resp.json())["id"] == first
    finally:
        await again.close()


async def test_reference_fibo_deployment_and_history(stack: Stack) -> None:
    """wasmiot.md §3.6.4: the reference body, URLs and ports adapted, param0=12 → 233."""
    dev = await stack.make_device()
    node = fibo_node("68de33d217a1179db4a8a4d9", dev, stack)
    del node["baton"]  # exactly the reference's five keys
    resp = await stack.deploy(dev, node)
    assert resp.status == 200
    reply = await stack.call(f"{dev.url}/68de33d217a1179db4a8a4d9/modules/fibo/fibo", param0=12)
    assert list(reply) == ["resultUrl"]
    assert reply["resultUrl"].startswith(
        dev.url + "/request-history/68de33d217a1179db4a8a4d9:fibo:fibo:"
    )
    status, entry = await stack.entry(reply["resultUrl"])
    assert status == 200
    assert entry["result"] == ["233", None] and entry["success"] is True and entry["value"] == 233
    assert entry["request_args"] == {"param0": "12"} and entry["method"] == "GET"
    inline = await stack.call(
        f"{dev.url}/68de33d217a1179db4a8a4d9/modules/fibo/fibo", param0=12, wait=5
    )
    assert (
        inline["result"] == ["233", None] and inline["value"] == 233 and inline["success"] is True
    )


async def test_parameters_by_name_and_typed_results(stack: Stack) -> None:
    dev = await stack.make_device()
    steps = [
        Step("strings", "stats", [("text", "string")], result="object"),
        Step("strings", "shout", [("text", "string")], result="string"),
        Step("strings", "mean", [("a", "number"), ("b", "number")], result="number"),
    ]
    assert (
        await stack.deploy(dev, mini_manifest("typed", dev.url, stack.files_url, steps))
    ).status == 200
    base = f"{dev.url}/typed/modules/strings"
    stats = await stack.call(f"{base}/stats", text="two words", wait=5)
    assert stats["value"] == {"length": 9, "words": 2}
    assert json.loads(stats["result"][0]) == {"length": 9, "words": 2}
    shout = await stack.call(f"{base}/shout", text="héllo", wait=5)
    assert shout["value"] == "HéLLO"
    mean = await stack.call(f"{base}/mean", b=3.5, a=1, wait=5)  # by name, not by order
    assert mean["value"] == 2.25
    positional = await stack.call(f"{base}/mean", param0=1, param1=2, wait=5)
    assert positional["value"] == 1.5


async def test_redeploy_same_content_is_a_no_op(stack: Stack) -> None:
    dev = await stack.make_device()
    node = fibo_node("same", dev, stack)
    first = await stack.session.post(dev.url + "/deploy", json=node)
    assert (await first.json())["changed"] is True
    second = await stack.session.post(dev.url + "/deploy", json=node)
    body = await second.json()
    assert second.status == 200 and body["changed"] is False
    assert stack.file_hits["fibo.wasm"] == 1
    async with stack.session.get(dev.url + "/deploy") as resp:
        listing = await resp.json()
    assert [d["deploymentId"] for d in listing["deployments"]] == ["same"]
    assert listing["deployments"][0]["status"] == "ready"


async def test_changed_deployment_replaces_only_when_ready(stack: Stack) -> None:
    dev = await stack.make_device()
    node = fibo_node("swap", dev, stack)
    assert (await stack.deploy(dev, node)).status == 200
    broken = fibo_node("swap", dev, stack)
    broken["modules"][0]["urls"]["binary"] = stack.files_url + "/files/nonexistent.wasm"
    broken["baton"] = {}
    resp = await stack.session.post(dev.url + "/deploy", json=broken)
    assert resp.status == 502 and "nonexistent.wasm" in (await resp.json())["result"]
    reply = await stack.call(f"{dev.url}/swap/modules/fibo/fibo", param0=5, wait=5)
    assert reply["value"] == 8  # the old deployment still serves


async def test_delete_removes_deployment_and_files(stack: Stack) -> None:
    dev = await stack.make_device()
    steps = [upper_step()]
    assert (
        await stack.deploy(dev, mini_manifest("gone", dev.url, stack.files_url, steps))
    ).status == 200
    form = upload("input.txt", b"abc")
    async with stack.session.post(
        f"{dev.url}/gone/modules/textfile/upper?wait=5", data=form
    ) as resp:
        assert (await resp.json())["success"] is True
    request_dirs = dev.settings.state_dir / "requests" / "gone"
    assert any(request_dirs.iterdir())
    async with stack.session.delete(dev.url + "/deploy/gone") as resp:
        assert resp.status == 200
    assert not request_dirs.exists()
    assert not list((dev.settings.state_dir / "blobs").iterdir())
    async with stack.session.get(f"{dev.url}/gone/modules/textfile/upper") as resp:
        assert resp.status == 404
    async with stack.session.delete(dev.url + "/deploy/gone") as resp:
        assert resp.status == 404


async def test_files_in_and_out_per_request(stack: Stack) -> None:
    dev = await stack.make_device()
    steps = [
        upper_step(),
        prefix_step(),
    ]
    node = mini_manifest(
        "files",
        dev.url,
        stack.files_url,
        steps,
        data_files={"textfile": {"prefix.txt": "prefix.txt"}},
    )
    assert (await stack.deploy(dev, node)).status == 200
    form = upload("input.txt", b"make me loud")
    async with stack.session.post(
        f"{dev.url}/files/modules/textfile/upper?wait=5", data=form
    ) as resp:
        body = await resp.json()
    assert body["value"] == 12 and body["result"] == [None, ["output.txt"]]
    async with stack.session.get(body["outputs"][0]) as resp:
        assert await resp.read() == b"MAKE ME LOUD"
    async with stack.session.get(f"{dev.url}/module_results/textfile/output.txt") as resp:
        assert await resp.read() == b"MAKE ME LOUD"  # the reference's fixed path still works
    form = upload("input.txt", b"data")
    async with stack.session.post(
        f"{dev.url}/files/modules/textfile/prefix?wait=5", data=form
    ) as resp:
        body = await resp.json()
    async with stack.session.get(body["outputs"][0]) as resp:
        assert await resp.read() == b">> data"


async def test_guest_limits_fail_the_call_not_the_daemon(stack: Stack) -> None:
    dev = await stack.make_device()
    steps = [
        Step("spin", "spin", limits={"timeoutMs": 300}),
        Step("spin", "ok"),
        Step("membomb", "bomb", limits={"memoryBytes": 65 * 65536}),  # grows 16 pages a step
        Step("fibo", "fibo", [("param0", "integer")]),
    ]
    assert (
        await stack.deploy(dev, mini_manifest("hostile", dev.url, stack.files_url, steps))
    ).status == 200
    spin = await stack.call(f"{dev.url}/hostile/modules/spin/spin")
    # While the guest spins, the daemon keeps answering and other functions keep working.
    async with stack.session.get(dev.url + "/health") as resp:
        assert resp.status == 200
    fibo = await stack.call(f"{dev.url}/hostile/modules/fibo/fibo", param0=20, wait=5)
    assert fibo["value"] == 10946
    status, entry = await stack.entry(spin["resultUrl"])
    assert status == 500 and entry["success"] is False
    assert entry["error"]["kind"] == "timeout" and "300 ms" in entry["result"]
    ok = await stack.call(f"{dev.url}/hostile/modules/spin/ok", wait=5)
    assert ok["value"] == 7
    bomb = await stack.call(f"{dev.url}/hostile/modules/membomb/bomb")
    status, entry = await stack.entry(bomb["resultUrl"])
    assert status == 500 and entry["error"]["kind"] == "memory_limit"
    assert str(65 * 65536) in entry["result"]
    async with stack.session.get(dev.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'baton_traps_total{deployment="hostile",module="spin",function="spin"} 1' in metrics


async def test_chain_of_two_and_three_devices(stack: Stack) -> None:
    a, b, c = [await stack.make_device() for _ in range(3)]
    to_c = fibo_node("chain3", c, stack)["endpoints"]["fibo"]["fibo"]
    to_b = fibo_node("chain3", b, stack)["endpoints"]["fibo"]["fibo"]
    assert (await stack.deploy(c, fibo_node("chain3", c, stack))).status == 200
    assert (await stack.deploy(b, fibo_node("chain3", b, stack, to=to_c))).status == 200
    assert (await stack.deploy(a, fibo_node("chain3", a, stack, to=to_b))).status == 200
    first = await stack.call(f"{a.url}/chain3/modules/fibo/fibo", param0=3)  # 3 → 3 → 3 → 3
    status, hop1 = await stack.entry(first["resultUrl"])
    assert status == 200 and hop1["value"] == 3 and hop1["result"].startswith(b.url)
    assert hop1["next"] == hop1["result"]
    status, hop2 = await stack.entry(hop1["result"])
    assert status == 200 and hop2["value"] == 3 and hop2["result"].startswith(c.url)
    status, hop3 = await stack.entry(hop2["result"])
    assert hop3["result"] == ["3", None] and hop3["request_args"] == {"param0": "3"}
    # fibo(5)=8 → fibo(8)=34 → fibo(34)=9227465, as in the reference's captured chain
    first = await stack.call(f"{a.url}/chain3/modules/fibo/fibo", param0=4)
    _, hop1 = await stack.entry(first["resultUrl"])
    _, hop2 = await stack.entry(hop1["result"])
    _, hop3 = await stack.entry(hop2["result"])
    assert (hop1["value"], hop2["value"], hop3["value"]) == (5, 8, 34)


async def test_files_travel_along_the_chain(stack: Stack) -> None:
    a, b = await stack.make_device(), await stack.make_device()
    last = mini_manifest(
        "fchain",
        b.url,
        stack.files_url,
        [Step("textfile", "size", execution=["input.txt"], method="post")],
    )
    to = last["endpoints"]["textfile"]["size"]
    first = mini_manifest(
        "fchain",
        a.url,
        stack.files_url,
        [
            Step(
                "textfile",
                "upper",
                execution=["input.txt"],
                output=["output.txt"],
                method="post",
                to=to,
            )
        ],
    )
    assert (await stack.deploy(b, last)).status == 200
    assert (await stack.deploy(a, first)).status == 200
    form = upload("input.txt", b"twelve bytes")
    async with stack.session.post(
        f"{a.url}/fchain/modules/textfile/upper?wait=5", data=form
    ) as resp:
        hop1 = await resp.json()
    _, hop2 = await stack.entry(hop1["result"])
    assert hop2["value"] == 12 and hop2["request_files"] == {"input.txt": "input.txt"}


async def test_dead_next_hop_fails_the_entry_with_the_reason(
    stack: Stack, unused_tcp_port: int
) -> None:
    a = await stack.make_device(outbound_timeout_s=2.0)
    to = fibo_node("dead", a, stack)["endpoints"]["fibo"]["fibo"] | {
        "url": f"http://127.0.0.1:{unused_tcp_port}"
    }
    assert (await stack.deploy(a, fibo_node("dead", a, stack, to=to))).status == 200
    reply = await stack.call(f"{a.url}/dead/modules/fibo/fibo", param0=5)
    status, entry = await stack.entry(reply["resultUrl"])
    assert status == 500 and entry["success"] is False
    assert f"127.0.0.1:{unused_tcp_port}" in entry["result"] and entry["value"] == 8


async def test_pending_entry_answers_202_with_a_long_poll_url(stack: Stack) -> None:
    dev = await stack.make_device()
    steps = [Step("spin", "spin", limits={"timeoutMs": 500})]
    assert (
        await stack.deploy(dev, mini_manifest("slow", dev.url, stack.files_url, steps))
    ).status == 200
    reply = await stack.call(f"{dev.url}/slow/modules/spin/spin")
    async with stack.session.get(reply["resultUrl"]) as resp:
        assert resp.status == 202
        body = await resp.json()
    assert body["status"] == "pending" and body["resultUrl"].startswith(
        reply["resultUrl"] + "?wait="
    )
    async with stack.session.get(body["resultUrl"]) as resp:
        assert resp.status == 500 and (await resp.json())["status"] == "failed"


async def test_msgpack_content_negotiation(stack: Stack) -> None:
    import msgspec

    dev = await stack.make_device()
    node = fibo_node("mp", dev, stack)
    async with stack.session.post(
        dev.url + "/deploy",
        data=msgspec.msgpack.encode(node),
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    ) as resp:
        assert resp.content_type == "application/msgpack"
        assert msgspec.msgpack.decode(await resp.read())["status"] == "success"


async def test_token_guards_control_routes(stack: Stack) -> None:
    dev = await stack.make_device(token="s3cret")
    node = fibo_node("tok", dev, stack)
    async with stack.session.post(dev.url + "/deploy", json=node) as resp:
        assert resp.status == 401 and (await resp.json())["status"] == "error"
    async with stack.session.post(
        dev.url + "/deploy", json=node, headers={"Authorization": "Bearer nope"}
    ) as resp:
        assert resp.status == 401
    async with stack.session.post(
        dev.url + "/register", json={"url": "http://127.0.0.1:1"}
    ) as resp:
        assert resp.status == 401
    async with stack.session.post(
        dev.url + "/deploy", json=node, headers={"Authorization": "s3cret"}
    ) as resp:
        assert resp.status == 401  # the token without the Bearer scheme
    async with stack.session.post(
        dev.url + "/deploy", json=node, headers={"Authorization": "Bearer s3cret"}
    ) as resp:
        assert resp.status == 200
    for headers in ({}, {"Authorization": "Bearer nope"}):
        async with stack.session.delete(dev.url + "/deploy/tok", headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["type"] == "unauthorized", body
            assert "s3cret" not in json.dumps(body)
    # function endpoints and every read route stay open
    assert (await stack.call(f"{dev.url}/tok/modules/fibo/fibo", param0=1, wait=5))["value"] == 1
    for path in ("/health", "/deploy", "/metrics", "/openapi.json", DESCRIPTION_PATH):
        async with stack.session.get(dev.url + path) as resp:
            assert resp.status == 200, path
            assert "s3cret" not in await resp.text(), path
    async with stack.session.delete(
        dev.url + "/deploy/tok", headers={"Authorization": "Bearer s3cret"}
    ) as resp:
        assert resp.status == 200


async def test_register_sets_orchestrator_header(stack: Stack) -> None:
    dev = await stack.make_device()
    async with stack.session.post(
        dev.url + "/register", json={"url": "http://127.0.0.1:3000/"}
    ) as resp:
        assert resp.status == 200 and await resp.json() == {"status": "success"}
    async with stack.session.get(dev.url + "/health") as resp:
        assert resp.headers["Custom-Orchestrator-Set"] == "true"
    async with stack.session.post(dev.url + "/register", json={"url": "not a url"}) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["field"] == "url"


async def test_openapi_and_metrics(stack: Stack) -> None:
    dev = await stack.make_device()
    async with stack.session.get(dev.url + "/openapi.json") as resp:
        spec = await resp.json()
    assert {
        "/deploy",
        "/health",
        "/request-history/{id}",
        "/{deployment}/modules/{module}/{function}",
    } <= set(spec["paths"])
    assert "DeploymentNode" in spec["components"]["schemas"]
    assert (await stack.deploy(dev, fibo_node("m", dev, stack))).status == 200
    await stack.call(f"{dev.url}/m/modules/fibo/fibo", param0=3, wait=5)
    async with stack.session.get(dev.url + "/metrics") as resp:
        text = await resp.text()
    assert 'baton_calls_total{deployment="m",module="fibo",function="fibo"} 1' in text
    assert "baton_deployments 1" in text and "baton_uptime_seconds" in text


async def test_history_is_bounded(stack: Stack) -> None:
    dev = await stack.make_device(history_size=5)
    assert (await stack.deploy(dev, fibo_node("h", dev, stack))).status == 200
    urls = [
        (await stack.call(f"{dev.url}/h/modules/fibo/fibo", param0=i, wait=5))["resultUrl"]
        for i in range(8)
    ]
    async with stack.session.get(dev.url + "/request-history") as resp:
        entries = await resp.json()
    assert len(entries) == 5
    assert len({u.rsplit(":", 1)[1] for u in urls}) == 8  # ids never repeat
    async with stack.session.get(urls[0]) as resp:
        assert resp.status == 404


async def test_concurrent_calls_with_different_files_are_isolated(stack: Stack) -> None:
    dev = await stack.make_device()
    steps = [upper_step()]
    assert (
        await stack.deploy(dev, mini_manifest("iso", dev.url, stack.files_url, steps))
    ).status == 200

    async def one(i: int) -> tuple[int, bytes]:
        form = upload("input.txt", f"call number {i} ".encode() * (i + 1))
        async with stack.session.post(
            f"{dev.url}/iso/modules/textfile/upper?wait=30", data=form
        ) as resp:
            body = await resp.json()
        assert body["success"] is True, body
        async with stack.session.get(body["outputs"][0]) as resp:
            return body["value"], await resp.read()

    results = await asyncio.gather(*(one(i) for i in range(100)))
    for i, (length, data) in enumerate(results):
        expected = f"CALL NUMBER {i} ".encode() * (i + 1)
        assert data == expected and length == len(expected)


async def test_replacing_a_deployment_does_not_break_calls_in_flight(stack: Stack) -> None:
    dev = await stack.make_device()
    busy = mini_manifest(
        "swap", dev.url, stack.files_url, [Step("busy", "count", [("n", "integer")])]
    )
    assert (await stack.deploy(dev, busy)).status == 200
    n = 300_000_000
    reply = await stack.call(f"{dev.url}/swap/modules/busy/count", n=n)
    # Replace it with a different module while the call runs: its blob becomes unreferenced.
    assert (await stack.deploy(dev, fibo_node("swap", dev, stack))).status == 200
    status, entry = await stack.entry(reply["resultUrl"], wait=30)
    assert entry["status"] == "done", entry  # it was really still running at the swap
    assert status == 200 and entry["value"] == n
    assert entry["timings"]["runMs"] > 20
    assert (await stack.call(f"{dev.url}/swap/modules/fibo/fibo", param0=5, wait=5))["value"] == 8
    # Once the call is over, the next garbage collection removes the old module.
    assert (await stack.deploy(dev, fibo_node("other", dev, stack))).status == 200
    blobs = {p.name for p in (dev.settings.state_dir / "blobs").iterdir()}
    assert len(blobs) == 1
