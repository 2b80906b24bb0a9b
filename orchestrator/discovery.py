"""Finding supervisors: mDNS browsing plus manual registration, both ending in the registry.

Every way in ends the same way: fetch ``GET /.well-known/wasmiot-device-description`` from the
device and upsert it in the :class:`~orchestrator.devices.DeviceRegistry` under the id the
description carries. mDNS only tells us *where* to look; the description tells us *who*
answered, so a supervisor restarted on another port or address is the same device with an
``address-changed`` event, not a new one (the reference orchestrator ignored such changes).

mDNS goodbyes (``Removed``) are hints: they are logged and recorded as ``mdns-removed`` but
never delete a device, because a SIGKILLed device sends none and its record lingers ~19
minutes anyway; the health monitor decides liveness. A device whose description cannot be
fetched is not added at all (the reference added it, then deleted it).

Everything read from the network is untrusted: TXT values are decoded leniently and capped,
descriptions are size-capped and must be JSON objects, and every request has a timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from orchestrator.devices import Device, DeviceRegistry, instance_of
from supervisor.protocol import DESCRIPTION_PATH, SERVICE_TYPE

__all__ = ["MAX_DESCRIPTION_BYTES", "TXT_VALUE_MAX", "DeviceUnreachable", "Discovery", "decode_txt"]

log = logging.getLogger(__name__)

TXT_VALUE_MAX = 255
"""Longest TXT key or value kept (a DNS TXT string holds at most 255 bytes anyway)."""

MAX_DESCRIPTION_BYTES = 1 << 20
"""A description is a few KiB; anything past 1 MiB is refused rather than buffered."""

_RESOLVE_TIMEOUT_MS = 3000
_MAX_REFUSED = 256


class DeviceUnreachable(Exception):
    """No device description could be fetched; the message says from where and why.

    ``tls_failure`` is set when an HTTPS device's certificate did not verify (or its TLS
    handshake failed): an operator's problem to fix, not a device that is still starting.
    """

    def __init__(self, message: str, *, tls_failure: bool = False) -> None:
        super().__init__(message)
        self.tls_failure = tls_failure


def decode_txt(props: dict[bytes, bytes | None]) -> dict[str, str]:
    """TXT properties as text: bad UTF-8 becomes U+FFFD, keys and values are capped,
    a key without value (RFC 6763 §6.4 boolean attribute) maps to ``""``."""
    out: dict[str, str] = {}
    for key, value in props.items():
        k = key.decode("utf-8", errors="replace")[:TXT_VALUE_MAX]
        v = "" if value is None else value.decode("utf-8", errors="replace")
        out[k] = v[:TXT_VALUE_MAX]
    return out


def _candidate_addresses(parsed: list[str], txt_address: str | None) -> list[str]:
    """Addresses to try, in order: TXT ``address`` first when it is among the resolved ones
    (it is the one the device prefers), the other resolved ones, then TXT ``address`` if it
    was not resolved (the reference orchestrator appends it that way)."""
    valid = [a for a in dict.fromkeys(parsed) if _is_ip(a)]
    if txt_address is None or not _is_ip(txt_address):
        return valid
    if txt_address in valid:
        return [txt_address, *(a for a in valid if a != txt_address)]
    return [*valid, txt_address]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _tls_reason(err: aiohttp.ClientSSLError) -> str:
    """What went wrong in TLS, in OpenSSL's words but without aiohttp's connection-key noise:
    ``TLS verification failed: certificate verify failed: unable to get local issuer
    certificate``, or ``TLS handshake failed: WRONG_VERSION_NUMBER`` (a plain-HTTP peer)."""
    cause = (
        err.certificate_error
        if isinstance(err, aiohttp.ClientConnectorCertificateError)
        else err.os_error
    )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS verification failed: certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return f"TLS handshake failed: {cause.reason}"
    return f"TLS handshake failed: {str(cause) or str(err)}"


def _host_in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Discovery:
    """Browses ``_webthing._tcp.local.`` and registers devices by hand.

    ``interfaces`` are the addresses zeroconf binds (``["127.0.0.1"]`` in tests); ``None``
    means every interface. The session is the caller's and is not closed here. All
    background work runs in named tasks that :meth:`stop` cancels and awaits.
    """

    def __init__(
        self,
        registry: DeviceRegistry,
        session: aiohttp.ClientSession,
        *,
        interfaces: list[str] | None,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
    ) -> None:
        self._registry = registry
        self._session = session
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # One resolver per instance name; events arriving while it runs make it run once more
        # instead of piling up parallel resolutions of the same service.
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self.announced_at: dict[str, float] = {}
        """Device id → ``clock()`` of its latest mDNS announcement that resolved to it."""
        self.refused: dict[str, str] = {}
        """mDNS instance name → why its description could not be fetched (the latest
        :data:`_MAX_REFUSED`; removed again once the instance resolves to a device)."""

    async def start(self) -> None:
        """Bind zeroconf and start browsing. Idempotent."""
        if self._azc is not None:
            return
        bind: InterfaceChoice | list[str] = (
            InterfaceChoice.All if self._interfaces is None else self._interfaces
        )
        self._azc = AsyncZeroconf(interfaces=bind, ip_version=IPVersion.V4Only)
        self._browser = AsyncServiceBrowser(
            self._azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_service_state_change]
        )
        log.info("discovery: browsing %s on %s", SERVICE_TYPE, self._interfaces or "all")

    async def stop(self) -> None:
        """Stop browsing, cancel and await every background task, close zeroconf."""
        browser, self._browser = self._browser, None
        if browser is not None:
            await browser.async_cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        azc, self._azc = self._azc, None
        if azc is not None:
            await azc.async_close()

    # --- mDNS ------------------------------------------------------------------------------

    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser callback (sync, on the loop): zeroconf calls it with these keywords."""
        del zeroconf, service_type
        if state_change is ServiceStateChange.Removed:
            self._on_removed(name)
            return
        running = self._resolving.get(name)
        if running is not None and not running.done():
            self._again.add(name)
            return
        task = self._spawn(self._resolve_loop(name), f"discovery-resolve:{instance_of(name)}")
        self._resolving[name] = task

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_removed(self, name: str) -> None:
        device = self._registry.by_mdns_name(name)
        log.info("discovery: mDNS goodbye from %s (%s)", name, device.id if device else "unknown")
        if device is not None:
            self._registry.record(device, "mdns-removed", name, notify=True)

    async def _resolve_loop(self, name: str) -> None:
        try:
            while True:
                try:
                    await self._resolve(name)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Never let one odd service kill discovery; it gets another chance at
                    # its next announcement.
                    log.exception("discovery: resolving %s failed", name)
                if name not in self._again:
                    return
                self._again.discard(name)
        finally:
            self._resolving.pop(name, None)

    async def _resolve(self, name: str) -> None:
        azc = self._azc
        if azc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(azc.zeroconf, _RESOLVE_TIMEOUT_MS):
            log.info("discovery: %s did not resolve", name)
            return
        if info.port is None:
            return
        txt = decode_txt(info.properties)
        addresses = _candidate_addresses(
            info.parsed_addresses(IPVersion.V4Only), txt.get("address")
        )
        tls = txt.get("tls") == "1"
        try:
            host, description = await self._fetch_description(addresses, info.port, tls)
        except DeviceUnreachable as err:
            self.refused.pop(name, None)
            self.refused[name] = str(err)
            while len(self.refused) > _MAX_REFUSED:
                del self.refused[next(iter(self.refused))]
            if err.tls_failure:
                # A certificate our CA does not vouch for: never retried over plain HTTP.
                log.warning("discovery: refusing %s: %s", name, err)
                return
            # Not a supervisor (another WebThing, a reference orchestrator advertising
            # itself) or not up yet: it will be retried on its next announcement.
            log.info("discovery: ignoring %s: %s", name, err)
            return
        self.refused.pop(name, None)
        device = self._registry.upsert_from_description(
            description,
            host=host,
            port=info.port,
            addresses=addresses,
            mdns_name=name,
            tls=tls,
            source="mdns",
        )
        self.announced_at[device.id] = self._clock()

    # --- manual registration ---------------------------------------------------------------

    async def register_manual(
        self,
        host: str,
        port: int,
        name: str | None = None,
        *,
        addresses: list[str] | None = None,
        tls: bool = False,
    ) -> Device:
        """Register a device that mDNS cannot reach: fetch its description and upsert it.

        Tries ``host`` and then each of ``addresses`` (the reference registration body's
        list) until one serves the description, over HTTPS when ``tls`` (never falling back
        to HTTP: a certificate that does not verify makes the device unreachable). ``name``
        is used for the id only when the description has none (reference supervisors send
        their mDNS instance name).
        Raises :class:`DeviceUnreachable` when no address serves a description, and
        ``ValueError`` for a port outside 1..65535. Works without :meth:`start`.
        """
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        candidates = list(dict.fromkeys([host, *(addresses or [])]))
        found_at, description = await self._fetch_description(candidates, port, tls=tls)
        return self._registry.upsert_from_description(
            description,
            host=found_at,
            port=port,
            addresses=candidates,
            name=name,
            tls=tls,
            source="manual",
        )

    # --- HTTP ------------------------------------------------------------------------------

    async def _fetch_description(
        self, hosts: list[str], port: int, tls: bool
    ) -> tuple[str, dict[str, Any]]:
        """The first host (in order) answering 200 with a JSON object, and that object."""
        scheme = "https" if tls else "http"
        errors: list[str] = []
        tls_failure = False
        for host in hosts:
            url = f"{scheme}://{_host_in_url(host)}:{port}{DESCRIPTION_PATH}"
            try:
                return host, await self._get_json(url)
            except aiohttp.ClientSSLError as err:
                tls_failure = True
                errors.append(f"{url}: {_tls_reason(err)}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                errors.append(f"{url}: {type(err).__name__}: {err}".rstrip(": "))
        if not errors:
            raise DeviceUnreachable(f"no address to fetch a description from (port {port})")
        raise DeviceUnreachable(
            "cannot fetch the device description: " + "; ".join(errors), tls_failure=tls_failure
        )

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._session.get(url, timeout=self._timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_DESCRIPTION_BYTES:
                    raise ValueError(f"description larger than {MAX_DESCRIPTION_BYTES} bytes")
        try:
            data = json.loads(body)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
            raise ValueError(f"not JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError("description is not a JSON object")
        return data
