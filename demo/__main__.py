"""Run the supervisor demo: ``python -m demo [--keep]`` (``make demo``).

Everything stays on this machine: HTTP on 127.0.0.1 and mDNS bound to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from supervisor.protocol import SERVICE_TYPE

ROOT = Path(__file__).resolve().parent.parent
FIBO = ROOT / "build" / "wasm" / "fibo.wasm"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _endpoint(device: str, dep: str) -> dict[str, Any]:
    return {
        "url": device,
        "path": f"/{dep}/modules/fibo/fibo",
        "method": "get",
        "request": {
            "parameters": [
                {"name": "param0", "in": "query", "required": True, "schema": {"type": "integer"}}
            ]
        },
        "response": {"media_type": "application/json", "schema": {"type": "integer"}},
    }


def _mini_manifest(device: str, files: str, dep: str, to: dict[str, Any] | None) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(FIBO.read_bytes()).hexdigest()
    return {
        "deploymentId": dep,
        "modules": [
            {"id": "fibo", "name": "fibo", "urls": {"binary": f"{files}/fibo.wasm", "other": {}}}
        ],
        "endpoints": {"fibo": {"fibo": _endpoint(device, dep)}},
        "instructions": {"modules": {"fibo": {"fibo": {"from": _endpoint(device, dep), "to": to}}}},
        "mounts": {"fibo": {"fibo": {"execution": [], "deployment": [], "output": []}}},
        "baton": {
            "modules": {"fibo": {"digest": digest}},
            "limits": {"fibo": {"fibo": {"timeoutMs": 2000}}},
        },
    }


async def _discover(name: str, deadline_s: float = 15.0) -> dict[str, str]:
    """Browse _webthing._tcp on 127.0.0.1 until the demo device shows up."""
    azc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    found: asyncio.Queue[str] = asyncio.Queue()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added:
            found.put_nowait(name)

    browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    try:
        end = time.monotonic() + deadline_s
        while (left := end - time.monotonic()) > 0:
            service = await asyncio.wait_for(found.get(), left)
            if service.startswith(name):
                info = AsyncServiceInfo(SERVICE_TYPE, service)
                await info.async_request(azc.zeroconf, 3000)
                txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
                return {"service": service, "port": str(info.port), **txt}
        raise TimeoutError
    finally:
        await browser.async_cancel()
        await azc.async_close()


async def _wait_healthy(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]
) -> None:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("the supervisor exited during start-up")
        try:
            async with session.get(url + "/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the supervisor did not become healthy within 20 s")


async def run(keep: bool) -> int:
    if not FIBO.exists():
        print("build/wasm/fibo.wasm is missing: run `make modules`", file=sys.stderr)
        return 1
    state = Path(tempfile.mkdtemp(prefix="baton-demo-"))
    files_app = web.Application()
    files_app.router.add_static("/", FIBO.parent)
    runner = web.AppRunner(files_app, access_log=None)
    await runner.setup()
    files_port = _port()
    await web.TCPSite(runner, "127.0.0.1", files_port).start()
    files = f"http://127.0.0.1:{files_port}"
    port = _port()
    device = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "WASMIOT_"))}
    log = (state / "supervisor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--host", "127.0.0.1", "--port", str(port),
         "--state-dir", str(state / "device"), "--name", "demo-device", "--mdns-interfaces", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    hop2: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:
            t0 = time.perf_counter()
            await _wait_healthy(session, device, proc)
            print(
                f"1. supervisor 'demo-device' healthy on {device} after {time.perf_counter() - t0:.2f} s"
            )
            seen = await _discover("demo-device")
            print(
                f"2. found over mDNS (127.0.0.1 only): {seen['service']} port {seen['port']} id {seen['id']} api {seen['api']}"
            )
            async with session.get(device + "/.well-known/wasmiot-device-description") as resp:
                desc = await resp.json()
            cpu, mem = desc["platform"]["cpu"], desc["platform"]["memory"]["bytes"]
            print(
                f"3. description: {cpu['humanReadableName']}, {cpu['cores']} cores, {mem / 2**30:.1f} GiB"
            )
            last = _mini_manifest(device, files, "demo-chain", None)
            first = _mini_manifest(device, files, "demo", _endpoint(device, "demo-chain"))
            body: dict[str, Any] = {}
            for node in (last, first):
                async with session.post(device + "/deploy", json=node) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"deploy failed: {body}")
            print(
                f"4. deployed fibo (digest {body['digest'][:19]}…) as 'demo', chained to 'demo-chain'"
            )
            t1 = time.perf_counter()
            async with session.get(
                f"{device}/demo/modules/fibo/fibo", params={"param0": "6"}
            ) as resp:
                call = await resp.json()
            print(f"5. GET /demo/modules/fibo/fibo?param0=6 -> {json.dumps(call)}")
            async with session.get(call["resultUrl"], params={"wait": "5"}) as resp:
                hop1 = await resp.json()
            async with session.get(hop1["result"], params={"wait": "5"}) as resp:
                hop2 = await resp.json()
            took = (time.perf_counter() - t1) * 1000
            print(f"6. hop 1: fibo(6) = {hop1['value']}, forwarded; result -> {hop1['result']}")
            print(
                f"   hop 2: fibo({hop1['value']}) = {hop2['value']}; reference result {json.dumps(hop2['result'])} ({took:.1f} ms)"
            )
            if keep:
                print("\nThe supervisor keeps running (Ctrl-C to stop). Try:")
                print(f"  curl '{device}/demo/modules/fibo/fibo?param0=20&wait=5'")
                print(f"  curl {device}/health   curl {device}/deploy   curl {device}/metrics")
                await asyncio.Event().wait()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        log.close()
        await runner.cleanup()
        shutil.rmtree(state, ignore_errors=True)
        print(
            f"7. supervisor stopped (exit code {code}); mDNS goodbye sent; temporary state removed"
        )
    return 0 if hop2.get("value") == 377 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the supervisor running")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args.keep))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
