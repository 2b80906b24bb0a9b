"""supervisor.mdns, seen by a zeroconf browser in another process, on loopback only.

Network rule: every socket here is bound to 127.0.0.1; nothing multicasts on other NICs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from supervisor.mdns import TXT_VALUE_MAX, Advertiser, decode_txt, txt_properties
from supervisor.protocol import API_VERSION, SERVICE_TYPE
from tests.conftest import free_port
from tests.mdns_browser import Browser


def test_txt_properties() -> None:
    assert txt_properties("dev-1", "10.0.0.5", tls=True) == {
        "path": "/",
        "tls": "1",
        "address": "10.0.0.5",
        "id": "dev-1",
        "api": str(API_VERSION),
    }
    assert txt_properties("d", "127.0.0.1", tls=False)["tls"] == "0"


def test_decode_txt_is_lenient_and_bounded() -> None:
    props: dict[bytes, bytes | None] = {
        b"id": b"dev-1",
        b"flag": None,
        b"bad": b"\xff\xfeok",
        b"long": b"x" * 1000,
    }
    out = decode_txt(props)
    assert out["id"] == "dev-1"
    assert out["flag"] == ""
    assert out["bad"] == "\ufffd\ufffdok"
    assert len(out["long"]) == TXT_VALUE_MAX


async def test_advertise_reannounce_and_goodbye_seen_by_another_process(
    browser_for: Callable[[str], Any],
) -> None:
    name = f"baton-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    device_id = f"id-{uuid.uuid4().hex}"
    adv = Advertiser(name=name, port=port, device_id=device_id, interfaces=["127.0.0.1"])
    # Start the browser while the advertiser probes: both take ~2 s.
    browser_task = asyncio.ensure_future(browser_for(name))
    try:
        await adv.start()
        browser: Browser = await browser_task
        assert adv.info is not None
        assert adv.info.name == f"{name}.{SERVICE_TYPE}"

        added = await browser.wait_for(lambda e: e["event"] == "added", 10)
        assert added["name"] == f"{name}.{SERVICE_TYPE}"
        assert added["port"] == port
        assert added["addresses"] == ["127.0.0.1"]
        assert added["txt"] == {
            "path": "/",
            "tls": "0",
            "address": "127.0.0.1",
            "id": device_id,
            "api": str(API_VERSION),
        }

        # Unchanged addresses: no re-announce.
        assert await adv._recheck() is False
        # The addresses change (DHCP): the record is updated and re-announced. 127.0.0.2 is
        # only advertised, never bound, so this stays on loopback.
        adv._current_addresses = lambda: ["127.0.0.2"]  # type: ignore[method-assign]
        assert await adv._recheck() is True
        updated = await browser.wait_for(
            lambda e: e["event"] == "updated" and e["txt"].get("address") == "127.0.0.2", 10
        )
        assert "127.0.0.2" in updated["addresses"]

        await adv.stop()
        assert adv._watch is None
        await browser.wait_for(lambda e: e["event"] == "removed", 10)
        await adv.stop()  # idempotent
    finally:
        await adv.stop()
        if not browser_task.done():
            browser_task.cancel()


async def test_start_without_any_ipv4_address_fails_cleanly() -> None:
    adv = Advertiser(name="x", port=1, device_id="d", interfaces=["::1"])
    with pytest.raises(ValueError, match="no IPv4 address"):
        await adv.start()
    assert adv.info is None
    await adv.stop()
