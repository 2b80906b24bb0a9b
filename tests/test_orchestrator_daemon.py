"""The orchestrator as users run it, and every route's answer to malformed input.

Acceptance 1 and 6 run the installed ``baton-orchestrator`` and ``python -m supervisor`` as
real processes on 127.0.0.1 (mDNS bound to 127.0.0.1 only) and stop them with real signals;
acceptance 7 sends malformed input to every route of an in-process orchestrator with a small
body limit. Waits poll with deadlines; every process is killed in ``finally``.

The kill -9 test is randomised: set ``BATON_CRASH_SEED`` to replay a failure (the seed is in
every assertion message).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import re
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from orchestrator.app import build_app
from orchestrator.config import Settings
from supervisor.protocol import DESCRIPTION_PATH
from tests.conftest import ROOT, WASM_DIR, free_port
from tests.daemons import (
    OrchestratorProcess,
    check_history,
    fibo,
    get_json,
    module_form,
    post_json,
    until,
)
from tests.orchestration import Orchestrator, OrchestratorFactory
from tests.stack import Stack
from tests.support import SupervisorProcess

ServerFactory = Callable[..., Awaitable[TestServer]]
MDNS_ON = ["--mdns-interfaces", "127.0.0.1"]
SEED_ENV = "BATON_CRASH_SEED"


# --- acceptance 1: discovery over real mDNS ------------------------------------------------


async def test_orchestrator_finds_supervisors_over_mdns_by_hand_and_after_a_port_change(
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    orch = OrchestratorProcess(tmp_path / "orchestrator", mdns=True)
    sups = [
        SupervisorProcess(tmp_path / f"s{i}", name=f"bod-{tag}-{i}", extra=MDNS_ON)
        for i in range(3)
    ]
    manual = SupervisorProcess(tmp_path / "s3", name=f"bod-{tag}-3")  # mDNS off
    restarted: SupervisorProcess | None = None
    async with aiohttp.ClientSession() as session:
        try:
            orch.start()
            for sup in [*sups, manual]:
                sup.start()
            await asyncio.gather(
                orch.wait_healthy(session), *(sup.wait_healthy() for sup in [*sups, manual])
            )
            ids = [(await get_json(session, sup.url + DESCRIPTION_PATH))[1]["id"] for sup in sups]
            assert len(set(ids)) == 3

            async def listed() -> dict[str, Any] | None:
                status, devices = await get_json(session, orch.url + "/devices")
                assert status == 200
                by_id = {d["id"]: d for d in devices}
                assert len(by_id) == len(devices), devices  # keyed by id: never listed twice
                return by_id if all(i in by_id for i in ids) else None

            by_id = await until(listed, 20, "the three mDNS supervisors in GET /devices")
            for sup, device_id in zip(sups, ids, strict=True):
                device = by_id[device_id]
                assert device["url"] == sup.url and device["name"] == sup.name, device
                assert device["status"] == "healthy" and device["apiVersion"] == 1
                assert device["events"][0]["kind"] == "discovered", device

            # A fourth supervisor, mDNS off, registered by hand.
            _, description = await get_json(session, manual.url + DESCRIPTION_PATH)
            status, device = await post_json(
                session, orch.url + "/devices", json={"host": "127.0.0.1", "port": manual.port}
            )
            assert status == 201, device
            assert device["id"] == description["id"] and device["url"] == manual.url
            assert [e["kind"] for e in device["events"]] == ["registered"]
            by_id = await until(listed, 5, "the manual device in GET /devices")
            assert description["id"] in by_id

            # Restart one mDNS supervisor on another port with the same state (the same id).
            old = sups[0]
            assert old.terminate() == 0
            restarted = SupervisorProcess(old.state_dir, name=old.name, extra=MDNS_ON)
            assert restarted.port != old.port
            restarted.start()
            await restarted.wait_healthy()

            async def moved() -> dict[str, Any] | None:
                _, device = await get_json(session, f"{orch.url}/devices/{ids[0]}")
                return device if device["url"] == restarted.url else None

            device = await until(moved, 20, f"the orchestrator to see {restarted.url}")
            changes = [e for e in device["events"] if e["kind"] == "address-changed"]
            assert changes and changes[-1]["detail"] == f"{old.url} -> {restarted.url}", device
            by_id = await until(listed, 5, "every device still listed once")
            assert {*ids, description["id"]} <= set(by_id)

            async with session.get(orch.url + "/metrics") as resp:
                text = await resp.text()
            known = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("baton_orchestrator_devices{")
            )
            assert known >= 4, text  # other tests may advertise on loopback too
        finally:
            orch.kill()
            for sup in [*sups, manual, *([restarted] if restarted is not None else [])]:
                sup.kill()
    assert "Traceback" not in orch.tail(), orch.tail()


# --- acceptance 6: kill -9 the orchestrator during a deployment ------------------------------


FIBO_STEP = {"module": "fibo", "func": "fibo"}
BUSY_FUNCTIONS = {
    "count": {
        "method": "get",
        "parameters": [{"name": "n", "type": "integer"}],
        "output": "integer",
    }
}


@dataclass
class Round:
    name: str
    delay_s: float | None  # None: SIGKILL while the POST is still in flight
    refused: bool = False  # a device refuses the push: the revision must roll back
    accepted: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


async def test_kill_9_during_a_deployment_finishes_or_rolls_back_after_restart(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.randrange(1 << 32))
    rng = random.Random(seed)
    print(f"{SEED_ENV}={seed}")
    # A deployment to two local supervisors takes some 30 ms: the delays land inside it.
    rounds = [
        Round("crash-0", 0.0),  # right after the 201
        *(Round(f"crash-{i}", rng.uniform(0.0, 0.03)) for i in range(1, 5)),
        Round("crash-5", None),
        Round("refused-0", 0.0, refused=True),
        Round("refused-1", rng.uniform(0.0, 0.03), refused=True),
        Round("refused-2", None, refused=True),
    ]
    state_dir = tmp_path / "orchestrator"
    port = free_port()
    sups = [SupervisorProcess(tmp_path / f"s{i}", name=f"crash-sup{i}") for i in range(2)]
    orch = OrchestratorProcess(state_dir, port=port)
    # No pooled connections: every request after a kill opens a fresh one.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        try:
            orch.start()
            for sup in sups:
                sup.start()
            await asyncio.gather(orch.wait_healthy(session), *(s.wait_healthy() for s in sups))
            for sup in sups:
                status, body = await post_json(
                    session, orch.url + "/devices", json={"host": "127.0.0.1", "port": sup.port}
                )
                assert status == 201, body
            status, body = await post_json(session, orch.url + "/modules", data=module_form("fibo"))
            assert status == 201, body
            # A module whose stored blob is then corrupted: every push of it is refused.
            form = aiohttp.FormData()
            form.add_field("name", "busy")
            form.add_field("wasm", (WASM_DIR / "busy.wasm").read_bytes(), filename="busy.wasm")
            form.add_field("functions", json.dumps(BUSY_FUNCTIONS), filename="functions.json")
            status, body = await post_json(session, orch.url + "/modules", data=form)
            assert status == 201, body
            (state_dir / "blobs" / body["digest"]).write_bytes(b"\0asm" + b"\0" * 16)
            by_url = {sup.url: sup for sup in sups}
            _, devices = await get_json(session, orch.url + "/devices")
            # Every device but the orchestrator's own core device (it runs built-in apps).
            sup_of = {d["id"]: by_url[d["url"]] for d in devices if d["id"] != "orchestrator"}

            for rnd in rounds:
                where = f"{SEED_ENV}={seed} {rnd}"
                last = {"module": "busy", "func": "count"} if rnd.refused else FIBO_STEP
                manifest = {"name": rnd.name, "sequence": [FIBO_STEP, last]}
                if rnd.delay_s is None:
                    post = asyncio.ensure_future(
                        post_json(session, orch.url + "/deployments", json=manifest)
                    )
                    await asyncio.sleep(rng.uniform(0.0, 0.02))  # timing of the kill, not a wait
                    orch.kill()
                    try:
                        status, body = await post
                    except (aiohttp.ClientError, TimeoutError) as err:
                        rnd.notes.append(f"in flight: {type(err).__name__}")
                    else:
                        assert status == 201, (where, body)
                        rnd.accepted = body
                else:
                    status, body = await post_json(
                        session, orch.url + "/deployments", json=manifest
                    )
                    assert status == 201, (where, body)
                    rnd.accepted = body
                    if rnd.delay_s:
                        await asyncio.sleep(rnd.delay_s)  # timing of the kill, not a wait
                    orch.kill()

                # The state file is whole after the crash, and holds every accepted deployment.
                state = json.loads((state_dir / "state.json").read_text())
                stored = {d["deployment"]["name"]: d for d in state["deployments"].values()}
                assert len(stored) == len(state["deployments"]), (where, "duplicate", stored)
                if rnd.accepted is not None:
                    assert rnd.name in stored, (where, sorted(stored))
                if rnd.name in stored:
                    revisions = stored[rnd.name]["deployment"]["revisions"]
                    rnd.notes.append(f"killed in {revisions[-1]['state']}")

                orch.start()
                await orch.wait_healthy(session)
                status, deployments = await get_json(session, orch.url + "/deployments")
                mine = [d for d in deployments if d["name"] == rnd.name]
                if not mine:
                    assert rnd.accepted is None, (where, "an accepted deployment was lost")
                    continue
                assert len(mine) == 1, (where, mine)
                dep_id = mine[0]["id"]
                if rnd.accepted is not None:
                    assert dep_id == rnd.accepted["id"], where
                status, dep = await get_json(session, f"{orch.url}/deployments/{dep_id}?wait=20")
                assert status == 200, (where, dep)
                assert dep["state"] in {"ACTIVE", "ROLLED_BACK"}, (where, dep)
                if rnd.refused:
                    assert dep["state"] == "ROLLED_BACK", (where, dep)
                    assert "digest mismatch" in dep["error"], (where, dep)
                rnd.notes.append(f"ended {dep['state']}")
                assert [r["number"] for r in dep["revisions"]] == [1], (where, dep["revisions"])
                check_history(dep, where)
                placed = {step["device"] for step in dep["placement"]["steps"]}
                expected_hosts = placed if dep["state"] == "ACTIVE" else set()
                if dep["state"] == "ACTIVE":
                    status, run = await post_json(
                        session, f"{orch.url}/deployments/{dep_id}/executions", json={"param0": 5}
                    )
                    assert status == 200 and run["value"] == fibo(fibo(5)), (where, run)
                    assert len(run["trace"]) == 2, (where, run)
                else:
                    assert dep["error"], (where, dep)

                async def hosts_match(
                    dep_id: str = dep_id, expected: set[str] = expected_hosts, where: str = where
                ) -> bool:
                    hosting = set()
                    for device_id, sup in sup_of.items():
                        _, listing = await get_json(session, sup.url + "/deploy")
                        ids = [d["deploymentId"] for d in listing["deployments"]]
                        assert ids.count(dep_id) <= 1, (where, ids)
                        if dep_id in ids:
                            hosting.add(device_id)
                    return hosting == expected

                await until(
                    hosts_match, 10, f"{where}: the supervisors to host exactly {expected_hosts}"
                )

            # Nothing was duplicated across all the restarts.
            _, deployments = await get_json(session, orch.url + "/deployments")
            names = [d["name"] for d in deployments]
            assert len(names) == len(set(names)), (seed, names)
            state = json.loads((state_dir / "state.json").read_text())
            assert len(state["deployments"]) == len(deployments), seed
        finally:
            orch.kill()
            for sup in sups:
                sup.kill()
    print([(r.name, r.delay_s, r.notes) for r in rounds])


# --- acceptance 7: malformed input to every route --------------------------------------------

MAX_BODY = 64 * 1024
HUGE = b"{" + b" " * (MAX_BODY + 1) + b"}"
DEEP = b"[" * 20_000 + b"]" * 20_000  # past every recursion limit, under MAX_BODY
BOUNDARY = "b0undary"
FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
JSON_TYPE = {"Content-Type": "application/json"}
MSGPACK_TYPE = {"Content-Type": "application/msgpack"}
TOML_TYPE = {"Content-Type": "application/toml"}


def raw_form(*parts: tuple[str, bytes], end: bool = True) -> bytes:
    """A multipart body from (header lines, content) pairs, exactly as given."""
    body = b"".join(
        f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"
        for headers, content in parts
    )
    return body + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


def disposition(name: str, filename: str | None = None, extra: str = "") -> str:
    text = f'Content-Disposition: form-data; name="{name}"'
    if filename is not None:
        text += f'; filename="{filename}"'
    return text + (f"\r\n{extra}" if extra else "")


FIBO_WASM = (WASM_DIR / "fibo.wasm").read_bytes() if (WASM_DIR / "fibo.wasm").exists() else b""
FIBO_FUNCTIONS = (ROOT / "modules" / "fibo" / "functions.json").read_bytes()
WASM_PART = (disposition("wasm", "fibo.wasm"), FIBO_WASM)
FUNCTIONS_PART = (disposition("functions", "functions.json"), FIBO_FUNCTIONS)


@dataclass(frozen=True)
class Case:
    what: str
    method: str
    path: str  # "{dep}" is the deployed deployment's id
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None  # None: any 4xx
    field: str | None = None


def _manifest_cases(path: str) -> list[Case]:
    good = b'{"name": "x", "sequence": [{"module": "fibo", "func": "fibo"}]}'
    return [
        Case("invalid JSON", "POST", path, b"{not json", JSON_TYPE, 400),
        Case("not an object", "POST", path, b"[1, 2]", JSON_TYPE, 422),
        Case("wrong type", "POST", path, b'{"name": 5, "sequence": []}', JSON_TYPE, 422, "name"),
        Case(
            "unknown field",
            "POST",
            path,
            good[:-1] + b', "bogus": 1}',
            JSON_TYPE,
            422,
            "bogus",
        ),
        Case("non-UTF-8", "POST", path, b'{"name": "\xff\xfe"}', JSON_TYPE, 400),
        Case("nested deep", "POST", path, DEEP, JSON_TYPE),
        Case("TOML nested deep", "POST", path, b"x = " + b"[" * 20_000, TOML_TYPE, 400),
        Case("TOML non-UTF-8", "POST", path, b"name = '\xff'", TOML_TYPE, 400),
        Case("MessagePack garbage", "POST", path, b"\xc1\xc1", MSGPACK_TYPE, 400),
        Case("huge", "POST", path, HUGE, JSON_TYPE, 413),
        Case("../ name", "POST", path, good.replace(b'"x"', b'"../x"'), JSON_TYPE, 422, "name"),
        Case("../ module", "POST", path, good.replace(b'"fibo",', b'"../fibo",'), JSON_TYPE, 422),
        Case("empty", "POST", path, b"", JSON_TYPE, 400),
    ]


def _registration_cases(path: str) -> list[Case]:
    cases = [
        Case("invalid JSON", "POST", path, b"{not json", JSON_TYPE, 400),
        Case("not an object", "POST", path, b"[1]", JSON_TYPE, 400),
        Case("wrong type (port)", "POST", path, b'{"port": "x"}', JSON_TYPE, 400, "port"),
        Case("wrong type (host)", "POST", path, b'{"host": 5}', JSON_TYPE, 400, "host"),
        Case("port out of range", "POST", path, b'{"port": 70000}', JSON_TYPE, 400, "port"),
        Case("port overflow", "POST", path, b'{"port": 1e400}', JSON_TYPE, 400),
        Case("../ host", "POST", path, b'{"host": "../x"}', JSON_TYPE, 400, "host"),
        Case("URL as host", "POST", path, b'{"host": "http://x/"}', JSON_TYPE, 400, "host"),
        Case(
            "bad address", "POST", path, b'{"addresses": ["a b"]}', JSON_TYPE, 400, "addresses[0]"
        ),
        Case("non-UTF-8", "POST", path, b'{"host": "\xff"}', JSON_TYPE, 400),
        Case("nested deep", "POST", path, DEEP, JSON_TYPE, 400),
        Case("MessagePack garbage", "POST", path, b"\xc1", MSGPACK_TYPE, 400),
        Case("huge", "POST", path, HUGE, JSON_TYPE, 413),
    ]
    if path == "/devices":
        cases.append(Case("unknown field", "POST", path, b'{"bogus": 1}', JSON_TYPE, 400, "bogus"))
    return cases


def _module_cases() -> list[Case]:
    p = "/modules"

    def form(*parts: tuple[str, bytes]) -> bytes:
        return raw_form((disposition("name"), b"m"), *parts)

    many = [(disposition(f"f{i}.txt", f"f{i}.txt"), b"x" * (MAX_BODY // 4)) for i in range(5)]
    return [
        Case("JSON, not a form", "POST", p, b"{}", JSON_TYPE, 400),
        Case("no boundary", "POST", p, b"x", {"Content-Type": "multipart/form-data"}, 400),
        Case("no parts", "POST", p, b"garbage without a boundary", FORM, 400),
        Case("truncated", "POST", p, raw_form(WASM_PART, end=False)[:-10], FORM, 400),
        Case(
            "part without a name",
            "POST",
            p,
            form(("Content-Disposition: form-data", b"x")),
            FORM,
            400,
        ),
        Case("duplicate part", "POST", p, form(WASM_PART, WASM_PART), FORM, 400, "wasm"),
        Case(
            "nested multipart",
            "POST",
            p,
            form(
                (
                    disposition("inner", extra="Content-Type: multipart/mixed; boundary=zz"),
                    b"--zz--",
                )
            ),
            FORM,
            400,
        ),
        Case(
            "non-UTF-8 field",
            "POST",
            p,
            raw_form((disposition("name"), b"\xff\xfe")),
            FORM,
            400,
            "name",
        ),
        Case(
            "unknown charset",
            "POST",
            p,
            raw_form((disposition("name", extra="Content-Type: text/plain; charset=nope"), b"m")),
            FORM,
            400,
            "name",
        ),
        Case(
            "bad base64",
            "POST",
            p,
            form(
                (disposition("wasm", "w", "Content-Transfer-Encoding: base64"), b"abc"),
                FUNCTIONS_PART,
            ),
            FORM,
            400,
        ),
        Case(
            "unknown transfer encoding",
            "POST",
            p,
            form((disposition("wasm", "w", "Content-Transfer-Encoding: x-rot13"), b"abc")),
            FORM,
            400,
        ),
        Case(
            "unknown field",
            "POST",
            p,
            form((disposition("color"), b"red"), WASM_PART),
            FORM,
            400,
            "color",
        ),
        Case("missing wasm", "POST", p, form(FUNCTIONS_PART), FORM, 400, "wasm"),
        Case("missing name", "POST", p, raw_form(WASM_PART, FUNCTIONS_PART), FORM, 400, "name"),
        Case(
            "../ name",
            "POST",
            p,
            raw_form((disposition("name"), b"../m"), WASM_PART, FUNCTIONS_PART),
            FORM,
            422,
            "name",
        ),
        Case(
            "../ version",
            "POST",
            p,
            form((disposition("version"), b"../1"), WASM_PART, FUNCTIONS_PART),
            FORM,
            422,
            "version",
        ),
        Case(
            "../ data file",
            "POST",
            p,
            form(WASM_PART, FUNCTIONS_PART, (disposition("../x.txt", "x.txt"), b"x")),
            FORM,
            422,
            "files.../x.txt",
        ),
        Case(
            "functions not UTF-8",
            "POST",
            p,
            form(WASM_PART, (disposition("functions", "f.json"), b'{"\xff": 1}')),
            FORM,
            400,
            "functions",
        ),
        Case(
            "functions nested deep",
            "POST",
            p,
            form(WASM_PART, (disposition("functions", "f.json"), DEEP)),
            FORM,
            400,
            "functions",
        ),
        Case(
            "functions not an object",
            "POST",
            p,
            form(WASM_PART, (disposition("functions", "f.json"), b"[1]")),
            FORM,
            422,
            "functions",
        ),
        Case(
            "functions twice",
            "POST",
            p,
            form(WASM_PART, FUNCTIONS_PART, (disposition("functions"), FIBO_FUNCTIONS)),
            FORM,
            400,
            "functions",
        ),
        Case(
            "invalid wasm",
            "POST",
            p,
            form((disposition("wasm", "w"), b"\0asm\x01\0\0\0\x01"), FUNCTIONS_PART),
            FORM,
            422,
            "wasm",
        ),
        Case("huge part", "POST", p, form((disposition("wasm", "w"), HUGE)), FORM, 413),
        Case("huge in total", "POST", p, form(WASM_PART, FUNCTIONS_PART, *many), FORM, 413),
    ]


def _execution_cases() -> list[Case]:
    p = "/deployments/{dep}/executions"
    return [
        Case("invalid JSON", "POST", p, b"{not json", JSON_TYPE, 400),
        Case("an array", "POST", p, b"[1, 2]", JSON_TYPE, 400),
        Case("null", "POST", p, b"null", JSON_TYPE, 400),
        Case("a string", "POST", p, b'"x"', JSON_TYPE, 400),
        Case("non-UTF-8", "POST", p, b'{"param0": "\xff"}', JSON_TYPE, 400),
        Case("nested deep", "POST", p, b'{"param0": ' + DEEP + b"}", JSON_TYPE, 400),
        Case("MessagePack garbage", "POST", p, b"\xc1", MSGPACK_TYPE, 400),
        Case("huge", "POST", p, HUGE, JSON_TYPE, 413),
        Case("missing argument", "POST", p, b"{}", JSON_TYPE, 400, "param0"),
        Case("mistyped argument", "POST", p, b'{"param0": "abc"}', JSON_TYPE, 400, "param0"),
        Case("unknown argument", "POST", p, b'{"param0": 1, "x": 2}', JSON_TYPE, 400, "x"),
        Case(
            "unexpected file",
            "POST",
            p,
            raw_form((disposition("param0"), b"5"), (disposition("../f", "f"), b"x")),
            FORM,
            400,
            "../f",
        ),
        Case(
            "multipart/mixed",
            "POST",
            p,
            raw_form((disposition("param0"), b"5")),
            {"Content-Type": f"multipart/mixed; boundary={BOUNDARY}"},
            400,
        ),
        Case("malformed form", "POST", p, b"no boundary here", FORM, 400),
        Case("unknown deployment", "POST", "/deployments/nope/executions", b"{}", JSON_TYPE, 404),
    ]


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


ZIP_TYPE = {"Content-Type": "application/zip"}


def _app_cases() -> list[Case]:
    """Apps, environments, results and the core device's supervisor routes."""
    return [
        Case("not a zip", "POST", "/apps", b"not a zip", ZIP_TYPE, 400),
        Case("empty image", "POST", "/apps", b"", ZIP_TYPE, 400),
        Case("huge image", "POST", "/apps", HUGE, ZIP_TYPE, 413),
        Case("zip slip", "POST", "/apps", _zip("../evil", b"x"), ZIP_TYPE, 422),
        Case("no application.json", "POST", "/apps", _zip("a.txt", b"x"), ZIP_TYPE, 422),
        Case("unknown app", "GET", "/apps/nope", status=404),
        Case("unknown app version", "GET", "/apps/nope/1.0", status=404),
        Case("unknown image", "GET", "/apps/nope/1.0/image", status=404),
        Case("unknown static", "GET", "/apps/nope/static/index.html", status=404),
        Case("unknown static version", "GET", "/apps/nope/1.0/static/x", status=404),
        Case("traversal static", "GET", "/apps/nope/1.0/static/..%2F..%2Fstate.json", status=404),
        Case("unknown environment", "GET", "/environments/nope", status=404),
        Case("delete unknown environment", "DELETE", "/environments/nope", status=404),
        Case("environment not JSON", "PUT", "/environments/lab", b"{", JSON_TYPE, 400),
        Case("environment huge", "PUT", "/environments/lab", HUGE, JSON_TYPE, 413),
        Case("environment bad name", "PUT", "/environments/..", b"{}", JSON_TYPE, None),
        Case("environment unknown field", "PUT", "/environments/lab", b'{"x": 1}', JSON_TYPE, None),
        Case("unknown results", "GET", "/results/nope", status=404),
        Case("results bad limit", "GET", "/results/{dep}?limit=abc", status=400),
        Case("clear unknown results", "DELETE", "/results/nope", status=404),
        *(
            Case(f"core {m} unknown deployment", m, "/nope/modules/datalist/push", status=404)
            for m in ("GET", "POST", "PUT")
        ),
        Case("unknown core request", "GET", "/request-history/nope", status=404),
    ]


CASES: list[Case] = [
    *_app_cases(),
    *_manifest_cases("/placements"),
    *_manifest_cases("/deployments"),
    *_registration_cases("/devices"),
    *_registration_cases("/file/device/discovery/register"),
    *_module_cases(),
    *_execution_cases(),
    Case(
        "If-Match not a number", "POST", "/deployments", b"{}", {"If-Match": "abc"}, 400, "If-Match"
    ),
    Case("If-Match fraction", "POST", "/deployments", b"{}", {"If-Match": "1.5"}, 400, "If-Match"),
    Case("If-Match negative", "POST", "/deployments", b"{}", {"If-Match": "-1"}, 400, "If-Match"),
    Case("If-Match non-ASCII digit", "POST", "/deployments", b"{}", {"If-Match": "\uff11"}, 400),
    Case("If-Match huge", "POST", "/deployments", b"{}", {"If-Match": "9" * 5000}, 400, "If-Match"),
    *(
        Case(f"wait={w}", method, path, b"{}" if method == "POST" else None, {}, 400, "wait")
        for w in ("abc", "nan", "inf", "-1", "1e9")
        for method, path in (
            ("GET", f"/deployments/{{dep}}?wait={w}"),
            ("POST", f"/deployments?wait={w}"),
        )
    ),
    Case("unknown device", "GET", "/devices/nope", status=404),
    Case("cordon unknown", "POST", "/devices/nope/cordon", b"garbage", status=404),
    Case("uncordon unknown", "POST", "/devices/%2E%2E/uncordon", status=404),
    Case("unknown module", "GET", "/modules/..%2F..%2Fetc", status=404),
    Case("blob not a digest", "GET", "/blobs/..%2Fstate.json", status=404),
    Case("blob unknown", "GET", "/blobs/" + "0" * 64, status=404),
    Case("unknown deployment", "GET", "/deployments/nope?wait=1", status=404),
    Case("delete unknown", "DELETE", "/deployments/nope", status=404),
    Case("unknown execution", "GET", "/executions/nope", status=404),
    Case("unknown route", "GET", "/no/such/route", status=404),
]


@pytest.fixture
async def small_orchestrator(make_orchestrator: OrchestratorFactory) -> Orchestrator:
    return await make_orchestrator(max_body_bytes=MAX_BODY)


async def test_every_route_rejects_malformed_input_with_a_4xx_problem(
    stack: Stack, small_orchestrator: Orchestrator
) -> None:
    orch = small_orchestrator
    device = await stack.make_device()
    port = int(device.url.rsplit(":", 1)[1])
    status, body = await orch.post("/devices", json={"host": "127.0.0.1", "port": port})
    assert status == 201, body
    await orch.push_module("fibo")
    status, dep = await orch.deploy(
        {"name": "good", "sequence": [{"module": "fibo", "func": "fibo"}]}
    )
    assert status == 201 and dep["state"] == "ACTIVE", dep
    before = {path: (await orch.get(path))[1] for path in ("/devices", "/modules", "/deployments")}

    # Every route that takes input (a body or a path parameter) has cases below.
    takes_input = {
        (method, path) for method, path in app_routes() if method != "GET" or "{" in path
    }
    covered = {(c.method, route_of(c.path)) for c in CASES}
    assert takes_input <= covered, takes_input - covered

    failures = []
    for case in CASES:
        url = orch.url + case.path.replace("{dep}", dep["id"])
        async with orch.session.request(
            case.method, url, data=case.body, headers=case.headers
        ) as resp:
            raw = await resp.read()
        try:
            problem = json.loads(raw)
        except ValueError:
            problem = None
        ok = (
            400 <= resp.status < 500
            and (case.status is None or resp.status == case.status)
            and isinstance(problem, dict)
            and problem.get("status") == "error"
            and isinstance(problem.get("result"), str)
            and problem["result"]
            and (case.field is None or problem.get("field") == case.field)
        )
        if not ok:
            failures.append((case.what, case.method, case.path, resp.status, raw[:300]))
    assert not failures, "\n".join(map(str, failures))

    after = {path: (await orch.get(path))[1] for path in ("/devices", "/modules", "/deployments")}
    assert [d["id"] for d in after["/devices"]] == [d["id"] for d in before["/devices"]]
    assert after["/modules"] == before["/modules"]
    # The built-in datalist is there too, untouched since start-up.
    assert [(d["id"], d["revision"]) for d in after["/deployments"] if d["name"] != "datalist"] == [
        (dep["id"], 1)
    ]
    # The deployment still runs: none of that reached a device.
    status, run = await orch.run(dep["id"], param0=5)
    assert status == 200 and run["value"] == fibo(5), run


def app_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route of an orchestrator app (built, never started)."""
    app = build_app(Settings(state_dir=Path("/nonexistent")))
    return [
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    ]


def route_of(path: str) -> str | None:
    """The template of the route that serves ``path`` (a case's path), if any."""
    path = path.split("?", 1)[0].replace("{dep}", "x")
    for _, template in app_routes():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return template
    return None


async def test_a_mutating_route_without_its_token_is_a_401_problem(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    settings = Settings(
        state_dir=tmp_path / "orchestrator", host="127.0.0.1", mdns_enabled=False, token="s3cret"
    )
    server = await aiohttp_server(build_app(settings))
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        # Every route that changes something. Open on purpose: the dry run (it changes
        # nothing), executions and the core device's function endpoints (like a supervisor's:
        # DESIGN, function endpoints open by default).
        mutating = sorted(
            (method, re.sub(r"\{[^}]+\}", "x", path))
            for method, path in app_routes()
            if method not in {"GET", "HEAD"}
            and path != "/placements"
            and not path.startswith("/{deployment}/")
            and not path.endswith("/executions")
        )
        assert ("POST", "/apps") in mutating and ("DELETE", "/results/x") in mutating
        assert ("PUT", "/environments/x") in mutating and len(mutating) >= 11, mutating
        for method, path in mutating:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                async with session.request(method, url + path, data=b"{", headers=headers) as resp:
                    body = await resp.json()
                assert resp.status == 401 and body["status"] == "error", (method, path, body)
        # A problem in MessagePack for a client that asks for it.
        async with session.post(
            url + "/devices", headers={"Accept": "application/msgpack"}
        ) as resp:
            assert msgspec.msgpack.decode(await resp.read())["type"] == "unauthorized"
        # Read routes need no token, and nothing answered carries it.
        reads = (
            *("/health", "/devices", "/modules", "/deployments", "/metrics", "/openapi.json"),
            *("/apps", "/environments", "/results"),
        )
        for path in reads:
            async with session.get(url + path) as resp:
                assert resp.status == 200, path
                assert "s3cret" not in await resp.text(), path


async def test_openapi_describes_every_route_and_metrics_are_prometheus_text(
    small_orchestrator: Orchestrator,
) -> None:
    orch = small_orchestrator
    status, doc = await orch.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    for method, path in app_routes():
        op = doc["paths"][path][method.lower()]
        assert op["summary"] != path, (method, path)  # described, not the fallback
        assert any(code.startswith("2") for code in op["responses"]), op
        for name in re.findall(r"\{([^}]+)\}", path):
            assert name in [p["name"] for p in op["parameters"] if p["in"] == "path"], op
    schemas = doc["components"]["schemas"]
    assert {"Manifest", "Placement", "Infeasible", "Problem", "Step"} <= set(schemas)
    submit = doc["paths"]["/deployments"]["post"]
    # A manifest, or a deployment descriptor naming an app image and an environment.
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "anyOf": [
            {"$ref": "#/components/schemas/Manifest"},
            {"$ref": "#/components/schemas/Descriptor"},
        ]
    }
    assert "Descriptor" in schemas
    assert {"400", "401", "409", "413", "422"} <= set(submit["responses"])
    assert submit["security"] == [{"bearer": []}]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):  # every reference resolves inside the document
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]

    await orch.push_module("fibo")
    async with orch.session.get(orch.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.split()[1] in {"HELP", "TYPE"}, line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    # No supervisor yet: the orchestrator's own core device runs the built-in datalist.
    assert samples['baton_orchestrator_devices{status="healthy"}'] == 1
    assert samples['baton_orchestrator_devices{status="lost"}'] == 0
    assert samples['baton_orchestrator_deployments{state="ACTIVE"}'] == 1
    assert samples["baton_orchestrator_modules"] == 2
    assert samples["baton_orchestrator_uptime_seconds"] >= 0
