"""``baton app build|validate|push|list|show`` through the real CLI entry point (cli.main).

build and validate run offline on real files; push, list and show talk to a small real aiohttp
app on 127.0.0.1 that records what it was sent (the server side has its own tests), and, at
the end, to a real ``baton-orchestrator`` process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator import cli
from orchestrator.app_build import pack
from orchestrator.app_image import image_digest
from tests.daemons import OrchestratorProcess
from tests.test_app_build import example_copy, source_tree
from tests.test_app_image import valid_plus

TOKEN = "s3cret-token"


def baton(*argv: str) -> int:
    return cli.main(list(argv))


# --- build ---------------------------------------------------------------------------------------


def test_build_prints_path_digest_size_and_packages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_tree(tmp_path / "app")
    assert baton("app", "build", str(src), "--no-scripts") == 0
    out = capsys.readouterr().out
    path = src / "build" / "thermo-1.0.0.zip"
    data = path.read_bytes()
    assert f"built {path}" in out
    assert f"digest  {image_digest(data)}" in out
    assert f"size    {len(data)} bytes" in out
    assert "packages convert, threshold" in out


def test_build_runs_the_example_scripts_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = example_copy(tmp_path / "thermo-app")
    out_path = tmp_path / "thermo.zip"
    assert baton("app", "build", str(src), "-o", str(out_path), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == str(out_path)
    assert doc["digest"] == image_digest(out_path.read_bytes())
    assert doc["packages"]["threshold"]["files"] == ["limit.txt"]
    assert doc["pipelines"][0] == {"name": "main", "steps": ["convert.c2f", "threshold.check"]}


def test_build_failure_is_one_error_line_with_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_tree(tmp_path / "app")
    (src / "pkg-threshold" / "limit.txt").unlink()
    assert baton("app", "build", str(src), "--no-scripts") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("baton: error: pkg-threshold/limit.txt: listed in package.json")
    assert "Traceback" not in captured.err


def test_build_script_failure_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_tree(tmp_path / "app")
    (src / "pkg-convert" / "build.sh").write_text("echo 'convert.c:1: error: oops' >&2\nexit 1\n")
    assert baton("app", "build", str(src)) == 1
    err = capsys.readouterr().err
    assert "baton: error: pkg-convert: build.sh failed with exit status 1" in err
    assert "convert.c:1: error: oops" in err


# --- validate ------------------------------------------------------------------------------------


def test_validate_a_zip_describes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "app.zip"
    data = pack(source_tree(tmp_path / "app"))
    image.write_bytes(data)
    assert baton("app", "validate", str(image)) == 0
    out = capsys.readouterr().out
    assert out.startswith("thermo@1.0.0  valid\n")
    assert f"digest  {image_digest(data)}" in out
    assert "threshold@2.0.0 (pkg-threshold/)  requires: sensor_read" in out
    assert "check(x: integer) -> integer  [deployment limit.txt]" in out
    assert "main: convert.c2f -> threshold.check" in out
    assert "convert-only: convert.c2f" in out


def test_validate_a_directory_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_tree(tmp_path / "app")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    assert baton("app", "validate", str(src), "--json") == 0
    assert json.loads(capsys.readouterr().out)["name"] == "thermo"
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_validate_a_hostile_zip_fails_with_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "evil.zip"
    image.write_bytes(valid_plus("../../etc/cron.d/x"))
    assert baton("app", "validate", str(image)) == 1
    captured = capsys.readouterr()
    assert captured.err == "baton: error: ../../etc/cron.d/x: entry name climbs out with '..'\n"
    assert not (tmp_path.parent / "etc").exists()


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert baton("app", "validate", str(tmp_path / "nope.zip")) == 1
    assert "cannot read" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert baton("app", "build") == 2
    assert baton("app", "frobnicate") == 2


# --- push, list, show against a recording server ---------------------------------------------


class FakeApps:
    """Answers like the orchestrator's /apps routes and records the pushes."""

    def __init__(self) -> None:
        self.pushed: list[tuple[bytes, dict[str, str]]] = []
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/apps", self.push)
        app.router.add_get("/apps", self.list)
        app.router.add_get("/apps/{name}", self.versions)
        app.router.add_get("/apps/{name}/{version}", self.detail)
        return app

    async def push(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.pushed.append((data, dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"status": "error", "result": "bad token"}, status=401)
        if not data.startswith(b"PK"):
            return web.json_response(
                {"status": "error", "result": "not a readable zip file", "field": "image"},
                status=400,
            )
        created = len(self.pushed) == 1
        body = {
            "name": "thermo",
            "version": "1.0.0",
            "digest": image_digest(data),
            "size": len(data),
            "packages": {"convert": "convert@1.0.0", "threshold": "threshold@2.0.0"},
            "pipelines": ["main", "convert-only"],
            "created": created,
        }
        return web.json_response(body, status=201 if created else 200)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"name": "thermo", "versions": ["1.0.0", "1.1.0"], "latest": "1.1.0"}]
        )

    async def versions(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != "thermo":
            return web.json_response(
                {"status": "error", "result": "no app 'x'", "type": "not-found"}, status=404
            )
        return web.json_response(
            {"name": "thermo", "versions": [{"version": "1.0.0"}, {"version": "1.1.0"}]}
        )

    async def detail(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": "thermo",
                "version": request.match_info["version"],
                "digest": "sha256:" + "ab" * 32,
                "size": 9130,
                "description": "converts and checks",
                "packages": {"convert": "convert@1.0.0"},
                "pipelines": [{"name": "main", "sequence": [{"module": "convert", "func": "c2f"}]}],
            }
        )


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeApps:
    apps = FakeApps()
    server: TestServer = await aiohttp_server(apps.app(), host="127.0.0.1")
    apps.url = str(server.make_url("")).rstrip("/")
    return apps


async def run(fake: FakeApps, *argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["--url", fake.url, *argv])


async def test_push_sends_the_zip_with_its_type_and_token(
    fake: FakeApps,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATON_TOKEN", TOKEN)
    image = tmp_path / "app.zip"
    data = pack(source_tree(tmp_path / "app"))
    image.write_bytes(data)
    assert await run(fake, "app", "push", str(image)) == 0
    sent, headers = fake.pushed[0]
    assert sent == data
    assert headers["Content-Type"] == "application/zip"
    out = capsys.readouterr().out
    assert f"pushed thermo@1.0.0  {image_digest(data)}" in out
    assert "packages convert@1.0.0, threshold@2.0.0" in out
    assert await run(fake, "app", "push", str(image)) == 0
    assert "unchanged (already pushed) thermo@1.0.0" in capsys.readouterr().out
    assert await run(fake, "app", "push", str(image), "--json") == 0
    assert json.loads(capsys.readouterr().out)["created"] is False


async def test_push_errors_are_one_line(
    fake: FakeApps,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = tmp_path / "app.zip"
    image.write_bytes(b"not a zip")
    monkeypatch.delenv("BATON_TOKEN", raising=False)
    assert await run(fake, "app", "push", str(image)) == 1
    assert "bad token" in capsys.readouterr().err
    monkeypatch.setenv("BATON_TOKEN", TOKEN)
    assert await run(fake, "app", "push", str(image)) == 1
    assert capsys.readouterr().err == "baton: error: not a readable zip file (field: image)\n"
    assert await run(fake, "app", "push", str(tmp_path / "nope.zip")) == 1
    assert "cannot read" in capsys.readouterr().err


async def test_list_and_show(fake: FakeApps, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(fake, "app", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "VERSIONS", "LATEST"]
    assert lines[1].split() == ["thermo", "1.0.0,", "1.1.0", "1.1.0"]
    assert await run(fake, "app", "show", "thermo") == 0
    assert capsys.readouterr().out == "thermo: 1.0.0, 1.1.0\n"
    assert await run(fake, "app", "show", "thermo@1.1.0") == 0
    out = capsys.readouterr().out
    assert out.startswith("thermo@1.1.0\n")
    assert "pipeline    main: convert.c2f" in out and "packages    convert@1.0.0" in out
    assert await run(fake, "app", "show", "nope") == 1
    assert "no app" in capsys.readouterr().err


# --- a real orchestrator ---------------------------------------------------------------------------


async def test_push_list_show_against_a_real_orchestrator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    orch = OrchestratorProcess(tmp_path / "state", extra=["--token-file", str(token_file)])
    orch.start()
    try:
        async with aiohttp.ClientSession() as session:
            await orch.wait_healthy(session)
        src = example_copy(tmp_path / "thermo-app")
        monkeypatch.setenv("BATON_TOKEN", TOKEN)
        assert await asyncio.to_thread(cli.main, ["app", "build", str(src)]) == 0
        image = src / "build" / "thermo-1.0.0.zip"
        digest = image_digest(image.read_bytes())
        capsys.readouterr()

        base = ["--url", orch.url]
        assert await asyncio.to_thread(cli.main, [*base, "app", "push", str(image)]) == 0
        assert f"pushed thermo@1.0.0  {digest}" in capsys.readouterr().out
        assert await asyncio.to_thread(cli.main, [*base, "app", "push", str(image)]) == 0
        assert "unchanged" in capsys.readouterr().out
        assert await asyncio.to_thread(cli.main, [*base, "app", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert {"name": "thermo", "versions": ["1.0.0"]}.items() <= next(
            a for a in listed if a["name"] == "thermo"
        ).items()
        assert await asyncio.to_thread(cli.main, [*base, "app", "show", "thermo@1.0.0"]) == 0
        out = capsys.readouterr().out
        assert f"digest      {digest}" in out
        assert "pipeline    main: convert.c2f -> threshold.check" in out

        hostile = tmp_path / "evil.zip"
        hostile.write_bytes(valid_plus("../x"))
        assert await asyncio.to_thread(cli.main, [*base, "app", "push", str(hostile)]) == 1
        assert "'..'" in capsys.readouterr().err
    finally:
        orch.kill()
        shutil.rmtree(tmp_path / "thermo-app", ignore_errors=True)
