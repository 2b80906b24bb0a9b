"""Server processes on 127.0.0.1: spawn, time to the first healthy answer, RSS, stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process; :meth:`stop` always reaps it (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv = argv
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.began = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "WASMIOT_"))}
        with self.log.open("ab") as log:
            self.began = time.perf_counter()
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=log)

    async def start(self, session: aiohttp.ClientSession, limit_s: float = 20.0) -> float:
        """Spawn the process; return the seconds until ``/health`` first answered 200."""
        self.spawn()
        assert self.proc is not None
        deadline = self.began + limit_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited: {self.tail()}")
            try:
                async with session.get(
                    f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return time.perf_counter() - self.began
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.002)
        raise RuntimeError(f"{self.argv} not healthy within {limit_s} s: {self.tail()}")

    def ps(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return int(self.ps().memory_info().rss)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


def supervisor(state_dir: Path, name: str) -> ServerProcess:
    port = free_port()
    argv = [
        sys.executable, "-m", "supervisor",
        "--host", "127.0.0.1", "--port", str(port),
        "--state-dir", str(state_dir), "--name", name,
        "--mdns-interfaces", "none",
    ]  # fmt: skip
    return ServerProcess(argv, port, state_dir.parent / f"{name}.log")


def bare(log_dir: Path, name: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare", str(port)]
    return ServerProcess(argv, port, log_dir / f"{name}.log")
