"""Run the ``baton`` CLI in-process against an orchestrator's URL, capturing what it prints."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator import cli


async def baton(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    """``baton --url <url> <args>``'s exit code, stdout and stderr.

    The CLI blocks (it makes synchronous HTTP requests), so it runs in a thread: the
    orchestrator under test may share this event loop.
    """
    code = await asyncio.to_thread(cli.main, ["--url", url, *args])
    out, err = capsys.readouterr()
    return code, out, err
