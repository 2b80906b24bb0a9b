"""TLS for the daemon's listening socket and for its outbound HTTPS calls.

:func:`server_context` loads the certificate and key the daemon serves HTTPS with;
:func:`client_context` is what outbound calls verify peers against: the CA file given with
``--tls-ca``, or the system trust store. Both refuse anything older than TLS 1.2, and the
client context always verifies the peer's certificate and host name (there is no switch to
turn that off). Every unusable file is a :class:`TlsError` naming the file and what is wrong,
raised at start-up, so the daemon exits with status 2 instead of failing later.

This is a near copy of ``supervisor/tls.py`` on purpose: the orchestrator may import only
the supervisor's protocol module (an import-linter contract), and this is too small to share.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

__all__ = ["MINIMUM_VERSION", "TlsError", "client_context", "server_context"]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def _check_pem(path: Path, what: str) -> None:
    """Fail early, naming ``path``, when it cannot be read or holds no PEM block."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TlsError(f"cannot read the TLS {what} {path}: {err.strerror or err}") from err
    if b"-----BEGIN " not in data:
        raise TlsError(f"the TLS {what} {path} is not a PEM file (no '-----BEGIN' line)")


def _check_certificates(path: Path, what: str) -> None:
    """Fail, naming ``path``, when its PEM blocks are not valid X.509 certificates."""
    _check_pem(path, what)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=path)
    except ssl.SSLError as err:
        raise TlsError(f"the TLS {what} {path} holds no valid certificate ({_why(err)})") from err


def _why(err: ssl.SSLError) -> str:
    """OpenSSL's reason in words, without the C source location."""
    text = err.reason or re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(err.args[-1] if err.args else err))
    return "malformed PEM data" if "PEM lib" in text else text


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a daemon.
    raise TlsError("encrypted")


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The context to serve HTTPS with ``cert`` (PEM, may include the chain) and ``key``."""
    _check_certificates(cert, "certificate")
    _check_pem(key, "key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except TlsError as err:
        raise TlsError(
            f"the TLS key {key} is encrypted; give the daemon an unencrypted key "
            "readable only by its user"
        ) from err
    except ssl.SSLError as err:
        if "KEY_VALUES_MISMATCH" in str(err):
            raise TlsError(f"the TLS key {key} does not belong to the certificate {cert}") from err
        raise TlsError(f"the TLS key {key} is not a usable private key ({_why(err)})") from err
    return context


def client_context(ca: Path | None) -> ssl.SSLContext:
    """The context outbound HTTPS calls verify peers with: ``ca`` only, or the system store.

    Certificates are always required and host names (IP SANs for addresses) always checked.
    """
    if ca is not None:
        _check_certificates(ca, "CA file")
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    context.minimum_version = MINIMUM_VERSION
    return context
