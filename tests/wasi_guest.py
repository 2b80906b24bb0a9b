"""Run a built example module's function directly in wasmtime, with a folder as its ``.``.

For property tests that call a module thousands of times: no supervisor, no HTTP, one
compiled module and a fresh instance (and store) per call, as the supervisor makes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmtime import Engine, Func, Linker, Memory, Module, Store, WasiConfig

from tests.conftest import wasm_path

_U64 = 0xFFFFFFFFFFFFFFFF


class WasiGuest:
    """One built module; :meth:`call` runs an export on a fresh instance."""

    def __init__(self, name: str, host: Callable[[Linker], None] | None = None) -> None:
        self.engine = Engine()
        self.module = Module.from_file(self.engine, str(wasm_path(name)))
        self.host = host

    def _instance(self, workdir: Path) -> tuple[Store, dict[str, Any]]:
        store = Store(self.engine)
        wasi = WasiConfig()
        wasi.preopen_dir(str(workdir), ".")
        wasi.stderr_file = str(workdir / "stderr.log")
        store.set_wasi(wasi)
        linker = Linker(self.engine)
        linker.define_wasi()
        if self.host is not None:
            self.host(linker)
        exports = dict(linker.instantiate(store, self.module).exports(store))
        initialize = exports.get("_initialize")
        if isinstance(initialize, Func):
            initialize(store)
        return store, exports

    def call(self, workdir: Path, func: str, *args: Any) -> Any:
        """The export's raw result (a guest trap raises wasmtime's exception)."""
        store, exports = self._instance(workdir)
        return exports[func](store, *args)

    def call_json(self, workdir: Path, func: str, *args: Any) -> Any:
        """Decode a packed ``(ptr << 32) | len`` JSON result, as the supervisor does."""
        store, exports = self._instance(workdir)
        packed = int(exports[func](store, *args)) & _U64
        ptr, length = packed >> 32, packed & 0xFFFFFFFF
        memory = exports["memory"]
        assert isinstance(memory, Memory)
        assert ptr + length <= memory.data_len(store), "result outside the guest's memory"
        return json.loads(bytes(memory.read(store, ptr, ptr + length)))
