"""The module registry: upload, inspect, store by digest, resolve ``name`` / ``name@version``.

Uploading reads the binary's real imports and exports (invalid Wasm is refused), checks the
function descriptions against them, and stores the binary and data files as content-addressed
blobs the devices download by digest. Versions are kept per name; ``name`` alone resolves to
the most recently uploaded version.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from orchestrator.errors import NotFound, Unprocessable
from orchestrator.model import FunctionSpec, Manifest, ModuleRecord
from orchestrator.store import Store
from orchestrator.wasm_inspect import BYTES_TYPES, InvalidModule, inspect_wasm, parse_functions
from supervisor.protocol import check_name


class ModuleRegistry:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._records: dict[str, ModuleRecord] = {}  # "name@version" -> record
        self._uploaded: dict[str, float] = {}

    async def load(self) -> None:
        for doc in await self._store.all("modules"):
            record = msgspec.convert(doc["record"], ModuleRecord)
            self._records[record.ref] = record
            self._uploaded[record.ref] = float(doc.get("uploadedAt", 0.0))

    async def add(
        self,
        name: str,
        version: str,
        wasm: bytes,
        functions: bytes | Mapping[str, Any],
        data_files: Mapping[str, bytes],
    ) -> tuple[ModuleRecord, bool]:
        """Store a module version; returns it and whether anything changed.

        Re-uploading identical content is a no-op; different content under an existing
        ``name@version`` is refused (versions are immutable).
        """
        for field, value in (
            ("name", name),
            ("version", version),
            *((f"files.{m}", m) for m in data_files),
        ):
            try:
                check_name(value, field)
            except ValueError as err:
                raise Unprocessable(str(err), field=field) from err
        try:
            imports, exports = inspect_wasm(wasm)
        except InvalidModule as err:
            raise Unprocessable(str(err), field="wasm") from err
        try:
            specs = parse_functions(functions, exports)
        except InvalidModule as err:
            raise Unprocessable(str(err), field="functions") from err
        for spec in specs.values():
            for mount in spec.mounts_at("deployment"):
                if mount.name not in data_files:
                    raise Unprocessable(
                        f"function {spec.name} needs the data file {mount.name!r}",
                        field=f"files.{mount.name}",
                    )
        digest = await self._store.blobs.put(wasm)
        files = {mount: await self._store.blobs.put(data) for mount, data in data_files.items()}
        record = ModuleRecord(
            name=name,
            version=version,
            digest=digest,
            imports=imports,
            exports=exports,
            functions=specs,
            data_files=dict(sorted(files.items())),
        )
        existing = self._existing(record)
        if existing is not None:
            return existing, False
        await self._save(record)
        return record, True

    async def add_core(
        self,
        name: str,
        version: str,
        functions: Mapping[str, FunctionSpec],
        files: Mapping[str, bytes],
    ) -> tuple[ModuleRecord, bool]:
        """Store a built-in (``runtime: core``) package version: no wasm, only its described
        functions and data files. Same rules as :meth:`add` (identical = no-op, different
        content under an existing ``name@version`` = 422 on ``version``)."""
        expected = core_record(name, version, functions, files)
        existing = self._existing(expected)
        for data in files.values():
            await self._store.blobs.put(data)
        if existing is not None:
            return existing, False
        await self._save(expected)
        return expected, True

    def _existing(self, record: ModuleRecord) -> ModuleRecord | None:
        """The stored record equal to ``record``, None if its ``name@version`` is new; 422 on
        ``version`` if that ``name@version`` holds different content (versions are immutable)."""
        existing = self._records.get(record.ref)
        if existing is not None and existing != record:
            raise Unprocessable(
                f"{record.ref} already exists with different content; upload a new version",
                field="version",
            )
        return existing

    async def _save(self, record: ModuleRecord) -> None:
        """Keep a new ``name@version``, uploaded now, in memory and in the store."""
        self._records[record.ref] = record
        self._uploaded[record.ref] = time.time()
        await self._store.put(
            "modules",
            "ref",
            {
                "ref": record.ref,
                "uploadedAt": self._uploaded[record.ref],
                "record": msgspec.to_builtins(record),
            },
        )

    def get(self, ref: str) -> ModuleRecord | None:
        """Exactly ``name@version``, or None."""
        return self._records.get(ref)

    def all(self) -> list[ModuleRecord]:
        return sorted(self._records.values(), key=lambda r: (r.name, self._uploaded[r.ref]))

    def resolve(self, ref: str) -> ModuleRecord:
        """``name@version`` exactly, or the latest upload of ``name``."""
        if ref in self._records:
            return self._records[ref]
        versions = [r for r in self._records.values() if r.name == ref]
        if not versions:
            raise NotFound(f"no module {ref!r}", field="module")
        return max(versions, key=lambda r: self._uploaded[r.ref])

    def for_manifest(self, manifest: Manifest) -> dict[str, ModuleRecord]:
        """Each step's module string → its record; unknown ones are simply absent."""
        found: dict[str, ModuleRecord] = {}
        for step in manifest.sequence:
            try:
                found[step.module] = self.resolve(step.module)
            except NotFound:
                continue
        return found


def core_record(
    name: str, version: str, functions: Mapping[str, FunctionSpec], files: Mapping[str, bytes]
) -> ModuleRecord:
    """The record of a core package: its digest is the sha256 of its canonical description
    (name, version, functions, data file digests), so equal content gives an equal record."""
    data_files = {m: hashlib.sha256(data).hexdigest() for m, data in sorted(files.items())}
    specs = dict(sorted(functions.items()))
    canonical = {
        "name": name,
        "version": version,
        "runtime": "core",
        "functions": msgspec.to_builtins(specs),
        "files": data_files,
    }
    return ModuleRecord(
        name=name,
        version=version,
        digest=hashlib.sha256(msgspec.json.encode(canonical, order="sorted")).hexdigest(),
        imports=[],
        exports={
            f: sum(2 if p.type in BYTES_TYPES else 1 for p in s.params) for f, s in specs.items()
        },
        functions=specs,
        data_files=data_files,
        runtime="core",
    )
