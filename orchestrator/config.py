"""Orchestrator settings from flags and ``BATON_*`` environment (flag > environment > default).

Under systemd the state directory defaults to ``$STATE_DIRECTORY`` (``StateDirectory=``) when
neither ``--state-dir`` nor ``BATON_ORCHESTRATOR_STATE_DIR`` is given. TLS files are loaded once
here, so a bad certificate, key or CA file is a :class:`ConfigError` before anything starts.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.environments import EnvironmentFileError, load_environments_file
from orchestrator.tls import TlsError, client_context, server_context

DEFAULT_PORT = 3000  # the wasmiot reference orchestrator's port
# The built-in apps shipped with the package (orchestrator/builtin/<app>/), deployed at start.
BUILTIN_APPS = Path(__file__).resolve().parent / "builtin"


class ConfigError(ValueError):
    """Settings that cannot be used; the message names the flag or variable."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"  # noqa: S104 (the control plane serves the fleet's network)
    public_url: str | None = None  # how devices reach us (blob downloads); default from host
    # Never in a repr: settings may end up in a log line or a traceback.
    token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None  # serve HTTPS with this certificate (PEM) …
    tls_key: Path | None = None  # … and this key; both or neither
    tls_ca: Path | None = None  # CA file device certificates are verified with (default: system)
    mdns_enabled: bool = True
    mdns_interfaces: tuple[str, ...] | None = None
    health_interval_s: float = 5.0
    lost_after: int = 3
    back_after: int = 2
    execution_deadline_s: float = 60.0
    reconcile_interval_s: float = 10.0
    max_body_bytes: int = 64 * 1024 * 1024
    shutdown_timeout_s: float = 10.0
    log_level: str = "INFO"
    # TOML file of environments loaded at start-up; it wins over stored ones of the same name.
    environments_file: Path | None = None
    # Folder of built-in apps deployed at start-up (and with them the core device that runs
    # their packages); None disables both.
    builtin_apps: Path | None = BUILTIN_APPS

    @property
    def tls(self) -> bool:
        """Whether the API is served over HTTPS."""
        return self.tls_cert is not None

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host  # noqa: S104
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton-orchestrator", description="Baton orchestrator")
    p.add_argument("--port", type=int, help="HTTP port (env BATON_ORCHESTRATOR_PORT; default 3000)")
    p.add_argument("--host", help="listen address (env BATON_ORCHESTRATOR_HOST; default 0.0.0.0)")
    p.add_argument(
        "--state-dir", help="state file and module blobs (env BATON_ORCHESTRATOR_STATE_DIR)"
    )
    p.add_argument(
        "--public-url",
        help="URL devices use to reach this orchestrator (env BATON_ORCHESTRATOR_PUBLIC_URL)",
    )
    p.add_argument(
        "--token-file",
        help="file holding the bearer token for mutating routes (env BATON_TOKEN_FILE, "
        "or the token itself in BATON_TOKEN)",
    )
    p.add_argument(
        "--tls-cert",
        help="serve HTTPS with this PEM certificate (env BATON_TLS_CERT; needs --tls-key)",
    )
    p.add_argument("--tls-key", help="the certificate's PEM private key (env BATON_TLS_KEY)")
    p.add_argument(
        "--tls-ca",
        help="PEM CA file to verify devices' HTTPS certificates with "
        "(env BATON_TLS_CA; default: the system trust store)",
    )
    p.add_argument(
        "--mdns-interfaces",
        help="comma-separated addresses to browse on, 'all' (default) or 'none' "
        "(env BATON_MDNS_INTERFACES)",
    )
    p.add_argument("--health-interval", type=float, help="seconds between device health checks (5)")
    p.add_argument("--lost-after", type=int, help="failed checks before a device is lost (3)")
    p.add_argument("--back-after", type=int, help="good checks before a lost device is back (2)")
    p.add_argument(
        "--reconcile-interval",
        type=float,
        help="seconds between two reconcile cycles of a device (10); device events wake it sooner",
    )
    p.add_argument(
        "--execution-deadline",
        type=float,
        help="seconds an execution may take from its first hop to its final value (60)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        help="seconds in-flight requests get to finish on SIGTERM (default 10; "
        "env BATON_SHUTDOWN_TIMEOUT)",
    )
    p.add_argument(
        "--environments",
        metavar="FILE",
        help="TOML file of environments loaded at start-up, winning over stored ones of the "
        "same name (env BATON_ENVIRONMENTS)",
    )
    p.add_argument(
        "--builtin-apps",
        metavar="DIR",
        help="folder of built-in apps deployed at start-up (env BATON_BUILTIN_APPS; default: "
        "the ones shipped with Baton; an empty value disables them and the core device)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return p


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


def load_settings(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    args = _parser().parse_args(argv)
    port_text = env.get("BATON_ORCHESTRATOR_PORT") or str(DEFAULT_PORT)
    try:
        port = args.port if args.port is not None else int(port_text)
    except ValueError as err:
        raise ConfigError(f"port must be a number, got {port_text!r}") from err
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is out of range")
    # BATON_TOKEN suits a root-only systemd EnvironmentFile= (a DynamicUser= daemon cannot read
    # a root-only token file).
    token = env.get("BATON_TOKEN") or None
    token_file = args.token_file or env.get("BATON_TOKEN_FILE")
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"cannot read token file {token_file}: {err.strerror}") from err
        if not token:
            raise ConfigError(f"token file {token_file} is empty")
    interfaces_text = (args.mdns_interfaces or env.get("BATON_MDNS_INTERFACES") or "all").strip()
    mdns_enabled = interfaces_text.lower() != "none"
    interfaces = (
        None
        if interfaces_text.lower() in {"all", "none"}
        else tuple(i.strip() for i in interfaces_text.split(",") if i.strip())
    )
    state = args.state_dir or env.get("BATON_ORCHESTRATOR_STATE_DIR")
    if not state and env.get("STATE_DIRECTORY"):
        # systemd passes one path per StateDirectory= entry, colon-separated; ours is the first.
        state = env["STATE_DIRECTORY"].split(":")[0]
    shutdown_text = env.get("BATON_SHUTDOWN_TIMEOUT") or "10"
    try:
        shutdown_timeout = (
            args.shutdown_timeout if args.shutdown_timeout is not None else float(shutdown_text)
        )
    except ValueError as err:
        raise ConfigError(f"shutdown timeout must be seconds, got {shutdown_text!r}") from err
    if shutdown_timeout < 0:
        raise ConfigError("the shutdown timeout cannot be negative")
    tls_cert, tls_key, tls_ca = tls_files(
        args.tls_cert or env.get("BATON_TLS_CERT") or None,
        args.tls_key or env.get("BATON_TLS_KEY") or None,
        args.tls_ca or env.get("BATON_TLS_CA") or None,
    )
    public_url = args.public_url or env.get("BATON_ORCHESTRATOR_PUBLIC_URL")
    if tls_cert is not None and public_url and not public_url.lower().startswith("https://"):
        # Devices would download modules over plain HTTP from a port that speaks only TLS.
        raise ConfigError(f"the public URL {public_url!r} must be https:// when TLS is on")
    for flag, value in (
        ("--reconcile-interval", args.reconcile_interval),
        ("--execution-deadline", args.execution_deadline),
    ):
        if value is not None and not (0 < value < float("inf")):
            raise ConfigError(f"{flag} must be a positive number of seconds, got {value}")
    environments_text = args.environments or env.get("BATON_ENVIRONMENTS") or None
    environments_file = Path(environments_text) if environments_text else None
    if environments_file is not None:
        # Read now: a missing or invalid file is a configuration error, before anything starts.
        try:
            load_environments_file(environments_file)
        except EnvironmentFileError as err:
            raise ConfigError(str(err)) from err
    return Settings(
        state_dir=Path(state) if state else Path.home() / ".local/state/baton-orchestrator",
        port=port,
        host=args.host or env.get("BATON_ORCHESTRATOR_HOST") or "0.0.0.0",  # noqa: S104
        public_url=public_url,
        token=token,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        mdns_enabled=mdns_enabled,
        mdns_interfaces=interfaces,
        health_interval_s=args.health_interval or 5.0,
        lost_after=args.lost_after or 3,
        back_after=args.back_after or 2,
        reconcile_interval_s=args.reconcile_interval or 10.0,
        execution_deadline_s=args.execution_deadline or 60.0,
        shutdown_timeout_s=shutdown_timeout,
        environments_file=environments_file,
        builtin_apps=_builtin_apps(args.builtin_apps, env),
        log_level=(args.log_level or env.get("BATON_LOG_LEVEL") or "INFO").upper(),
    )


def _builtin_apps(flag: str | None, env: Mapping[str, str]) -> Path | None:
    """``--builtin-apps`` > ``BATON_BUILTIN_APPS`` > the packaged folder; empty disables."""
    text = flag if flag is not None else env.get("BATON_BUILTIN_APPS")
    if text is None:
        return BUILTIN_APPS
    if not text.strip():
        return None
    path = Path(text)
    if not path.is_dir():
        raise ConfigError(f"--builtin-apps (BATON_BUILTIN_APPS) {text!r} is not a folder")
    return path


def settings_from_environment(argv: Sequence[str]) -> Settings:
    return load_settings(argv, os.environ)
