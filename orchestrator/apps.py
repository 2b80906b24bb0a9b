"""The app registry: app images by ``name@version``, their packages as modules, their pages.

Adding an image checks everything that could refuse it first (the image itself, its
packages against stored module versions, its ``name@version`` against stored apps) and only
then writes: the zip as a blob, each package through the module registry, each static file
as a content-addressed blob, and the app record. So a refused image leaves nothing behind,
and the same bytes again change nothing. Static files are looked up in the record's file map,
never on the filesystem by a requested path.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import time

import msgspec

from orchestrator.app_image import (
    AppImage,
    ImageError,
    ImageLimits,
    Package,
    PipelineSpec,
    read_image,
)
from orchestrator.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, Unprocessable
from orchestrator.model import ModuleRecord
from orchestrator.modules import ModuleRegistry, core_record
from orchestrator.store import Store

TABLE = "apps"
DEFAULT_LIMITS = ImageLimits()


class StaticInfo(msgspec.Struct, frozen=True):
    """An app's static site: ``files`` maps a path under ``static/`` to its blob's sha256."""

    name: str
    index: str
    files: dict[str, str]


class AppRecord(msgspec.Struct, frozen=True):
    """A stored app version. ``packages``: package name → its module ref ``name@version``;
    ``uses``: the built-in packages its pipelines use, the same way."""

    name: str
    version: str
    digest: str  # "sha256:<hex>" of the zip
    size: int
    description: str
    pipelines: list[PipelineSpec]
    packages: dict[str, str]
    static: StaticInfo | None
    uploadedAt: float
    builtin: bool = False
    uses: dict[str, str] = {}

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def blob(self) -> str:
        return self.digest.removeprefix("sha256:")


def image_error(err: ImageError) -> Exception:
    """An :class:`ImageError` as the orchestrator error the API answers with."""
    kind = {400: BadRequest, 413: PayloadTooLarge}.get(err.status, Unprocessable)
    return kind(err.message, field=err.field)


def _expected_module(package: Package) -> ModuleRecord:
    """The record the module registry would store for ``package`` (for the pre-check)."""
    spec = package.spec
    if spec.runtime == "core" or package.wasm is None:
        return core_record(spec.name, spec.version, package.functions, package.files)
    return ModuleRecord(
        name=spec.name,
        version=spec.version,
        digest=hashlib.sha256(package.wasm).hexdigest(),
        imports=list(package.imports),
        exports=dict(package.exports),
        functions=dict(package.functions),
        data_files={m: hashlib.sha256(d).hexdigest() for m, d in sorted(package.files.items())},
    )


class AppRegistry:
    def __init__(
        self, store: Store, modules: ModuleRegistry, limits: ImageLimits = DEFAULT_LIMITS
    ) -> None:
        self.store = store
        self.limits = limits
        self._modules = modules
        self._records: dict[str, AppRecord] = {}  # "name@version" -> record
        self._lock = asyncio.Lock()  # one add at a time: check-then-write must not interleave

    async def load(self) -> None:
        for doc in await self.store.all(TABLE):
            record = msgspec.convert(doc["record"], AppRecord)
            self._records[record.ref] = record

    async def add(self, data: bytes, *, allow_core: bool = False) -> tuple[AppRecord, bool]:
        """Store an app image; returns its record and whether anything was written.

        Refusals (nothing written): 400/413/422 from the image, 409 on ``version`` when the
        app's ``name@version`` or one of its packages' is stored with other content.
        """
        try:
            image = await asyncio.to_thread(read_image, data, self.limits, allow_core=allow_core)
        except ImageError as err:
            raise image_error(err) from err
        async with self._lock:
            existing = self._records.get(f"{image.app.name}@{image.app.version}")
            if existing is not None:
                if existing.digest == image.digest:
                    return existing, False
                raise Conflict(
                    f"app {existing.ref} already exists with other content "
                    f"({existing.digest}); publish a new version",
                    field="version",
                )
            self._check_packages(image)
            self._check_uses(image)
            record = await self._write(image, data, builtin=allow_core)
            return record, True

    def _check_packages(self, image: AppImage) -> None:
        for name in sorted(image.packages):
            expected = _expected_module(image.packages[name])
            stored = self._modules.get(expected.ref)
            if stored is not None and stored != expected:
                raise Conflict(
                    f"package {expected.ref} already exists with other content; give the "
                    "package a new version",
                    field=f"packages.{name}.version",
                )

    def _check_uses(self, image: AppImage) -> None:
        """Every built-in package the pipelines use exists here, with the functions used."""
        for name, ref in sorted(image.app.uses.items()):
            field = f"application.json.uses.{name}"
            module = self._modules.get(ref)
            if module is None or module.runtime != "core":
                raise Unprocessable(
                    f"this orchestrator has no built-in package {ref} (is it started with "
                    "--builtin-apps disabled?)",
                    field=field,
                )
            for pipeline in image.app.pipelines:
                for step in pipeline.sequence:
                    if step.module == name and step.func not in module.functions:
                        known = ", ".join(sorted(module.functions))
                        raise Unprocessable(
                            f"built-in package {ref} has no function {step.func!r} (has: {known})",
                            field=field,
                        )

    async def _write(self, image: AppImage, data: bytes, *, builtin: bool) -> AppRecord:
        await self.store.blobs.put(data)
        refs: dict[str, str] = {}
        for name in sorted(image.packages):
            package = image.packages[name]
            if package.wasm is None:
                module, _ = await self._modules.add_core(
                    package.spec.name, package.spec.version, package.functions, package.files
                )
            else:
                module, _ = await self._modules.add(
                    package.spec.name,
                    package.spec.version,
                    package.wasm,
                    package.spec.functions,
                    package.files,
                )
            refs[name] = module.ref
        static = None
        if image.static is not None:
            files = {
                p: await self.store.blobs.put(b) for p, b in sorted(image.static.files.items())
            }
            static = StaticInfo(image.static.name, image.static.index, files)
        record = AppRecord(
            name=image.app.name,
            version=image.app.version,
            digest=image.digest,
            size=image.size,
            description=image.app.description,
            pipelines=list(image.app.pipelines),
            packages=refs,
            uses=dict(image.app.uses),
            static=static,
            uploadedAt=time.time(),
            builtin=builtin,
        )
        await self.store.put(
            TABLE, "ref", {"ref": record.ref, "record": msgspec.to_builtins(record)}
        )
        self._records[record.ref] = record
        return record

    # --- queries -------------------------------------------------------------------------

    def all(self) -> list[AppRecord]:
        return sorted(self._records.values(), key=lambda r: (r.name, r.uploadedAt))

    def versions(self, name: str) -> list[AppRecord]:
        """Every version of ``name``, oldest upload first (404 when there is none)."""
        found = [r for r in self.all() if r.name == name]
        if not found:
            raise NotFound(f"no app {name[:80]!r}", field="app")
        return found

    def get(self, name: str, version: str | None = None) -> AppRecord:
        """``name@version``, or the latest upload of ``name`` when ``version`` is None."""
        if version is None:
            return self.versions(name)[-1]
        record = self._records.get(f"{name}@{version}")
        if record is None:
            raise NotFound(f"no app {name[:80]}@{version[:80]}", field="version")
        return record

    def by_digest(self, digest: str) -> AppRecord | None:
        return next((r for r in self._records.values() if r.digest == digest), None)

    async def image_bytes(self, record: AppRecord) -> bytes:
        return await asyncio.to_thread(self.store.blobs.path(record.blob).read_bytes)

    def static_file(self, record: AppRecord, path: str) -> tuple[str, str]:
        """(blob sha256, content type) of ``path`` in the app's static site; ``""`` is the
        index. Only names in the record's map resolve, so no request reaches a file by name."""
        if record.static is None:
            raise NotFound(f"app {record.ref} has no static site", field="path")
        wanted = path or record.static.index
        blob = record.static.files.get(wanted)
        if blob is None and wanted.endswith("/"):
            blob = record.static.files.get(wanted + record.static.index)
        if blob is None:
            raise NotFound(f"app {record.ref} has no static file {wanted[:200]!r}", field="path")
        ctype, _ = mimetypes.guess_type(wanted.rsplit("/", 1)[-1])
        return blob, ctype or "application/octet-stream"
