"""The Wasm runtime: compile, cache and call guest functions under limits.

Theory of operation
-------------------
* One ``wasmtime.Engine`` per :class:`Runtime` (one per daemon process), configured for fuel and
  epoch interruption. ``Engine`` and ``Module`` are thread-safe; nothing else is shared.
* :meth:`Runtime.load` is blocking and idempotent per digest: deserialize the cached artifact
  (``<cache_dir>/<digest>-<wasmtime version>-<flags>.cwasm``) or compile and write it, check
  every import against WASI and the device's drivers, and pre-link an ``InstancePre``.
* :meth:`Runtime.call` runs in a bounded thread pool. A call with files or byte arguments gets
  a fresh ``Store`` and instance made in its worker thread. A call with only numbers in and
  out reuses a warm instance owned by its worker thread (a pooled store used by one thread at
  a time), because building an instance through wasmtime-py costs more than a small guest
  runs: fuel and deadline are re-armed per call, and any failure or memory growth retires the
  instance, so one call's trap or leak never reaches the next. Like the wasmiot reference,
  such a module may see globals it set in an earlier call on the same thread.
* :meth:`Runtime.call_inline` runs such a numeric call of a module *without imports* right on
  the caller's thread (the event loop) under a small fuel budget (:data:`INLINE_FUEL`): it
  cannot block or touch the host, the budget bounds how long it holds the loop, and when the
  budget is not enough the caller re-runs it through :meth:`call` with no visible difference.
  A thread-pool hop costs more than such a call (see the README's performance section).
* Time limits are epoch deadlines: one ticker thread increments the engine's epoch every
  ``tick_s`` while any call runs, and sleeps otherwise. Fuel and memory caps are per store.
  A thread cannot be cancelled, so a cancelled ``call`` still runs until its own deadline.
* Every guest failure surfaces as :class:`GuestError` (named by :mod:`supervisor.guest`); the
  daemon never sees a wasmtime error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import wasmtime

from supervisor.atomic import atomic_write
from supervisor.drivers import WASI_MODULE, HostDrivers, signature_of, take_host_fault
from supervisor.errors import GuestError, Unprocessable
from supervisor.fastcall import NumericCall
from supervisor.guest import (
    UNLIMITED_FUEL,
    Arg,
    CallLimits,
    FuncSig,
    coerce,
    failure,
    is_memory,
    memory_message,
    pass_bytes,
    read_packed,
    reason,
)

__all__ = ["INLINE_FUEL", "NOT_INLINE", "CallLimits", "FuncSig", "ModuleInfo", "Runtime"]

_LOGGER = logging.getLogger(__name__)

try:
    WASMTIME_VERSION = importlib.metadata.version("wasmtime")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored wasmtime
    WASMTIME_VERSION = "unknown"
# Compiled artifacts only load into an engine with the same version and config flags.
ENGINE_FLAGS = "fuel-epoch"

#: Fuel (about one unit per Wasm instruction) a pure call may burn on the event loop before it
#: is moved to the thread pool: well under a millisecond on a Raspberry Pi 4.
INLINE_FUEL = 200_000
NOT_INLINE = object()
"""Returned by :meth:`Runtime.call_inline` when a call has to run on the thread pool."""
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModuleInfo:
    """What a loaded module offers and needs."""

    digest: str  # bare sha256 hex of the wasm bytes
    exports: Mapping[str, FuncSig]  # function exports only
    imports: tuple[tuple[str, str], ...]  # (module, name) of function imports


@dataclass(frozen=True)
class _Job:
    digest: str
    func: str
    args: tuple[Arg, ...]
    workdir: Path | None
    limits: CallLimits
    returns_bytes: bool


@dataclass
class _Warm:
    """A pooled store and instance, used only by the worker thread that made it."""

    store: Any
    instance: Any
    exports: Any
    memory: Any  # the exported wasmtime.Memory, or None
    memory_len: int
    calls: dict[str, NumericCall] = field(default_factory=dict)


@dataclass(frozen=True)
class _Loaded:
    info: ModuleInfo
    pre: Any  # wasmtime.InstancePre
    memory_min: int  # bytes the exported memory needs at instantiation; 0 if none exported


class Runtime:
    """Loads modules and runs their functions; see the module docstring."""

    def __init__(
        self,
        cache_dir: Path,
        drivers: HostDrivers,
        *,
        max_workers: int | None = None,
        tick_s: float = 0.01,
    ) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = True
        self._engine: Any = wasmtime.Engine(config)
        self._cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._drivers = drivers
        self._modules: dict[str, _Loaded] = {}
        # (thread id, digest, function, memory cap) -> warm instance; per function because
        # WASI's argv is [function]. See the module docstring.
        self._warm: dict[tuple[int, str, str, int], _Warm] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers or os.cpu_count() or 1, thread_name_prefix="wasm-call"
        )
        self._closed = False
        self._max_ticks = 0  # the longest epoch deadline handed out, for interrupt_all
        self._tick_s = tick_s
        self._active = 0
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    # --- loading ------------------------------------------------------------------------------

    def load(self, digest: str, wasm: bytes) -> ModuleInfo:
        """Compile (or deserialize from cache) and link ``wasm``; blocking, idempotent.

        Raises :class:`Unprocessable` for a bad digest, invalid wasm, or an import this
        device does not provide.
        """
        if not _DIGEST.fullmatch(digest):
            raise Unprocessable(f"invalid module digest {digest!r}: expected 64 hex digits")
        with self._lock:
            if digest in self._modules:
                return self._modules[digest].info
        # The cache file is trusted because its name is this digest: make sure it is.
        if hashlib.sha256(wasm).hexdigest() != digest:
            raise Unprocessable(f"module bytes do not match digest {digest}")
        if not wasm.startswith(b"\0asm"):
            # wasmtime would otherwise parse non-binary input as WAT text.
            raise Unprocessable("invalid wasm: missing the \\0asm header")
        module = self._compile_cached(digest, wasm)
        exports: dict[str, FuncSig] = {}
        memory_min = 0
        for export in module.exports:
            ty = export.type
            if isinstance(ty, wasmtime.FuncType):
                exports[export.name] = FuncSig(*signature_of(ty))
            elif isinstance(ty, wasmtime.MemoryType) and export.name == "memory":
                memory_min = int(ty.limits.min) * int(ty.page_size)
        imports: list[tuple[str, str]] = []
        host_imports: list[tuple[str, str, Any]] = []
        for imp in module.imports:
            name = str(imp.name or "")
            wasi = imp.module == WASI_MODULE
            if not isinstance(imp.type, wasmtime.FuncType) or not (
                wasi or self._drivers.provides(imp.module, name)
            ):
                raise Unprocessable(
                    f"module imports {imp.module}.{name}, which this device does not provide"
                )
            imports.append((str(imp.module), name))
            if not wasi:
                host_imports.append((imp.module, name, imp.type))
        linker = wasmtime.Linker(self._engine)
        linker.define_wasi()
        self._drivers.define(linker, host_imports)
        try:
            pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise Unprocessable(f"module cannot be linked: {reason(exc)}") from None
        info = ModuleInfo(digest, MappingProxyType(exports), tuple(imports))
        with self._lock:
            return self._modules.setdefault(digest, _Loaded(info, pre, memory_min)).info

    def _compile_cached(self, digest: str, wasm: bytes) -> Any:
        path = self._cache_dir / f"{digest}-{WASMTIME_VERSION}-{ENGINE_FLAGS}.cwasm"
        if path.is_file():
            try:
                return wasmtime.Module.deserialize_file(self._engine, str(path))
            except wasmtime.WasmtimeError as exc:
                _LOGGER.warning("Recompiling %s: cached artifact unusable (%s)", digest, exc)
                path.unlink(missing_ok=True)
        try:
            module = wasmtime.Module(self._engine, bytes(wasm))
        except wasmtime.WasmtimeError as exc:
            raise Unprocessable(f"invalid wasm: {reason(exc)}") from None
        try:
            atomic_write(path, bytes(module.serialize()))
        except OSError as exc:  # the cache only saves time; a full disk must not fail a deploy
            _LOGGER.warning("Could not cache compiled module %s: %s", digest, exc)
        return module

    def info(self, digest: str) -> ModuleInfo | None:
        """The loaded module's info, or None."""
        with self._lock:
            loaded = self._modules.get(digest)
        return loaded.info if loaded else None

    def unload(self, digest: str) -> None:
        """Forget a loaded module (its disk cache stays); running calls finish normally."""
        with self._lock:
            self._modules.pop(digest, None)
            for key in [k for k in self._warm if k[1] == digest]:
                del self._warm[key]

    # --- calling ------------------------------------------------------------------------------

    async def call(
        self,
        digest: str,
        func: str,
        args: Sequence[Arg],
        *,
        workdir: Path | None,
        limits: CallLimits,
        returns_bytes: bool = False,
    ) -> int | float | bytes | None:
        """Run ``func`` in a worker thread on a fresh instance; see the module docstring.

        ``bytes`` arguments are copied into memory from the guest's ``alloc`` and passed as
        (ptr, len). With ``returns_bytes`` the function returns ``(ptr << 32) | len`` as i64.
        WASI sees argv ``[func]``, no environment and, only with a ``workdir``, that folder as
        ``.`` and stdout/stderr in ``workdir/stdout.log`` and ``stderr.log`` (truncated at the
        start of each call). Raises :class:`GuestError` for every failure of the guest.
        """
        if self._closed:
            raise RuntimeError("the runtime is closed")
        job = _Job(digest, func, tuple(args), workdir, limits, returns_bytes)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._call_sync, job
        )

    def call_inline(
        self,
        digest: str,
        func: str,
        args: Sequence[Arg],
        *,
        limits: CallLimits,
        returns_bytes: bool = False,
    ) -> int | float | object | None:
        """Run a small pure call right here, on the caller's thread, within a tiny fuel budget.

        Only numeric calls into modules with no imports qualify: nothing they do can block or
        touch the host, and re-running one that ran out of the inline budget is invisible.
        The budget (:data:`INLINE_FUEL`) bounds how long the event loop can be held. Returns
        :data:`NOT_INLINE` when the call must go through :meth:`call` instead; raises
        :class:`GuestError` for a failure that is final.
        """
        if self._closed:
            return NOT_INLINE
        job = _Job(digest, func, tuple(args), None, limits, returns_bytes)
        if job.workdir is not None or job.returns_bytes:
            return NOT_INLINE
        if any(isinstance(a, bytes | bytearray) for a in job.args):
            return NOT_INLINE
        with self._lock:
            loaded = self._modules.get(job.digest)
        if loaded is None or loaded.info.imports:
            return NOT_INLINE
        sig = loaded.info.exports.get(job.func)
        if sig is None or loaded.memory_min > job.limits.memory_bytes:
            return NOT_INLINE  # the pool path reports these errors
        values = coerce(job.func, sig, job.args, job.returns_bytes)
        final = job.limits.fuel is not None and job.limits.fuel <= INLINE_FUEL
        # No epoch ticking needed: the fuel budget alone ends this call within a millisecond.
        try:
            return self._run_warm(loaded, job, values, None if final else INLINE_FUEL)
        except GuestError as err:
            if err.kind == "out_of_fuel" and not final:
                return NOT_INLINE
            raise

    def _call_sync(self, job: _Job) -> int | float | bytes | None:
        with self._lock:
            loaded = self._modules.get(job.digest)
        if loaded is None:
            raise GuestError("link", f"module {job.digest} is not loaded")
        sig = loaded.info.exports.get(job.func)
        if sig is None:
            raise GuestError("abi", f"the module exports no function {job.func!r}")
        values = coerce(job.func, sig, job.args, job.returns_bytes)
        if loaded.memory_min > job.limits.memory_bytes:
            raise GuestError("memory_limit", memory_message(job.limits))
        with self._running():
            if (
                job.workdir is None
                and not job.returns_bytes
                and not any(isinstance(v, bytes) for v in values)
            ):
                return self._run_warm(loaded, job, values)
            return self._run(loaded, job, values)

    def _run_warm(
        self, loaded: _Loaded, job: _Job, values: list[Arg], fuel: int | None = None
    ) -> int | float | None:
        key = (threading.get_ident(), loaded.info.digest, job.func, job.limits.memory_bytes)
        with self._lock:
            warm = self._warm.pop(key, None)
        take_host_fault()
        if warm is None:
            warm = self._make_warm(loaded, job)
        store, limits = warm.store, job.limits
        try:
            if fuel is None:
                fuel = limits.fuel if limits.fuel is not None else UNLIMITED_FUEL
            store.set_fuel(fuel)
            store.set_epoch_deadline(self._deadline_ticks(limits))
            call = warm.calls.get(job.func)
            if call is None:
                sig = loaded.info.exports[job.func]
                call = warm.calls[job.func] = NumericCall(
                    warm.exports[job.func], sig.params, sig.results
                )
            result = call(store, [v for v in values if not isinstance(v, bytes)])
        except Exception as raised:
            err = failure(raised, take_host_fault(), limits, store=store, instance=warm.instance)
            store.close()  # a failed instance is never reused
            if err is None:
                return None  # WASI proc_exit(0) is a normal end of the call
            raise err from raised
        if warm.memory is not None and warm.memory.data_len(store) != warm.memory_len:
            store.close()  # a grown memory would carry this call's allocations into the next
        else:
            with self._lock:
                if job.digest in self._modules and not self._closed:
                    self._warm[key] = warm
        return result

    def _make_warm(self, loaded: _Loaded, job: _Job) -> _Warm:
        store = wasmtime.Store(self._engine)
        instance: Any = None
        try:
            store.set_fuel(UNLIMITED_FUEL)
            store.set_limits(memory_size=job.limits.memory_bytes)
            store.set_epoch_deadline(self._deadline_ticks(job.limits))
            store.set_wasi(_wasi_config(job.func, None))
            instance = loaded.pre.instantiate(store)
            exports = instance.exports(store)
            if "_initialize" in loaded.info.exports:
                exports["_initialize"](store)
        except Exception as raised:
            err = failure(raised, take_host_fault(), job.limits, store=store, instance=instance)
            store.close()
            raise err or GuestError("exit", "exited with code 0 while initialising") from raised
        memory = exports.get("memory")
        if not is_memory(memory):
            memory = None
        return _Warm(store, instance, exports, memory, memory.data_len(store) if memory else 0)

    def _run(self, loaded: _Loaded, job: _Job, values: list[Arg]) -> int | float | bytes | None:
        func, limits, workdir = job.func, job.limits, job.workdir
        take_host_fault()  # drop a stale record from an earlier call on this thread
        store = wasmtime.Store(self._engine)
        instance: Any = None
        try:
            store.set_fuel(limits.fuel if limits.fuel is not None else UNLIMITED_FUEL)
            store.set_limits(memory_size=limits.memory_bytes)
            store.set_epoch_deadline(self._deadline_ticks(limits))
            try:
                store.set_wasi(_wasi_config(func, workdir))
            except wasmtime.WasmtimeError as exc:
                raise GuestError("link", f"cannot prepare WASI in {workdir}: {exc}") from None
            instance = loaded.pre.instantiate(store)
            exports = instance.exports(store)
            if "_initialize" in loaded.info.exports:
                exports["_initialize"](store)
            params: list[int | float] = []
            for value in values:
                if isinstance(value, bytes):
                    params += pass_bytes(store, exports, value)
                else:
                    params.append(value)
            result = exports[func](store, *params)
            if job.returns_bytes:
                return read_packed(store, exports, int(result), limits.result_bytes)
            if result is None or isinstance(result, int | float):
                return result
            raise GuestError("abi", f"{func} returned an unsupported value {result!r}")
        except GuestError:
            raise
        except Exception as raised:
            err = failure(raised, take_host_fault(), limits, store=store, instance=instance)
            if err is None and not job.returns_bytes:
                return None  # WASI proc_exit(0) is a normal end of the call
            raise err or GuestError(
                "exit", "exited with code 0 before returning its bytes"
            ) from raised
        finally:
            store.close()

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        with self._wake:
            self._active += 1
            self._wake.notify()
        try:
            yield
        finally:
            with self._wake:
                self._active -= 1

    def _tick(self) -> None:
        # Sleep on the condition while idle so an idle device does not wake 1/tick_s times a
        # second; tick on a separate Event wait so a call starting never causes an early tick.
        while True:
            with self._wake:
                while self._active == 0 and not self._stop.is_set():
                    self._wake.wait()
            if self._stop.wait(self._tick_s):
                return
            self._engine.increment_epoch()

    def _deadline_ticks(self, limits: CallLimits) -> int:
        ticks = math.ceil(limits.timeout_s / self._tick_s) + 1
        self._max_ticks = max(self._max_ticks, ticks)  # a benign race: only ever grows
        return ticks

    def interrupt_all(self) -> None:
        """Push every running call past its deadline (shutdown must not wait for guests)."""
        for _ in range(self._max_ticks + 1):
            self._engine.increment_epoch()

    async def aclose(self) -> None:
        """Refuse new calls, wait for running ones (still under their deadlines), stop ticking."""
        if self._closed:
            return
        self._closed = True
        # Running calls need the ticker to reach their deadlines, so stop it only afterwards.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        with self._wake:
            self._stop.set()
            self._wake.notify_all()
        await asyncio.to_thread(self._ticker.join)
        with self._lock:
            self._modules.clear()
            self._warm.clear()


def _wasi_config(func: str, workdir: Path | None) -> Any:
    wasi = wasmtime.WasiConfig()
    wasi.argv = [func]
    # No env, no stdin and no inherited stdio: a fresh WasiConfig has none of them.
    if workdir is not None:
        # Files, not stdout_custom: a live custom-output store makes wasmtime panic at exit.
        wasi.stdout_file = str(workdir / "stdout.log")
        wasi.stderr_file = str(workdir / "stderr.log")
        wasi.preopen_dir(str(workdir), ".", True)
    return wasi
