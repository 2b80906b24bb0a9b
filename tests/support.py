"""Test helpers: a file server for modules, mini-manifest builders, supervisor processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import ROOT, WASM_DIR, free_port


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Baton's settings (``BATON_*``, ``WASMIOT_*``), so a
    daemon a test starts sees only what the test gives it; plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "WASMIOT_"))} | extra


HITS: web.AppKey[dict[str, int]] = web.AppKey("hits", dict)


def file_server_app(files: Mapping[str, Path]) -> web.Application:
    """Serves ``/files/<name>`` from ``files`` and counts the hits per name."""
    app = web.Application()
    hits: dict[str, int] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hits[name] = hits.get(name, 0) + 1
        if name not in files:
            raise web.HTTPNotFound()
        return web.FileResponse(files[name])

    app.router.add_get("/files/{name}", serve)
    app[HITS] = hits
    return app


def default_files() -> dict[str, Path]:
    files = {p.name: p for p in WASM_DIR.glob("*.wasm")}
    files["prefix.txt"] = ROOT / "modules" / "textfile" / "prefix.txt"
    return files


def endpoint(
    url: str,
    dep: str,
    module: str,
    func: str,
    params: list[tuple[str, str]] | None = None,
    result: str = "integer",
    method: str = "get",
    files: list[str] | None = None,
    media_type: str = "application/json",
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "parameters": [
            {"name": n, "in": "query", "required": True, "schema": {"type": t}}
            for n, t in (params or [])
        ]
    }
    if files:
        request["request_body"] = {
            "media_type": "multipart/form-data",
            "schema": {
                "type": "object",
                "properties": {f: {"type": "string", "format": "binary"} for f in files},
            },
            "encoding": {f: {"contentType": "application/octet-stream"} for f in files},
        }
    schema: dict[str, Any] = {"type": result}
    if media_type != "application/json":
        schema = {"type": "string", "format": "binary"}
    return {
        "url": url,
        "path": f"/{dep}/modules/{module}/{func}",
        "method": method,
        "request": request,
        "response": {"media_type": media_type, "schema": schema},
    }


@dataclass
class Step:
    """One function of a mini-manifest, with its mounts and limits."""

    module: str
    func: str
    params: list[tuple[str, str]] = field(default_factory=list)
    result: str = "integer"
    method: str = "get"
    execution: list[str] = field(default_factory=list)
    deployment: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    limits: dict[str, int] | None = None
    to: dict[str, Any] | None = None


def upper_step(**overrides: Any) -> Step:
    """textfile.upper: uploaded input.txt in, uppercased output.txt out."""
    fields: dict[str, Any] = {
        "execution": ["input.txt"],
        "output": ["output.txt"],
        "method": "post",
    }
    return Step("textfile", "upper", **(fields | overrides))


def prefix_step(**overrides: Any) -> Step:
    """textfile.prefix: the deployment's prefix.txt + uploaded input.txt → prefixed.txt."""
    fields: dict[str, Any] = {
        "execution": ["input.txt"],
        "deployment": ["prefix.txt"],
        "output": ["prefixed.txt"],
        "method": "post",
    }
    return Step("textfile", "prefix", **(fields | overrides))


def upload(name: str, data: bytes) -> aiohttp.FormData:
    """A multipart body carrying one file part."""
    form = aiohttp.FormData()
    form.add_field(name, data, filename=name)
    return form


def mini_manifest(
    dep: str,
    device_url: str,
    files_url: str,
    steps: list[Step],
    *,
    digests: bool = True,
    data_files: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """A DeploymentNode for one device serving ``steps``; module binaries from ``files_url``."""
    modules: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, dict[str, Any]] = {}
    instructions: dict[str, dict[str, Any]] = {}
    mounts: dict[str, dict[str, Any]] = {}
    baton: dict[str, Any] = {"apiVersion": 1, "modules": {}, "limits": {}}
    for step in steps:
        other = dict((data_files or {}).get(step.module, {}))
        modules.setdefault(
            step.module,
            {
                "id": f"mod-{step.module}",
                "name": step.module,
                "urls": {
                    "binary": f"{files_url}/files/{step.module}.wasm",
                    "description": f"{files_url}/files/{step.module}.json",
                    "other": {k: f"{files_url}/files/{v}" for k, v in other.items()},
                },
            },
        )
        media = "application/octet-stream" if step.output else "application/json"
        ep = endpoint(
            device_url,
            dep,
            step.module,
            step.func,
            step.params,
            step.result,
            step.method,
            step.execution + step.deployment,
            media,
        )
        endpoints.setdefault(step.module, {})[step.func] = ep
        instructions.setdefault(step.module, {})[step.func] = {"from": ep, "to": step.to}
        mounts.setdefault(step.module, {})[step.func] = {
            "execution": [
                {"path": p, "media_type": "application/octet-stream", "stage": "execution"}
                for p in step.execution
            ],
            "deployment": [
                {"path": p, "media_type": "application/octet-stream", "stage": "deployment"}
                for p in step.deployment
            ],
            "output": [
                {"path": p, "media_type": "application/octet-stream", "stage": "output"}
                for p in step.output
            ],
        }
        if digests:
            baton["modules"][step.module] = {"digest": sha256_of(WASM_DIR / f"{step.module}.wasm")}
        if step.limits:
            baton["limits"].setdefault(step.module, {})[step.func] = step.limits
    node: dict[str, Any] = {
        "deploymentId": dep,
        "modules": list(modules.values()),
        "endpoints": endpoints,
        "instructions": {"modules": instructions},
        "mounts": mounts,
        "baton": baton,
    }
    return node


class SupervisorProcess:
    """A real ``baton-supervisor`` in its own process on 127.0.0.1."""

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        name: str = "sup",
        extra: list[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.name = name
        self.extra = extra or []
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv0 = [sys.executable, "-m", "supervisor"]
        self.log = state_dir.parent / f"{name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = clean_env(**self.env)
        argv = [
            *self.argv0,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            "--name",
            self.name,
            "--mdns-interfaces",
            "none",
            *self.extra,
        ]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)

    async def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"supervisor exited: {self.log.read_text()[-2000:]}")
                try:
                    async with session.get(
                        f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=1)
                    ) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(
            f"supervisor not healthy within {timeout}s: {self.log.read_text()[-2000:]}"
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()
