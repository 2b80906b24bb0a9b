"""The ``baton`` CLI against a small real aiohttp app that answers the orchestrator's routes.

The app serves canned JSON in the orchestrator's shapes, so these tests pin the CLI's tables,
``--json`` output, exit codes and error messages without needing devices. ``cli.main`` is
synchronous (``asyncio.run`` inside), so it runs in a worker thread while the app serves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import BodyPartReader, web
from aiohttp.test_utils import TestServer

from orchestrator import cli
from tests.conftest import free_port

ServerFactory = Callable[..., Awaitable[TestServer]]

DEV_A = "a1b2c3d4e5f6a7b8c9d0"
DEV_B = "ffeeddccbbaa99887766"
DEP_ID = "0123456789abcdef0123"
T0 = 1_700_000_000.0


def problem(status: int, message: str, type_: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"status": "error", "result": message, "type": type_}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def device(ident: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": ident,
        "name": name,
        "url": f"http://127.0.0.1:50{len(name)}/",
        "apiVersion": 1,
        "status": "healthy",
        "cordoned": False,
        "labels": {},
        "zone": None,
        "rttMs": 1.5,
        "health": None,
        "interfaces": [],
        "events": [],
    } | extra


DEVICES = [
    device(DEV_A, "kitchen", labels={"room": "kitchen", "camera": "yes"}),
    device(DEV_B, "garage-pi", status="lost", apiVersion=None),
]

CANDIDATES_STEP0 = [
    {
        "device": DEV_A,
        "name": "kitchen",
        "feasible": True,
        "reasons": [],
        "score": 2.45,
        "parts": {"cpu": 0.9, "memory": 0.8, "rtt": 0.5, "colocation": 0.0, "spread": 0.25},
    },
    {
        "device": DEV_B,
        "name": "garage-pi",
        "feasible": False,
        "reasons": ["lacks host functions takeImage", "is lost"],
        "score": 0.0,
        "parts": {},
    },
]
PLACEMENT = {
    "type": "placement",
    "steps": [
        {
            "index": 0,
            "module": "camera",
            "func": "take",
            "device": DEV_A,
            "candidates": CANDIDATES_STEP0,
        }
    ],
}
INFEASIBLE = {
    "type": "infeasible",
    "step": 0,
    "module": "camera",
    "func": "take",
    "message": "step 0 (camera.take) cannot be placed: none of 2 devices qualifies",
    "candidates": [
        {
            "device": DEV_A,
            "name": "kitchen",
            "feasible": False,
            "reasons": ["label zone=roof required, has no zone"],
            "score": 0.0,
            "parts": {},
        },
        CANDIDATES_STEP0[1],
    ],
}

# The orchestrator spells states in capitals; the CLI must not care.
STATES = ["QUEUED", "PLANNING", "DEPLOYING", "ACTIVE"]


def deployment(state_index: int, *, final: str = "ACTIVE") -> dict[str, Any]:
    """The deployment after its first revision has made ``state_index`` transitions."""
    path = STATES
    if final == "ROLLED_BACK":
        path = [*STATES[:-1], "FAILED", "ROLLED_BACK"]
    state = path[min(state_index, len(path) - 1)]
    events = [
        {
            "revision": 1,
            "from": path[i],
            "to": path[i + 1],
            "event": "start",
            "at": T0 + i * 0.25,
            "reason": "device kitchen refused the push: bad digest"
            if path[i + 1] == "FAILED"
            else None,
            "step": "push:kitchen" if path[i + 1] == "FAILED" else None,
        }
        for i in range(min(state_index, len(path) - 1))
    ]
    failed = final != "ACTIVE" and state == final
    return {
        "id": DEP_ID,
        "name": "snap",
        "revision": 1,
        "state": state,
        "active": 1 if state == "ACTIVE" else None,
        "placement": PLACEMENT,
        "error": "device kitchen refused the push: bad digest" if failed else None,
        "failedStep": "push:kitchen" if failed else None,
        "timings": {},
        "jobs": {
            DEV_A: {
                "scheduled": "d" * 64,
                "current": "sha256:" + "d" * 64 if state == "ACTIVE" else None,
            }
        },
        "revisions": [{"number": 1, "state": state, "digest": "e" * 64, "error": None}],
        "events": events,
    }


EXECUTION: dict[str, Any] = {
    "id": "exec-42",
    "deployment": DEP_ID,
    "status": "done",
    "value": 55,
    "result": 55,
    "outputs": ["/executions/exec-42/files/out.txt"],
    "error": None,
    "trace": [
        {"device": "kitchen", "url": "http://k/1", "requestId": "req-1", "ms": 12.5},
        {"device": "garage-pi", "url": "http://g/2", "requestId": "req-2", "ms": 3.25},
    ],
    "startedAt": T0,
    "ms": 17.0,
}


@dataclass
class FakeOrchestrator:
    """What the fake app saw; ``final`` picks how the deployment ends."""

    url: str = ""
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    bodies: dict[str, Any] = field(default_factory=dict)
    polls: int = 0
    final: str = "ACTIVE"
    exists: bool = False  # whether the deployment was posted before (a re-post is a no-op)

    def app(self) -> web.Application:
        app = web.Application()

        @web.middleware
        async def record(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            self.requests.append((request.method, request.path_qs, dict(request.headers)))
            return await handler(request)

        app.middlewares.append(record)
        app.router.add_get("/devices", self.devices)
        app.router.add_post("/devices/{id}/cordon", self.cordon)
        app.router.add_post("/modules", self.modules)
        app.router.add_post("/placements", self.placements)
        app.router.add_post("/deployments", self.deploy)
        app.router.add_get("/deployments", self.deployments)
        app.router.add_get("/deployments/{id}", self.deployment)
        app.router.add_post("/deployments/{id}/executions", self.execute)
        app.router.add_get("/executions/{id}", self.execution)
        return app

    async def devices(self, request: web.Request) -> web.Response:
        return web.json_response(DEVICES)

    async def cordon(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if ident not in (DEV_A, "kitchen"):
            return problem(404, f"no device {ident!r}", "not-found", field="device")
        return web.json_response(DEVICES[0] | {"cordoned": True})

    async def modules(self, request: web.Request) -> web.Response:
        parts: dict[str, Any] = {}
        async for part in await request.multipart():
            assert isinstance(part, BodyPartReader) and part.name
            parts[part.name] = (part.filename, bytes(await part.read()))
        self.bodies["modules"] = parts
        name = parts["name"][1].decode()
        functions = json.loads(parts["functions"][1]) if "functions" in parts else {}
        data = {k: "f" * 64 for k in parts if k not in ("name", "version", "wasm", "functions")}
        record = {
            "name": name,
            "version": "1",
            "digest": "c" * 64,
            "imports": [],
            "exports": {},
            "functions": functions,
            "data_files": data,
        }
        return web.json_response(record, status=201)

    async def placements(self, request: web.Request) -> web.Response:
        self.bodies["placements"] = (request.content_type, await request.read())
        manifest = await self._manifest(request)
        if manifest is None:
            return problem(422, "sequence must not be empty", "unprocessable", field="sequence")
        if manifest.get("name") == "impossible":
            return web.json_response(INFEASIBLE, status=422)
        return web.json_response(PLACEMENT)

    async def deploy(self, request: web.Request) -> web.Response:
        self.bodies["deploy"] = (request.content_type, await request.read())
        if request.headers.get("If-Match") == "7":
            return problem(409, "revision 7 is stale; the current revision is 1", "conflict")
        if self.exists:
            return web.json_response(deployment(3), status=200)
        self.exists = True
        return web.json_response(deployment(0, final=self.final), status=201)

    async def deployments(self, request: web.Request) -> web.Response:
        return web.json_response([deployment(3)])

    async def deployment(self, request: web.Request) -> web.Response:
        if request.match_info["id"] not in (DEP_ID, "snap"):
            return problem(404, "no deployment 'nope'", "not-found", field="deployment")
        if "wait" in request.query:
            self.polls += 1
            return web.json_response(deployment(self.polls, final=self.final))
        return web.json_response(deployment(3))

    async def execute(self, request: web.Request) -> web.Response:
        if request.content_type == "multipart/form-data":
            parts: dict[str, Any] = {}
            async for part in await request.multipart():
                assert isinstance(part, BodyPartReader) and part.name
                parts[part.name] = (part.filename, bytes(await part.read()))
            self.bodies["execute"] = parts
        else:
            self.bodies["execute"] = await request.json()
        if "async" in request.query:
            return web.json_response({"id": "exec-42", "status": "running"}, status=202)
        if request.match_info["id"] == "broken":
            failed = EXECUTION | {
                "status": "failed",
                "value": None,
                "error": "hop 2 on garage-pi did not answer",
                "trace": EXECUTION["trace"][:1],
            }
            return web.json_response(failed, status=502)
        return web.json_response(EXECUTION)

    async def execution(self, request: web.Request) -> web.Response:
        if request.match_info["id"] != "exec-42":
            return problem(404, "no execution 'x'", "not-found", field="execution")
        return web.json_response(EXECUTION)

    @staticmethod
    async def _manifest(request: web.Request) -> dict[str, Any] | None:
        raw = await request.read()
        if request.content_type == "application/toml":
            import tomllib

            doc = tomllib.loads(raw.decode())
        else:
            doc = json.loads(raw)
        return doc if doc.get("sequence") else None


@pytest.fixture
async def fake(aiohttp_server: ServerFactory) -> FakeOrchestrator:
    orchestrator = FakeOrchestrator()
    server = await aiohttp_server(orchestrator.app(), host="127.0.0.1")
    orchestrator.url = str(server.make_url("")).rstrip("/")
    return orchestrator


async def baton(fake: FakeOrchestrator, *argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["--url", fake.url, *argv])


def write_manifest(tmp_path: Path, name: str = "snap", suffix: str = ".json") -> Path:
    path = tmp_path / f"manifest{suffix}"
    if suffix == ".toml":
        path.write_text(f'name = "{name}"\n\n[[sequence]]\nmodule = "camera"\nfunc = "take"\n')
    else:
        path.write_text(
            json.dumps({"name": name, "sequence": [{"module": "camera", "func": "take"}]})
        )
    return path


def table_rows(text: str, first: str, *more: str) -> list[list[str]]:
    """The table whose header starts with ``first`` (and has ``more``), cells split on 2 spaces."""
    lines = text.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.strip().startswith(first) and all(word in line for word in more)
    )
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append([cell for cell in line.strip().split("  ") if cell.strip() != ""])
    return [[cell.strip() for cell in row] for row in rows]


# --- devices ---------------------------------------------------------------------------------------


async def test_devices_table(fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str]) -> None:
    assert await baton(fake, "devices") == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "NAME")
    assert rows[0] == ["NAME", "ID", "STATUS", "URL", "API", "CORDONED", "LABELS"]
    assert rows[1] == [
        "kitchen",
        DEV_A[:12],
        "healthy",
        DEVICES[0]["url"],
        "1",
        "no",
        "camera=yes,room=kitchen",
    ]
    assert rows[2][:3] == ["garage-pi", DEV_B[:12], "lost"]
    # Columns are aligned: every row's ID starts where the header's does.
    lines = out.splitlines()
    column = lines[0].index("ID")
    assert all(line[column:].startswith(DEV_A[:12]) for line in lines[1:2])


async def test_json_output_is_the_api_json(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await baton(fake, "devices", "--json") == 0
    assert json.loads(capsys.readouterr().out) == DEVICES
    # --json is accepted before the command too.
    assert await asyncio.to_thread(cli.main, ["--json", "--url", fake.url, "deployments"]) == 0
    assert json.loads(capsys.readouterr().out) == [deployment(3)]


async def test_cordon_and_unknown_device(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str]
) -> None:
    # By name or by the short id the table shows: the CLI sends the full id.
    for key in ("kitchen", DEV_A[:12]):
        assert await baton(fake, "devices", "cordon", key) == 0
        assert "cordoned kitchen" in capsys.readouterr().out
        assert fake.requests[-1][:2] == ("POST", f"/devices/{DEV_A}/cordon")
    assert await baton(fake, "devices", "cordon", "nope") == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == "baton: error: no device 'nope' (field: device)"


async def test_token_is_sent_as_bearer(
    fake: FakeOrchestrator,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert await baton(fake, "--token-file", str(token), "devices", "cordon", DEV_A) == 0
    assert fake.requests[-1][2]["Authorization"] == "Bearer s3cret"
    monkeypatch.setenv("BATON_TOKEN", "from-env")
    monkeypatch.setenv("BATON_URL", fake.url)
    assert await asyncio.to_thread(cli.main, ["devices"]) == 0
    assert fake.requests[-1][2]["Authorization"] == "Bearer from-env"
    assert await baton(fake, "--token-file", str(tmp_path / "missing"), "devices") == 1
    assert "cannot read the token file" in capsys.readouterr().err


# --- modules ---------------------------------------------------------------------------------------


async def test_modules_push_directory(
    fake: FakeOrchestrator,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = tmp_path / "modules" / "textfile"
    module.mkdir(parents=True)
    functions = {
        "prefix": {
            "mounts": [
                {"name": "prefix.txt", "stage": "deployment"},
                {"name": "input.txt", "stage": "execution"},
            ]
        }
    }
    (module / "functions.json").write_text(json.dumps(functions))
    (module / "prefix.txt").write_text(">> ")
    (module / "input.txt").write_text("not uploaded: execution stage")
    (tmp_path / "build" / "wasm").mkdir(parents=True)
    (tmp_path / "build" / "wasm" / "textfile.wasm").write_bytes(b"\0asm\1\0\0\0")
    monkeypatch.chdir(tmp_path)

    assert await baton(fake, "modules", "push", "modules/textfile", "--version", "2") == 0
    parts = fake.bodies["modules"]
    assert parts["name"] == (None, b"textfile")
    assert parts["version"] == (None, b"2")
    assert parts["wasm"][1] == b"\0asm\1\0\0\0"
    assert json.loads(parts["functions"][1]) == functions
    assert parts["prefix.txt"] == ("prefix.txt", b">> ")
    assert "input.txt" not in parts
    out = capsys.readouterr().out
    assert out.startswith("pushed textfile@1 (cccccccccccc)")

    # A deployment-stage file that is missing is named, with the way out.
    (module / "prefix.txt").unlink()
    assert await baton(fake, "modules", "push", "modules/textfile") == 1
    err = capsys.readouterr().err
    assert err.startswith("baton: error: ") and "--file prefix.txt=PATH" in err
    other = tmp_path / "other.txt"
    other.write_text("!")
    assert (
        await baton(fake, "modules", "push", "modules/textfile", "--file", f"prefix.txt={other}")
        == 0
    )
    assert fake.bodies["modules"]["prefix.txt"][1] == b"!"


async def test_modules_push_wasm_finds_its_description(
    fake: FakeOrchestrator,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "modules" / "fibo").mkdir(parents=True)
    (tmp_path / "modules" / "fibo" / "functions.json").write_text('{"fibo": {"mounts": []}}')
    (tmp_path / "build" / "wasm").mkdir(parents=True)
    (tmp_path / "build" / "wasm" / "fibo.wasm").write_bytes(b"\0asm\1\0\0\0")
    monkeypatch.chdir(tmp_path)
    assert await baton(fake, "modules", "push", "build/wasm/fibo.wasm", "--name", "fib2") == 0
    parts = fake.bodies["modules"]
    assert parts["name"] == (None, b"fib2")
    assert json.loads(parts["functions"][1]) == {"fibo": {"mounts": []}}
    assert "pushed fib2@1" in capsys.readouterr().out


async def test_modules_push_missing_binary(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    assert await baton(fake, "modules", "push", str(tmp_path / "empty")) == 1
    assert "no empty.wasm in" in capsys.readouterr().err
    assert not any(path == "/modules" for _, path, _ in fake.requests)


# --- deployments -----------------------------------------------------------------------------------


async def test_deploy_dry_run_explains_every_candidate(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, suffix=".toml")
    assert await baton(fake, "deploy", str(manifest), "--dry-run") == 0
    assert fake.bodies["placements"][0] == "application/toml"
    out = capsys.readouterr().out
    assert f"step 0  camera.take  -> kitchen ({DEV_A[:12]})" in out
    rows = table_rows(out, "DEVICE")
    assert rows[0] == [
        "DEVICE",
        "ID",
        "SCORE",
        "CPU",
        "MEMORY",
        "RTT",
        "COLOCATION",
        "SPREAD",
        "VERDICT",
    ]
    assert rows[1] == [
        "kitchen",
        DEV_A[:12],
        "2.450",
        "0.900",
        "0.800",
        "0.500",
        "0.000",
        "0.250",
        "chosen",
    ]
    assert rows[2][:3] == ["garage-pi", DEV_B[:12], "-"]
    assert rows[2][-1] == "rejected: lacks host functions takeImage; is lost"
    # No deployment was made.
    assert not any(path.startswith("/deployments") for _, path, _ in fake.requests)


async def test_deploy_dry_run_infeasible(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, name="impossible")
    assert await baton(fake, "deploy", str(manifest), "--dry-run") == 1
    out = capsys.readouterr().out
    assert out.startswith("infeasible: step 0 (camera.take) cannot be placed")
    assert "rejected: label zone=roof required, has no zone" in out
    assert "rejected: lacks host functions takeImage; is lost" in out
    assert await baton(fake, "deploy", str(manifest), "--dry-run", "--json") == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == INFEASIBLE
    assert captured.err.startswith("baton: error: step 0 (camera.take) cannot be placed")


async def test_api_error_with_field(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = tmp_path / "bad.json"
    manifest.write_text(json.dumps({"name": "snap", "sequence": []}))
    assert await baton(fake, "deploy", str(manifest), "--dry-run") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "baton: error: sequence must not be empty (field: sequence)\n"
    assert "Traceback" not in captured.err


async def test_deploy_follows_the_revision_to_active(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert await baton(fake, "deploy", str(write_manifest(tmp_path)), "--wait", "10") == 0
    out = capsys.readouterr().out
    assert f"deployment snap ({DEP_ID[:12]}) revision 1: created" in out
    for before, after in [
        ("QUEUED", "PLANNING"),
        ("PLANNING", "DEPLOYING"),
        ("DEPLOYING", "ACTIVE"),
    ]:
        assert f"revision 1: {before} -> {after}" in out
    assert "revision 1 is ACTIVE on kitchen" in out
    polls = [path for method, path, _ in fake.requests if method == "GET"]
    assert polls and all(path.startswith(f"/deployments/{DEP_ID}?wait=") for path in polls)


async def test_redeploying_the_same_manifest_is_a_no_op(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = str(write_manifest(tmp_path))
    assert await baton(fake, "deploy", manifest) == 0
    capsys.readouterr()
    assert await baton(fake, "deploy", manifest) == 0
    out = capsys.readouterr().out
    # History is not replayed: just what the post did and where the revision stands.
    assert out.splitlines() == [
        f"deployment snap ({DEP_ID[:12]}) revision 1: unchanged",
        out.splitlines()[1],
    ]
    assert out.splitlines()[1].startswith("revision 1 is ACTIVE on kitchen")


async def test_deploy_json_prints_the_final_deployment(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert await baton(fake, "deploy", str(write_manifest(tmp_path)), "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "ACTIVE"


async def test_deploy_that_rolls_back_exits_nonzero(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake.final = "ROLLED_BACK"
    assert await baton(fake, "deploy", str(write_manifest(tmp_path))) == 1
    captured = capsys.readouterr()
    assert "DEPLOYING -> FAILED at step push:kitchen (device kitchen refused" in captured.out
    assert "FAILED -> ROLLED_BACK" in captured.out
    assert captured.err == (
        "baton: error: revision 1 of snap ended ROLLED_BACK at step push:kitchen: "
        "device kitchen refused the push: bad digest\n"
    )


async def test_deploy_stale_revision_conflict(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert await baton(fake, "deploy", str(write_manifest(tmp_path)), "--if-match", "7") == 1
    assert capsys.readouterr().err == (
        "baton: error: revision 7 is stale; the current revision is 1\n"
    )


async def test_status_shows_placement_jobs_and_events(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await baton(fake, "status", "snap") == 0
    out = capsys.readouterr().out
    assert "revision    1 (ACTIVE)" in out
    assert "step 0  camera.take  -> kitchen" in out
    jobs = table_rows(out, "DEVICE", "SCHEDULED")
    assert jobs[1] == ["kitchen", DEV_A[:12], "d" * 12, "d" * 12, "yes"]
    events = table_rows(out, "TIME")
    assert [row[-2:] for row in events[2:]] == [
        ["PLANNING -> DEPLOYING", "start"],
        ["DEPLOYING -> ACTIVE", "start"],
    ]
    assert events[2][1] == "+0.250s"


async def test_status_unknown_deployment(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await baton(fake, "status", "nope") == 1
    assert capsys.readouterr().err == "baton: error: no deployment 'nope' (field: deployment)\n"


# --- executions ------------------------------------------------------------------------------------


async def test_run_prints_value_outputs_and_trace(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await baton(fake, "run", "snap", "--arg", "param0=10", "--arg", "b=x=y") == 0
    assert fake.bodies["execute"] == {"param0": "10", "b": "x=y"}
    out = capsys.readouterr().out
    assert "value      55" in out
    assert f"output     {fake.url}/executions/exec-42/files/out.txt" in out
    rows = table_rows(out, "HOP")
    assert rows == [
        ["HOP", "DEVICE", "REQUEST ID", "MS", "RESULT"],
        ["1", "kitchen", "req-1", "12.5", "-"],
        ["2", "garage-pi", "req-2", "3.2", "-"],
    ]


async def test_run_with_files_is_multipart_and_async(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = tmp_path / "in.jpg"
    image.write_bytes(b"\xff\xd8jpeg")
    args = ["run", DEP_ID, "--arg", "n=1", "--file", f"image.jpg={image}", "--async"]
    assert await baton(fake, *args) == 0
    assert fake.bodies["execute"] == {
        "n": (None, b"1"),
        "image.jpg": ("image.jpg", b"\xff\xd8jpeg"),
    }
    assert any("?async" in path for _, path, _ in fake.requests)
    assert "execution exec-42 is running; follow it with `baton trace exec-42`" in (
        capsys.readouterr().out
    )


async def test_run_failure_shows_trace_and_exits_1(
    fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await baton(fake, "run", "broken") == 1
    captured = capsys.readouterr()
    assert "error      hop 2 on garage-pi did not answer" in captured.out
    assert table_rows(captured.out, "HOP")[1][:3] == ["1", "kitchen", "req-1"]
    assert captured.err == (
        "baton: error: execution exec-42 failed: hop 2 on garage-pi did not answer\n"
    )


async def test_trace(fake: FakeOrchestrator, capsys: pytest.CaptureFixture[str]) -> None:
    assert await baton(fake, "trace", "exec-42") == 0
    assert table_rows(capsys.readouterr().out, "HOP")[2][:3] == ["2", "garage-pi", "req-2"]
    assert await baton(fake, "trace", "exec-42", "--json") == 0
    assert json.loads(capsys.readouterr().out) == EXECUTION


# --- failures without a server ---------------------------------------------------------------------


async def test_unreachable_orchestrator(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert await asyncio.to_thread(cli.main, ["--url", url, "devices"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"baton: error: cannot reach the orchestrator at {url}: ")
    assert len(captured.err.splitlines()) == 1
    assert "Traceback" not in captured.err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["run", "dep", "--arg", "novalue"]) == 2
    assert "--arg takes K=V" in capsys.readouterr().err
    assert cli.main(["--url", "ftp://x", "devices"]) == 2
    assert capsys.readouterr().err == (
        "baton: error: --url 'ftp://x' is not an http:// or https:// URL\n"
    )
    assert cli.main(["--help"]) == 0
