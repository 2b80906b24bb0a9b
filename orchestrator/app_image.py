"""App images: read and check an application zip, entirely in memory.

An image is a zip holding ``application.json``, one folder per package (``package.json``,
``package.wasm`` and the data files it lists) and an optional ``static/`` site. The folder
names are free; a package is known by the ``name`` in its ``package.json``.

:func:`read_image` is the one entry point. It refuses hostile archives before decompressing
anything it does not have to (traversal, symlinks, encryption, odd compression, bombs: that
is :mod:`orchestrator.safe_zip`'s job), never writes to disk, and checks every package against
its real Wasm imports and exports. Every
refusal is an :class:`ImageError` carrying the HTTP status and the field (an entry name or a
JSON path inside the image) of the *first* problem in a stable order, so the same bytes always
give the same error. It is CPU-bound: async callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec

from orchestrator.manifests import NAME_PATTERN, locate_error
from orchestrator.model import FunctionSpec, Limits
from orchestrator.safe_zip import ImageError, ImageLimits, read_entries
from orchestrator.wasm_inspect import BYTES_TYPES, InvalidModule, inspect_wasm, parse_functions
from supervisor.protocol import check_name

__all__ = [
    "SCHEMA_VERSION",
    "AppImage",
    "ApplicationSpec",
    "ImageError",
    "ImageLimits",
    "Package",
    "PackageSpec",
    "PipelineSpec",
    "StaticSite",
    "StepSpec",
    "image_digest",
    "read_image",
]

SCHEMA_VERSION = 1
APPLICATION_JSON = "application.json"
PACKAGE_JSON = "package.json"
PACKAGE_WASM = "package.wasm"
STATIC_DIR = "static"
STATIC_JSON = "static.json"
WASI_NAMESPACES = frozenset({"wasi_snapshot_preview1", "wasi_unstable"})
"""Import namespaces every device provides: not part of a package's ``requires``."""
_DEFAULT_LIMITS = ImageLimits()


class StepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One pipeline step: a package *name* of this image and one of its functions."""

    module: str
    func: str


class PipelineSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    sequence: list[StepSpec]
    spread: bool = False
    limits: dict[str, Limits] = {}  # "package.func" -> limits


class ApplicationSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The image's ``application.json``.

    ``uses`` maps a name pipelines may use as a step's ``module`` to a built-in package the
    orchestrator provides (``"datalist": "datalist@1.0.0"``): it is not in the image, so
    its functions are checked when the image is pushed, against the orchestrator's own.
    """

    schemaVersion: int
    name: str
    version: str
    pipelines: list[PipelineSpec]
    packages: list[str]
    description: str = ""
    uses: dict[str, str] = {}


class PackageSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A package folder's ``package.json``."""

    name: str
    version: str
    functions: dict[str, Any]
    requires: list[str] = []
    files: list[str] = []
    description: str = ""
    runtime: Literal["wasm", "core"] = "wasm"


class _StaticSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    index: str = "index.html"


@dataclass(frozen=True)
class Package:
    """A checked package: ``wasm`` is None for a ``core`` (built-in, native) package."""

    spec: PackageSpec
    folder: str
    wasm: bytes | None
    files: dict[str, bytes]
    imports: list[tuple[str, str]]
    exports: dict[str, int]
    functions: dict[str, FunctionSpec]


@dataclass(frozen=True)
class StaticSite:
    """The ``static/`` folder: ``files`` keyed by path relative to it (``static.json`` left out)."""

    name: str
    index: str
    files: dict[str, bytes]


@dataclass(frozen=True)
class AppImage:
    app: ApplicationSpec
    packages: dict[str, Package]  # keyed by package name
    static: StaticSite | None
    digest: str  # "sha256:<hex>" of the zip bytes
    size: int

    def pipeline(self, name: str | None) -> PipelineSpec:
        """The pipeline called ``name``; None means the first (usually the only) one."""
        if name is None:
            return self.app.pipelines[0]
        for pipeline in self.app.pipelines:
            if pipeline.name == name:
                return pipeline
        known = ", ".join(p.name for p in self.app.pipelines)
        raise ImageError(
            f"application {self.app.name} has no pipeline {name!r} (has: {known})",
            field="pipeline",
        )


def image_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_image(
    data: bytes, limits: ImageLimits = _DEFAULT_LIMITS, *, allow_core: bool = False
) -> AppImage:
    """Check ``data`` as an app image and return it parsed; raise :class:`ImageError` if not.

    Statuses: 400 not a readable zip (corrupt, CRC error); 413 over a limit of ``limits``;
    422 a hostile entry or an invalid application. ``allow_core`` admits packages with
    ``"runtime": "core"`` (only the orchestrator's built-in apps may use it).
    """
    if len(data) > limits.max_image_bytes:
        raise ImageError(
            f"image is {len(data)} bytes, more than {limits.max_image_bytes}",
            field="image",
            status=413,
        )
    entries = read_entries(data, limits)
    return _assemble(entries, data, allow_core=allow_core)


# --- the application -------------------------------------------------------------------------

_S = TypeVar("_S", bound=msgspec.Struct)


def _decode(raw: bytes, kind: type[_S], where: str) -> _S:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as err:
        field, message = locate_error(str(err))
        raise ImageError(message, field=f"{where}.{field}" if field else where) from err
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ImageError(f"not valid JSON: {err}", field=where) from err


def _name(value: str, field: str, *, pattern: bool = False) -> None:
    try:
        check_name(value, field)
    except ValueError as err:
        raise ImageError(f"unsafe name {value!r}", field=field) from err
    if pattern and not NAME_PATTERN.fullmatch(value):
        raise ImageError(
            "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
            field=field,
        )


def _assemble(entries: dict[str, bytes], data: bytes, *, allow_core: bool) -> AppImage:
    if APPLICATION_JSON not in entries:
        raise ImageError("the image has no application.json at its root", field=APPLICATION_JSON)
    folders: dict[str, dict[str, bytes]] = {}
    for path in sorted(entries):
        head, sep, rest = path.partition("/")
        if not sep:
            if path != APPLICATION_JSON:
                raise ImageError("unexpected file at the image root", field=path)
            continue
        folders.setdefault(head, {})[rest] = entries[path]
    app = _decode(entries[APPLICATION_JSON], ApplicationSpec, APPLICATION_JSON)
    _check_application(app)
    static = _static(folders.pop(STATIC_DIR, None), app)
    packages: dict[str, Package] = {}
    for folder in sorted(folders):
        package = _package(folder, folders[folder], allow_core=allow_core)
        if package.spec.name in packages:
            other = packages[package.spec.name].folder
            raise ImageError(
                f"package {package.spec.name!r} is in both {other}/ and {folder}/",
                field="packages",
            )
        packages[package.spec.name] = package
    _check_packages(app, packages)
    return AppImage(app, packages, static, image_digest(data), len(data))


def _check_application(app: ApplicationSpec) -> None:
    where = APPLICATION_JSON
    if app.schemaVersion != SCHEMA_VERSION:
        raise ImageError(
            f"unsupported schema version {app.schemaVersion} (this orchestrator reads "
            f"{SCHEMA_VERSION})",
            field=f"{where}.schemaVersion",
        )
    _name(app.name, f"{where}.name", pattern=True)
    _name(app.version, f"{where}.version")
    if not app.pipelines:
        raise ImageError("must list at least one pipeline", field=f"{where}.pipelines")
    seen: set[str] = set()
    for i, pipeline in enumerate(app.pipelines):
        at = f"{where}.pipelines[{i}]"
        _name(pipeline.name, f"{at}.name", pattern=True)
        if pipeline.name in seen:
            raise ImageError(f"pipeline {pipeline.name!r} listed twice", field=f"{at}.name")
        seen.add(pipeline.name)
        if not pipeline.sequence:
            raise ImageError("must list at least one step", field=f"{at}.sequence")
        for key, limit in pipeline.limits.items():
            if (attr := limit.nonpositive()) is not None:
                raise ImageError("must be positive", field=f"{at}.limits[{key!r}].{attr}")
    listed: set[str] = set()
    for i, name in enumerate(app.packages):
        _name(name, f"{where}.packages[{i}]")
        if name in listed:
            raise ImageError(f"package {name!r} listed twice", field=f"{where}.packages[{i}]")
        listed.add(name)
    for name, ref in app.uses.items():
        _name(name, f"{where}.uses")
        package, at, version = ref.partition("@")
        if not at or not package or not version:
            raise ImageError(
                f"{ref!r} is not a built-in package's name@version", field=f"{where}.uses.{name}"
            )
        _name(package, f"{where}.uses.{name}")
        _name(version, f"{where}.uses.{name}")
        if name in listed:
            raise ImageError(
                f"{name!r} is both a package of the image and a built-in one it uses",
                field=f"{where}.uses.{name}",
            )


def _check_packages(app: ApplicationSpec, packages: Mapping[str, Package]) -> None:
    missing = sorted(set(app.packages) - set(packages))
    if missing:
        raise ImageError(
            f"no package folder holds package(s) {', '.join(missing)}", field="packages"
        )
    extra = sorted(set(packages) - set(app.packages))
    if extra:
        raise ImageError(
            f"package(s) {', '.join(extra)} are in the image but not in application.json",
            field="packages",
        )
    for i, pipeline in enumerate(app.pipelines):
        at = f"{APPLICATION_JSON}.pipelines[{i}]"
        steps: set[str] = set()
        for j, step in enumerate(pipeline.sequence):
            package = packages.get(step.module)
            if package is None and step.module in app.uses:
                steps.add(f"{step.module}.{step.func}")  # checked against the orchestrator's
                continue
            if package is None:
                raise ImageError(
                    f"unknown package {step.module!r}", field=f"{at}.sequence[{j}].module"
                )
            if step.func not in package.functions:
                known = ", ".join(sorted(package.functions))
                raise ImageError(
                    f"package {step.module} describes no function {step.func!r} (has: {known})",
                    field=f"{at}.sequence[{j}].func",
                )
            steps.add(f"{step.module}.{step.func}")
        for key in pipeline.limits:
            if key not in steps:
                raise ImageError(
                    f"{key!r} is not a step of this pipeline ('package.func')",
                    field=f"{at}.limits[{key!r}]",
                )


class _AnyArity(int):
    """Equal to every arity: a core package has no Wasm, so its description sets the arity."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = int.__hash__


def _package(folder: str, files: dict[str, bytes], *, allow_core: bool) -> Package:
    where = f"{folder}/{PACKAGE_JSON}"
    _name(folder, folder)
    if PACKAGE_JSON not in files:
        raise ImageError("a package folder must hold package.json", field=where)
    spec = _decode(files[PACKAGE_JSON], PackageSpec, where)
    _name(spec.name, f"{where}.name")
    _name(spec.version, f"{where}.version")
    listed: set[str] = set()
    for i, file in enumerate(spec.files):
        _name(file, f"{where}.files[{i}]")
        if file in {PACKAGE_JSON, PACKAGE_WASM} or file in listed:
            raise ImageError(f"file {file!r} listed twice or reserved", field=f"{where}.files[{i}]")
        listed.add(file)
    if spec.runtime == "core":
        if not allow_core:
            raise ImageError(
                "only built-in apps may use the core runtime", field=f"{where}.runtime"
            )
        if spec.requires:
            raise ImageError("a core package requires no host function", field=f"{where}.requires")
        wasm: bytes | None = None
        imports: list[tuple[str, str]] = []
        functions = _functions(spec, {name: _AnyArity() for name in spec.functions}, where)
        exports = {
            name: sum(2 if p.type in BYTES_TYPES else 1 for p in fn.params)
            for name, fn in functions.items()
        }
    else:
        wasm = files.get(PACKAGE_WASM)
        if wasm is None:
            raise ImageError(
                "a wasm package must hold package.wasm", field=f"{folder}/{PACKAGE_WASM}"
            )
        try:
            imports, exports = inspect_wasm(wasm)
        except InvalidModule as err:
            raise ImageError(_message(err), field=f"{folder}/{PACKAGE_WASM}") from err
        functions = _functions(spec, exports, where)
        _check_requires(spec, imports, where)
    _check_files(folder, spec, functions, files, where)
    data = {name: files[name] for name in spec.files}
    return Package(spec, folder, wasm, data, imports, exports, functions)


def _functions(
    spec: PackageSpec, exports: Mapping[str, int], where: str
) -> dict[str, FunctionSpec]:
    try:
        return parse_functions(spec.functions, exports)
    except InvalidModule as err:
        raise ImageError(_message(err), field=f"{where}.{err.field or 'functions'}") from err


def _message(err: InvalidModule) -> str:
    text = str(err)
    return text.removeprefix(f"{err.field}: ") if err.field else text


def _check_requires(spec: PackageSpec, imports: list[tuple[str, str]], where: str) -> None:
    needed = {name for namespace, name in imports if namespace not in WASI_NAMESPACES}
    declared = set(spec.requires)
    if len(declared) != len(spec.requires) or declared != needed:
        problems = []
        if missing := sorted(needed - declared):
            problems.append(f"missing (imported by package.wasm): {', '.join(missing)}")
        if extra := sorted(declared - needed):
            problems.append(f"extra (not imported by package.wasm): {', '.join(extra)}")
        if not problems:
            problems.append("lists a host function twice")
        raise ImageError(
            "must list exactly the host functions the module imports; " + "; ".join(problems),
            field=f"{where}.requires",
        )


def _check_files(
    folder: str,
    spec: PackageSpec,
    functions: Mapping[str, FunctionSpec],
    files: Mapping[str, bytes],
    where: str,
) -> None:
    for fname in sorted(functions):
        for mount in functions[fname].mounts_at("deployment"):
            if mount.name not in spec.files:
                raise ImageError(
                    f"deployment mount {mount.name!r} of function {fname} is not a listed file",
                    field=f"{where}.files",
                )
    for file in spec.files:
        if file not in files:
            raise ImageError(
                "listed in package.json but not in the image", field=f"{folder}/{file}"
            )
    allowed = {PACKAGE_JSON, *spec.files}
    if spec.runtime == "wasm":
        allowed.add(PACKAGE_WASM)
    for path in sorted(files):
        if path not in allowed:
            raise ImageError(
                'unexpected file (list data files in package.json "files")',
                field=f"{folder}/{path}",
            )


def _static(files: dict[str, bytes] | None, app: ApplicationSpec) -> StaticSite | None:
    if files is None:
        return None
    where = f"{STATIC_DIR}/{STATIC_JSON}"
    if STATIC_JSON in files:
        spec = _decode(files[STATIC_JSON], _StaticSpec, where)
    else:
        spec = _StaticSpec(name=app.name)
    _name(spec.name, f"{where}.name")
    site = {path: body for path, body in files.items() if path != STATIC_JSON}
    for path in sorted(site):
        for segment in path.split("/"):
            _name(segment, f"{STATIC_DIR}/{path}")
    if spec.index not in site:
        raise ImageError(f"index {spec.index!r} is not in static/", field=f"{where}.index")
    return StaticSite(spec.name, spec.index, site)
