"""A Debian root for systemd-nspawn: built once with debootstrap, copied fresh for every run.

The cached root holds only Debian packages; everything Baton-specific (venv, wheels, units,
configuration) goes into the per-run copy, so a change to the checkout never needs a rebuild.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SUITE = "bookworm"
# python3-venv brings ensurepip, which is how the README has users create /opt/baton/venv.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
CACHE_DIR = Path(os.environ.get("BATON_NSROOT_CACHE", "/var/cache/baton"))
DEBOOTSTRAP_TIMEOUT_S = 900


def debian_mirror(sources: Path = SOURCES) -> str:
    """The host's own Debian mirror (first ``URIs:`` of a stanza serving the suite)."""
    if override := os.environ.get("BATON_DEBIAN_MIRROR"):
        return override
    try:
        text = sources.read_text(encoding="utf-8")
    except OSError:
        return DEFAULT_MIRROR
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[:1].isalpha()
        )
        suites = fields.get("Suites", "").split()
        if SUITE in suites and fields.get("URIs", "").split():
            return fields["URIs"].split()[0]
    return DEFAULT_MIRROR


def cached_root_path() -> Path:
    # The name changes with the package list, so editing PACKAGES builds a new cache
    # instead of silently reusing a root that lacks the new package.
    digest = hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)}".encode()).hexdigest()[:10]
    return CACHE_DIR / f"nsroot-{SUITE}-{digest}"


def _remove_abandoned_builds() -> None:
    """Delete build dirs whose builder died (the pid is part of the name)."""
    for path in CACHE_DIR.glob(".building-*"):
        pid = path.name.split("-")[1]
        try:
            if pid.isdigit() and int(pid) > 0:
                os.kill(int(pid), 0)
                continue  # still building
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, owned by someone else
        shutil.rmtree(path, ignore_errors=True)


def ensure_root() -> tuple[Path, float | None]:
    """The cached root, built first if missing; returns it and the build time (None = cached)."""
    final = cached_root_path()
    if final.is_dir():
        return final, None
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (`make test-system` installs it)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds()
    started = time.monotonic()
    # Build beside the final path and rename: an interrupted debootstrap leaves only a
    # .building-* directory, never a half-built root under the name that is reused.
    work = Path(tempfile.mkdtemp(prefix=f".building-{os.getpid()}-", dir=CACHE_DIR))
    try:
        target = work / "root"
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(target),
                debian_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=DEBOOTSTRAP_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        try:
            target.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent builder finishing first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final, time.monotonic() - started


def copy_root(source: Path, dest: Path) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(dest)], check=True)


def nspawn_run(
    root: Path,
    argv: Sequence[str],
    binds_ro: Sequence[tuple[Path, str]] = (),
    setenv: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run one command in ``root`` (no boot): /proc and /dev are set up, unlike with chroot."""
    return subprocess.run(
        [
            "systemd-nspawn",
            "-q",
            # No host systemd: nothing to register with or to make a scope unit in.
            "--register=no",
            "--keep-unit",
            "--private-network",
            "-D",
            str(root),
            *(f"--bind-ro={host}:{inside}" for host, inside in binds_ro),
            *(f"--setenv={assignment}" for assignment in setenv),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build_wheels(project: Path, wheel_dir: Path) -> None:
    """Baton and every dependency as wheels, so the container installs with --no-index."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheel_dir), str(project)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{proc.stdout}{proc.stderr}")
