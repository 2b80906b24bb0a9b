"""Supervisor settings from command-line flags, ``BATON_*`` environment and a device profile.

Precedence: flag > environment > profile > default. The wasmiot variables
``WASMIOT_SUPERVISOR_NAME``, ``WASMIOT_SUPERVISOR_PORT`` and ``WASMIOT_ORCHESTRATOR_URL`` are
accepted as aliases so existing deployment scripts keep working. :func:`load_settings` is pure
apart from reading the profile, token and TLS files it is pointed at (TLS files are loaded
once there, so a bad certificate is a :class:`ConfigError` before anything starts).
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from supervisor.tls import TlsError, client_context, server_context

DEFAULT_PORT = 5000  # the wasmiot reference's default, which its orchestrator assumes


class Profile(msgspec.Struct, forbid_unknown_fields=True):
    """A device profile (``devices/*.toml``): what kind of device this is and what it offers."""

    name: str | None = None
    description: str = ""
    labels: dict[str, str] = {}
    zone: str | None = None
    drivers: dict[str, dict[str, Any]] = {}
    hardware: str = ""


class ConfigError(ValueError):
    """Settings that cannot be used; the message says which flag or variable is wrong."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"  # noqa: S104 (a device daemon serves its network)
    name: str = "baton-supervisor"
    profile: Profile = field(default_factory=Profile)
    profile_dir: Path = field(default_factory=Path.cwd)
    orchestrator_url: str | None = None
    # Never in a repr: settings may end up in a log line or a traceback.
    token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None  # serve HTTPS with this certificate (PEM) …
    tls_key: Path | None = None  # … and this key; both or neither
    tls_ca: Path | None = None  # CA file outbound HTTPS calls verify against (default: system)
    mdns_interfaces: tuple[str, ...] | None = None  # None = all interfaces
    mdns_enabled: bool = True
    history_size: int = 1000
    default_timeout_ms: int = 10_000
    default_memory_bytes: int = 256 * 1024 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    # A returned string/JSON result is held in memory (history, inline replies); output files
    # stay on disk but travel in one request body to the next hop.
    max_result_bytes: int = 1024 * 1024
    max_output_bytes: int = 64 * 1024 * 1024
    renewal_s: float = 900.0
    outbound_timeout_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    log_level: str = "INFO"

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.profile.labels)

    @property
    def tls(self) -> bool:
        """Whether this supervisor serves HTTPS (and says so: mDNS TXT ``tls=1``)."""
        return self.tls_cert is not None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baton-supervisor",
        description="Baton device supervisor: deploys, runs and chains Wasm functions.",
    )
    p.add_argument("--port", type=int, help="HTTP port (env BATON_PORT; default 5000)")
    p.add_argument("--host", help="address to listen on (env BATON_HOST; default 0.0.0.0)")
    p.add_argument(
        "--state-dir", help="where deployments and the device id live (env BATON_STATE_DIR)"
    )
    p.add_argument("--name", help="device name, also the mDNS instance name (env BATON_NAME)")
    p.add_argument(
        "--profile", help="device profile file, e.g. devices/camera-node.toml (env BATON_PROFILE)"
    )
    p.add_argument(
        "--orchestrator", help="orchestrator URL to register with (env BATON_ORCHESTRATOR_URL)"
    )
    p.add_argument("--token-file", help="file holding the bearer token for /deploy and /register")
    p.add_argument(
        "--tls-cert",
        help="serve HTTPS with this PEM certificate (env BATON_TLS_CERT; needs --tls-key)",
    )
    p.add_argument("--tls-key", help="the certificate's PEM private key (env BATON_TLS_KEY)")
    p.add_argument(
        "--tls-ca",
        help="PEM CA file to verify HTTPS orchestrators and next hops with "
        "(env BATON_TLS_CA; default: the system trust store)",
    )
    p.add_argument(
        "--mdns-interfaces",
        help="comma-separated addresses to advertise on, 'all' (default) or 'none' "
        "(env BATON_MDNS_INTERFACES)",
    )
    p.add_argument("--history-size", type=int, help="request-history entries kept (default 1000)")
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        help="seconds in-flight calls get to finish on SIGTERM (default 10; "
        "env BATON_SHUTDOWN_TIMEOUT)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (env BATON_LOG_LEVEL)")
    return p


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


def _default_state_dir(env: Mapping[str, str]) -> Path:
    if env.get("STATE_DIRECTORY"):  # systemd's StateDirectory=
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path.home() / ".local" / "state" / "baton-supervisor"


def load_profile(path: Path) -> Profile:
    try:
        return msgspec.toml.decode(path.read_bytes(), type=Profile)
    except FileNotFoundError as err:
        raise ConfigError(f"profile {path} does not exist") from err
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise ConfigError(f"profile {path}: {err}") from err


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(f"cannot read token file {path}: {err.strerror}") from err
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def tls_files(
    cert: str | None, key: str | None, ca: str | None
) -> tuple[Path | None, Path | None, Path | None]:
    """The TLS paths, checked by loading them once; raises :class:`ConfigError`."""
    if (cert is None) != (key is None):
        raise ConfigError(
            "--tls-cert (BATON_TLS_CERT) and --tls-key (BATON_TLS_KEY) go together: "
            f"got only {'the certificate' if cert else 'the key'}"
        )
    try:
        if cert is not None and key is not None:
            server_context(Path(cert), Path(key))
        if ca is not None:
            client_context(Path(ca))
    except TlsError as err:
        raise ConfigError(str(err)) from err
    return (
        Path(cert) if cert else None,
        Path(key) if key else None,
        Path(ca) if ca else None,
    )


def _interfaces(value: str | None) -> tuple[bool, tuple[str, ...] | None]:
    if value is None or value.strip().lower() in {"", "all"}:
        return True, None
    if value.strip().lower() == "none":
        return False, None
    return True, tuple(v.strip() for v in value.split(",") if v.strip())


def load_settings(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Build settings from ``argv`` (without the program name) and ``env``."""
    args = _parser().parse_args(argv)
    profile_path = args.profile or _env(env, "BATON_PROFILE")
    profile = load_profile(Path(profile_path)) if profile_path else Profile()
    port_text = (
        args.port if args.port is not None else _env(env, "BATON_PORT", "WASMIOT_SUPERVISOR_PORT")
    )
    try:
        port = int(port_text) if port_text is not None else DEFAULT_PORT
    except ValueError as err:
        raise ConfigError(f"port must be a number, got {port_text!r}") from err
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is out of range")
    name = (
        args.name
        or _env(env, "BATON_NAME", "WASMIOT_SUPERVISOR_NAME")
        or profile.name
        or f"baton-{socket.gethostname()}"
    )
    token_file = args.token_file or _env(env, "BATON_TOKEN_FILE")
    token = _read_token(token_file) if token_file else _env(env, "BATON_TOKEN")
    mdns_enabled, interfaces = _interfaces(
        args.mdns_interfaces or _env(env, "BATON_MDNS_INTERFACES")
    )
    tls_cert, tls_key, tls_ca = tls_files(
        args.tls_cert or _env(env, "BATON_TLS_CERT"),
        args.tls_key or _env(env, "BATON_TLS_KEY"),
        args.tls_ca or _env(env, "BATON_TLS_CA"),
    )
    state_dir = args.state_dir or _env(env, "BATON_STATE_DIR")
    renewal = _env(env, "BATON_REGISTER_RENEWAL_TIME", "WASMIOT_REGISTER_RENEWAL_TIME")
    history_size = args.history_size or 1000
    shutdown_text = args.shutdown_timeout or _env(env, "BATON_SHUTDOWN_TIMEOUT")
    try:
        shutdown_timeout = float(shutdown_text) if shutdown_text is not None else 10.0
    except ValueError as err:
        raise ConfigError(f"shutdown timeout must be seconds, got {shutdown_text!r}") from err
    if history_size < 1:
        raise ConfigError("--history-size must be at least 1")
    return Settings(
        state_dir=Path(state_dir) if state_dir else _default_state_dir(env),
        port=port,
        host=args.host or _env(env, "BATON_HOST") or "0.0.0.0",  # noqa: S104
        name=name,
        profile=profile,
        profile_dir=Path(profile_path).resolve().parent if profile_path else Path.cwd(),
        orchestrator_url=args.orchestrator
        or _env(env, "BATON_ORCHESTRATOR_URL", "WASMIOT_ORCHESTRATOR_URL"),
        token=token,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        mdns_interfaces=interfaces,
        mdns_enabled=mdns_enabled,
        history_size=history_size,
        renewal_s=float(renewal) if renewal else 900.0,
        shutdown_timeout_s=shutdown_timeout,
        log_level=(args.log_level or _env(env, "BATON_LOG_LEVEL") or "INFO").upper(),
    )


def settings_from_environment(argv: Sequence[str]) -> Settings:
    return load_settings(argv, os.environ)
