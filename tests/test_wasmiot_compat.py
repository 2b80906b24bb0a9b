"""Wire compatibility with the reference wasmiot orchestrator, from bytes it really sent.

The fixtures in ``fixtures/wasmiot-captures`` were captured on the wire between the unmodified
reference orchestrator and two reference supervisors. Here the same bodies (only URLs and
ports adapted) go to Baton supervisors, and every answer must have the reference's shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.stack import Stack

CAPTURES = Path(__file__).parent / "fixtures" / "wasmiot-captures"


def _adapt(raw: str, stack: Stack, device_urls: dict[str, str]) -> dict[str, Any]:
    """Point the captured URLs at this test's file server and devices."""
    text = raw.replace(
        "http://127.0.0.1:3300/file/module/6b03fffe3b5aa082ff949acb/wasm",
        f"{stack.files_url}/files/fibo.wasm",
    )
    for old, new in device_urls.items():
        text = text.replace(old, new)
    return dict(json.loads(text))


def _wire_log() -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in (CAPTURES / "wire-log-first-of-each.jsonl").read_text().splitlines()
        if line
    ]


async def _follow_like_the_reference(stack: Stack, first_url: str) -> Any:
    """The reference orchestrator's loop: follow resultUrl and URL-valued results until a value."""
    async with stack.session.get(first_url) as resp:
        body = await resp.json()
    for _ in range(20):
        if body.get("result") and body.get("status") != "error":
            result = body["result"]
            if isinstance(result, str) and result.startswith("http"):
                url = result
            else:
                return result
        elif body.get("resultUrl"):
            url = body["resultUrl"]
        else:
            raise AssertionError(f"the reference orchestrator would stop here: {body}")
        async with stack.session.get(url) as resp:
            assert resp.status in (200, 202), await resp.text()
            body = await resp.json()
    raise AssertionError("chain did not end")


async def test_captured_chain_deploys_as_sent_and_runs(stack: Stack) -> None:
    a, b = await stack.make_device(), await stack.make_device()
    urls = {"http://127.0.0.1:5010": a.url, "http://127.0.0.1:5011": b.url}
    first = _adapt((CAPTURES / "chain-first-deviceA.deploy.json").read_text(), stack, urls)
    last = _adapt((CAPTURES / "chain-last-deviceB.deploy.json").read_text(), stack, urls)
    for device, body in ((a, first), (b, last)):
        async with stack.session.post(device.url + "//deploy", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "success"
    dep = first["deploymentId"]
    async with stack.session.get(
        f"{a.url}/{dep}/modules/fibo/fibo", params={"param0": "5"}
    ) as resp:
        reply = await resp.json()
    assert set(reply) == {"resultUrl"}
    # fibo(5)=8 on A, then fibo(8)=34 on B: the capture's final result.
    assert await _follow_like_the_reference(stack, reply["resultUrl"]) == ["34", None]


async def test_wire_log_requests_get_reference_shaped_answers(stack: Stack) -> None:
    a, b = await stack.make_device(), await stack.make_device()
    urls = {"http://127.0.0.1:5010": a.url, "http://127.0.0.1:5011": b.url}
    devices = {"A": a, "B": b}
    deploy_bodies = {
        "A": _adapt((CAPTURES / "chain-first-deviceA.deploy.json").read_text(), stack, urls),
        "B": _adapt((CAPTURES / "chain-last-deviceB.deploy.json").read_text(), stack, urls),
    }
    for record in sorted(
        _wire_log(), key=lambda r: (r["tag"] != "B", r["i"])
    ):  # B first: A chains to it
        device = devices[record["tag"]]
        headers = {
            k: v
            for k, v in record["req_headers"].items()
            if k.lower() not in {"host", "content-length", "connection", "accept-encoding"}
        }
        data: bytes | None
        if record["method"] == "POST" and record["path"] == "//deploy":
            data = json.dumps(deploy_bodies[record["tag"]]).encode()
        else:
            data = record["req_body"].encode() or None
        async with stack.session.request(
            record["method"], device.url + record["path"], data=data, headers=headers
        ) as resp:
            ours = await resp.json()
            assert resp.status == record["status"], (record["path"], ours)
            theirs = json.loads(record["resp_body"])
            assert set(theirs) <= set(ours), (record["path"], set(theirs) - set(ours))
            for key, value in theirs.items():
                assert type(ours[key]) is type(value) or {type(ours[key]), type(value)} <= {
                    int,
                    float,
                }, key
            if record["path"] == "/health":
                assert resp.headers["Custom-Orchestrator-Set"] in {"true", "false"}
            if record["path"].startswith("/.well-known"):
                assert {"clockSpeed", "humanReadableName"} <= set(ours["platform"]["cpu"])
                assert isinstance(ours["platform"]["memory"]["bytes"], int)
            if "modules/fibo/fibo" in record["path"]:
                assert set(ours) == {"resultUrl"}


async def test_capture_description_matches_fibo_exports(stack: Stack) -> None:
    """The OpenAPI description the reference generated names the fibo function we build."""
    described = json.loads((CAPTURES / "fibo-describe.response.json").read_text())["description"]
    (path,) = described["paths"]
    assert path == "/{deployment}/modules/fibo/fibo"
    dev = await stack.make_device()
    node = _adapt(
        (CAPTURES / "chain-last-deviceB.deploy.json").read_text(),
        stack,
        {"http://127.0.0.1:5011": dev.url},
    )
    async with stack.session.post(dev.url + "/deploy", json=node) as resp:
        assert resp.status == 200
    async with stack.session.get(
        f"{dev.url}/{node['deploymentId']}/modules/fibo/fibo", params={"param0": "12", "wait": "5"}
    ) as resp:
        assert (await resp.json())["result"] == ["233", None]
