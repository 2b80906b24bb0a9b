"""The orchestrator's rows of the bench (issue 3, acceptance 8), each beside a same-run baseline.

- **Placement**: ``orchestrator.placement.place`` of a 10-step manifest over synthetic fleets
  (in-process, pure). Baseline: one bare pass per step over the same devices with the same
  filters (imports, health, cordon, zone, pin, one ``module.func`` per device) keeping the
  best score, with no explanations and no candidate list.
- **Deploy fan-out**: one orchestrator process and one process serving a fleet of real
  supervisor applications (``bench.fleet``); a manifest with one step pinned to each of N
  devices is POSTed with ``?wait=`` and timed until the answer says ACTIVE (pushed to and
  verified on every device). Cold: the module was never on those devices (download and
  compile). Cached: the next revisions change only a limit, so every device is pushed again
  with its blob and compiled module already there. Baseline: the same mini-manifests (built
  by the orchestrator's own ``build_nodes``) POSTed straight to every device's ``/deploy`` in
  parallel with plain aiohttp, cold (a module variant new to the devices) and cached alike.
- **Chain overhead**: a chain of fibo steps on distinct devices run through
  ``POST /deployments/{id}/executions`` against the same call made straight to the first hop
  and followed hop by hop (``?wait=`` long-polls, as the orchestrator does); samples
  alternate. Reported per hop: (orchestrated - direct) / hops.

Every process is on 127.0.0.1, mDNS is off, every request has a timeout and every process
started is stopped before its temporary directory goes.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from bench import procs
from bench.fleet import name_of
from bench.report import Row, median_ms
from orchestrator.model import (
    Constraints,
    DeviceView,
    FunctionSpec,
    Manifest,
    ModuleRecord,
    Param,
    Step,
)
from orchestrator.placement import Placement, place
from orchestrator.solution import build_nodes
from tests.conftest import ROOT, WASM_DIR

TIMEOUT = aiohttp.ClientTimeout(total=120)  # no request of the bench may hang it
READY_S = 60.0  # the fleet and the orchestrator must be up within this
WAIT_S = 60  # ?wait= for deployments
STEPS = 10  # steps of the placement manifest
PARAM = 3  # fibo(3) == 3, so a chain of fibo steps stays cheap however long it is


@dataclass(frozen=True)
class OrchestratorConfig:
    place_sizes: tuple[int, ...] = (1_000, 10_000)
    place_runs: int = 7  # timed place() calls per size (median), each beside a baseline pass
    fleet_sizes: tuple[int, ...] = (10, 50, 100)
    cached_runs: int = 3  # cached (warm) deploys per size (median), alternating with direct
    hops: int = 3
    chain_pairs: int = 200  # orchestrated and direct chain samples each, alternating
    chain_warmup: int = 20


# --- placement ------------------------------------------------------------------------------

WASI = "wasi_snapshot_preview1"
_KINDS: tuple[frozenset[str], ...] = (
    frozenset({"fd_write", "proc_exit", "random_get"}),
    frozenset({"fd_write", "proc_exit", "random_get", "takeImageDynamicSize"}),
    frozenset({"fd_write", "proc_exit", "random_get", "readTemperature", "readHumidity"}),
    frozenset(
        {
            "fd_write", "proc_exit", "random_get", "takeImageDynamicSize",
            "readTemperature", "readHumidity",
        }
    ),
)  # fmt: skip
ZONES = ("north", "south", "east", "west", "lab")


def synthetic_devices(count: int, seed: int = 3) -> list[DeviceView]:
    """A mixed fleet: four kinds of device, zones, labels, load, a few lost and cordoned."""
    rng = random.Random(seed)
    return [
        DeviceView(
            id=f"dev{i:06d}",
            name=f"node-{i}",
            interfaces=_KINDS[i % len(_KINDS)],
            labels={"site": f"site{i % 7}", "tier": "edge" if i % 3 else "gateway"},
            zone=ZONES[i % len(ZONES)],
            status="lost" if rng.random() < 0.02 else "healthy",
            cordoned=rng.random() < 0.01,
            cpu=rng.random(),
            memory=rng.random(),
            rtt_ms=rng.uniform(0.3, 40.0),
            deployments=rng.randrange(6),
        )
        for i in range(count)
    ]


def _record(name: str, imports: Sequence[str], funcs: Sequence[str]) -> ModuleRecord:
    host = [("camera" if n.startswith("take") else "sensors", n) for n in imports]
    host += [(WASI, n) for n in ("fd_write", "proc_exit")]
    return ModuleRecord(
        name=name,
        version="1",
        digest=hashlib.sha256(name.encode()).hexdigest(),
        imports=host,
        exports=dict.fromkeys(funcs, 1),
        functions={f: FunctionSpec(f, [Param("x")]) for f in funcs},
    )


SYNTHETIC_MODULES: dict[str, ModuleRecord] = {
    "filter": _record("filter", [], ["smooth", "threshold"]),
    "camera": _record("camera", ["takeImageDynamicSize"], ["snap"]),
    "sensors": _record("sensors", ["readTemperature", "readHumidity"], ["comfort"]),
    "stats": _record("stats", [], ["mean", "peak"]),
}


def synthetic_manifest(pin: str) -> Manifest:
    """Ten steps: repeated functions (each needs another device), host imports, one pin."""
    steps = [
        Step("camera", "snap"),
        Step("filter", "smooth"),
        Step("filter", "threshold"),
        Step("sensors", "comfort"),
        Step("stats", "mean"),
        Step("filter", "smooth"),
        Step("camera", "snap"),
        Step("stats", "peak", device=pin),
        Step("sensors", "comfort"),
        Step("stats", "mean"),
    ]
    assert len(steps) == STEPS
    return Manifest(
        name="bench-placement",
        sequence=steps,
        constraints=Constraints(labels={"tier": "edge"}, zones=["north", "south", "east", "lab"]),
    )


def scan_baseline(
    manifest: Manifest, modules: dict[str, ModuleRecord], devices: Sequence[DeviceView]
) -> list[str]:
    """The least a placer that looks at every device does: filter and keep the best score."""
    labels = manifest.constraints.labels.items()
    zones = set(manifest.constraints.zones)
    taken: set[tuple[str, str, str]] = set()
    chosen: list[str] = []
    for step in manifest.sequence:
        record = modules[step.module]
        needed = record.host_imports()
        best: DeviceView | None = None
        best_score = -1e300
        for d in devices:
            if (
                d.status != "healthy"
                or d.cordoned
                or (zones and d.zone not in zones)
                or not needed <= d.interfaces
                or (step.device is not None and step.device not in (d.id, d.name))
                or (record.name, step.func, d.id) in taken
                or any(d.labels.get(k) != v for k, v in labels)
            ):
                continue
            score = 2.0 - d.cpu - d.memory - 0.25 * d.deployments
            if score > best_score:
                best, best_score = d, score
        if best is None:
            raise RuntimeError(f"baseline scan found no device for {step}")
        taken.add((record.name, step.func, best.id))
        chosen.append(best.id)
    return chosen


def placement_rows(cfg: OrchestratorConfig) -> list[Row]:
    rows = []
    for size in cfg.place_sizes:
        devices = synthetic_devices(size)
        # Pin to an eligible device in the middle of the fleet (not the first one a scan meets).
        pin = next(
            d.name
            for d in itertools.chain(devices[size // 2 :], devices)
            if d.status == "healthy" and not d.cordoned and d.labels["tier"] == "edge"
            and d.zone != "west"
        )  # fmt: skip
        manifest = synthetic_manifest(pin)
        placed, scanned = [], []
        for _ in range(max(1, cfg.place_runs)):
            gc.collect()
            began = time.perf_counter()
            result = place(manifest, SYNTHETIC_MODULES, devices)
            placed.append(time.perf_counter() - began)
            if not isinstance(result, Placement):
                raise RuntimeError(f"synthetic manifest infeasible over {size} devices")
            gc.collect()
            began = time.perf_counter()
            scan_baseline(manifest, SYNTHETIC_MODULES, devices)
            scanned.append(time.perf_counter() - began)
        at_10k = size == 10_000
        rows.append(
            Row(
                f"orchestrator: place {STEPS} steps over {size:,} devices, median",
                median_ms(placed),
                median_ms(scanned),
                "one filter + best-score pass per step, no explanations",
                "ms",
                "≤ 100 ms" if at_10k else "—",
                (lambda v, _r: v <= 100) if at_10k else None,
            )
        )
    return rows


# --- processes --------------------------------------------------------------------------------


def fibo_variant(tag: str) -> bytes:
    """fibo.wasm with a custom section naming ``tag``: same code, a digest no device has."""
    payload = bytes([5]) + b"bench" + tag.encode()
    assert len(payload) < 128  # a one-byte LEB128 size
    return (WASM_DIR / "fibo.wasm").read_bytes() + bytes([0, len(payload)]) + payload


class Fleet:
    """``count`` supervisors in one process (``python -m bench.fleet supervisors``)."""

    def __init__(self, tmp: Path, count: int) -> None:
        self.ready = tmp / "fleet-ports.json"
        argv = [
            sys.executable, "-m", "bench.fleet", "supervisors",
            str(tmp / "fleet"), str(count), str(self.ready),
        ]  # fmt: skip
        self.proc = procs.ServerProcess(argv, 0, tmp / "fleet.log")
        self.ports: list[int] = []

    async def start(self) -> None:
        self.proc.spawn()
        deadline = time.perf_counter() + READY_S
        while not self.ready.exists():
            assert self.proc.proc is not None
            if self.proc.proc.poll() is not None:
                raise RuntimeError(f"the fleet exited: {self.proc.tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the fleet was not up within {READY_S:g} s")
            await asyncio.sleep(0.02)
        self.ports = [int(p) for p in json.loads(self.ready.read_text(encoding="utf-8"))]


@dataclass
class Api:
    """The orchestrator's REST API as the bench uses it; every error answer raises."""

    url: str
    session: aiohttp.ClientSession
    state_file: Path  # the orchestrator's state file, to report its size

    def state_mb(self) -> float:
        return self.state_file.stat().st_size / 1e6 if self.state_file.exists() else 0.0

    async def call(self, method: str, path: str, ok: Sequence[int], **kwargs: Any) -> Any:
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            body = await resp.json(content_type=None)
            if resp.status not in ok:
                raise RuntimeError(f"{method} {path} answered HTTP {resp.status}: {body}")
            return body

    async def deploy(self, manifest: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Seconds from POST until the answer (with the revision ACTIVE), and the answer."""
        began = time.perf_counter()
        body = await self.call("POST", f"/deployments?wait={WAIT_S}", (201, 202), json=manifest)
        elapsed = time.perf_counter() - began
        if body.get("state") != "ACTIVE":
            raise RuntimeError(f"deployment {manifest['name']} is {body.get('state')}: {body}")
        return elapsed, dict(body)

    async def push_module(self, name: str, wasm: bytes) -> None:
        form = aiohttp.FormData()
        form.add_field("name", name)
        form.add_field("version", "1")
        form.add_field("wasm", wasm, filename=f"{name}.wasm")
        described = (ROOT / "modules" / "fibo" / "functions.json").read_bytes()
        form.add_field("functions", described, filename="functions.json")
        await self.call("POST", "/modules", (200, 201), data=form)

    async def record(self, name: str) -> ModuleRecord:
        return msgspec.convert(await self.call("GET", f"/modules/{name}", (200,)), ModuleRecord)


async def _gather_limited(jobs: Sequence[Callable[[], Awaitable[Any]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(run(j) for j in jobs))


# --- deploy fan-out ---------------------------------------------------------------------------


def fanout_manifest(name: str, module: str, n: int, timeout_ms: int | None) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "name": name,
        "sequence": [{"module": module, "func": "fibo", "device": name_of(i)} for i in range(n)],
    }
    if timeout_ms is not None:
        manifest["limits"] = {f"{module}.fibo": {"timeoutMs": timeout_ms}}
    return manifest


@dataclass
class Direct:
    """Pushes the orchestrator's own mini-manifests straight to the devices, in parallel."""

    api: Api
    ids: dict[str, str]  # device name -> id
    urls: dict[str, str]  # device id -> url

    async def deploy(self, manifest: dict[str, Any], record: ModuleRecord) -> float:
        parsed = msgspec.convert(manifest, Manifest)
        devices = [self.ids[str(s.device)] for s in parsed.sequence]
        nodes = build_nodes(
            parsed.name,
            parsed,
            devices,
            {record.name: record},
            self.urls,
            lambda digest: f"{self.api.url}/blobs/{digest}",
        )
        bodies = {d: msgspec.json.encode(msgspec.to_builtins(n)) for d, n in nodes.items()}
        session = self.api.session

        async def push(device: str, body: bytes) -> None:
            async with session.post(
                f"{self.urls[device]}/deploy",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 200 or answer.get("status") != "success":
                    raise RuntimeError(f"direct deploy to {device}: HTTP {resp.status} {answer}")

        began = time.perf_counter()
        await asyncio.gather(*(push(d, b) for d, b in bodies.items()))
        return time.perf_counter() - began

    async def remove(self, deployment: str) -> None:
        """Take ``deployment`` off every device that has it (404s are fine)."""

        async def one(url: str) -> None:
            async with self.api.session.delete(f"{url}/deploy/{deployment}") as resp:
                await resp.read()
                if resp.status not in (200, 404):
                    raise RuntimeError(f"DELETE {deployment} on {url}: HTTP {resp.status}")

        await asyncio.gather(*(one(url) for url in self.urls.values()))


@dataclass
class Fanout:
    cold: float
    cold_direct: float
    cached: list[float]
    cached_direct: list[float]
    timings: dict[str, float]  # the orchestrator's plan step timings of the last cached deploy
    state_mb: list[float]  # the orchestrator's state file after each cached deploy


async def fanout(api: Api, direct: Direct, n: int, runs: int) -> Fanout:
    ours, theirs = f"fibo-o{n}", f"fibo-d{n}"
    await api.push_module(ours, fibo_variant(ours))
    await api.push_module(theirs, fibo_variant(theirs))
    record = await api.record(theirs)
    cold, _ = await api.deploy(fanout_manifest(f"fanout{n}", ours, n, None))
    cold_direct = await direct.deploy(fanout_manifest(f"direct{n}", theirs, n, None), record)
    cached: list[float] = []
    cached_direct: list[float] = []
    timings: dict[str, float] = {}
    body: dict[str, Any] = {}
    state_mb: list[float] = []
    for k in range(max(1, runs)):
        took, body = await api.deploy(fanout_manifest(f"fanout{n}", ours, n, 5000 + k))
        cached.append(took)
        state_mb.append(api.state_mb())
        timings = dict(body.get("timings") or {})
        cached_direct.append(
            await direct.deploy(fanout_manifest(f"direct{n}", theirs, n, 5000 + k), record)
        )
    # Untimed clean-up, so every size starts from the same state: the orchestrator persists
    # each deployment with all its revisions, and that cost grows with them (see the notes).
    await api.call("DELETE", f"/deployments/{body['id']}", (200,))
    await direct.remove(f"direct{n}")
    return Fanout(cold, cold_direct, cached, cached_direct, timings, state_mb)


# --- chain ------------------------------------------------------------------------------------


async def _entry(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url, params={"wait": "10"}) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200 or not isinstance(body, dict) or not body.get("success"):
            raise RuntimeError(f"GET {url} answered HTTP {resp.status}: {body}")
        return body


async def direct_chain(session: aiohttp.ClientSession, call_url: str, hops: int) -> float:
    """Call the first hop, then read each hop's final entry and follow it, as executions do."""
    began = time.perf_counter()
    async with session.get(call_url, params={"param0": str(PARAM)}) as resp:
        url: str | None = str((await resp.json(content_type=None))["resultUrl"])
    seen = 0
    entry: dict[str, Any] = {}
    while url is not None:
        entry = await _entry(session, url)
        seen += 1
        result = entry.get("result")
        nxt = entry.get("next") or (
            result if isinstance(result, str) and result.startswith("http") else None
        )
        url = str(nxt) if nxt else None
    elapsed = time.perf_counter() - began
    if seen != hops or entry.get("value") != PARAM:
        raise RuntimeError(f"direct chain: {seen} hops, last entry {entry}")
    return elapsed


async def orchestrated_chain(api: Api, dep: str, hops: int) -> float:
    began = time.perf_counter()
    body = await api.call("POST", f"/deployments/{dep}/executions", (200,), json={"param0": PARAM})
    elapsed = time.perf_counter() - began
    if body.get("value") != PARAM or len(body.get("trace") or []) != hops:
        raise RuntimeError(f"orchestrated chain answered {body}")
    return elapsed


async def chain(api: Api, cfg: OrchestratorConfig) -> tuple[list[float], list[float]]:
    _, dep = await api.deploy(fanout_manifest("chain", "fibo", cfg.hops, None))
    first = dep["placement"]["steps"][0]["device"]
    devices = await api.call("GET", "/devices", (200,))
    url = next(d["url"] for d in devices if d["id"] == first)
    call_url = f"{url.rstrip('/')}/{dep['id']}/modules/fibo/fibo"
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(cfg.chain_warmup + max(1, cfg.chain_pairs)):
        a = await orchestrated_chain(api, dep["id"], cfg.hops)
        b = await direct_chain(api.session, call_url, cfg.hops)
        if i >= cfg.chain_warmup:
            ours.append(a)
            theirs.append(b)
    return ours, theirs


# --- the whole run ----------------------------------------------------------------------------


async def run_orchestrator_bench(cfg: OrchestratorConfig) -> tuple[list[Row], str]:
    """Every orchestrator row and a note on the settings and on how deploys grow with N."""
    rows = placement_rows(cfg)
    count = max([*cfg.fleet_sizes, cfg.hops])
    with tempfile.TemporaryDirectory(prefix="baton-bench-orch-", ignore_cleanup_errors=True) as t:
        tmp = Path(t)
        fleet = Fleet(tmp, count)
        port = procs.free_port()
        orch = procs.ServerProcess(
            [sys.executable, "-m", "bench.fleet", "orchestrator", str(tmp / "orch"), str(port)],
            port,
            tmp / "orchestrator.log",
        )
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                await fleet.start()
                await orch.start(session, limit_s=READY_S)
                api = Api(orch.url, session, tmp / "orch" / "state.json")
                more, notes = await _measure(cfg, api, fleet)
        finally:
            orch.stop()
            fleet.proc.stop()
    return rows + more, notes


async def _measure(cfg: OrchestratorConfig, api: Api, fleet: Fleet) -> tuple[list[Row], str]:
    register = [
        partial(api.call, "POST", "/devices", (201,), json={"host": "127.0.0.1", "port": p})
        for p in fleet.ports
    ]
    await _gather_limited(register, 16)
    devices = await api.call("GET", "/devices", (200,))
    direct = Direct(
        api, {d["name"]: d["id"] for d in devices}, {d["id"]: d["url"] for d in devices}
    )
    await api.push_module("fibo", (WASM_DIR / "fibo.wasm").read_bytes())

    rows: list[Row] = []
    results: dict[int, Fanout] = {}
    for n in cfg.fleet_sizes:
        got = results[n] = await fanout(api, direct, n, cfg.cached_runs)
        rows.append(
            Row(f"orchestrator: deploy to {n} supervisors, cold", got.cold * 1000,
                got.cold_direct * 1000, "same mini-manifests POSTed to each /deploy in "
                "parallel, module new to the devices", "ms")
        )  # fmt: skip
        at_100 = n == 100
        rows.append(
            Row(f"orchestrator: deploy to {n} supervisors, modules cached, median",
                median_ms(got.cached), median_ms(got.cached_direct),
                "same mini-manifests POSTed to each /deploy in parallel, modules cached", "ms",
                "≤ 2 s" if at_100 else "—", (lambda v, _r: v <= 2000) if at_100 else None)
        )  # fmt: skip
    growth = ""
    if len(cfg.fleet_sizes) >= 2:
        lo, hi = min(cfg.fleet_sizes), max(cfg.fleet_sizes)

        def slope(pick: Callable[[Fanout], list[float]]) -> float:
            return (median_ms(pick(results[hi])) - median_ms(pick(results[lo]))) / (hi - lo)

        rows.append(
            Row(f"orchestrator: cached deploy, added time per extra supervisor ({lo}→{hi})",
                slope(lambda f: f.cached), slope(lambda f: f.cached_direct),
                "same slope for the direct parallel POSTs", "ms")
        )  # fmt: skip
        growth = "; ".join(
            f"N={n}: {median_ms(f.cached):.0f} ms cached ({median_ms(f.cached) / n:.1f} ms per "
            f"supervisor) vs direct {median_ms(f.cached_direct):.0f} ms, cold "
            f"{f.cold * 1000:.0f} ms vs direct {f.cold_direct * 1000:.0f} ms"
            for n, f in sorted(results.items())
        )
    biggest = results[max(cfg.fleet_sizes)]
    pushes = [v for k, v in biggest.timings.items() if k.startswith("push:")]
    verifies = [v for k, v in biggest.timings.items() if k.startswith("verify:")]
    by_revision = ", ".join(
        f"revision {k + 2}: {t * 1000:.0f} ms with a {mb:.2f} MB state file"
        for k, (t, mb) in enumerate(zip(biggest.cached, biggest.state_mb, strict=True))
    )
    breakdown = (
        f"Cached deploys to {max(cfg.fleet_sizes)} by revision: {by_revision}; in the last one "
        f"the orchestrator's own step timings were slowest push "
        f"{max(pushes, default=0) * 1000:.0f} ms, slowest verify "
        f"{max(verifies, default=0) * 1000:.0f} ms. Each size's deployments are removed "
        "(untimed) before the next size."
    )

    ours, theirs = await chain(api, cfg)
    hops = cfg.hops
    rows.append(
        Row(f"orchestrator: chain overhead per hop ({hops} hops), median",
            (median_ms(ours) - median_ms(theirs)) / hops, median_ms(theirs) / hops,
            "direct call + follow of the same chain, per hop", "ms", "≤ 1 ms",
            lambda v, _r: v <= 1)
    )  # fmt: skip
    notes = (
        f"Orchestrator rows: placement median of {cfg.place_runs} place() calls on synthetic "
        f"fleets (4 device kinds, labels, zones, ~2% lost, ~1% cordoned; one step pinned). "
        f"Fan-out: {len(fleet.ports)} real supervisor apps in one process (bench.fleet) and "
        f"the orchestrator in another (reconcile interval {3600} s so it leaves the direct "
        f"baseline's deployments alone; health checks at the default 5 s); one step pinned per "
        f"device, POST /deployments?wait={WAIT_S} until ACTIVE (push + verify on every device); "
        f"cold = 1 sample, cached = median of {cfg.cached_runs} revisions changing one limit. "
        f"Growth: {growth or 'one size only'}. {breakdown} Chain: fibo(param0={PARAM}) over "
        f"{hops} devices of the fleet, {cfg.chain_pairs} orchestrated executions alternating "
        f"with direct call+follow after {cfg.chain_warmup} warm-up; orchestrated median "
        f"{median_ms(ours):.2f} ms, direct {median_ms(theirs):.2f} ms."
    )
    return rows, notes


def expected_metrics(cfg: OrchestratorConfig) -> set[str]:
    """The metric names ``run_orchestrator_bench(cfg)`` reports."""
    names = {
        f"orchestrator: place {STEPS} steps over {n:,} devices, median" for n in cfg.place_sizes
    }
    for n in cfg.fleet_sizes:
        names.add(f"orchestrator: deploy to {n} supervisors, cold")
        names.add(f"orchestrator: deploy to {n} supervisors, modules cached, median")
    if len(cfg.fleet_sizes) >= 2:
        lo, hi = min(cfg.fleet_sizes), max(cfg.fleet_sizes)
        names.add(f"orchestrator: cached deploy, added time per extra supervisor ({lo}→{hi})")
    names.add(f"orchestrator: chain overhead per hop ({cfg.hops} hops), median")
    return names
