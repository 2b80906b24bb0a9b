"""A guest sees no host environment and no file outside its own per-call directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
