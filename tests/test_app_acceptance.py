"""Issue 6, as a user does it: the example app built twice to one digest, pushed, deployed to
the ``lab`` environment with a descriptor through the real ``baton`` CLI, run, deployed again
(no-op), partitioned over four devices with a partition's device killed, ``partitions``
refused to change, a new app version as revision 2, a broken one rolled back, and hostile
images refused with nothing written. Real processes: one orchestrator, five supervisors."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import zipfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli_run import baton
from tests.conftest import ROOT, WASM_DIR
from tests.daemons import OrchestratorProcess, until
from tests.support import SupervisorProcess

EXAMPLE = ROOT / "examples" / "thermo-app"
COMPUTE = ROOT / "devices" / "compute-node.toml"
SENSOR = ROOT / "devices" / "sensor-node.toml"


def expected(celsius: int) -> int:
    """The thermo pipeline, from its spec: c2f, then 1 above limit.txt's 100 °F."""
    return 1 if celsius * 9 // 5 + 32 > 100 else 0


@pytest.fixture
async def site(
    tmp_path: Path,
) -> AsyncIterator[tuple[OrchestratorProcess, list[SupervisorProcess]]]:
    orch = OrchestratorProcess(
        tmp_path / "orch",
        extra=["--lost-after", "2", "--back-after", "1", "--health-interval", "0.3"],
    )
    sups = [
        SupervisorProcess(
            tmp_path / f"c{i}",
            name=f"compute-{i}",
            extra=["--profile", str(COMPUTE), "--orchestrator", orch.url],
        )
        for i in range(4)
    ] + [
        SupervisorProcess(
            tmp_path / "s0",
            name="sensor-0",
            extra=["--profile", str(SENSOR), "--orchestrator", orch.url],
        )
    ]
    try:
        orch.start()
        async with aiohttp.ClientSession() as session:
            await orch.wait_healthy(session)
            for sup in sups:
                sup.start()
            for sup in sups:
                await sup.wait_healthy()

            async def all_healthy() -> bool:
                async with session.get(orch.url + "/devices") as resp:
                    devices = await resp.json()
                names = {d["name"] for d in devices if d["status"] == "healthy"}
                return {s.name for s in sups} <= names

            await until(all_healthy, 20, "every supervisor registered and healthy")
        yield orch, sups
    finally:
        for sup in sups:
            sup.kill()
        orch.kill()


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def new_version(tmp: Path, version: str) -> Path:
    """A copy of the example app as version ``version`` (same packages)."""
    app = tmp / f"thermo-{version}"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("build"))
    doc = json.loads((app / "application.json").read_text())
    doc["version"] = version
    (app / "application.json").write_text(json.dumps(doc))
    return app


def descriptor(tmp: Path, file: str, **fields: Any) -> Path:
    doc = {"schemaVersion": 1, "app": "thermo@1.0.0", "environment": "lab"} | fields
    path = tmp / f"{file}.json"
    path.write_text(json.dumps(doc))
    return path


async def test_app_lifecycle_through_the_cli(
    site: tuple[OrchestratorProcess, list[SupervisorProcess]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    orch, sups = site
    url = orch.url

    # 1. Two builds, one digest; push; the lab environment; deploy; run; deploy again.
    images = [tmp_path / "a.zip", tmp_path / "b.zip"]
    for image in images:
        code, out, err = await baton(capsys, url, "app", "build", str(EXAMPLE), "-o", str(image))
        assert code == 0, err
    digest = hashlib.sha256(images[0].read_bytes()).hexdigest()
    assert images[0].read_bytes() == images[1].read_bytes()
    code, out, err = await baton(capsys, url, "app", "push", str(images[0]))
    assert code == 0 and digest in out, (out, err)
    code, out, err = await baton(capsys, url, "env", "set", "lab", "--label", "role=compute")
    assert code == 0, err
    lab = EXAMPLE / "deploy" / "lab.json"
    # The dry run of a descriptor: the derived pipeline's placement, and nothing deployed.
    code, out, err = await baton(capsys, url, "deploy", str(lab), "--dry-run")
    assert code == 0 and "convert@1.0.0.c2f" in out and "threshold@1.0.0.check" in out, (out, err)
    assert "sensor-0" in out and "label role=compute required" in out  # why not the sensor
    assert [d["name"] for d in await get(url + "/deployments")] == ["datalist"]
    code, out, err = await baton(capsys, url, "--json", "deploy", str(lab), "--wait", "60")
    assert code == 0, err
    dep = json.loads(out)
    assert dep["state"] == "ACTIVE" and dep["revision"] == 1, dep
    devices = {d["id"]: d for d in await get(url + "/devices")}
    used = {devices[s["device"]]["name"] for s in dep["placement"]["steps"]}
    assert used <= {f"compute-{i}" for i in range(4)}  # the lab: role=compute only
    for celsius in (30, 40):
        code, out, err = await baton(
            capsys, url, "--json", "run", dep["name"], "--arg", f"celsius={celsius}"
        )
        assert code == 0, err
        assert json.loads(out)["value"] == expected(celsius)
    code, out, err = await baton(capsys, url, "--json", "deploy", str(lab), "--wait", "60")
    assert code == 0, err
    again = json.loads(out)
    assert again["id"] == dep["id"] and len(again["revisions"]) == 1  # a no-op

    # The app's "record" pipeline ends in the built-in datalist: values land in the results.
    record = descriptor(tmp_path, "record", name="thermo-record", pipeline="record")
    code, out, err = await baton(capsys, url, "--json", "deploy", str(record), "--wait", "60")
    assert code == 0 and json.loads(out)["state"] == "ACTIVE", (out, err)
    for celsius in (0, 100):
        code, out, err = await baton(
            capsys, url, "run", "thermo-record", "--arg", f"celsius={celsius}"
        )
        assert code == 0, err
    code, out, err = await baton(capsys, url, "--json", "results", "thermo-record")
    assert code == 0, err
    assert [e["value"] for e in json.loads(out)["entries"]] == [32, 212]

    # 2. Two partitions over the four compute devices: two chains on distinct devices,
    # 100 executions spread over both, one partition's device killed and re-placed.
    parted = descriptor(tmp_path, "parted", name="thermo-parted", params={"partitions": 2})
    code, out, err = await baton(capsys, url, "--json", "deploy", str(parted), "--wait", "60")
    assert code == 0, err
    dep2 = json.loads(out)
    chains = [p["devices"] for p in dep2["partitions"]]
    assert len(chains) == 2 and not set(chains[0]) & set(chains[1]), chains
    first: Counter[str] = Counter()
    for i in range(100):
        code, out, err = await baton(
            capsys, url, "--json", "run", "thermo-parted", "--arg", f"celsius={i}"
        )
        assert code == 0, err
        run = json.loads(out)
        assert run["value"] == expected(i)
        first[run["trace"][0]["device"]] += 1
    assert sorted(first.values()) == [50, 50] and len(first) == 2, first
    victim_name = devices[chains[1][0]]["name"]
    victim = next(s for s in sups if s.name == victim_name)
    victim.kill()

    async def replaced() -> Any:
        now = await get(url + "/deployments/thermo-parted")
        placed = [p["devices"] for p in now["partitions"]]
        on = {devices[d]["name"] for c in placed for d in c}
        return now if now["state"] == "ACTIVE" and victim_name not in on else None

    now = await until(replaced, 15, "the killed device's partition re-placed")
    placed = [p["devices"] for p in now["partitions"]]
    assert placed[0] == chains[0] and not set(placed[0]) & set(placed[1]), placed
    code, out, err = await baton(
        capsys, url, "--json", "run", "thermo-parted", "--arg", "celsius=50"
    )
    assert code == 0 and json.loads(out)["value"] == expected(50), err

    # 3. partitions may not change (409 naming it); a new app version is revision 2; a
    # version that cannot be placed fails and revision 2 stays active.
    wider = descriptor(tmp_path, "wider", name="thermo-parted", params={"partitions": 3})
    code, out, err = await baton(capsys, url, "deploy", str(wider))
    assert code == 1 and "partitions" in err and "Traceback" not in err, err
    assert len((await get(url + "/deployments/thermo-parted"))["revisions"]) == len(
        now["revisions"]
    )
    v110 = tmp_path / "v110.zip"
    code, out, err = await baton(
        capsys, url, "app", "build", str(new_version(tmp_path, "1.1.0")), "-o", str(v110)
    )
    assert code == 0, err
    code, out, err = await baton(capsys, url, "app", "push", str(v110))
    assert code == 0, err
    lab110 = descriptor(tmp_path, "lab110", app="thermo@1.1.0")
    code, out, err = await baton(capsys, url, "--json", "deploy", str(lab110), "--wait", "60")
    assert code == 0, err
    dep3 = json.loads(out)
    assert dep3["id"] == dep["id"] and dep3["revision"] == 2 and dep3["state"] == "ACTIVE"

    broken = new_version(tmp_path, "1.2.0")
    camera = broken / "pkg-camera"  # needs the camera host function: no lab device has it
    camera.mkdir()
    shutil.copy(WASM_DIR / "camera.wasm", camera / "package.wasm")
    functions = json.loads((ROOT / "modules" / "camera" / "functions.json").read_text())
    imports = ["takeImageDynamicSize"]
    (camera / "package.json").write_text(
        json.dumps({"name": "cam", "version": "1.2.0", "functions": functions, "requires": imports})
    )
    doc = json.loads((broken / "application.json").read_text())
    doc["packages"].append("cam")
    doc["pipelines"][0]["sequence"].insert(0, {"module": "cam", "func": "image_size"})
    (broken / "application.json").write_text(json.dumps(doc))
    v120 = tmp_path / "v120.zip"
    code, out, err = await baton(capsys, url, "app", "build", str(broken), "-o", str(v120))
    assert code == 0, err
    code, out, err = await baton(capsys, url, "app", "push", str(v120))
    assert code == 0, err
    lab120 = descriptor(tmp_path, "lab120", app="thermo@1.2.0")
    code, out, err = await baton(capsys, url, "--json", "deploy", str(lab120), "--wait", "60")
    dep4 = await get(url + "/deployments/" + dep["id"])
    states = {r["number"]: r["state"] for r in dep4["revisions"]}
    assert states[3] in {"ROLLED_BACK", "FAILED"} and dep4["active"] == 2, dep4
    assert "cam@1.2.0.image_size" in (dep4["error"] or ""), dep4
    code, out, err = await baton(capsys, url, "--json", "run", dep["name"], "--arg", "celsius=40")
    assert code == 0 and json.loads(out)["value"] == expected(40), err


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


async def test_hostile_images_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    orch = OrchestratorProcess(tmp_path / "orch")
    good = json.dumps(
        {"schemaVersion": 1, "name": "x", "version": "1", "pipelines": [], "packages": []}
    )
    hostile = {
        "zip-slip": _zip([("application.json", good.encode()), ("../../evil.txt", b"x")]),
        "absolute": _zip([("application.json", good.encode()), ("/etc/evil", b"x")]),
        "symlink": _zip(
            [("application.json", good.encode()), _symlink("p/package.wasm", "/etc/passwd")]
        ),
        "bomb": _zip([("application.json", good.encode()), ("p/big.bin", b"\0" * (80 << 20))]),
        "duplicate packages": _zip(
            [
                ("application.json", good.encode()),
                ("a/package.json", b'{"name":"p","version":"1","functions":{}}'),
                ("b/package.json", b'{"name":"p","version":"1","functions":{}}'),
            ]
        ),
        "missing files": _zip(
            [("application.json", good.replace('"packages": []', '"packages": ["p"]').encode())]
        ),
        "not a zip": b"PK\x03\x04 definitely not a zip",
    }
    wasm_mismatch = io.BytesIO()
    with zipfile.ZipFile(wasm_mismatch, "w") as zf:
        app = {
            "schemaVersion": 1,
            "name": "x",
            "version": "1",
            "packages": ["fibo"],
            "pipelines": [{"name": "main", "sequence": [{"module": "fibo", "func": "nope"}]}],
        }
        zf.writestr("application.json", json.dumps(app))
        zf.writestr("f/package.wasm", (WASM_DIR / "fibo.wasm").read_bytes())
        zf.writestr(
            "f/package.json",
            json.dumps(
                {
                    "name": "fibo",
                    "version": "1",
                    "functions": {"nope": {"parameters": [], "output": "integer"}},
                }
            ),
        )
    hostile["wasm not matching package.json"] = wasm_mismatch.getvalue()
    try:
        orch.start()
        async with aiohttp.ClientSession() as session:
            await orch.wait_healthy(session)
            before = _snapshot(orch.state_dir)
            for what, data in hostile.items():
                async with session.post(
                    orch.url + "/apps", data=data, headers={"Content-Type": "application/zip"}
                ) as resp:
                    body = await resp.json()
                    assert 400 <= resp.status < 500, (what, resp.status, body)
                    assert body.get("result"), (what, body)
            async with session.get(orch.url + "/apps") as resp:
                assert await resp.json() == [] or all(a["name"] != "x" for a in await resp.json())
        assert _snapshot(orch.state_dir) == before
        assert not (tmp_path / "evil.txt").exists() and not Path("/etc/evil").exists()
    finally:
        orch.kill()
