"""HTTPS between the daemons, and the fleet token kept out of every log line.

Certificates come from a throwaway CA made per test (``tests.certs``), for 127.0.0.1 as an
IP SAN. In-process tests serve the real apps over TLS on 127.0.0.1; one test runs the
installed daemons as real processes (mDNS bound to 127.0.0.1) at ``--log-level DEBUG``. Waits
poll with deadlines; every process is killed in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import signal
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator import cli
from orchestrator import config as orch_config
from orchestrator.app import build_app as build_orchestrator
from orchestrator.routes import CONTEXT
from supervisor import config as sup_config
from supervisor.app import build_app as build_supervisor
from supervisor.routes.context import SERVICES
from supervisor.tls import client_context, server_context
from tests import daemons
from tests.certs import Authority, ServerCert
from tests.conftest import ROOT, free_port
from tests.mdns_browser import Browser
from tests.support import clean_env

T = TypeVar("T")
ServerFactory = Callable[..., Awaitable[TestServer]]
BIN = Path(sys.executable).parent
TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass
class Pki:
    fleet: Authority
    other: Authority
    orchestrator: ServerCert
    sup_a: ServerCert
    sup_b: ServerCert
    sup_c: ServerCert


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    fleet = Authority.create(tmp_path / "pki", "fleet")
    other = Authority.create(tmp_path / "pki", "other")
    return Pki(
        fleet,
        other,
        fleet.issue("orchestrator"),
        fleet.issue("sup-a"),
        fleet.issue("sup-b"),
        fleet.issue("sup-c"),
    )


def new_token() -> str:
    return f"tok-{secrets.token_hex(16)}"


def trusting(ca: Path, token: str | None = None) -> aiohttp.ClientSession:
    """A client session that verifies HTTPS peers against ``ca`` only."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    connector = aiohttp.TCPConnector(ssl=client_context(ca))
    return aiohttp.ClientSession(connector=connector, headers=headers, timeout=TIMEOUT)


async def until(probe: Callable[[], Awaitable[T | None]], within_s: float, what: str) -> T:
    return await daemons.until(probe, within_s, what, poll_s=0.05)


async def registration_error(sup: Served, what: str) -> str:
    """Why the supervisor app ``sup`` failed to register, once it has (within 15 s)."""
    registrar = sup.app[SERVICES].registrar
    assert registrar is not None

    async def error() -> str | None:
        return registrar.last_error

    return await until(error, 15, what)


class Bodies:
    """Every response body a test saw, to check none of them carries the token."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def request(
        self, session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
    ) -> tuple[int, Any]:
        async with session.request(method, url, **kwargs) as resp:
            text = await resp.text()
        self.texts.append(text)
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


def fibo(n: int) -> int:
    a, b = 1, 1
    for _ in range(n):
        a, b = b, a + b
    return a


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("daemon", [sup_config, orch_config], ids=["supervisor", "orchestrator"])
def test_tls_settings_from_flags_and_environment(daemon: Any, pki: Pki, tmp_path: Path) -> None:
    cert, key, ca = str(pki.sup_a.cert), str(pki.sup_a.key), str(pki.fleet.cert)
    s = daemon.load_settings(["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca], {})
    assert (s.tls_cert, s.tls_key, s.tls_ca) == (Path(cert), Path(key), Path(ca))
    assert s.tls
    env = {"BATON_TLS_CERT": cert, "BATON_TLS_KEY": key, "BATON_TLS_CA": ca}
    s = daemon.load_settings([], env)
    assert (s.tls_cert, s.tls_key, s.tls_ca) == (Path(cert), Path(key), Path(ca))
    plain = daemon.load_settings([], {})
    assert (plain.tls_cert, plain.tls_key, plain.tls_ca, plain.tls) == (None, None, None, False)
    # A CA alone is fine: a plain-HTTP daemon may still call HTTPS peers.
    assert daemon.load_settings(["--tls-ca", ca], {}).tls is False

    error = daemon.ConfigError
    with pytest.raises(error, match="go together: got only the certificate"):
        daemon.load_settings(["--tls-cert", cert], {})
    with pytest.raises(error, match="go together: got only the key"):
        daemon.load_settings([], {"BATON_TLS_KEY": key})
    with pytest.raises(
        error, match=re.escape(f"cannot read the TLS certificate {tmp_path}/missing.pem")
    ):
        daemon.load_settings(["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", key], {})
    with pytest.raises(error, match=re.escape(f"the TLS key {pki.sup_b.key} does not belong to")):
        daemon.load_settings(["--tls-cert", cert, "--tls-key", str(pki.sup_b.key)], {})
    with pytest.raises(error, match="holds no valid certificate"):
        daemon.load_settings(["--tls-cert", key, "--tls-key", key], {})
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(error, match=r"the TLS CA file .*empty\.pem is not a PEM file"):
        daemon.load_settings(["--tls-ca", str(tmp_path / "empty.pem")], {})
    encrypted = pki.fleet.issue("encrypted", key_password=b"pass")
    with pytest.raises(error, match="is encrypted"):
        daemon.load_settings(
            ["--tls-cert", str(encrypted.cert), "--tls-key", str(encrypted.key)], {}
        )


def test_contexts_refuse_old_protocols_and_always_verify(pki: Pki) -> None:
    server = server_context(pki.sup_a.cert, pki.sup_a.key)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    for ca in (pki.fleet.cert, None):
        client = client_context(ca)
        assert client.minimum_version == ssl.TLSVersion.TLSv1_2
        assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_cli_names_an_unusable_ca_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.pem"
    assert cli.main(["--url", "https://127.0.0.1:1", "--ca", str(missing), "devices"]) == 1
    assert f"cannot read the TLS CA file {missing}" in capsys.readouterr().err


def test_orchestrator_public_url_follows_tls(pki: Pki) -> None:
    flags = ["--tls-cert", str(pki.orchestrator.cert), "--tls-key", str(pki.orchestrator.key)]
    s = orch_config.load_settings([*flags, "--host", "127.0.0.1", "--port", "3443"], {})
    assert s.base_url == "https://127.0.0.1:3443"
    assert orch_config.load_settings(["--host", "127.0.0.1"], {}).base_url == (
        "http://127.0.0.1:3000"
    )
    with pytest.raises(orch_config.ConfigError, match="must be https://"):
        orch_config.load_settings([*flags, "--public-url", "http://hub:3000"], {})


@pytest.mark.parametrize(
    "argv0", [[sys.executable, "-m", "supervisor"], [str(BIN / "baton-orchestrator")]]
)
def test_bad_tls_files_exit_2_with_one_clear_line(
    argv0: list[str], pki: Pki, tmp_path: Path
) -> None:
    env = clean_env()
    base = [*argv0, "--state-dir", str(tmp_path / "state"), "--mdns-interfaces", "none"]
    cases = [
        (["--tls-cert", str(pki.sup_a.cert)], "go together"),
        (["--tls-cert", str(pki.sup_a.cert), "--tls-key", str(pki.sup_b.key)], "does not belong"),
        (["--tls-ca", str(tmp_path / "nope.pem")], "cannot read the TLS CA file"),
    ]
    for extra, words in cases:
        done = subprocess.run(
            [*base, *extra], cwd=ROOT, env=env, capture_output=True, timeout=60, check=False
        )
        err = done.stderr.decode()
        assert done.returncode == 2, (extra, err)
        assert words in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


# --- a whole fleet over HTTPS, in process ------------------------------------------------------


@dataclass
class Served:
    url: str
    app: web.Application
    server: TestServer


async def serve_orchestrator(
    aiohttp_server: ServerFactory, state_dir: Path, cert: ServerCert | None, **overrides: Any
) -> Served:
    port = free_port()
    fields: dict[str, Any] = {
        "state_dir": state_dir,
        "port": port,
        "host": "127.0.0.1",
        "mdns_enabled": False,
        "health_interval_s": 0.3,
    }
    if cert is not None:
        fields |= {"tls_cert": cert.cert, "tls_key": cert.key}
    settings = orch_config.Settings(**(fields | overrides))
    app = build_orchestrator(settings)
    ssl_context = server_context(cert.cert, cert.key) if cert else None
    server = await aiohttp_server(app, port=port, ssl=ssl_context)
    return Served(settings.base_url, app, server)


async def serve_supervisor(
    aiohttp_server: ServerFactory,
    state_dir: Path,
    name: str,
    cert: ServerCert | None,
    **overrides: Any,
) -> Served:
    port = free_port()
    fields: dict[str, Any] = {
        "state_dir": state_dir,
        "port": port,
        "host": "127.0.0.1",
        "name": name,
        "mdns_enabled": False,
    }
    if cert is not None:
        fields |= {"tls_cert": cert.cert, "tls_key": cert.key}
    settings = sup_config.Settings(**(fields | overrides))
    app = build_supervisor(settings)
    ssl_context = server_context(cert.cert, cert.key) if cert else None
    server = await aiohttp_server(app, port=port, ssl=ssl_context)
    return Served(f"{'https' if cert else 'http'}://127.0.0.1:{port}", app, server)


async def test_https_fleet_registers_deploys_chains_and_never_logs_the_token(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    token, stranger = new_token(), new_token()
    ca = pki.fleet.cert
    orch = await serve_orchestrator(
        aiohttp_server, tmp_path / "orch", pki.orchestrator, tls_ca=ca, token=token
    )
    assert orch.url.startswith("https://127.0.0.1:")
    registry = orch.app[CONTEXT].devices
    # sup-a registers itself with the https orchestrator; sup-b is registered by hand.
    sup_a = await serve_supervisor(
        aiohttp_server,
        tmp_path / "a",
        "tls-a",
        pki.sup_a,
        tls_ca=ca,
        token=token,
        orchestrator_url=orch.url,
    )
    sup_b = await serve_supervisor(
        aiohttp_server, tmp_path / "b", "tls-b", pki.sup_b, tls_ca=ca, token=token
    )
    # sup-c has the wrong token: its registration is a failed auth in the logs.
    sup_c = await serve_supervisor(
        aiohttp_server,
        tmp_path / "c",
        "tls-c",
        pki.sup_c,
        tls_ca=ca,
        token=stranger,
        orchestrator_url=orch.url,
    )
    bodies = Bodies()
    async with trusting(ca) as anon, trusting(ca, token) as auth, trusting(ca, stranger) as wrong:
        # /health over TLS, and the result URLs a device builds are https too.
        status, health = await bodies.request(anon, "GET", f"{sup_a.url}/health")
        assert status == 200 and health["uptimeSeconds"] >= 0

        registrar = sup_a.app[SERVICES].registrar
        assert registrar is not None

        async def a_registered() -> bool:
            return registrar.registered and any(d.url == sup_a.url for d in registry.all())

        await until(a_registered, 15, "sup-a to register itself over https")
        port_b = int(sup_b.url.rsplit(":", 1)[1])
        status, b = await bodies.request(
            auth,
            "POST",
            f"{orch.url}/devices",
            json={"host": "127.0.0.1", "port": port_b, "tls": True},
        )
        assert status == 201 and b["url"] == sup_b.url, b
        device_a = next(d for d in registry.all() if d.url == sup_a.url)
        assert device_a.tls and device_a.name == "tls-a"

        # The orchestrator's health checks reach both over TLS.
        async def both_checked() -> bool:
            # The orchestrator's own core device is never health-checked.
            sups = [d for d in registry.all() if not d.core]
            return all(d.checked_at is not None and d.last_error is None for d in sups) and (
                len(sups) == 2
            )

        await until(both_checked, 15, "a health round over https")

        # sup-c's registration is refused for its token (and it says why).
        refused = await registration_error(sup_c, "sup-c's registration to be refused")
        assert "HTTP 401" in refused and "bearer token" in refused, refused

        # A module, a two-hop deployment across both https devices, and a run.
        status, module = await bodies.request(
            auth, "POST", f"{orch.url}/modules", data=daemons.module_form("fibo")
        )
        assert status in (200, 201), module
        manifest = {
            "name": "tls-chain",
            "sequence": [
                {"module": "fibo", "func": "fibo", "device": device_a.id},
                {"module": "fibo", "func": "fibo", "device": b["id"]},
            ],
        }
        status, dep = await bodies.request(
            auth, "POST", f"{orch.url}/deployments?wait=30", json=manifest
        )
        assert status == 201 and dep["state"] == "ACTIVE", dep
        installed = sup_a.app[SERVICES].deployments.get(dep["id"])
        binary_url = installed.node.modules[0].urls.binary
        assert binary_url.startswith(f"{orch.url}/blobs/"), binary_url  # fetched over https
        status, run = await bodies.request(
            anon, "POST", f"{orch.url}/deployments/{dep['id']}/executions", json={"param0": 4}
        )
        assert status == 200 and run["value"] == fibo(fibo(4)), run
        assert [hop["device"] for hop in run["trace"]] == ["tls-a", "tls-b"]
        assert all(hop["url"].startswith("https://127.0.0.1:") for hop in run["trace"]), run

        # Failed auth on both daemons: missing and wrong tokens are 401 problems.
        for session in (anon, wrong):
            status, body = await bodies.request(
                session, "POST", f"{orch.url}/deployments", json=manifest
            )
            assert status == 401 and body["type"] == "unauthorized", body
            status, body = await bodies.request(session, "POST", f"{sup_a.url}/deploy", json={})
            assert status == 401 and body["type"] == "unauthorized", body
            status, body = await bodies.request(
                session, "DELETE", f"{sup_a.url}/deploy/{dep['id']}"
            )
            assert status == 401, body
        # Error paths: an unknown module, a bad argument, a malformed deployment.
        bad = {"name": "nope", "sequence": [{"module": "nope", "func": "x"}]}
        status, body = await bodies.request(auth, "POST", f"{orch.url}/deployments", json=bad)
        assert 400 <= status < 500 and body["status"] == "error", body
        status, body = await bodies.request(
            anon, "GET", f"{sup_a.url}/{dep['id']}/modules/fibo/fibo", params={"param0": "x"}
        )
        assert 400 <= status < 500, body
        status, body = await bodies.request(auth, "POST", f"{sup_b.url}/deploy", json={"x": 1})
        assert 400 <= status < 500, body
        # Read routes stay open without a token.
        for url in (
            f"{orch.url}/devices",
            f"{orch.url}/metrics",
            f"{sup_a.url}/metrics",
            f"{sup_a.url}/deploy",
        ):
            status, _ = await bodies.request(anon, "GET", url)
            assert status == 200, url

        # The https orchestrator refuses a plain-HTTP client, and an https client without
        # the fleet's CA (the system trust store) cannot verify it.
        async with aiohttp.ClientSession(timeout=TIMEOUT) as plain:
            for served in (orch, sup_a):
                plain_url = served.url.replace("https://", "http://")
                with pytest.raises(aiohttp.ClientError):
                    async with plain.get(f"{plain_url}/health") as resp:
                        await resp.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with plain.get(f"{sup_a.url}/health") as resp:
                    await resp.read()

    # The CLI: --ca (or BATON_CA) for an https orchestrator; without it a clear error.
    capsys.readouterr()
    assert (
        await asyncio.to_thread(cli.main, ["--url", orch.url, "--ca", str(ca), "devices", "--json"])
        == 0
    )
    listed = json.loads(capsys.readouterr().out)
    assert sorted(d["name"] for d in listed) == ["orchestrator", "tls-a", "tls-b"]
    assert await asyncio.to_thread(cli.main, ["--url", orch.url, "devices"]) == 1
    err = capsys.readouterr().err
    assert "certificate verify failed" in err and "--ca" in err, err
    monkeypatch.setenv("BATON_CA", str(ca))
    monkeypatch.setenv("BATON_TOKEN", token)
    port_c = int(sup_c.url.rsplit(":", 1)[1])
    assert (
        await asyncio.to_thread(
            cli.main,
            ["--url", orch.url, "devices", "register", "127.0.0.1", "--port", str(port_c), "--tls"],
        )
        == 0
    )
    assert "registered tls-c" in capsys.readouterr().out

    # Nothing the daemons logged, answered or exported carries the token.
    assert token not in repr(orch.app[CONTEXT]) and token not in repr(sup_a.app[SERVICES])
    messages = [r.getMessage() for r in caplog.records]
    assert any("registered with orchestrator https://127.0.0.1:" in m for m in messages), messages
    assert any("cannot register with orchestrator" in m and "401" in m for m in messages), messages
    for daemon in ("supervisor.http", "orchestrator.routes"):
        refusals = [r.getMessage() for r in caplog.records if r.name == daemon]
        assert any("no bearer token" in m for m in refusals), (daemon, refusals)
        assert any("wrong bearer token" in m for m in refusals), (daemon, refusals)
    for secret in (token, stranger):
        assert secret not in caplog.text
        assert all(secret not in m for m in messages)
        assert all(secret not in text for text in bodies.texts)


async def test_an_orchestrator_with_another_ca_refuses_the_device(
    aiohttp_server: ServerFactory, tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Whichever way a device comes in (its own registration, by hand, mDNS, or known from
    before), a certificate the orchestrator's CA does not vouch for keeps it out or lost,
    with the verification error recorded; plain HTTP is never tried instead."""
    caplog.set_level(logging.INFO)
    tag = secrets.token_hex(4)
    on_loopback: dict[str, Any] = {"mdns_enabled": True, "mdns_interfaces": ("127.0.0.1",)}
    orch = await serve_orchestrator(
        aiohttp_server, tmp_path / "orch", None, tls_ca=pki.other.cert, **on_loopback
    )
    registry, discovery = orch.app[CONTEXT].devices, orch.app[CONTEXT].discovery
    name = f"tls-wrong-{tag}"
    sup = await serve_supervisor(
        aiohttp_server, tmp_path / "sup", name, pki.sup_a, orchestrator_url=orch.url, **on_loopback
    )
    port = int(sup.url.rsplit(":", 1)[1])
    plain = await serve_supervisor(aiohttp_server, tmp_path / "plain", f"plain-{tag}", None)
    plain_port = int(plain.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        # 1. Its own registration: the orchestrator answers 502 and the device logs why.
        error = await registration_error(sup, "the registration to be refused")
        assert "HTTP 502" in error and "certificate verify failed" in error, error
        assert f"https://127.0.0.1:{port}" in error, error

        # 2. By hand: the same, with the https URL it tried.
        async with session.post(
            f"{orch.url}/devices", json={"host": "127.0.0.1", "port": port, "tls": True}
        ) as resp:
            body = await resp.json()
        assert resp.status == 502 and body["type"] == "device-error", body
        assert "TLS verification failed: certificate verify failed" in body["result"], body
        assert f"https://127.0.0.1:{port}" in body["result"], body

        # 3. No fallback: a device said to speak TLS that only speaks HTTP is refused too,
        #    although the same port registers fine when it is asked for over HTTP.
        async with session.post(
            f"{orch.url}/devices", json={"host": "127.0.0.1", "port": plain_port, "tls": True}
        ) as resp:
            body = await resp.json()
        assert resp.status == 502 and "TLS handshake failed" in body["result"], body
        assert f"https://127.0.0.1:{plain_port}" in body["result"], body
        assert not any(d.port == plain_port for d in registry.all())
        async with session.post(
            f"{orch.url}/devices", json={"host": "127.0.0.1", "port": plain_port}
        ) as resp:
            assert resp.status == 201, await resp.text()

        # 4. mDNS: the advertisement says tls=1; the description fetch fails verification,
        #    is recorded and logged as a warning, and the device is not added.
        async def mdns_refusal() -> str | None:
            return next((v for k, v in discovery.refused.items() if k.startswith(name)), None)

        reason = await until(mdns_refusal, 20, "the mDNS-announced device to be refused")
        assert "certificate verify failed" in reason and f"https://127.0.0.1:{port}" in reason
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "orchestrator.discovery" and r.levelno == logging.WARNING
        ]
        assert any(name in m and "certificate verify failed" in m for m in warnings), warnings
        assert not any(d.port == port for d in registry.all())

    # 5. Known from before (registered under the right CA), then the orchestrator restarts
    #    with a CA that does not vouch for it: health checks fail verification, it is lost.
    state = tmp_path / "orch-restart"
    right = await serve_orchestrator(aiohttp_server, state, None, tls_ca=pki.fleet.cert)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.post(
            f"{right.url}/devices", json={"host": "127.0.0.1", "port": port, "tls": True}
        ) as resp:
            device = await resp.json()
        assert resp.status == 201 and device["url"] == sup.url, device
        await right.server.close()
        wrong = await serve_orchestrator(
            aiohttp_server, state, None, tls_ca=pki.other.cert, lost_after=1
        )

        async def lost() -> dict[str, Any] | None:
            async with session.get(f"{wrong.url}/devices/{device['id']}") as resp:
                found: dict[str, Any] = await resp.json()
            return found if found["status"] == "lost" else None

        seen = await until(lost, 15, "the device to be lost")
        assert "certificate verify failed" in (seen["lastError"] or ""), seen
        assert seen["url"] == sup.url  # still https: never retried over plain HTTP
        assert any(e["kind"] == "lost" and "certificate" in e["detail"] for e in seen["events"])


# --- the installed daemons as real processes ---------------------------------------------------


class Daemon:
    """A daemon in its own process; stdout and stderr (its log) go to ``log``."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.argv, self.log, self.env = argv, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.argv[0]} exited: {self.text()[-3000:]}")
        return True

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


async def test_real_daemons_over_https_find_deploy_run_and_never_log_the_token(
    tmp_path: Path, pki: Pki, browser_for: Callable[[str], Awaitable[Browser]]
) -> None:
    token, tag = new_token(), secrets.token_hex(4)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    name = f"tls-proc-{tag}"
    orch_port, sup_port = free_port(), free_port()
    orch_url, sup_url = f"https://127.0.0.1:{orch_port}", f"https://127.0.0.1:{sup_port}"
    env = clean_env()
    orch = Daemon(
        [
            str(BIN / "baton-orchestrator"),
            *("--host", "127.0.0.1", "--port", str(orch_port)),
            *("--state-dir", str(tmp_path / "orch"), "--mdns-interfaces", "127.0.0.1"),
            *("--health-interval", "0.5", "--token-file", str(token_file)),
            *("--tls-cert", str(pki.orchestrator.cert), "--tls-key", str(pki.orchestrator.key)),
            *("--tls-ca", str(pki.fleet.cert), "--log-level", "DEBUG"),
        ],
        tmp_path / "orchestrator.log",
        env,
    )
    # The supervisor takes its token and TLS files from its environment, as a systemd
    # EnvironmentFile= gives them.
    sup = Daemon(
        [
            *(sys.executable, "-m", "supervisor", "--host", "127.0.0.1", "--port", str(sup_port)),
            *("--state-dir", str(tmp_path / "sup"), "--name", name),
            *("--mdns-interfaces", "127.0.0.1", "--orchestrator", orch_url, "--log-level", "DEBUG"),
        ],
        tmp_path / "supervisor.log",
        env
        | {
            "BATON_TOKEN": token,
            "BATON_TLS_CERT": str(pki.sup_a.cert),
            "BATON_TLS_KEY": str(pki.sup_a.key),
            "BATON_TLS_CA": str(pki.fleet.cert),
        },
    )
    bodies = Bodies()
    try:
        browser = await browser_for(name)
        orch.start()
        async with trusting(pki.fleet.cert) as anon, trusting(pki.fleet.cert, token) as auth:

            async def orchestrator_up() -> bool:
                orch.alive()
                try:
                    status, _ = await bodies.request(anon, "GET", f"{orch_url}/health")
                except aiohttp.ClientConnectorError:
                    return False  # not listening yet
                return status == 200

            # The supervisor registers itself as soon as it starts: let it find the
            # orchestrator listening (a refused first attempt would be retried 5 s later).
            await until(orchestrator_up, 30, "the https orchestrator to answer")
            sup.start()

            async def listed() -> dict[str, Any] | None:
                sup.alive()
                status, devices = await bodies.request(anon, "GET", f"{orch_url}/devices")
                return next(
                    (
                        d
                        for d in devices
                        if status == 200 and d["url"] == sup_url and d["status"] == "healthy"
                    ),
                    None,
                )

            device = await until(listed, 30, "the https supervisor to be listed healthy")
            assert device["name"] == name
            # Its mDNS advertisement says tls=1 (seen by a browser in another process).
            seen = await browser.wait_for(lambda e: e["event"] in ("added", "updated"), 20)
            assert seen["txt"]["tls"] == "1" and seen["port"] == sup_port, seen
            assert seen["txt"]["id"] == device["id"]

            status, module = await bodies.request(
                auth, "POST", f"{orch_url}/modules", data=daemons.module_form("fibo")
            )
            assert status in (200, 201), module
            manifest = {"name": f"tls-{tag}", "sequence": [{"module": "fibo", "func": "fibo"}]}
            status, dep = await bodies.request(
                auth, "POST", f"{orch_url}/deployments?wait=30", json=manifest
            )
            assert status == 201 and dep["state"] == "ACTIVE", dep
            status, run = await bodies.request(
                anon, "POST", f"{orch_url}/deployments/{dep['id']}/executions", json={"param0": 4}
            )
            assert status == 200 and run["value"] == fibo(4), run

            # Failed auth on both; then error paths.
            async with trusting(pki.fleet.cert, "not-the-token") as wrong:
                for session in (anon, wrong):
                    status, _ = await bodies.request(
                        session, "POST", f"{orch_url}/deployments", json=manifest
                    )
                    assert status == 401
                    status, _ = await bodies.request(session, "POST", f"{sup_url}/deploy", json={})
                    assert status == 401
            bad = {"name": "nope", "sequence": [{"module": "nope", "func": "x"}]}
            status, _ = await bodies.request(auth, "POST", f"{orch_url}/deployments", json=bad)
            assert 400 <= status < 500
            status, _ = await bodies.request(
                anon, "GET", f"{sup_url}/{dep['id']}/modules/fibo/fibo", params={"param0": "x"}
            )
            assert 400 <= status < 500
            for url in (f"{orch_url}/metrics", f"{sup_url}/metrics"):
                status, _ = await bodies.request(anon, "GET", url)
                assert status == 200

        async def registered() -> bool:
            return sup.alive() and f"registered with orchestrator {orch_url}" in sup.text()

        await until(registered, 30, "the supervisor's own registration over https")
        assert sup.stop() == 0
        assert orch.stop() == 0
    finally:
        sup.kill()
        orch.kill()
    orch_log, sup_log = orch.text(), sup.text()
    assert " DEBUG " in orch_log and " DEBUG " in sup_log  # --log-level DEBUG took effect
    assert "refused POST /deployments" in orch_log and "refused POST /deploy" in sup_log
    assert f"registered with orchestrator {orch_url}" in sup_log, sup_log[-3000:]
    assert "Traceback" not in orch_log + sup_log
    for where, text in [("orchestrator log", orch_log), ("supervisor log", sup_log)]:
        assert token not in text, where
    assert all(token not in text for text in bodies.texts)
