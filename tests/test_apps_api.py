"""``/apps`` and descriptor deployments against a real orchestrator app and real supervisors.

Images are real zips packed by :func:`orchestrator.app_build.pack` from an app directory
built here out of ``build/wasm/fibo.wasm`` (two packages, ``fa`` and ``fb``, so a pipeline
``fa.fibo → fb.fibo`` computes fibo(fibo(n))), with a small static site.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.app_build import pack
from orchestrator.app_image import ImageLimits
from orchestrator.apps import AppRegistry
from orchestrator.errors import PayloadTooLarge
from orchestrator.modules import ModuleRegistry
from orchestrator.store import Store
from tests.conftest import ROOT, WASM_DIR
from tests.daemons import fibo
from tests.orchestration import Orchestrator, OrchestratorFactory
from tests.stack import Stack

FIBO_FUNCTIONS = json.loads((ROOT / "modules" / "fibo" / "functions.json").read_text())
INDEX = b"<!doctype html><title>fib</title><p>fibonacci twice</p>"


def app_source(
    root: Path,
    *,
    name: str = "fib",
    version: str = "1.0.0",
    package_version: str = "1.0.0",
    description: str = "fibonacci, twice",
    functions: dict[str, Any] | None = None,
) -> Path:
    """An app directory: packages ``fa`` and ``fb`` (both fibo.wasm), pipelines ``main``
    (fa.fibo → fb.fibo) and ``one`` (fa.fibo), a static site with a nested file."""
    src = root / f"{name}-{version}-{package_version}"
    app = {
        "schemaVersion": 1,
        "name": name,
        "version": version,
        "description": description,
        "pipelines": [
            {
                "name": "main",
                "sequence": [{"module": "fa", "func": "fibo"}, {"module": "fb", "func": "fibo"}],
                "limits": {"fa.fibo": {"timeoutMs": 5000}},
            },
            {"name": "one", "sequence": [{"module": "fa", "func": "fibo"}]},
        ],
        "packages": ["fa", "fb"],
    }
    (src / "static" / "css").mkdir(parents=True)
    (src / "application.json").write_text(json.dumps(app))
    for folder, package in (("pkg-a", "fa"), ("pkg-b", "fb")):
        (src / folder).mkdir()
        meta: dict[str, Any] = {
            "name": package,
            "version": package_version,
            "functions": functions or FIBO_FUNCTIONS,
            "requires": [],
        }
        (src / folder / "package.json").write_text(json.dumps(meta))
        (src / folder / "package.wasm").write_bytes((WASM_DIR / "fibo.wasm").read_bytes())
    (src / "static" / "static.json").write_text(json.dumps({"name": "fib", "index": "index.html"}))
    (src / "static" / "index.html").write_bytes(INDEX)
    (src / "static" / "css" / "site.css").write_text("p { color: red }")
    return src


def image(root: Path, **kwargs: Any) -> bytes:
    return pack(app_source(root, **kwargs))


def mine(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The test's apps, without the orchestrator's built-in ones."""
    return [a for a in apps if a["name"] == "fib"]


def snapshot(state_dir: Path) -> dict[str, bytes]:
    """Every file of the state directory with its content (the state file and blobs)."""
    return {
        str(p.relative_to(state_dir)): p.read_bytes()
        for p in sorted(state_dir.rglob("*"))
        if p.is_file()
    }


async def push(orch: Orchestrator, data: bytes, **headers: str) -> tuple[int, Any]:
    return await orch.post(
        "/apps", data=data, headers={"Content-Type": "application/zip", **headers}
    )


async def put_env(orch: Orchestrator, name: str, body: Any) -> tuple[int, Any]:
    async with orch.session.put(f"{orch.url}/environments/{name}", json=body) as resp:
        return resp.status, await resp.json()


async def register(stack: Stack, orch: Orchestrator, name: str = "dev") -> None:
    device = await stack.make_device(name=name)
    port = int(device.url.rsplit(":", 1)[1])
    status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": port})
    assert status == 201, body


# --- the registry API --------------------------------------------------------------------------


async def test_push_list_show_image_and_static_pages(
    orchestrator: Orchestrator, tmp_path: Path
) -> None:
    orch = orchestrator
    data = image(tmp_path)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, body = await push(orch, data)
    assert status == 201, body
    assert body == {
        "name": "fib",
        "version": "1.0.0",
        "digest": digest,
        "size": len(data),
        "packages": {"fa": "fa@1.0.0", "fb": "fb@1.0.0"},
        "pipelines": ["main", "one"],
        "created": True,
    }
    # Its packages are module versions a manifest can name too.
    status, module = await orch.get("/modules/fa@1.0.0")
    assert status == 200 and set(module["functions"]) == {"fibo", "add"}

    status, apps = await orch.get("/apps")
    assert status == 200
    assert mine(apps) == [{"name": "fib", "versions": ["1.0.0"], "latest": "1.0.0"}]
    status, versions = await orch.get("/apps/fib")
    assert status == 200 and [v["version"] for v in versions["versions"]] == ["1.0.0"]
    status, record = await orch.get("/apps/fib/1.0.0")
    assert status == 200 and record["digest"] == digest and not record["builtin"]
    assert record["imageUrl"] == f"{orch.url}/apps/fib/1.0.0/image"
    assert [p["name"] for p in record["pipelines"]] == ["main", "one"]
    assert sorted(record["static"]["files"]) == ["css/site.css", "index.html"]

    async with orch.session.get(record["imageUrl"]) as resp:
        assert resp.status == 200 and resp.content_type == "application/zip"
        assert resp.headers["X-Baton-Digest"] == digest
        assert resp.headers["Digest"] == f"sha256={digest.removeprefix('sha256:')}"
        assert await resp.read() == data

    for path in ("/apps/fib/1.0.0/static/", "/apps/fib/static/", "/apps/fib/static/index.html"):
        async with orch.session.get(orch.url + path) as resp:
            assert resp.status == 200, path
            assert resp.content_type == "text/html"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert await resp.read() == INDEX
    async with orch.session.get(orch.url + "/apps/fib/static/css/site.css") as resp:
        assert resp.status == 200 and resp.content_type == "text/css"

    # Missing files, versions and apps are 404 problems; no request path reaches the disk.
    for path in (
        "/apps/fib/static/nope.html",
        "/apps/fib/static/../../state.json",
        "/apps/fib/1.0.0/static/%2e%2e/%2e%2e/state.json",
        "/apps/fib/static/static.json",
        "/apps/fib/9.9.9",
        "/apps/fib/9.9.9/image",
        "/apps/nope",
    ):
        async with orch.session.get(orch.url + path) as resp:
            problem = await resp.json()
            assert resp.status == 404, (path, problem)
            assert problem["status"] == "error", path


async def test_same_image_again_changes_nothing(orchestrator: Orchestrator, tmp_path: Path) -> None:
    orch = orchestrator
    data = image(tmp_path)
    assert (await push(orch, data))[0] == 201
    before = snapshot(orch.state_dir)
    status, body = await push(orch, data)
    assert status == 200 and body["created"] is False and body["version"] == "1.0.0"
    assert snapshot(orch.state_dir) == before


async def test_version_clashes_are_refused_and_nothing_is_written(
    orchestrator: Orchestrator, tmp_path: Path
) -> None:
    orch = orchestrator
    assert (await push(orch, image(tmp_path)))[0] == 201
    before = snapshot(orch.state_dir)

    # Same app name@version, other bytes.
    status, problem = await push(orch, image(tmp_path / "b", description="changed"))
    assert status == 409 and problem["field"] == "version", problem
    # A new app version whose package reuses fa@1.0.0 with other content.
    changed = {"fibo": FIBO_FUNCTIONS["fibo"]}
    status, problem = await push(orch, image(tmp_path / "c", version="1.0.1", functions=changed))
    assert status == 409 and problem["field"] == "packages.fa.version", problem
    assert snapshot(orch.state_dir) == before

    # A new app version with new package versions is fine, and becomes the latest.
    status, body = await push(orch, image(tmp_path / "d", version="1.1.0", package_version="2"))
    assert status == 201 and body["packages"] == {"fa": "fa@2", "fb": "fb@2"}
    status, apps = await orch.get("/apps")
    assert mine(apps) == [{"name": "fib", "versions": ["1.0.0", "1.1.0"], "latest": "1.1.0"}]


async def test_bad_uploads_are_problems(
    make_orchestrator: OrchestratorFactory, tmp_path: Path
) -> None:
    orch = await make_orchestrator(token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    data = image(tmp_path)
    status, problem = await push(orch, data)
    assert status == 401, problem
    status, problem = await push(orch, b"not a zip", **auth)
    assert status == 400 and problem["field"] == "image", problem
    status, problem = await orch.post(
        "/apps", data=data, headers={"Content-Type": "application/json", **auth}
    )
    assert status == 400 and problem["field"] == "Content-Type", problem
    # An image with a core package: only built-in apps may use the core runtime.
    src = app_source(tmp_path / "core")
    meta = json.loads((src / "pkg-a" / "package.json").read_text()) | {"runtime": "core"}
    (src / "pkg-a" / "package.json").write_text(json.dumps(meta))
    (src / "pkg-a" / "package.wasm").unlink()
    core = pack(src, allow_core=True)
    status, problem = await push(orch, core, **auth)
    assert status == 422 and problem["field"] == "pkg-a/package.json.runtime", problem
    status, apps = await orch.get("/apps")
    assert mine(apps) == []


async def test_registry_refuses_oversized_images_and_registers_core_packages(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state")
    try:
        modules = ModuleRegistry(store)
        data = image(tmp_path)
        small = AppRegistry(store, modules, ImageLimits(max_image_bytes=len(data) - 1))
        with pytest.raises(PayloadTooLarge):
            await small.add(data)
        assert modules.all() == [] and await store.all("apps") == []

        src = app_source(tmp_path / "core")
        meta = json.loads((src / "pkg-a" / "package.json").read_text()) | {"runtime": "core"}
        (src / "pkg-a" / "package.json").write_text(json.dumps(meta))
        (src / "pkg-a" / "package.wasm").unlink()
        apps = AppRegistry(store, modules)
        record, created = await apps.add(pack(src, allow_core=True), allow_core=True)
        assert created and record.builtin
        core = modules.get("fa@1.0.0")
        assert core is not None and core.runtime == "core" and core.imports == []
        wasm = modules.get("fb@1.0.0")
        assert wasm is not None and wasm.runtime == "wasm"
        # Restored from the state file as they were written.
        again = AppRegistry(store, ModuleRegistry(store))
        await again.load()
        assert again.get("fib") == record
    finally:
        await store.close()


# --- descriptors ---------------------------------------------------------------------------------


async def test_descriptor_deploys_runs_and_is_idempotent(
    stack: Stack, orchestrator: Orchestrator, tmp_path: Path
) -> None:
    orch = orchestrator
    await register(stack, orch)
    data = image(tmp_path)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (await push(orch, data))[0] == 201
    descriptor = {"schemaVersion": 1, "app": "fib@1.0.0", "environment": "lab"}
    status, problem = await orch.deploy(descriptor)
    assert status == 422 and problem["field"] == "environment", problem
    status, env = await put_env(orch, "lab", {"description": "bench", "limits": {"fuel": 10**9}})
    assert status == 201, env
    status, problem = await orch.deploy(descriptor | {"environment": "nowhere"})
    assert status == 422 and problem["field"] == "environment", problem
    status, problem = await orch.deploy(descriptor | {"digest": "sha256:" + "0" * 64})
    assert status == 422 and problem["field"] == "digest", problem
    status, problem = await orch.deploy(descriptor | {"app": "nope@1"})
    assert status == 422 and problem["field"] == "app", problem
    status, problem = await orch.deploy(descriptor | {"pipeline": "nope"})
    assert status == 422 and problem["field"] == "pipeline", problem
    status, deployments = await orch.get("/deployments")
    assert [d for d in deployments if d["name"].startswith("fib")] == []

    status, dep = await orch.deploy(descriptor | {"digest": digest})
    assert status == 201 and dep["state"] == "ACTIVE", dep
    assert dep["name"] == "fib-lab"
    status, run = await orch.run(dep["id"], param0=4)
    assert status == 200 and run["value"] == fibo(fibo(4)), run

    # Same descriptor again (and "fib" = its latest version, the same one): no new revision.
    for again in (descriptor, descriptor | {"app": "fib"}):
        status, same = await orch.deploy(again)
        assert status == 200 and same["revision"] == 1, same

    # Another pipeline is another manifest: the next revision of the same deployment.
    status, one = await orch.deploy(descriptor | {"pipeline": "one"})
    assert status == 202 and one["revision"] == 2 and one["state"] == "ACTIVE", one
    status, run = await orch.run(dep["id"], param0=6)
    assert status == 200 and run["value"] == fibo(6), run

    # The environment is in use: it cannot go until the deployment does.
    async with orch.session.delete(orch.url + "/environments/lab") as resp:
        problem = await resp.json()
        assert resp.status == 409 and problem["detail"] == {"deployments": ["fib-lab"]}
    async with orch.session.delete(orch.url + f"/deployments/{dep['id']}") as resp:
        assert resp.status == 200
    async with orch.session.delete(orch.url + "/environments/lab") as resp:
        assert resp.status == 200, await resp.text()


async def test_a_used_built_in_package_must_exist_with_the_functions_used(
    orchestrator: Orchestrator, tmp_path: Path
) -> None:
    orch = orchestrator

    def using(root: Path, ref: str, func: str) -> bytes:
        src = app_source(root)
        doc = json.loads((src / "application.json").read_text())
        doc["uses"] = {"store": ref}
        store = [{"module": "fa", "func": "fibo"}, {"module": "store", "func": func}]
        doc["pipelines"].append({"name": "kept", "sequence": store})
        (src / "application.json").write_text(json.dumps(doc))
        return pack(src)

    before = snapshot(orch.state_dir)
    for root, ref, func in (
        ("a", "datalist@9.9.9", "push"),  # no such built-in version
        ("b", "fa@1.0.0", "fibo"),  # not built in (and not stored either)
        ("c", "datalist@1.0.0", "nope"),  # no such function
    ):
        status, problem = await push(orch, using(tmp_path / root, ref, func))
        assert status == 422 and problem["field"] == "application.json.uses.store", problem
    assert snapshot(orch.state_dir) == before
    status, body = await push(orch, using(tmp_path / "d", "datalist@1.0.0", "push"))
    assert status == 201, body
