"""mDNS (DNS-SD) advertisement of this device as a ``_webthing._tcp`` service.

Same records as the reference supervisor, so a wasmiot orchestrator finds Baton devices:
instance ``<name>._webthing._tcp.local.``, host ``<name>.local.``, the HTTP port, and TXT
``path="/"``, ``tls="1"|"0"``, ``address=<first advertised IPv4>``; Baton adds ``id`` (the
stable device id, since mDNS names can change on a clash) and ``api`` (protocol level).

mDNS is discovery only: goodbyes are hints and a killed device's PTR record lingers for
about 19 minutes in browsers (python-zeroconf floors PTR TTLs), so liveness comes from
HTTP health checks. Registration probes for ~1.7 s before the name is ours.

Addresses change (DHCP, Wi-Fi roaming), so a background task re-reads them every
``recheck_s`` and re-announces the service when they differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from supervisor.platform import local_ipv4_addresses
from supervisor.protocol import API_VERSION, SERVICE_TYPE

__all__ = ["TXT_VALUE_MAX", "Advertiser", "decode_txt", "txt_properties"]

log = logging.getLogger(__name__)

TXT_VALUE_MAX = 255
"""Longest decoded TXT value kept: a DNS TXT string holds at most 255 bytes anyway."""

# Host (A) and SRV/TXT record TTLs. Short, so that a device that vanished without a goodbye
# stops resolving within two minutes (python-zeroconf still floors the PTR TTL itself).
_HOST_TTL = 120
_OTHER_TTL = 120


def txt_properties(device_id: str, address: str, tls: bool) -> dict[str, str]:
    """The TXT record: the reference's ``path``/``tls``/``address`` plus ``id`` and ``api``."""
    return {
        "path": "/",
        "tls": "1" if tls else "0",
        "address": address,
        "id": device_id,
        "api": str(API_VERSION),
    }


def decode_txt(props: dict[bytes, bytes | None]) -> dict[str, str]:
    """Decode TXT properties received from the network into text.

    Any device on the LAN can send arbitrary bytes, so undecodable bytes become U+FFFD
    and each key and value is cut to :data:`TXT_VALUE_MAX` characters. A key without a
    value (``None``, "boolean attribute" in RFC 6763 §6.4) decodes to ``""``.
    """
    out: dict[str, str] = {}
    for key, value in props.items():
        k = key.decode("utf-8", errors="replace")[:TXT_VALUE_MAX]
        v = "" if value is None else value.decode("utf-8", errors="replace")
        out[k] = v[:TXT_VALUE_MAX]
    return out


def _ipv4_only(addresses: list[str]) -> list[str]:
    """The IPv4 literals among ``addresses`` (zeroconf here runs V4Only), order kept."""
    out: list[str] = []
    for a in addresses:
        with contextlib.suppress(ValueError):
            if isinstance(ipaddress.ip_address(a), ipaddress.IPv4Address) and a not in out:
                out.append(a)
    return out


class Advertiser:
    """Advertises one device over mDNS for as long as it is started.

    ``interfaces=None`` binds every interface and advertises the machine's non-loopback
    IPv4 addresses (``127.0.0.1`` only when there is nothing else); a list such as
    ``["127.0.0.1"]`` binds exactly those addresses and advertises exactly them (tests, or a
    device that must stay off some networks). Not constructing an Advertiser is "mDNS off".

    Owns its :class:`AsyncZeroconf`. :meth:`start` and :meth:`stop` must be called from the
    same event loop; :meth:`stop` is idempotent and always sends the goodbye.
    """

    def __init__(
        self,
        *,
        name: str,
        port: int,
        device_id: str,
        interfaces: list[str] | None,
        tls: bool = False,
        recheck_s: float = 30.0,
    ) -> None:
        self._name = name
        self._port = port
        self._device_id = device_id
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._tls = tls
        self._recheck_s = recheck_s
        self._azc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._addresses: list[str] = []  # as advertised, in our (sorted) order
        self._watch: asyncio.Task[None] | None = None

    @property
    def info(self) -> AsyncServiceInfo | None:
        """The registered service (its name may differ from the requested one after a clash)."""
        return self._info

    def _current_addresses(self) -> list[str]:
        """The IPv4 addresses to advertise right now (re-read on every recheck)."""
        if self._interfaces is not None:
            return _ipv4_only(self._interfaces)
        return local_ipv4_addresses() or ["127.0.0.1"]

    def _build_info(self, name: str, addresses: list[str]) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=self._port,
            properties=txt_properties(self._device_id, addresses[0], self._tls),
            server=f"{self._name}.local.",
            host_ttl=_HOST_TTL,
            other_ttl=_OTHER_TTL,
            parsed_addresses=addresses,
        )

    async def start(self) -> None:
        """Register the service (waits for probing and announcing) and start the watcher.

        Raises ``ValueError`` when there is no IPv4 address to advertise, and whatever
        zeroconf raises when it cannot bind; in both cases nothing is left running.
        """
        if self._azc is not None:
            return
        addresses = self._current_addresses()
        if not addresses:
            raise ValueError(f"no IPv4 address to advertise among {self._interfaces!r}")
        bind: InterfaceChoice | list[str] = (
            InterfaceChoice.All if self._interfaces is None else list(self._interfaces)
        )
        azc = AsyncZeroconf(interfaces=bind, ip_version=IPVersion.V4Only)
        requested = f"{self._name}.{SERVICE_TYPE}"
        info = self._build_info(requested, addresses)
        try:
            # The first await queues the registration; the second waits until probing and
            # announcing are done, so the name is really ours when start() returns.
            await (await azc.async_register_service(info, allow_name_change=True))
        except BaseException:
            await azc.async_close()
            raise
        if info.name != requested:
            log.warning("mDNS name %s was taken; advertising as %s", requested, info.name)
        log.info("mDNS: advertising %s on %s port %d", info.name, addresses, self._port)
        self._azc, self._info, self._addresses = azc, info, addresses
        self._watch = asyncio.create_task(self._watch_addresses(), name="mdns-address-watch")

    async def _watch_addresses(self) -> None:
        """Every ``recheck_s``, re-announce if the addresses changed; never dies on errors."""
        while True:
            await asyncio.sleep(self._recheck_s)  # a period, not synchronisation
            try:
                await self._recheck()
            except Exception:
                # A transient failure (interface going away mid-update) must not stop the
                # watcher; the next round retries.
                log.exception("mDNS: address recheck failed")

    async def _recheck(self) -> bool:
        """Re-announce with the current addresses if they changed; return whether they did."""
        azc, old = self._azc, self._info
        if azc is None or old is None:
            return False
        addresses = self._current_addresses()
        # Compare with our own list: zeroconf's parsed_addresses() is in LIFO order.
        if not addresses or addresses == self._addresses:
            return False
        if self._interfaces is None:
            # InterfaceChoice.All bound one socket per address at start; rebind so the
            # announcements actually leave through the new addresses.
            await azc.zeroconf.async_update_interfaces()
        info = self._build_info(old.name, addresses)
        await (await azc.async_update_service(info))
        self._info, self._addresses = info, addresses
        log.info("mDNS: addresses changed to %s; re-announced %s", addresses, info.name)
        return True

    async def stop(self) -> None:
        """Stop the watcher, send the goodbye and close zeroconf. Safe to call repeatedly."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        azc, info = self._azc, self._info
        self._azc = None
        if azc is None:
            return
        try:
            if info is not None:
                # Without the second await the goodbye may never go out (browsers would keep
                # the device for ~19 minutes).
                await (await azc.async_unregister_service(info))
        finally:
            await azc.async_close()
        log.info("mDNS: withdrew %s", info.name if info is not None else self._name)
