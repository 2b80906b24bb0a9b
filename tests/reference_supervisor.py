"""A stand-in for the Python reference wasmiot supervisor (SUP), for tests only.

This is a test stand-in written from ``../shared/reference/wasmiot.md`` (§1 and §2) and the
captured bytes in ``tests/fixtures/wasmiot-captures``, not the reference itself (which cannot
be obtained here). It is deliberately as strict as the reference where Baton's orchestrator
could trip over it:

* ``/deploy`` reads the five keys with ``data[key]`` (a missing one is a ``KeyError``, an HTML
  500) and ignores every other top-level key (Baton's ``baton``);
* endpoints, their ``request``/``response``, response and request-body schemas and mounts are
  built like the reference's dataclasses (``Endpoint(**obj)``, ``MountPathFile(**obj)``): an
  unknown or missing key is a ``TypeError``, a schema ``type`` outside ``integer|string|
  object`` or a ``format`` other than ``binary`` a ``ValueError`` — each an HTML 500;
* parameter objects stay plain dicts, as in the reference's ``EndpointRequest.parameters:
  list[dict]`` (``trkks/wasmiot-supervisor:host_app/utils/endpoint.py``); every object the
  stand-in received is kept in ``app[AUDIT]`` so a test can check their keys too.

Behaviour modelled: S1-S11 except the WoT TD (always 500, as SUP); arguments are the query
*values* in query order coerced by the wasm parameter types; GET runs before replying, POST
after (one FIFO worker); a history entry exists only once its work is done (404 before);
results are ``["<json>", null]`` or the next hop's ``resultUrl``. Not modelled: host functions
other than WASI, mDNS, logging to the orchestrator, the serialized-module cache, file outputs
and forwarding files along a chain (those fail the entry with ``NotImplementedError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
import wasmtime
from aiohttp import web

Obj = dict[str, Any]
Audit = list[tuple[str, frozenset[str]]]
AUDIT: web.AppKey[Audit] = web.AppKey("audit", list)
"""(object kind, its keys) for every endpoint/request/response/schema/parameter/mount seen."""
REFUSALS: web.AppKey[list[str]] = web.AppKey("refusals", list)
"""The exception behind every HTML 500 of ``/deploy``."""

INTERFACES = [  # SUP tempconfigs/wasmiot-device-description.json (wasmiot.md §2.3)
    *("millis", "delay", "print", "println", "printInt", "rpcCall", "takeImage"),
    *("takeImageDynamicSize", "takeImageStaticSize", "path_open", "fd_filestat_get", "fd_read"),
    *("fd_readdir", "fd_seek", "fd_write", "fd_close", "fd_prestat_get", "fd_prestat_dir_name"),
    *("sched_yield", "random_get", "proc_exit", "environ_sizes_get", "environ_get"),
]
SCHEMA_TYPES = ("integer", "string", "object")
FILE_TYPES = (
    *("image/png", "image/jpeg", "image/jpg", "application/octet-stream"),
    *("application/wasm", "text/html", "text/javascript"),
)
STAGES = ("deployment", "execution", "output")


def _construct(
    audit: Audit, kind: str, obj: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Obj:
    """``Kind(**obj)`` for a dataclass with these fields: TypeError where Python raises one."""
    if not isinstance(obj, dict):
        raise TypeError(f"{kind}() argument after ** must be a mapping, not {type(obj).__name__}")
    audit.append((kind, frozenset(obj)))
    for key in obj:
        if key not in required + optional:
            raise TypeError(f"{kind}.__init__() got an unexpected keyword argument {key!r}")
    for key in required:
        if key not in obj:
            raise TypeError(f"{kind}.__init__() missing 1 required positional argument: {key!r}")
    return obj


def _schema(audit: Audit, obj: Any) -> Obj:
    schema = _construct(audit, "Schema", obj, ("type",), ("format", "properties"))
    if schema["type"] not in SCHEMA_TYPES:
        raise ValueError(f"{schema['type']!r} is not a valid SchemaType")
    if schema.get("format") and schema["format"] != "binary":
        raise ValueError(f"{schema['format']!r} is not a valid SchemaFormat")
    return schema


def _media(audit: Audit, kind: str, obj: Any) -> Obj:
    media = _construct(audit, kind, obj, ("media_type", "schema"), ("encoding",))
    if isinstance(media["schema"], dict):
        _schema(audit, media["schema"])
    return media


def _endpoint(audit: Audit, obj: Any) -> Obj:
    """``Endpoint(**obj)`` with its ``__post_init__`` (request, response, schemas)."""
    endpoint = _construct(audit, "Endpoint", obj, ("url", "path", "method", "request", "response"))
    if isinstance(endpoint["request"], dict):
        request = _construct(
            audit, "EndpointRequest", endpoint["request"], ("parameters",), ("request_body",)
        )
        if isinstance(request["parameters"], list):  # plain dicts in the reference: no checks
            audit.extend(
                ("parameter", frozenset(p)) for p in request["parameters"] if isinstance(p, dict)
            )
        if isinstance(request.get("request_body"), dict):
            _media(audit, "MediaTypeObject", request["request_body"])
    if isinstance(endpoint["response"], dict):
        _media(audit, "EndpointResponse", endpoint["response"])
    return endpoint


def _link(audit: Audit, obj: Any) -> Obj | None:
    return _endpoint(audit, obj) if isinstance(obj, dict) else obj


def _mount(audit: Audit, obj: Any) -> Obj:
    required, optional = ("path", "media_type", "stage"), ("encoding", "type")
    mount = _construct(audit, "MountPathFile", obj, required, optional)
    if mount["stage"] not in STAGES:
        raise ValueError(f"{mount['stage']!r} is not a valid MountStage")
    return mount


@dataclass
class Runtime:
    """SUP's ``WasmtimeRuntime`` for one module of one deployment: WASI with the module's
    params dir preopened as ``.``, instantiated on the first call and kept across calls."""

    binary: Path
    root: Path
    store: Any = None
    instance: Any = None

    def call(self, function: str, query_values: list[str]) -> Any:
        if self.instance is None:
            engine = wasmtime.Engine()
            self.store = wasmtime.Store(engine)
            wasi = wasmtime.WasiConfig()
            wasi.inherit_stdout()
            wasi.preopen_dir(str(self.root), ".")
            self.store.set_wasi(wasi)
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            module = wasmtime.Module.from_file(engine, str(self.binary))
            self.instance = linker.instantiate(self.store, module)
        func = self.instance.exports(self.store)[function]
        kinds = [int if str(p) in ("i32", "i64") else float for p in func.type(self.store).params]
        return func(self.store, *[t(a) for a, t in zip(query_values, kinds, strict=False)])


@dataclass
class Deployment:
    runtimes: dict[str, Runtime]
    data_files: dict[str, dict[str, Path]]
    endpoints: dict[str, dict[str, Obj]]
    links: dict[str, dict[str, tuple[Obj | None, Obj | None]]]
    mounts: dict[str, dict[str, dict[str, list[Obj]]]]


@dataclass
class Entry:
    """SUP's ``RequestEntry``; serialised with sorted keys, like Flask's ``jsonify``."""

    request_id: str
    deployment_id: str
    module_name: str
    function_name: str
    method: str
    request_args: dict[str, str]
    request_files: dict[str, str]
    work_queued_at: str
    result: Any = None
    success: bool = False

    def as_json(self) -> Obj:
        return dict(sorted(asdict(self).items()))


@dataclass
class State:
    instance: Path
    deployments: dict[str, Deployment] = field(default_factory=dict)
    history: list[Entry] = field(default_factory=list)
    counters: dict[str, Iterator[int]] = field(default_factory=dict)
    queue: asyncio.Queue[Entry] = field(default_factory=asyncio.Queue)
    orchestrator_url: str | None = None


STATE: web.AppKey[State] = web.AppKey("state", State)


def _failed(message: str, status: int = 500) -> web.Response:
    return web.json_response({"status": "error", "result": message}, status=status)


def _html_500() -> web.Response:
    body = (
        "<!doctype html>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>"
    )
    return web.Response(status=500, text=body, content_type="text/html")


async def description(request: web.Request) -> web.Response:
    path = request.app[STATE].instance / "configs" / "wasmiot-device-description.json"
    doc = json.loads(path.read_text())  # missing file: 500 "by design"
    doc["platform"] = {
        "cpu": {
            "clockSpeed": {"Hz": random.uniform(1e8, 3e9)},
            "humanReadableName": random.choice(
                ["Dual-core Arm Cortex-M0+", "AMD EPYC™ Embedded 7551"]
            ),
        },
        "memory": {"bytes": random.randrange(4, 64, 4) * 1_000_000_000},
    }
    return web.json_response(doc)


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    origin = request.headers.get("X-Forwarded-For", request.remote)
    ours = origin == urlsplit(state.orchestrator_url or "").hostname
    memory = psutil.virtual_memory()
    report = {"cpuUsage": psutil.cpu_percent(interval=0), "memoryUsage": memory.used / memory.total}
    return web.json_response(report, headers={"Custom-Orchestrator-Set": str(ours).lower()})


async def register(request: web.Request) -> web.Response:
    url = (await request.json()).get("url")
    if not url:
        return _failed("No url found", 404)
    if not (urlsplit(url).scheme and urlsplit(url).netloc):
        return _failed("Orchestrator url is invalid", 404)
    request.app[STATE].orchestrator_url = url
    return web.json_response({"status": "success"})


async def deploy(request: web.Request) -> web.Response:
    try:
        data = json.loads(await request.read())
    except ValueError:
        data = None
    if not data:
        return web.json_response({"message": "Non-existent or malformed deployment data"})
    try:
        return await _deploy(request.app, data)
    except (KeyError, TypeError, ValueError, AttributeError, aiohttp.ClientError, OSError) as err:
        request.app[REFUSALS].append(f"{type(err).__name__}: {err}")
        return _html_500()


async def _deploy(app: web.Application, data: Obj) -> web.Response:
    state, audit = app[STATE], app[AUDIT]
    if not data["modules"]:
        return web.json_response({"message": "No modules listed"})
    runtimes: dict[str, Runtime] = {}
    data_files: dict[str, dict[str, Path]] = {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for module in data["modules"]:
            wanted = {"": module["urls"]["binary"], **module.get("urls", {}).get("other", {})}
            fetched: dict[str, bytes] = {}
            for name, url in wanted.items():
                async with session.get(url) as resp:
                    if not resp.ok:  # the reference's reply lists Response objects: HTML 500
                        raise ValueError(f"1 fetch failures: {url} HTTP {resp.status}")
                    fetched[name] = await resp.read()
            module["id"]  # ModuleConfig(id=module["id"], ...) needs it
            binary = state.instance / "wasm-modules" / module["name"]
            binary.parent.mkdir(parents=True, exist_ok=True)
            binary.write_bytes(fetched.pop(""))
            root = state.instance / "wasm-params" / module["name"]
            root.mkdir(parents=True, exist_ok=True)
            for name, content in fetched.items():
                (root / name).write_bytes(content)
            data_files[module["name"]] = {name: root / name for name in fetched}
            runtimes[module["name"]] = Runtime(binary, root)
    deployment_id = data["deploymentId"]
    endpoints = {
        m: {f: _endpoint(audit, obj) for f, obj in funcs.items()}
        for m, funcs in data["endpoints"].items()
    }
    links = {  # FunctionLink(from_, to)
        m: {f: (_link(audit, link["from"]), _link(audit, link["to"])) for f, link in funcs.items()}
        for m, funcs in data["instructions"]["modules"].items()
    }
    mounts = {
        m: {
            f: {stage: [_mount(audit, x) for x in items] for stage, items in stages.items()}
            for f, stages in funcs.items()
        }
        for m, funcs in data["mounts"].items()
    }
    state.deployments[deployment_id] = Deployment(runtimes, data_files, endpoints, links, mounts)
    return web.json_response({"status": "success"})


async def undeploy(request: web.Request) -> web.Response:
    if request.app[STATE].deployments.pop(request.match_info["dep"], None) is None:
        return _failed("deployment does not exist", 404)
    return web.json_response({"status": "success"})


async def run_function(request: web.Request) -> web.StreamResponse:
    state, info = request.app[STATE], request.match_info
    dep, mod, fn = info["dep"], info["mod"], info["fn"]
    if "filename" in info:
        return web.FileResponse(state.instance / "wasm-params" / mod / info["filename"])
    if dep not in state.deployments:
        return _failed("deployment does not exist", 404)
    if mod not in state.deployments[dep].runtimes:
        return _failed(f"module {mod} not found for this deployment")
    files: dict[str, str] = {}
    if request.method == "POST" and request.content_type == "multipart/form-data":
        for name, part in (await request.post()).items():
            if isinstance(part, web.FileField):
                path = state.instance / "wasm-params" / name
                path.write_bytes(part.file.read())
                files[name] = str(path)
    key = f"{dep}:{mod}:{fn}"
    counter = state.counters.setdefault(key, itertools.count(1))
    args = {k: request.query[k] for k in dict.fromkeys(request.query)}  # first value, in order
    queued = time.strftime("%a, %d %b %Y %H:%M:%S GMT")  # Flask formats naive now() as GMT
    entry = Entry(f"{key}:{next(counter)}", dep, mod, fn, request.method, args, files, queued)
    if request.method == "GET":
        await _make_history(state, entry)
    else:
        state.queue.put_nowait(entry)
    root_url = f"{request.scheme}://{request.host}/"
    return web.json_response({"resultUrl": f"{root_url}request-history/{entry.request_id}"})


async def _make_history(state: State, entry: Entry) -> None:
    try:
        entry.result = await _do_work(state, entry)
        entry.success = True
    except Exception as err:  # the reference records any failure in the entry
        entry.result, entry.success = str(err), False
    state.history.append(entry)


async def _do_work(state: State, entry: Entry) -> Any:
    deployment = state.deployments[entry.deployment_id]
    mod, fn = entry.module_name, entry.function_name
    mounts = deployment.mounts[mod][fn]
    wanted = {m["path"] for m in mounts.get("execution", [])}
    for name, path in entry.request_files.items():  # _connect_request_files_to_mounts
        if name not in wanted:
            raise ValueError(f"Unexpected input file '{name}'")
        shutil.copy(path, deployment.runtimes[mod].root / name)
    for m in [*mounts.get("deployment", []), *mounts.get("execution", [])]:
        if m["path"] not in entry.request_files and m["path"] not in deployment.data_files[mod]:
            raise ValueError(f"required input file '{m['path']}' missing")
    raw = deployment.runtimes[mod].call(fn, list(entry.request_args.values()))
    response = deployment.endpoints[mod][fn]["response"]
    if response["media_type"] in FILE_TYPES:  # the reference returns [null, [output mount]]
        raise NotImplementedError("file outputs are not modelled by this stand-in")
    if response["media_type"] != "application/json" or response["schema"]["type"] != "integer":
        raise NotImplementedError(f"Unsupported response {response}")
    value = json.dumps(raw)
    to = deployment.links[mod][fn][1]
    if to is None:
        return [value, None]
    url = f"{to['url'].rstrip('/')}{to['path']}?{to['request']['parameters'][0]['name']}={value}"
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(to["method"].upper(), url) as resp,
    ):
        return (await resp.json(content_type=None))["resultUrl"]


async def history(request: web.Request) -> web.Response:
    entries = request.app[STATE].history
    if "request_id" not in request.match_info:
        return web.json_response([e.as_json() for e in entries])
    found = [e for e in entries if e.request_id == request.match_info["request_id"]]
    if not found:
        return _failed("no matching entry in history", 404)
    return web.json_response(found[0].as_json(), status=200 if found[0].success else 500)


async def module_result(request: web.Request) -> web.FileResponse:
    info = request.match_info
    return web.FileResponse(request.app[STATE].instance / "wasm-params" / info["mod"] / info["f"])


async def wot(request: web.Request) -> web.Response:
    raise NotImplementedError  # SUP's get_wot_td(): always 500


async def _worker(app: web.Application) -> AsyncIterator[None]:
    """SUP's single FIFO worker thread for POST executions."""
    state = app[STATE]

    async def work() -> None:
        while True:
            await _make_history(state, await state.queue.get())

    task = asyncio.create_task(work(), name="reference-supervisor-worker")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def reference_supervisor_app(instance_dir: Path) -> web.Application:
    """The stand-in supervisor with its state under ``instance_dir`` (SUP's ``instance/``)."""
    config = instance_dir / "configs" / "wasmiot-device-description.json"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        template = {"platform": {}, "supervisorInterfaces": INTERFACES}
        config.write_text(json.dumps(template, indent=4))
    app = web.Application()
    app[STATE], app[AUDIT], app[REFUSALS] = State(instance_dir), [], []
    app.cleanup_ctx.append(_worker)
    r = app.router
    r.add_get("/.well-known/wasmiot-device-description", description)
    r.add_get("/.well-known/wot-thing-description", wot)
    for path in ("/health", "//health"):
        r.add_get(path, health)
    r.add_post("/register", register)
    for path in ("/deploy", "//deploy"):
        r.add_post(path, deploy)
    r.add_delete("/deploy/{dep}", undeploy)
    r.add_get("/request-history", history)
    r.add_get("/request-history/{request_id}", history)
    r.add_get("/module_results/{mod}/{f}", module_result)
    r.add_get("/{dep}/modules/{mod}/{fn}", run_function)
    r.add_post("/{dep}/modules/{mod}/{fn}", run_function)
    r.add_get("/{dep}/modules/{mod}/{fn}/{filename}", run_function)
    return app
