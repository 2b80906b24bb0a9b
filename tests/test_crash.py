"""Crash safety of the real daemon: kill -9 mid-deploy, graceful SIGTERM, restart offline.

Every test runs ``python -m supervisor`` as a subprocess on 127.0.0.1 and kills or stops it with
real signals. The kill -9 test is randomised: set ``BATON_CRASH_SEED`` to replay a failure (the
seed is printed, and repeated in every assertion message).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supervisor import protocol
from supervisor.config import Settings
from supervisor.protocol import DeploymentNode
from tests.conftest import WASM_DIR
from tests.stack import ServerFactory
from tests.support import (
    Step,
    SupervisorProcess,
    default_files,
    file_server_app,
    mini_manifest,
    prefix_step,
    sha256_of,
    upload,
)

SEED_ENV = "BATON_CRASH_SEED"
ROUNDS = 20
KILL_WINDOW_S = 0.150  # the SIGKILL lands 0..150 ms after the first deploy of a round is sent
MAX_DEPLOYS_PER_LANE = 8  # per deployment id and round, sent one after the other
VARIANTS = 4  # contents per deployment id: different limits, and for textfile a data file
FIBO_IDS = tuple(f"fibo-{i}" for i in range(5))
TEXT_IDS = tuple(f"text-{i}" for i in range(3))
ALT_PREFIX = b"## "
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)


@pytest.fixture
async def supervisors() -> AsyncIterator[list[SupervisorProcess]]:
    """Every supervisor a test starts is appended here and SIGKILLed at teardown."""
    started: list[SupervisorProcess] = []
    yield started
    for sup in started:
        sup.kill()


@pytest.fixture
def alt_prefix(tmp_path: Path) -> Path:
    path = tmp_path / "prefix-alt.txt"
    path.write_bytes(ALT_PREFIX)
    return path


def fibo_steps(timeout_ms: int = 2000) -> list[Step]:
    return [Step("fibo", "fibo", [("param0", "integer")], limits={"timeoutMs": timeout_ms})]


def limited_prefix_step(timeout_ms: int = 2000) -> Step:
    return prefix_step(limits={"timeoutMs": timeout_ms})


def variant_node(dep_id: str, variant: int, device_url: str, files_url: str) -> dict[str, Any]:
    """Content ``variant`` of ``dep_id``: limits differ per variant; odd textfiles use ``## ``."""
    timeout_ms = 2000 + 100 * variant
    if dep_id in FIBO_IDS:
        return mini_manifest(dep_id, device_url, files_url, fibo_steps(timeout_ms))
    data = "prefix-alt.txt" if variant % 2 else "prefix.txt"
    return mini_manifest(
        dep_id,
        device_url,
        files_url,
        [limited_prefix_step(timeout_ms)],
        data_files={"textfile": {"prefix.txt": data}},
    )


def expected_prefix(variant: int) -> bytes:
    return ALT_PREFIX if variant % 2 else b">> "


def predicted_digest(node: dict[str, Any]) -> str:
    """The digest the daemon will report for ``node`` (checked against every 200 it sends)."""
    return "sha256:" + protocol.node_digest(
        protocol.decode(json.dumps(node).encode(), DeploymentNode)
    )


async def call_fibo(session: aiohttp.ClientSession, url: str, dep_id: str, n: int) -> Any:
    async with session.get(
        f"{url}/{dep_id}/modules/fibo/fibo",
        params={"param0": str(n), "wait": "5"},
        timeout=HTTP_TIMEOUT,
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, (dep_id, body)
        return body["value"]


async def call_prefix(session: aiohttp.ClientSession, url: str, dep_id: str, text: bytes) -> bytes:
    form = upload("input.txt", text)
    async with session.post(
        f"{url}/{dep_id}/modules/textfile/prefix?wait=5", data=form, timeout=HTTP_TIMEOUT
    ) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["success"] is True, (dep_id, body)
    async with session.get(body["outputs"][0], timeout=HTTP_TIMEOUT) as resp:
        assert resp.status == 200, (dep_id, await resp.text())
        return await resp.read()


async def listing(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(f"{url}/deploy", timeout=HTTP_TIMEOUT) as resp:
        assert resp.status == 200
        deployments: list[dict[str, Any]] = (await resp.json())["deployments"]
    ids = [d["deploymentId"] for d in deployments]
    assert len(ids) == len(set(ids)), f"duplicate deployment ids in GET /deploy: {ids}"
    return deployments


def read_state(state_dir: Path) -> dict[str, Any]:
    """The raw state file, parsed without the daemon's help: it must never be corrupt."""
    text = (state_dir / "state.json").read_text(encoding="utf-8")
    try:
        state: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as err:
        raise AssertionError(f"state.json is corrupt ({err}): {text[:500]!r}") from err
    return state


def stored_digests(state: dict[str, Any]) -> dict[str, str]:
    """deployment id -> "sha256:<digest>" from the raw state file, refusing duplicate ids."""
    docs = list(state.get("deployments", {}).values())
    ids = [doc["id"] for doc in docs]
    assert len(ids) == len(set(ids)), f"duplicate deployment ids in state.json: {ids}"
    return {doc["id"]: f"sha256:{doc['digest']}" for doc in docs}


def referenced_blobs(state: dict[str, Any]) -> set[str]:
    """Every blob (module binary or data file) a deployment in the raw state file needs."""
    blobs: set[str] = set()
    for doc in state.get("deployments", {}).values():
        blobs.update(doc["blobs"].values())
        for mounts in doc["files"].values():
            blobs.update(mounts.values())
    return blobs


async def wait_for_exit(sup: SupervisorProcess, timeout: float) -> int:
    assert sup.proc is not None
    return await asyncio.to_thread(sup.proc.wait, timeout)


@dataclass
class Round:
    """What one round of concurrent deploys saw before and at the SIGKILL."""

    acked: dict[str, list[str]] = field(default_factory=dict)  # id -> digests, in ack order
    in_flight: dict[str, str] = field(default_factory=dict)  # id -> digest sent, not answered
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0


async def deploy_lane(
    session: aiohttp.ClientSession,
    sup: SupervisorProcess,
    files_url: str,
    dep_id: str,
    variants: list[int],
    state: Round,
    first_sent: asyncio.Event,
) -> None:
    """Deploy ``dep_id`` once per variant, one after the other, until the SIGKILL."""
    for variant in variants:
        if state.killed.is_set():
            return
        node = variant_node(dep_id, variant, sup.url, files_url)
        digest = predicted_digest(node)
        state.in_flight[dep_id] = digest
        state.sent += 1
        first_sent.set()
        try:
            async with session.post(f"{sup.url}/deploy", json=node, timeout=HTTP_TIMEOUT) as resp:
                status, text = resp.status, await resp.text()
        except aiohttp.ClientConnectionError:
            assert state.killed.is_set(), f"deploy of {dep_id} lost its connection before the kill"
            return  # stays in flight: it may or may not have been installed
        assert status == 200, f"deploy of {dep_id} variant {variant}: {status} {text}"
        body = json.loads(text)
        assert body["deploymentId"] == dep_id and body["digest"] == digest, body
        state.acked.setdefault(dep_id, []).append(digest)
        del state.in_flight[dep_id]


async def kill_after(
    sup: SupervisorProcess, delay: float, state: Round, first_sent: asyncio.Event
) -> None:
    await asyncio.wait_for(first_sent.wait(), timeout=10)
    await asyncio.sleep(delay)  # the chaos parameter, not a synchronisation
    state.killed.set()
    sup.kill()


async def check_restored(
    session: aiohttp.ClientSession,
    sup: SupervisorProcess,
    committed: dict[str, str],
    last: Round,
    on_disk: dict[str, str],
    needed: set[str],
    variant_of: dict[str, int],
    where: str,
) -> None:
    """After a restart: every acknowledged deployment is back, ready, and serves calls."""
    deployments = await listing(session, sup.url)
    listed = {d["deploymentId"]: d for d in deployments}
    failed = [d for d in deployments if d["status"] != "ready"]
    assert not failed, f"{where}: deployments not ready after restart: {failed}"
    assert {i: d["digest"] for i, d in listed.items()} == on_disk, (
        f"{where}: GET /deploy disagrees with state.json: {listed} vs {on_disk}"
    )
    for dep_id in sorted(set(committed) | set(last.acked) | set(last.in_flight)):
        acks = last.acked.get(dep_id, [])
        acknowledged = acks[-1] if acks else committed.get(dep_id)
        acceptable = {d for d in (acknowledged, last.in_flight.get(dep_id)) if d is not None}
        if acknowledged is not None:
            assert dep_id in listed, f"{where}: acknowledged deployment {dep_id} is lost"
        if dep_id in listed:
            assert listed[dep_id]["digest"] in acceptable, (
                f"{where}: {dep_id} has digest {listed[dep_id]['digest']}, acknowledged "
                f"{acks or acknowledged}, in flight {last.in_flight.get(dep_id)}"
            )
    assert set(listed) <= set(FIBO_IDS) | set(TEXT_IDS), f"{where}: unknown ids {set(listed)}"
    blobs = {p.name for p in (sup.state_dir / "blobs").iterdir()}
    assert blobs == needed, f"{where}: blobs on disk {blobs}, referenced {needed}"
    committed.clear()
    committed.update({i: d["digest"] for i, d in listed.items()})
    for dep_id, digest in sorted(committed.items()):
        if dep_id in FIBO_IDS:
            assert await call_fibo(session, sup.url, dep_id, 10) == 89, f"{where}: {dep_id}"
        else:
            out = await call_prefix(session, sup.url, dep_id, b"data")
            assert out == expected_prefix(variant_of[digest]) + b"data", f"{where}: {dep_id}"


async def test_kill_9_during_deploys_loses_no_acknowledged_deployment(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    alt_prefix: Path,
    supervisors: list[SupervisorProcess],
) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"kill -9 test seed: {seed} (replay with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    files = await aiohttp_server(
        file_server_app({**default_files(), alt_prefix.name: alt_prefix}), host="127.0.0.1"
    )
    files_url = str(files.make_url("")).rstrip("/")
    state_dir = tmp_path / "state"
    sup = SupervisorProcess(state_dir, name="crash")
    supervisors.append(sup)
    variant_of = {
        predicted_digest(variant_node(i, v, sup.url, files_url)): v
        for i in FIBO_IDS + TEXT_IDS
        for v in range(VARIANTS)
    }
    committed: dict[str, str] = {}  # id -> digest the daemon must still have
    last = Round()
    on_disk: dict[str, str] = {}
    needed: set[str] = set()
    acks = in_flight_at_kill = 0
    started = time.monotonic()
    for number in range(ROUNDS + 1):
        where = f"seed {seed}, round {number}"
        sup.start()
        await sup.wait_healthy()
        async with aiohttp.ClientSession() as session:
            await check_restored(session, sup, committed, last, on_disk, needed, variant_of, where)
            if number == ROUNDS:
                break
            last = Round()
            first_sent = asyncio.Event()
            ids = rng.sample(FIBO_IDS + TEXT_IDS, rng.randint(3, 6))
            lanes = [
                deploy_lane(
                    session,
                    sup,
                    files_url,
                    dep_id,
                    [rng.randrange(VARIANTS) for _ in range(MAX_DEPLOYS_PER_LANE)],
                    last,
                    first_sent,
                )
                for dep_id in ids
            ]
            delay = rng.uniform(0, KILL_WINDOW_S)
            await asyncio.gather(kill_after(sup, delay, last, first_sent), *lanes)
        acks += sum(len(a) for a in last.acked.values())
        in_flight_at_kill += len(last.in_flight)
        state = read_state(state_dir)
        on_disk, needed = stored_digests(state), referenced_blobs(state)
    assert sup.terminate() == 0
    elapsed = time.monotonic() - started
    print(
        f"survived {ROUNDS} kills in {elapsed:.1f}s: {acks} acknowledged deploys, "
        f"{in_flight_at_kill} in flight at a kill, {len(committed)} deployments at the end"
    )
    assert acks > 0, f"seed {seed}: no deploy was acknowledged before a kill; nothing was tested"
    assert "Traceback" not in sup.log.read_text(), sup.log.read_text()[-3000:]


async def test_sigterm_stops_gracefully(
    aiohttp_server: ServerFactory, tmp_path: Path, supervisors: list[SupervisorProcess]
) -> None:
    files = await aiohttp_server(file_server_app(default_files()), host="127.0.0.1")
    files_url = str(files.make_url("")).rstrip("/")
    state_dir = tmp_path / "state"
    sup = SupervisorProcess(state_dir, name="graceful")
    supervisors.append(sup)
    sup.start()
    await sup.wait_healthy()
    steps = [Step("spin", "spin", limits={"timeoutMs": 1500}), *fibo_steps()]
    node = mini_manifest("spinner", sup.url, files_url, steps)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sup.url}/deploy", json=node, timeout=HTTP_TIMEOUT) as resp:
            assert resp.status == 200, await resp.text()

        async def spin() -> tuple[int, dict[str, Any]]:
            async with session.get(
                f"{sup.url}/spinner/modules/spin/spin", params={"wait": "5"}, timeout=HTTP_TIMEOUT
            ) as resp:
                return resp.status, dict(await resp.json())

        spinning = asyncio.create_task(spin())
        deadline = time.monotonic() + 5
        while True:  # wait until the guest really spins
            async with session.get(f"{sup.url}/metrics", timeout=HTTP_TIMEOUT) as resp:
                if "baton_calls_in_flight 1" in await resp.text():
                    break
            assert time.monotonic() < deadline, "the spin call never started"
            await asyncio.sleep(0.02)

        outcomes: list[str] = []
        first_answer = asyncio.Event()

        async def fast_calls() -> None:
            """fibo calls back to back until the daemon stops answering (bounded)."""
            for _ in range(2000):
                try:
                    async with session.get(
                        f"{sup.url}/spinner/modules/fibo/fibo",
                        params={"param0": "10", "wait": "5"},
                        timeout=HTTP_TIMEOUT,
                    ) as resp:
                        body = await resp.json()
                except aiohttp.ClientConnectionError:
                    outcomes.append("connection closed")
                    return
                first_answer.set()
                if resp.status == 200:
                    assert body["value"] == 89, body
                    outcomes.append("ok")
                else:  # a clean refusal: a problem body, never a traceback
                    assert resp.status >= 500 and body["status"] == "error", body
                    outcomes.append(f"refused {resp.status}: {body['result']}")
            raise AssertionError("the daemon kept answering calls after SIGTERM")

        calling = asyncio.create_task(fast_calls())
        await asyncio.wait_for(first_answer.wait(), timeout=10)
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        shutdown_timeout = Settings(state_dir=state_dir).shutdown_timeout_s
        code = await wait_for_exit(sup, shutdown_timeout + 5)
        took = time.monotonic() - stopping
        await calling
        spin_status, spin_entry = await spinning
    print(f"SIGTERM → exit {code} in {took:.2f}s; spin {spin_status}; fast calls {outcomes[-3:]}")
    assert code == 0, sup.log.read_text()[-3000:]
    assert took < shutdown_timeout, f"shutdown took {took:.1f}s"
    # The spinning call was let finish: its guest hit its own 1.5 s deadline.
    assert spin_status == 200 and spin_entry["status"] == "failed", spin_entry
    assert spin_entry["error"]["kind"] == "timeout", spin_entry
    assert "spinner" in stored_digests(read_state(state_dir))

    sup.start()
    await sup.wait_healthy()
    async with aiohttp.ClientSession() as session:
        assert [d["deploymentId"] for d in await listing(session, sup.url)] == ["spinner"]
        assert await call_fibo(session, sup.url, "spinner", 10) == 89
    assert sup.terminate() == 0
    assert "Traceback" not in sup.log.read_text(), sup.log.read_text()[-3000:]


async def test_restart_restores_without_orchestrator(
    aiohttp_server: ServerFactory, tmp_path: Path, supervisors: list[SupervisorProcess]
) -> None:
    files = await aiohttp_server(file_server_app(default_files()), host="127.0.0.1")
    files_url = str(files.make_url("")).rstrip("/")
    state_dir = tmp_path / "state"
    sup = SupervisorProcess(state_dir, name="offline")
    supervisors.append(sup)
    sup.start()
    await sup.wait_healthy()
    nodes = [
        mini_manifest("keep-fibo", sup.url, files_url, fibo_steps()),
        mini_manifest(
            "keep-text",
            sup.url,
            files_url,
            [limited_prefix_step()],
            data_files={"textfile": {"prefix.txt": "prefix.txt"}},
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for node in nodes:
            async with session.post(f"{sup.url}/deploy", json=node, timeout=HTTP_TIMEOUT) as resp:
                assert resp.status == 200, await resp.text()
    await files.close()  # nothing can be fetched again from here on
    sup.kill()

    sup.start()
    await sup.wait_healthy()
    async with aiohttp.ClientSession() as session:
        deployments = await listing(session, sup.url)
        assert [(d["deploymentId"], d["status"]) for d in deployments] == [
            ("keep-fibo", "ready"),
            ("keep-text", "ready"),
        ]
        assert await call_fibo(session, sup.url, "keep-fibo", 10) == 89
        assert await call_prefix(session, sup.url, "keep-text", b"data") == b">> data"
    blobs = state_dir / "blobs"
    for module in ("fibo", "textfile"):
        assert (blobs / sha256_of(WASM_DIR / f"{module}.wasm").removeprefix("sha256:")).exists()
    assert "Traceback" not in sup.log.read_text(), sup.log.read_text()[-3000:]
