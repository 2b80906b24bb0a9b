"""Requests the HTTP parser refuses: a 400, one INFO line, no traceback, the daemon serving.

aiohttp's parser refuses a request line or header over 8190 bytes (and bytes that are not
HTTP) before any route or middleware runs; both daemons keep that out of their error logs,
and never log the refused bytes (a header's value may be a token).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest

from tests.daemons import OrchestratorProcess
from tests.support import SupervisorProcess

SECRET = "s3cret-header-value"


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("daemon", ["supervisor", "orchestrator"])
async def test_an_overlong_request_is_a_quiet_400(daemon: str, tmp_path: Path) -> None:
    proc: SupervisorProcess | OrchestratorProcess
    if daemon == "supervisor":
        proc = SupervisorProcess(tmp_path / "state")
    else:
        proc = OrchestratorProcess(tmp_path / "state")
    proc.start()
    try:
        async with aiohttp.ClientSession() as session:
            if isinstance(proc, SupervisorProcess):
                await proc.wait_healthy()
            else:
                await proc.wait_healthy(session)
            long_line = b"GET /health?x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            long_header = (
                b"GET /health HTTP/1.1\r\nX-Secret: " + SECRET.encode() * 600 + b"\r\n\r\n"
            )
            for request in (long_line, long_header, b"\x16\x03\x01 not http at all\r\n\r\n"):
                answer = await _raw(proc.port, request)
                assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
            async with session.get(f"http://127.0.0.1:{proc.port}/health") as resp:
                assert resp.status == 200  # still serving
    finally:
        assert proc.proc is not None
        proc.proc.terminate()
        assert proc.proc.wait(20) == 0
    log = proc.log.read_text(errors="replace")
    assert "refused a malformed request (LineTooLong, HTTP 400)" in log, log[-2000:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    assert SECRET not in log
