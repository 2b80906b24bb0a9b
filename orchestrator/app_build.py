"""Build an app image from an app source directory: run the packages' build scripts, then zip.

A source directory mirrors the image (see :mod:`orchestrator.app_image`)::

    application.json
    <folder>/package.json    # any direct subfolder holding one is a package
    <folder>/build.sh        # optional: run with `sh build.sh` to make package.wasm
    <folder>/package.wasm
    <folder>/<files listed in package.json "files">
    static/...               # optional web site (dotfiles are left out)

Only what the image needs is packed: sources, scripts and anything else in a package folder
stay behind. The zip is reproducible: the same content gives the same bytes (and digest) on
any machine, whatever the paths, mtimes or permissions of the source files.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import msgspec

from orchestrator.app_image import (
    APPLICATION_JSON,
    PACKAGE_JSON,
    PACKAGE_WASM,
    STATIC_DIR,
    AppImage,
    ImageLimits,
    read_image,
)

__all__ = [
    "BUILD_SCRIPT",
    "BuildError",
    "BuildResult",
    "build",
    "pack",
    "package_folders",
    "zip_entries",
]

BUILD_SCRIPT = "build.sh"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold
_FILE_ATTR = (stat.S_IFREG | 0o644) << 16
_UNIX = 3
_STDERR_LINES = 20


class BuildError(Exception):
    """A build script failed, or the source directory cannot be read."""


@dataclass(frozen=True)
class BuildResult:
    path: Path | None  # where the image was written (None: not written)
    data: bytes
    digest: str
    image: AppImage


def package_folders(src: Path) -> list[Path]:
    """Direct subfolders of ``src`` holding a package.json (``static/`` excepted), sorted."""
    try:
        children = sorted(src.iterdir())
    except OSError as err:
        raise BuildError(f"cannot read {src}: {err.strerror or err}") from err
    return [
        p for p in children if p.is_dir() and p.name != STATIC_DIR and (p / PACKAGE_JSON).is_file()
    ]


def pack(src: Path, *, allow_core: bool = False) -> bytes:
    """Zip the app in ``src`` reproducibly (no build script is run) and check the result.

    Raises :class:`~orchestrator.app_image.ImageError` if the image is invalid and
    :class:`BuildError` if a file cannot be read.
    """
    return _pack(src, allow_core=allow_core)[0]


def _pack(src: Path, *, allow_core: bool) -> tuple[bytes, AppImage]:
    folders = package_folders(src)
    entries: dict[str, bytes] = {}
    if (src / APPLICATION_JSON).is_file():
        entries[APPLICATION_JSON] = _read(src / APPLICATION_JSON)
    for folder in folders:
        meta = _read(folder / PACKAGE_JSON)
        entries[f"{folder.name}/{PACKAGE_JSON}"] = meta
        wanted = [PACKAGE_WASM, *_listed_files(meta)]
        for name in wanted:
            path = folder / name
            # A missing file is left for read_image to report, with the image's field name.
            if path.is_file():
                entries[f"{folder.name}/{name}"] = _read(path)
    static = src / STATIC_DIR
    if static.is_dir():
        for path in sorted(static.rglob("*")):
            rel = path.relative_to(src)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                entries[rel.as_posix()] = _read(path)
    data = zip_entries(entries)
    return data, read_image(data, ImageLimits(), allow_core=allow_core)


def zip_entries(entries: dict[str, bytes]) -> bytes:
    """A zip of ``entries`` whose bytes depend on nothing but the names and contents."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = _FILE_ATTR
            info.create_system = _UNIX
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name], compresslevel=9)
    return buffer.getvalue()


def build(
    src: Path, out: Path | None = None, *, run_scripts: bool = True, timeout_s: float = 600
) -> BuildResult:
    """Run each package's ``build.sh`` (sorted by folder), pack, and write the image.

    Scripts run as ``sh build.sh`` in their folder with only ``PATH`` kept from the
    environment and ``SOURCE_DATE_EPOCH=0``; each gets ``timeout_s`` seconds. The image goes to
    ``out`` (default ``src/build/<name>-<version>.zip``), written atomically.
    """
    if run_scripts:
        for folder in package_folders(src):
            if (folder / BUILD_SCRIPT).is_file():
                _run_script(folder, timeout_s)
    data, image = _pack(src, allow_core=False)
    target = out or src / "build" / f"{image.app.name}-{image.app.version}.zip"
    _write_atomic(target, data)
    return BuildResult(target, data, image.digest, image)


def _run_script(folder: Path, timeout_s: float) -> None:
    env = {"PATH": os.environ.get("PATH", os.defpath), "SOURCE_DATE_EPOCH": "0"}
    try:
        proc = subprocess.Popen(
            ["sh", BUILD_SCRIPT],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # so a timeout can stop the compilers it started too
        )
    except OSError as err:
        raise BuildError(f"{folder.name}: cannot run {BUILD_SCRIPT}: {err}") from err
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BuildError(
            f"{folder.name}: {BUILD_SCRIPT} did not finish within {timeout_s:g} s"
        ) from err
    if proc.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()[-_STDERR_LINES:]
        detail = "\n".join(lines) or "(no output on stderr)"
        raise BuildError(
            f"{folder.name}: {BUILD_SCRIPT} failed with exit status {proc.returncode}:\n{detail}"
        )


def _listed_files(meta: bytes) -> list[str]:
    """The ``files`` of a package.json, or none if it is unreadable (read_image will say why)."""
    try:
        doc = msgspec.json.decode(meta)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return []
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        return []
    # Only plain names: a hostile "../x" must not make the packer read outside the folder.
    return [f for f in files if isinstance(f, str) and f and "/" not in f and f not in {".", ".."}]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise BuildError(f"cannot read {path}: {err.strerror or err}") from err


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as err:
        raise BuildError(f"cannot write {target}: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)
