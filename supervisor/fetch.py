"""Downloading module binaries and data files, bounded in time and size."""

from __future__ import annotations

import hashlib

import aiohttp

from supervisor.errors import FetchFailed

CHUNK = 64 * 1024


async def fetch(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int, timeout_s: float
) -> tuple[bytes, str]:
    """GET ``url``; return its bytes and their sha256 hex.

    Raises :class:`FetchFailed` for a non-2xx status, a body above ``max_bytes``, a timeout
    or a connection error, with the URL in the message.
    """
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status >= 300:
                raise FetchFailed(f"fetching {url} failed: HTTP {resp.status}")
            async for chunk in resp.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchFailed(f"fetching {url} failed: larger than {max_bytes} bytes")
                digest.update(chunk)
                parts.append(chunk)
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        raise FetchFailed(f"fetching {url} failed: {type(err).__name__}: {err}") from err
    return b"".join(parts), digest.hexdigest()
