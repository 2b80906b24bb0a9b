"""Hostile uploads to both daemons: each gets a 4xx problem body and nothing is written.

What the older tables already cover is not repeated here:

- ``tests/test_bad_input.py`` (supervisor): malformed ``/deploy`` bodies, ``../`` as the
  deployment id and as an execution mount, a digest mismatch, ``../`` as an upload field, a
  2 MiB body against a 1 MiB limit;
- ``tests/test_orchestrator_daemon.py``, the acceptance-7 table (orchestrator): invalid Wasm,
  ``../`` as module name, version, data file, manifest name and module, non-UTF-8 JSON,
  TOML and form fields, bodies over a 64 KiB limit;
- ``tests/test_discovery.py``: ``decode_txt`` on bad UTF-8, as a unit.

Added here: invalid and truncated Wasm on the supervisor, truncated and empty Wasm on the
orchestrator, ``../`` and absolute paths in every other name field, non-UTF-8 bytes in
every JSON, MessagePack and form body the supervisor takes, 100 MB bodies streamed against the
real default limit (64 MiB) — refused from their declared length before a byte is read, or
by counting when they come chunked — and a real mDNS advertisement on 127.0.0.1 whose TXT
record is not UTF-8.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from orchestrator.devices import DeviceRegistry
from orchestrator.discovery import Discovery
from supervisor.protocol import DESCRIPTION_PATH, SERVICE_TYPE
from tests.conftest import ROOT, WASM_DIR
from tests.orchestration import Orchestrator
from tests.stack import Device, Stack, fibo_node
from tests.support import Step, file_server_app, mini_manifest, prefix_step, sha256_of

ServerFactory = Callable[..., Awaitable[TestServer]]

MB = 1024 * 1024
HUGE = 100 * MB  # over both daemons' default 64 MiB body limit
EARLY = 16 * MB  # a refusal from the declared length comes long before this much is sent
JSON_TYPE = {"Content-Type": "application/json"}
MSGPACK_TYPE = {"Content-Type": "application/msgpack"}
FIBO = (WASM_DIR / "fibo.wasm").read_bytes() if (WASM_DIR / "fibo.wasm").exists() else b""
PATHS = ("../escape", "/etc/passwd")  # one relative escape, one absolute path


def is_problem(status: int, body: Any) -> bool:
    return (
        400 <= status < 500
        and isinstance(body, dict)
        and body.get("status") == "error"
        and isinstance(body.get("result"), str)
        and bool(body["result"])
    )


async def send(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as resp:
        raw = await resp.read()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw[:300]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


class Stream:
    """A ``size``-byte body handed out 1 MiB at a time, counting what was taken; a multipart
    one is one file part of that size (a well-formed start, so only its size is wrong)."""

    def __init__(self, size: int, content_type: str) -> None:
        self.size = size
        self.sent = 0
        self.head = b""
        if content_type.startswith("multipart/"):
            boundary = content_type.split("boundary=", 1)[1]
            self.head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="input.txt"; '
                'filename="input.txt"\r\n\r\n'
            ).encode()

    async def chunks(self) -> AsyncIterator[bytes]:
        block = b"x" * MB
        if self.head:
            self.sent += len(self.head)
            yield self.head
        while self.sent < self.size:
            self.sent += len(block)
            yield block


async def post_huge(
    session: aiohttp.ClientSession,
    url: str,
    *,
    declared: bool,
    content_type: str = "application/json",
) -> tuple[int, Any, int]:
    """POST 100 MB; the status, the problem body and how many bytes had gone out by then."""
    stream = Stream(HUGE, content_type)
    headers = {"Content-Type": content_type}
    if declared:
        headers["Content-Length"] = str(HUGE)
    try:
        async with session.post(url, data=stream.chunks(), headers=headers) as resp:
            sent_at_answer = stream.sent
            body = await resp.json()
            return resp.status, body, sent_at_answer
    except aiohttp.ClientOSError as err:  # only acceptable once the answer was read
        raise AssertionError(f"{url}: connection failed before an answer: {err}") from err


# --- supervisor ------------------------------------------------------------------------------


async def bad_module_server(aiohttp_server: ServerFactory, tmp_path: Path) -> str:
    """A file server on 127.0.0.1 whose ``<name>.wasm`` files are broken Wasm."""
    broken = {
        "garbage.wasm": b"this is not wasm at all",
        "header-only.wasm": b"\0asm\x01\0\0\0\x01",
        "truncated.wasm": FIBO[: len(FIBO) // 2],
        "empty.wasm": b"",
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
        files[name] = tmp_path / name
    server = await aiohttp_server(file_server_app(files))
    return str(server.make_url("")).rstrip("/")


def supervisor_state(device: Device) -> list[str]:
    """Every file a deployment could leave: blobs, compiled modules, call directories."""
    root = device.settings.state_dir
    return [f for f in files_under(root) if not f.startswith("state.json")]


@pytest.mark.parametrize("name", ["garbage", "header-only", "truncated", "empty"])
@pytest.mark.parametrize("with_digest", [True, False])
async def test_supervisor_refuses_broken_wasm_and_keeps_nothing(
    stack: Stack, aiohttp_server: ServerFactory, tmp_path: Path, name: str, with_digest: bool
) -> None:
    files_url = await bad_module_server(aiohttp_server, tmp_path / "files")
    dev = await stack.make_device()
    before = supervisor_state(dev)
    node = mini_manifest("bad", dev.url, files_url, [Step("fibo", "fibo", [("param0", "integer")])])
    node["modules"][0]["urls"]["binary"] = f"{files_url}/files/{name}.wasm"
    node["baton"]["modules"]["fibo"]["digest"] = (
        sha256_of(tmp_path / "files" / f"{name}.wasm") if with_digest else None
    )
    if not with_digest:
        del node["baton"]["modules"]["fibo"]
    status, problem = await send(stack.session, "POST", dev.url + "/deploy", json=node)
    assert is_problem(status, problem) and status == 422, (status, problem)
    assert problem["field"] == "modules.fibo", problem
    _, listing = await send(stack.session, "GET", dev.url + "/deploy")
    assert listing["deployments"] == []
    assert supervisor_state(dev) == before


def _set(node: dict[str, Any], where: str, value: str) -> None:
    """Rename one name field of a prefix-step mini-manifest to ``value``."""
    mod = node["modules"][0]
    if where == "deploymentId":
        node["deploymentId"] = value
    elif where == "module name":
        mod["name"] = value
    elif where == "function name":
        node["endpoints"]["textfile"] = {value: node["endpoints"]["textfile"]["prefix"]}
        node["mounts"]["textfile"] = {value: node["mounts"]["textfile"]["prefix"]}
        node["instructions"]["modules"]["textfile"] = {
            value: node["instructions"]["modules"]["textfile"]["prefix"]
        }
    elif where in {"execution mount", "output mount"}:
        stage = where.split(maxsplit=1)[0]
        node["mounts"]["textfile"]["prefix"][stage][0]["path"] = value
    elif where in {"data file", "data-file mount"}:
        other = mod["urls"]["other"]
        other[value] = other.pop("prefix.txt")
        if where == "data-file mount":  # both renamed, so only the name itself is wrong
            node["mounts"]["textfile"]["prefix"]["deployment"][0]["path"] = value
    else:
        raise AssertionError(where)


NODE_FIELDS = {
    "deploymentId": "deploymentId",
    "module name": "modules[0].name",
    "function name": "endpoints.textfile.",
    "execution mount": "mounts.textfile.prefix.execution[0].path",
    "output mount": "mounts.textfile.prefix.output[0].path",
    "data file": "modules[0].urls.other.",
    "data-file mount": "modules[0].urls.other.",
}
# Covered by tests/test_bad_input.py already.
COVERED = {("deploymentId", "../escape"), ("execution mount", "../escape")}


@pytest.mark.parametrize(
    ("where", "value"),
    [(w, v) for w in NODE_FIELDS for v in PATHS if (w, v) not in COVERED],
)
async def test_supervisor_refuses_paths_in_every_name_field(
    stack: Stack, where: str, value: str
) -> None:
    dev = await stack.make_device()
    before = supervisor_state(dev)
    node = mini_manifest(
        "names",
        dev.url,
        stack.files_url,
        [prefix_step()],
        data_files={"textfile": {"prefix.txt": "prefix.txt"}},
    )
    _set(node, where, value)
    status, problem = await send(stack.session, "POST", dev.url + "/deploy", json=node)
    assert is_problem(status, problem) and status == 422, (where, status, problem)
    assert problem["field"].startswith(NODE_FIELDS[where]), (where, problem)
    _, listing = await send(stack.session, "GET", dev.url + "/deploy")
    assert listing["deployments"] == []
    assert supervisor_state(dev) == before
    assert stack.file_hits == {}, "nothing was fetched for a refused mini-manifest"


async def test_supervisor_paths_in_urls_and_upload_names_reach_nothing(stack: Stack) -> None:
    dev = await stack.make_device()
    steps = [Step("textfile", "upper", execution=["input.txt"], output=["output.txt"])]
    steps[0].method = "post"
    node = mini_manifest("up", dev.url, stack.files_url, steps)
    status, body = await send(stack.session, "POST", dev.url + "/deploy", json=node)
    assert status == 200, body
    state = dev.settings.state_dir
    before = files_under(state)
    for path in (
        "/deploy/..%2F..%2Fstate.json",
        "/deploy/%2Fetc%2Fpasswd",
        "/deploy/..",
    ):
        status, problem = await send(stack.session, "DELETE", dev.url + path)
        assert is_problem(status, problem) and status in {404, 405}, (path, status, problem)
    for path in (
        "/..%2F..%2Fstate.json/modules/textfile/upper",
        "/up/modules/..%2Ftextfile/upper",
        "/up/modules/textfile/%2Fetc%2Fpasswd",
        "/module_results/up/textfile/..%2F..%2Fstate.json",
        "/module_results/textfile/%2Fetc%2Fpasswd",
        "/up/modules/textfile/upper/..%2F..%2F..%2Fstate.json",
        "/request-history/..%2F..%2Fstate.json",
    ):
        status, problem = await send(stack.session, "GET", dev.url + path)
        assert is_problem(status, problem) and status == 404, (path, status, problem)
    for name in ("/etc/passwd", "/input.txt", "..", "input.txt/../../x"):
        form = aiohttp.FormData()
        form.add_field("input.txt", b"x", filename="input.txt")
        form.add_field(name, b"x", filename="f")
        url = f"{dev.url}/up/modules/textfile/upper"
        status, problem = await send(stack.session, "POST", url, data=form)
        assert is_problem(status, problem) and status == 400, (name, problem)
        # aiohttp's parser drops the leading "/" of a quoted part name; still refused.
        assert problem["field"] in {name, name.lstrip("/")}, (name, problem)
    assert files_under(state) == before  # no call directory, no removed deployment
    _, listing = await send(stack.session, "GET", dev.url + "/deploy")
    assert [d["deploymentId"] for d in listing["deployments"]] == ["up"]


def _raw_form(*parts: tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    boundary = "hostile-boundary"
    body = b"".join(
        f"--{boundary}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"
        for headers, content in parts
    )
    return body + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


async def test_supervisor_non_utf8_bodies_are_400_and_change_nothing(stack: Stack) -> None:
    dev = await stack.make_device()
    assert (await stack.deploy(dev, fibo_node("d", dev, stack))).status == 200
    node = json.dumps(fibo_node("n", dev, stack)).encode()
    bad_node = node.replace(b'"n"', b'"\xff\xfe"', 1)
    assert bad_node != node
    bad_msgpack = msgspec.msgpack.encode({"deploymentId": "x"}).replace(b"x", b"\xff")
    form_body, form_headers = _raw_form(('Content-Disposition: form-data; name="param0"', b"\xff"))
    form_body2, _ = _raw_form(
        (
            'Content-Disposition: form-data; name="param0"\r\nContent-Type: text/plain; '
            "charset=no-such-charset",
            b"5",
        )
    )
    call = dev.url + "/d/modules/fibo/fibo"
    before = files_under(dev.settings.state_dir)
    cases: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("deploy JSON", dev.url + "/deploy", bad_node, JSON_TYPE),
        ("deploy JSON key", dev.url + "/deploy", b'{"\xff": 1}', JSON_TYPE),
        ("deploy MessagePack", dev.url + "/deploy", bad_msgpack, MSGPACK_TYPE),
        ("register JSON", dev.url + "/register", b'{"url": "http://\xff/"}', JSON_TYPE),
        ("call JSON", call, b'{"param0": "\xff"}', JSON_TYPE),
        (
            "call MessagePack",
            call,
            msgspec.msgpack.encode({"param0": "5"})[:-1] + b"\xff",
            MSGPACK_TYPE,
        ),
        ("call form field", call, form_body, form_headers),
        ("call form charset", call, form_body2, form_headers),
        (
            "call form header",
            call,
            b"--hostile-boundary\r\nContent-Disposition: form-data; "
            b'name="\xff\xfe"\r\n\r\n5\r\n--hostile-boundary--\r\n',
            form_headers,
        ),
    ]
    for what, url, data, headers in cases:
        status, problem = await send(stack.session, "POST", url, data=data, headers=headers)
        assert is_problem(status, problem) and status == 400, (what, status, problem)
    _, listing = await send(stack.session, "GET", dev.url + "/deploy")
    assert [d["deploymentId"] for d in listing["deployments"]] == ["d"]
    _, history = await send(stack.session, "GET", dev.url + "/request-history")
    assert history == []  # no call was started
    assert files_under(dev.settings.state_dir) == before


async def test_supervisor_refuses_100_mb_without_buffering_it(stack: Stack) -> None:
    dev = await stack.make_device()  # the real default limit, 64 MiB
    assert dev.settings.max_body_bytes < HUGE
    steps = [Step("textfile", "upper", execution=["input.txt"], output=["output.txt"])]
    steps[0].method = "post"
    assert (
        await stack.deploy(dev, mini_manifest("up", dev.url, stack.files_url, steps))
    ).status == 200
    before = files_under(dev.settings.state_dir)
    call = f"{dev.url}/up/modules/textfile/upper"
    boundary = "multipart/form-data; boundary=zz"
    for url, content_type in (
        (dev.url + "/deploy", "application/json"),
        (dev.url + "/register", "application/json"),
        (call, boundary),
        (call, "application/json"),
        (dev.url + "/health", "application/json"),  # a route that never reads a body
    ):
        status, problem, sent = await post_huge(
            stack.session, url, declared=True, content_type=content_type
        )
        assert status == 413 and is_problem(status, problem), (url, status, problem)
        assert sent < EARLY, f"{url}: {sent} bytes were taken before the 413"
    # Chunked, the length is unknown up front: refused once the limit is passed.
    for url, content_type in ((dev.url + "/deploy", "application/json"), (call, boundary)):
        status, problem, _ = await post_huge(
            stack.session, url, declared=False, content_type=content_type
        )
        assert status == 413 and is_problem(status, problem), (url, status, problem)
    _, listing = await send(stack.session, "GET", dev.url + "/deploy")
    assert [d["deploymentId"] for d in listing["deployments"]] == ["up"]
    _, history = await send(stack.session, "GET", dev.url + "/request-history")
    assert history == []
    assert files_under(dev.settings.state_dir) == before


async def test_supervisor_counts_every_part_of_an_upload_against_the_limit(
    stack: Stack,
) -> None:
    """Parts under the limit each, over it together: aiohttp alone bounds each part only."""
    dev = await stack.make_device(max_body_bytes=4 * MB)
    steps = [Step("textfile", "upper", execution=["input.txt"], output=["output.txt"])]
    steps[0].method = "post"
    assert (
        await stack.deploy(dev, mini_manifest("up", dev.url, stack.files_url, steps))
    ).status == 200
    boundary = "zz"

    async def parts() -> AsyncIterator[bytes]:  # three 3 MiB parts, sent chunked
        for i in range(3):
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"; '
                f'filename="f{i}"\r\n\r\n'
            ).encode()
            for _ in range(3):
                yield b"y" * MB
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    status, problem = await send(
        stack.session,
        "POST",
        f"{dev.url}/up/modules/textfile/upper",
        data=parts(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 413 and is_problem(status, problem), (status, problem)
    _, history = await send(stack.session, "GET", dev.url + "/request-history")
    assert history == []


# --- orchestrator ----------------------------------------------------------------------------


def module_form(
    name: str = "fibo",
    *,
    wasm: bytes | None = None,
    functions: bytes | None = None,
    version: str = "1",
    data: dict[str, bytes] | None = None,
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("version", version)
    form.add_field("wasm", FIBO if wasm is None else wasm, filename="m.wasm")
    described = functions or (ROOT / "modules" / "fibo" / "functions.json").read_bytes()
    form.add_field("functions", described, filename="functions.json")
    for mount, content in (data or {}).items():
        form.add_field(mount, content, filename=mount)
    return form


async def orchestrator_state(orch: Orchestrator) -> dict[str, Any]:
    state = {path: (await orch.get(path))[1] for path in ("/devices", "/modules", "/deployments")}
    state["devices"] = [(d["id"], d["name"], d["url"]) for d in state.pop("/devices")]
    state["deployments"] = [(d["id"], d["revision"]) for d in state.pop("/deployments")]
    state["blobs"] = (
        files_under(orch.state_dir / "blobs") if (orch.state_dir / "blobs").exists() else []
    )
    return state


@pytest.fixture
async def seeded(stack: Stack, orchestrator: Orchestrator) -> tuple[Orchestrator, str, int]:
    """An orchestrator with a device, fibo pushed and a deployment of it ACTIVE."""
    device = await stack.make_device()
    port = int(device.url.rsplit(":", 1)[1])
    status, body = await orchestrator.post("/devices", json={"host": "127.0.0.1", "port": port})
    assert status == 201, body
    await orchestrator.push_module("fibo")
    status, dep = await orchestrator.deploy(
        {"name": "good", "sequence": [{"module": "fibo", "func": "fibo"}]}
    )
    assert status == 201 and dep["state"] == "ACTIVE", dep
    return orchestrator, dep["id"], port


async def test_orchestrator_refuses_truncated_and_empty_wasm(
    seeded: tuple[Orchestrator, str, int],
) -> None:
    orch, _, _ = seeded
    before = await orchestrator_state(orch)
    for what, wasm in (
        ("truncated", FIBO[: len(FIBO) // 2]),
        ("cut inside the header", FIBO[:6]),
        ("empty", b""),
        ("a valid module and trailing garbage", FIBO + b"\x00\x01garbage"),
    ):
        status, problem = await orch.post("/modules", data=module_form("cut", wasm=wasm))
        assert is_problem(status, problem) and status == 422, (what, status, problem)
        assert problem["field"] == "wasm", (what, problem)
    assert await orchestrator_state(orch) == before


FIBO_FUNCTIONS = json.loads((ROOT / "modules" / "fibo" / "functions.json").read_text())


def _functions_with(key: str | None = None, mount: str | None = None) -> bytes:
    functions = json.loads(json.dumps(FIBO_FUNCTIONS))
    if key is not None:
        functions[key] = functions.pop("fibo")
    if mount is not None:
        functions["fibo"]["mounts"] = [
            {"name": mount, "mediaType": "text/plain", "stage": "deployment"}
        ]
    return json.dumps(functions).encode()


@pytest.mark.parametrize("value", PATHS)
async def test_orchestrator_refuses_paths_in_every_name_field(
    seeded: tuple[Orchestrator, str, int], value: str
) -> None:
    orch, dep_id, port = seeded
    before = await orchestrator_state(orch)
    step = {"module": "fibo", "func": "fibo"}
    uploads = [
        ("module name", module_form(value), "name"),
        ("version", module_form("m2", version=value), "version"),
        ("data file", module_form("m3", data={value: b"x"}), f"files.{value.lstrip('/')}"),
        ("function name", module_form("m4", functions=_functions_with(key=value)), "functions"),
        (
            "mount name",
            module_form("m5", functions=_functions_with(mount=value), data={value: b"x"}),
            None,  # refused as the data file's name or as the mount's, whichever comes first
        ),
    ]
    for what, form, field in uploads:
        status, problem = await orch.post("/modules", data=form)
        assert is_problem(status, problem) and status == 422, (what, status, problem)
        assert field is None or problem["field"] == field, (what, problem)
    manifests = [
        ("deployment name", {"name": value, "sequence": [step]}),
        ("step module", {"name": "p1", "sequence": [{"module": value, "func": "fibo"}]}),
        ("step function", {"name": "p2", "sequence": [{"module": "fibo", "func": value}]}),
        (
            "module version",
            {"name": "p3", "sequence": [{"module": f"fibo@{value}", "func": "fibo"}]},
        ),
    ]
    for what, manifest in manifests:
        for route in ("/placements", "/deployments"):
            status, problem = await orch.post(route, json=manifest)
            assert is_problem(status, problem) and status == 422, (what, route, status, problem)
    for route in ("/devices", "/file/device/discovery/register"):
        status, problem = await orch.post(
            route, json={"host": "127.0.0.1", "port": port, "name": value}
        )
        assert is_problem(status, problem) and status == 400, (route, status, problem)
        assert problem["field"] == "name", problem
    quoted = value.replace("/", "%2F")
    for method, path in (
        ("GET", f"/deployments/{quoted}"),
        ("DELETE", f"/deployments/{quoted}"),
        ("POST", f"/deployments/{quoted}/executions"),
        ("GET", f"/executions/{quoted}"),
        ("GET", f"/modules/{quoted}"),
        ("GET", f"/devices/{quoted}"),
        ("POST", f"/devices/{quoted}/cordon"),
        ("GET", f"/blobs/{quoted}"),
    ):
        status, problem = await send(orch.session, method, orch.url + path)
        assert is_problem(status, problem) and status == 404, (method, path, status, problem)
    assert await orchestrator_state(orch) == before
    status, run = await orch.run(dep_id, param0=5)
    assert status == 200 and run["value"] == 8, run


async def test_orchestrator_non_utf8_messagepack_is_400(
    seeded: tuple[Orchestrator, str, int],
) -> None:
    """JSON, TOML and form fields are in the acceptance-7 table; MessagePack strings here."""
    orch, dep_id, _ = seeded
    before = await orchestrator_state(orch)

    def mangled(obj: Any) -> bytes:
        raw = msgspec.msgpack.encode(obj)
        assert b"XX" in raw
        return raw.replace(b"XX", b"\xff\xfe")

    for path, body in (
        ("/placements", mangled({"name": "XX", "sequence": [{"module": "fibo", "func": "fibo"}]})),
        ("/deployments", mangled({"name": "XX", "sequence": [{"module": "fibo", "func": "fibo"}]})),
        ("/devices", mangled({"host": "XX"})),
        ("/file/device/discovery/register", mangled({"host": "XX"})),
        (f"/deployments/{dep_id}/executions", mangled({"param0": "XX"})),
    ):
        status, problem = await orch.post(path, data=body, headers=MSGPACK_TYPE)
        assert is_problem(status, problem) and status == 400, (path, status, problem)
    assert await orchestrator_state(orch) == before


async def test_orchestrator_refuses_100_mb_without_buffering_it(
    seeded: tuple[Orchestrator, str, int],
) -> None:
    orch, dep_id, _ = seeded
    before = await orchestrator_state(orch)
    form = "multipart/form-data; boundary=zz"
    routes = [
        ("/modules", form),
        ("/deployments", "application/json"),
        ("/placements", "application/json"),
        ("/devices", "application/json"),
        (f"/deployments/{dep_id}/executions", "application/json"),
        (f"/deployments/{dep_id}/executions", form),
        ("/health", "application/json"),  # a route that never reads a body
    ]
    for path, content_type in routes:
        status, problem, sent = await post_huge(
            orch.session, orch.url + path, declared=True, content_type=content_type
        )
        assert status == 413 and is_problem(status, problem), (path, status, problem)
        assert sent < EARLY, f"{path}: {sent} bytes were taken before the 413"
    for path, content_type in routes[:2]:
        status, problem, _ = await post_huge(
            orch.session, orch.url + path, declared=False, content_type=content_type
        )
        assert status == 413 and is_problem(status, problem), (path, status, problem)
    assert await orchestrator_state(orch) == before


# --- mDNS: a TXT record that is not UTF-8 ----------------------------------------------------


async def test_discovery_survives_a_txt_record_that_is_not_utf8(
    session_factory: Callable[[], aiohttp.ClientSession],
) -> None:
    """Two real advertisements on 127.0.0.1 with bad bytes in every TXT key and value: one
    in front of a real description (registered, with the garbage cleaned away), one in
    front of nothing (skipped); discovery keeps running and finds a well-formed third."""
    tag = uuid.uuid4().hex[:8]
    device_id = f"hostile-{tag}"

    async def describe(_: web.Request) -> web.Response:
        return web.json_response({"id": device_id, "name": f"txt-{tag}", "apiVersion": 1})

    app = web.Application()
    app.router.add_get(DESCRIPTION_PATH, describe)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    bad_txt: dict[bytes | str, bytes | str | None] = {
        b"id": b"\xff\xfe\xfd",
        b"address": b"127.0.0.\xff",
        b"tls": b"\xc3",  # a cut two-byte sequence
        b"api": b"\x80",
        b"\xff\xfe": b"\xff" * 250,  # a TXT string holds 255 bytes, key and "=" included
        b"path": None,
    }

    def info(name: str, port: int, properties: dict[bytes | str, bytes | str | None]) -> Any:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=port,
            properties=properties,
            server=f"{name}.local.",
            parsed_addresses=["127.0.0.1"],
        )

    closed_port = server.port + 1 if server.port < 65535 else server.port - 1
    registry = DeviceRegistry()
    async with session_factory() as session:
        discovery = Discovery(registry, session, interfaces=["127.0.0.1"], timeout_s=2.0)
        azc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            await discovery.start()
            nowhere = info(f"txt-nowhere-{tag}", closed_port, bad_txt)
            hostile = info(f"txt-{tag}", server.port, bad_txt)
            await (await azc.async_register_service(nowhere))
            await (await azc.async_register_service(hostile))
            deadline = time.monotonic() + 20
            while registry.find(device_id) is None:
                assert time.monotonic() < deadline, "the advertised device was never found"
                await asyncio.sleep(0.1)
            device = registry.find(device_id)
            assert device is not None
            assert (device.host, device.port) == ("127.0.0.1", server.port)
            assert device.url == f"http://127.0.0.1:{server.port}"  # tls garbage is not "1"
            assert not [d for d in registry.all() if d.port == closed_port]
            # Discovery is still alive: a well-formed advertisement is found after that.
            good_id = f"good-{tag}"

            async def describe_good(_: web.Request) -> web.Response:
                return web.json_response({"id": good_id, "name": f"good-{tag}"})

            good_app = web.Application()
            good_app.router.add_get(DESCRIPTION_PATH, describe_good)
            good_server = TestServer(good_app, host="127.0.0.1")
            await good_server.start_server()
            try:
                assert good_server.port is not None
                good = info(f"good-{tag}", good_server.port, {"id": good_id, "api": "1"})
                await (await azc.async_register_service(good))
                while registry.find(good_id) is None:
                    assert time.monotonic() < deadline, "discovery stopped after the bad record"
                    await asyncio.sleep(0.1)
            finally:
                await good_server.close()
        finally:
            await azc.async_close()
            await discovery.stop()
            await server.close()


@pytest.fixture
def session_factory() -> Callable[[], aiohttp.ClientSession]:
    return aiohttp.ClientSession


_ = hashlib
