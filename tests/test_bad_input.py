"""Bad input gets a clear 4xx problem body and changes nothing; never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.stack import Stack, fibo_node
from tests.support import Step, mini_manifest, upload, upper_step


async def _post(stack: Stack, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with stack.session.post(url, **kwargs) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, "$"),
        (
            b'{"deploymentId": "x", "endpoints": {}, "instructions": {}, "mounts": {}}',
            422,
            "modules",
        ),
        (
            b'{"deploymentId": 5, "modules": [], "endpoints": {}, "instructions": {}, "mounts": {}}',
            422,
            "deploymentId",
        ),
        (
            b'{"deploymentId": "x", "modules": [], "endpoints": {}, "instructions": {"modules": {}}, "mounts": {}}',
            422,
            "modules",
        ),
        (
            b'{"deploymentId": "../x", "modules": [{"id": "1", "name": "m", "urls": {"binary": "http://127.0.0.1:1/"}}], "endpoints": {}, "instructions": {}, "mounts": {}}',
            422,
            "deploymentId",
        ),
    ],
)
async def test_malformed_deploy_names_the_field(
    stack: Stack, body: bytes, status: int, field: str | None
) -> None:
    dev = await stack.make_device()
    code, problem = await _post(
        stack, dev.url + "/deploy", data=body, headers={"Content-Type": "application/json"}
    )
    assert code == status and problem["status"] == "error" and problem["result"]
    if field is not None:
        assert problem["field"] == field
    async with stack.session.get(dev.url + "/deploy") as resp:
        assert (await resp.json())["deployments"] == []


async def test_unsafe_mount_name_is_refused(stack: Stack) -> None:
    dev = await stack.make_device()
    node = mini_manifest(
        "m",
        dev.url,
        stack.files_url,
        [Step("textfile", "upper", execution=["../escape"], method="post")],
    )
    code, problem = await _post(stack, dev.url + "/deploy", json=node)
    assert code == 422 and problem["field"] == "mounts.textfile.upper.execution[0].path"


async def test_digest_mismatch_installs_nothing(stack: Stack) -> None:
    dev = await stack.make_device()
    node = fibo_node("dig", dev, stack)
    node["baton"]["modules"]["fibo"]["digest"] = "sha256:" + "0" * 64
    code, problem = await _post(stack, dev.url + "/deploy", json=node)
    assert code == 422 and "digest mismatch" in problem["result"]
    assert problem["field"] == "modules.fibo"
    assert not list((dev.settings.state_dir / "blobs").glob("*"))
    async with stack.session.get(dev.url + "/deploy") as resp:
        assert (await resp.json())["deployments"] == []


async def test_endpoint_for_missing_export_is_refused(stack: Stack) -> None:
    dev = await stack.make_device()
    node = mini_manifest(
        "nf", dev.url, stack.files_url, [Step("fibo", "nosuch", [("param0", "integer")])]
    )
    code, problem = await _post(stack, dev.url + "/deploy", json=node)
    assert code == 422 and problem["field"] == "endpoints.fibo.nosuch"


async def test_module_needing_a_missing_host_function_is_refused(stack: Stack) -> None:
    dev = await stack.make_device()
    node = mini_manifest("mi", dev.url, stack.files_url, [Step("missing_import", "run")])
    code, problem = await _post(stack, dev.url + "/deploy", json=node)
    assert code == 422 and "nosuch.thing" in problem["result"]


async def test_unknown_deployment_module_function_are_404(stack: Stack) -> None:
    dev = await stack.make_device()
    assert (await stack.deploy(dev, fibo_node("d", dev, stack))).status == 200
    for path in (
        "/nope/modules/fibo/fibo",
        "/d/modules/nope/fibo",
        "/d/modules/fibo/nope",
        "/request-history/nope",
        "/module_results/d/fibo/x/y",
    ):
        async with stack.session.get(dev.url + path) as resp:
            body = await resp.json()
            assert resp.status == 404, path
            assert body["status"] == "error"


async def test_bad_arguments_are_400(stack: Stack) -> None:
    dev = await stack.make_device()
    assert (await stack.deploy(dev, fibo_node("d", dev, stack))).status == 200
    for query, field in (("", "param0"), ("?param0=abc", "param0"), ("?param0=1&wait=x", "wait")):
        async with stack.session.get(f"{dev.url}/d/modules/fibo/fibo{query}") as resp:
            body = await resp.json()
            assert resp.status == 400 and body["field"] == field, body


async def test_unexpected_or_traversing_upload_field_is_400(stack: Stack) -> None:
    dev = await stack.make_device()
    steps = [upper_step()]
    assert (
        await stack.deploy(dev, mini_manifest("up", dev.url, stack.files_url, steps))
    ).status == 200
    for name in ("other.txt", "../input.txt"):
        form = aiohttp.FormData()
        form.add_field("input.txt", b"x", filename="input.txt")
        form.add_field(name, b"x", filename="f")
        code, body = await _post(stack, f"{dev.url}/up/modules/textfile/upper", data=form)
        assert code == 400 and body["field"] == name
    code, body = await _post(
        stack, f"{dev.url}/up/modules/textfile/upper", data=aiohttp.FormData({"a": "1"})
    )
    assert code == 400 and body["field"] == "input.txt"  # the required file is missing


async def test_oversized_body_is_413(stack: Stack, tmp_path: Path) -> None:
    dev = await stack.make_device(max_body_bytes=1024 * 1024)
    code, body = await _post(
        stack,
        dev.url + "/deploy",
        data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert code == 413 and body["status"] == "error"
    steps = [upper_step()]
    assert (
        await stack.deploy(dev, mini_manifest("big", dev.url, stack.files_url, steps))
    ).status == 200
    form = upload("input.txt", b"x" * (2 * 1024 * 1024))
    code, body = await _post(stack, f"{dev.url}/big/modules/textfile/upper", data=form)
    assert code == 413


async def test_unknown_route_and_method_are_problem_bodies(stack: Stack) -> None:
    dev = await stack.make_device()
    async with stack.session.get(dev.url + "/no/such/route") as resp:
        assert resp.status == 404 and (await resp.json())["status"] == "error"
    async with stack.session.put(dev.url + "/deploy") as resp:
        assert resp.status == 405 and (await resp.json())["type"] == "method-not-allowed"
