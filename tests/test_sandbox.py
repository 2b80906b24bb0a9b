"""A guest sees no host environment and no file outside its own per-call directory."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from supervisor.app import build_app
from supervisor.config import load_settings
from supervisor.tls import client_context, server_context
from tests.certs import Authority
from tests.conftest import free_port
from tests.stack import Stack
from tests.support import Step, mini_manifest, upload


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BATON_TEST_SECRET", "do-not-leak")
    path = tmp_path / "secret.txt"
    path.write_text("host secret")
    return path


async def _probe(stack: Stack, url: str, func: str, path: str | None = None) -> int:
    form = upload("input.txt", b"mine")
    params = {"wait": "5"} | ({"path": path} if path is not None else {})
    async with stack.session.post(
        f"{url}/sandbox/modules/probe/{func}", params=params, data=form
    ) as resp:
        body = await resp.json()
    assert body["success"] is True, body
    return int(body["value"])


async def test_guest_cannot_see_host_environment_or_files(stack: Stack, secret: Path) -> None:
    assert os.environ["BATON_TEST_SECRET"] == "do-not-leak"
    dev = await stack.make_device()
    steps = [
        Step("probe", "env_count", execution=["input.txt"], method="post"),
        Step("probe", "can_open", [("path", "string")], execution=["input.txt"], method="post"),
        Step("probe", "can_write", [("path", "string")], execution=["input.txt"], method="post"),
    ]
    assert (
        await stack.deploy(dev, mini_manifest("sandbox", dev.url, stack.files_url, steps))
    ).status == 200

    assert await _probe(stack, dev.url, "env_count") == 0
    # Positive control: the guest does see its own uploaded file.
    assert await _probe(stack, dev.url, "can_open", "input.txt") == 1
    state = dev.settings.state_dir
    for path in (
        "/etc/passwd",
        str(secret),
        "../" * 8 + "etc/passwd",
        "../" * 4 + "secret.txt",
        "../../../state.json",
        str(state / "state.json"),
        "/proc/self/environ",
    ):
        assert await _probe(stack, dev.url, "can_open", path) == 0, path
    escape = state / "requests" / "escaped.txt"
    assert await _probe(stack, dev.url, "can_write", "../escaped.txt") == 0
    assert await _probe(stack, dev.url, "can_write", str(escape)) == 0
    assert not escape.exists()
    assert not list(state.rglob("escaped.txt"))


async def test_guest_sees_no_token_or_tls_files_of_a_secured_daemon(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under TLS and a token, both given the systemd way (environment variables), the guest
    still sees no environment and cannot open the token file or the TLS key."""
    fleet = Authority.create(tmp_path / "pki", "fleet")
    cert = fleet.issue("device")
    token = "guest-must-not-see-" + "x" * 16
    token_file = tmp_path / "token"
    token_file.write_text(token)
    port = free_port()
    monkeypatch.setenv("BATON_TOKEN", token)
    monkeypatch.setenv("BATON_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("BATON_TLS_CERT", str(cert.cert))
    monkeypatch.setenv("BATON_TLS_KEY", str(cert.key))
    monkeypatch.setenv("BATON_TLS_CA", str(fleet.cert))
    argv = ["--host", "127.0.0.1", "--port", str(port), "--state-dir", str(tmp_path / "dev")]
    settings = load_settings([*argv, "--mdns-interfaces", "none"], os.environ)
    assert settings.token == token and settings.tls
    await aiohttp_server(build_app(settings), port=port, ssl=server_context(cert.cert, cert.key))
    url = f"https://127.0.0.1:{port}"
    steps = [
        Step("probe", "env_count", execution=["input.txt"], method="post"),
        Step("probe", "can_open", [("path", "string")], execution=["input.txt"], method="post"),
    ]
    connector = aiohttp.TCPConnector(ssl=client_context(fleet.cert))
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        secured = Stack(stack.files_url, session, stack.make_device, stack.file_hits)
        node = mini_manifest("sandbox", url, stack.files_url, steps)
        async with session.post(f"{url}/deploy", json=node) as resp:
            assert resp.status == 200, await resp.text()
        assert await _probe(secured, url, "env_count") == 0
        assert await _probe(secured, url, "can_open", "input.txt") == 1  # positive control
        for path in (
            str(token_file),
            "../" * 8 + str(token_file).lstrip("/"),
            str(cert.key),
            str(settings.state_dir / "state.json"),
            "/proc/self/environ",
        ):
            assert await _probe(secured, url, "can_open", path) == 0, path
