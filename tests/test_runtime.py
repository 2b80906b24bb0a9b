"""The Wasm runtime against real wasmtime, with guests written inline as WAT."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import wasmtime

from supervisor.drivers import HostDrivers
from supervisor.errors import GuestError, Unprocessable
from supervisor.runtime import (
    ENGINE_FLAGS,
    INLINE_FUEL,
    NOT_INLINE,
    WASMTIME_VERSION,
    CallLimits,
    FuncSig,
    Runtime,
)

LIMITS = CallLimits(timeout_s=5.0)


def module(wat: str) -> tuple[str, bytes]:
    """(sha256 digest, wasm bytes) of a WAT module."""
    wasm = bytes(wasmtime.wat2wasm(wat))
    return hashlib.sha256(wasm).hexdigest(), wasm


def cache_file(cache_dir: Path, digest: str) -> Path:
    return cache_dir / f"{digest}-{WASMTIME_VERSION}-{ENGINE_FLAGS}.cwasm"


ADD = """(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "spin") (loop $l br $l)))"""
SUB = """(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.sub))"""

# A guest with the bytes ABI: a bump allocator from 1024 and reverse(ptr, len) -> (ptr<<32)|len.
BYTES = """(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func $alloc (export "alloc") (param $n i32) (result i32)
    global.get $heap
    global.get $heap local.get $n i32.add global.set $heap)
  (func (export "reverse") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32) (local $i i32)
    (local.set $out (call $alloc (local.get $len)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (i32.store8 (i32.add (local.get $out) (local.get $i))
        (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len))
                              (i32.add (local.get $i) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (func (export "scale") (param f32) (param i64) (result f32)
    local.get 0 local.get 1 f32.convert_i64_s f32.mul)
  (func (export "id64") (param i64) (result i64) local.get 0))"""

WASI = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasm\\n")
  (data (i32.const 128) "out.txt")
  (data (i32.const 160) "../escape.txt")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func (export "hello") (param $fd i32) (result i32)
    (call $write (local.get $fd) (i32.const 64) (i32.const 16)))
  (func $create (param $path i32) (param $len i32) (result i32)
    (local $err i32)
    (local.set $err (call $open (i32.const 3) (i32.const 0) (local.get $path) (local.get $len)
      (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 32)))
    (if (local.get $err) (then (return (local.get $err))))
    (call $write (i32.load (i32.const 32)) (i32.const 64) (i32.const 16)))
  (func (export "create") (result i32) (call $create (i32.const 128) (i32.const 7)))
  (func (export "escape") (result i32) (call $create (i32.const 160) (i32.const 13)))
  (func (export "env_count") (result i32)
    (drop (call $env (i32.const 0) (i32.const 4))) (i32.load (i32.const 0)))
  (func (export "argv_bytes") (result i32)
    (drop (call $args (i32.const 0) (i32.const 4))) (i32.load (i32.const 4)))
  (func (export "quit") (param i32) (call $exit (local.get 0))))"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(tmp_path / "cache", HostDrivers({}), max_workers=4)
    yield rt
    await rt.aclose()


def wasm_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("wasm-")]


async def test_add(runtime: Runtime) -> None:
    digest, wasm = module(ADD)
    info = runtime.load(digest, wasm)
    assert info.digest == digest
    assert info.exports["add"] == FuncSig(("i32", "i32"), ("i32",))
    assert info.imports == ()
    assert runtime.info(digest) == info
    assert await runtime.call(digest, "add", [2, 40], workdir=None, limits=LIMITS) == 42


async def test_load_is_idempotent_and_unload_forgets(runtime: Runtime) -> None:
    digest, wasm = module(ADD)
    assert runtime.load(digest, wasm) is runtime.load(digest, wasm)
    runtime.unload(digest)
    assert runtime.info(digest) is None
    with pytest.raises(GuestError) as err:
        await runtime.call(digest, "add", [1, 2], workdir=None, limits=LIMITS)
    assert err.value.kind == "link"


async def test_a_new_runtime_loads_the_cached_artifact(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    add_digest, add_wasm = module(ADD)
    sub_digest, sub_wasm = module(SUB)
    first = Runtime(cache, HostDrivers({}))
    first.load(add_digest, add_wasm)
    first.load(sub_digest, sub_wasm)
    await first.aclose()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [cache_file(cache, add_digest).name, cache_file(cache, sub_digest).name]
    )
    # Put SUB's artifact under ADD's name: a runtime that deserializes runs SUB's code.
    cache_file(cache, add_digest).write_bytes(cache_file(cache, sub_digest).read_bytes())
    second = Runtime(cache, HostDrivers({}))
    try:
        second.load(add_digest, add_wasm)
        assert await second.call(add_digest, "add", [5, 3], workdir=None, limits=LIMITS) == 2
    finally:
        await second.aclose()


async def test_a_corrupt_cache_file_is_recompiled(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    digest, wasm = module(ADD)
    cache_file(cache, digest).write_bytes(b"not an ELF file")
    rt = Runtime(cache, HostDrivers({}))
    try:
        rt.load(digest, wasm)
        assert await rt.call(digest, "add", [5, 3], workdir=None, limits=LIMITS) == 8
    finally:
        await rt.aclose()
    rewritten = cache_file(cache, digest).read_bytes()
    assert rewritten.startswith(b"\x7fELF")
    assert [p.name for p in cache.iterdir()] == [cache_file(cache, digest).name]  # no tmp left


@pytest.mark.parametrize(
    ("wasm", "reason"),
    [
        (b"\0asm\x01\x00\x00\x00\x99garbage", "invalid wasm: "),
        (b'(module (func (export "f")))', "invalid wasm: missing the \\0asm header"),
    ],
)
def test_invalid_wasm_is_unprocessable(runtime: Runtime, wasm: bytes, reason: str) -> None:
    with pytest.raises(Unprocessable, match="^" + reason.replace("\\", "\\\\")):
        runtime.load(hashlib.sha256(wasm).hexdigest(), wasm)


def test_digest_must_match_the_bytes(runtime: Runtime) -> None:
    _, wasm = module(ADD)
    with pytest.raises(Unprocessable, match="do not match"):
        runtime.load("0" * 64, wasm)
    with pytest.raises(Unprocessable, match="invalid module digest"):
        runtime.load("../../etc/passwd", wasm)


def test_a_missing_import_is_named(runtime: Runtime) -> None:
    digest, wasm = module('(module (import "nosuch" "thing" (func)))')
    with pytest.raises(Unprocessable) as err:
        runtime.load(digest, wasm)
    assert err.value.message == "module imports nosuch.thing, which this device does not provide"
    assert runtime.info(digest) is None


def test_a_wasi_import_of_the_wrong_type_cannot_link(runtime: Runtime) -> None:
    digest, wasm = module(
        '(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64))))'
    )
    with pytest.raises(Unprocessable, match=r"cannot be linked.*proc_exit"):
        runtime.load(digest, wasm)


async def test_timeout_does_not_block_other_calls(runtime: Runtime) -> None:
    digest, wasm = module(ADD)
    runtime.load(digest, wasm)
    started = time.monotonic()
    spin = asyncio.create_task(
        runtime.call(digest, "spin", [], workdir=None, limits=CallLimits(timeout_s=0.2))
    )
    assert await runtime.call(digest, "add", [1, 2], workdir=None, limits=LIMITS) == 3
    assert not spin.done()
    with pytest.raises(GuestError) as err:
        await spin
    assert (err.value.kind, err.value.message) == ("timeout", "exceeded its time limit of 200 ms")
    assert 0.2 <= time.monotonic() - started < 2


async def test_fuel_runs_out(runtime: Runtime) -> None:
    digest, wasm = module(ADD)
    runtime.load(digest, wasm)
    with pytest.raises(GuestError) as err:
        await runtime.call(digest, "spin", [], workdir=None, limits=CallLimits(fuel=10_000))
    assert err.value.kind == "out_of_fuel"
    assert await runtime.call(digest, "add", [1, 2], workdir=None, limits=CallLimits(fuel=100)) == 3


@pytest.mark.parametrize(
    "wat",
    [
        """(module (memory (export "memory") 1) (func (export "f")
             (loop $l (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
                          (then unreachable))
                      br $l)))""",
        '(module (memory (export "memory") 40) (func (export "f")))',
        '(module (memory 40) (func (export "f")))',
    ],
    ids=["grow-loop", "exported-minimum", "hidden-minimum"],
)
async def test_memory_cap(runtime: Runtime, wat: str) -> None:
    digest, wasm = module(wat)
    runtime.load(digest, wasm)
    with pytest.raises(GuestError) as err:
        await runtime.call(
            digest, "f", [], workdir=None, limits=CallLimits(memory_bytes=1024 * 1024)
        )
    assert (err.value.kind, err.value.message) == (
        "memory_limit",
        "exceeded its memory limit of 1048576 bytes",
    )
    if "memory.grow" not in wat:  # a fixed minimum fits under the default cap
        assert await runtime.call(digest, "f", [], workdir=None, limits=LIMITS) is None


STEPPER = """(module (memory (export "memory") 1)
  (func (export "grow") (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
  (func (export "early") unreachable))"""


async def test_memory_cap_reached_in_1_mib_steps_is_a_memory_limit(runtime: Runtime) -> None:
    """A guest growing 16 pages at a time stops up to 15 pages short of a 20 MiB cap (1 + 16k
    pages never lands on 320); that is still its memory limit, not a plain trap. The same
    guest trapping with its memory far below the cap is a trap."""
    digest, wasm = module(STEPPER)
    runtime.load(digest, wasm)
    limits = CallLimits(memory_bytes=20 * 1024 * 1024)
    with pytest.raises(GuestError) as err:
        await runtime.call(digest, "grow", [], workdir=None, limits=limits)
    assert (err.value.kind, err.value.message) == (
        "memory_limit",
        "exceeded its memory limit of 20971520 bytes",
    )
    with pytest.raises(GuestError) as err:
        await runtime.call(digest, "early", [], workdir=None, limits=limits)
    assert err.value.kind == "trap"


async def test_a_result_over_the_cap_is_refused_before_it_is_copied(runtime: Runtime) -> None:
    digest, wasm = module(BYTES)
    runtime.load(digest, wasm)
    limits = CallLimits(timeout_s=5.0, result_bytes=4)
    assert (
        await runtime.call(
            digest, "reverse", [b"abcd"], workdir=None, limits=limits, returns_bytes=True
        )
        == b"dcba"
    )
    with pytest.raises(GuestError) as err:
        await runtime.call(
            digest, "reverse", [b"abcde"], workdir=None, limits=limits, returns_bytes=True
        )
    assert err.value.kind == "output"
    assert err.value.message.startswith(
        "returned 5 bytes, more than this device's limit of 4 bytes for a result"
    )


async def test_a_trap_reports_its_cause(runtime: Runtime) -> None:
    digest, wasm = module('(module (func (export "f") unreachable))')
    runtime.load(digest, wasm)
    with pytest.raises(GuestError) as err:
        await runtime.call(digest, "f", [], workdir=None, limits=LIMITS)
    assert (err.value.kind, err.value.message) == (
        "trap",
        "wasm `unreachable` instruction executed",
    )


@pytest.mark.parametrize("payload", [b"hello, wasm", b"", bytes(range(256)) * 8])
async def test_bytes_in_and_out(runtime: Runtime, payload: bytes) -> None:
    digest, wasm = module(BYTES)
    runtime.load(digest, wasm)
    out = await runtime.call(
        digest, "reverse", [payload], workdir=None, limits=LIMITS, returns_bytes=True
    )
    assert out == payload[::-1]


async def test_scalars_are_coerced_to_the_param_types(runtime: Runtime) -> None:
    digest, wasm = module(BYTES)
    runtime.load(digest, wasm)
    assert await runtime.call(digest, "scale", [3, 2], workdir=None, limits=LIMITS) == 6.0
    # Unsigned inputs are accepted and wrap; i64 results come back signed.
    assert await runtime.call(digest, "id64", [2**64 - 1], workdir=None, limits=LIMITS) == -1


@pytest.mark.parametrize(
    ("func", "args", "message"),
    [
        ("reverse", [b"a", 1], "reverse takes 2 parameter(s), got 3"),
        ("id64", [], "id64 takes 1 parameter(s), got 0"),
        ("id64", [1.5], "parameter 0 of id64 is i64, got 1.5"),
        ("id64", [2**64], "parameter 0 of id64 is out of the i64 range"),
        ("scale", [b"ab"], "parameter 0 of scale is f32, got bytes"),
        ("nosuch", [], "the module exports no function 'nosuch'"),
    ],
)
async def test_abi_mismatches(
    runtime: Runtime, func: str, args: list[int | float | bytes], message: str
) -> None:
    digest, wasm = module(BYTES)
    runtime.load(digest, wasm)
    with pytest.raises(GuestError) as err:
        await runtime.call(digest, func, args, workdir=None, limits=LIMITS)
    assert (err.value.kind, err.value.message) == ("abi", message)


async def test_returns_bytes_needs_a_packed_i64(runtime: Runtime) -> None:
    digest, wasm = module(ADD)
    runtime.load(digest, wasm)
    with pytest.raises(GuestError, match="must return one i64") as err:
        await runtime.call(digest, "add", [1, 2], workdir=None, limits=LIMITS, returns_bytes=True)
    assert err.value.kind == "abi"


COUNTER = """(module (global $g (mut i32) (i32.const 0))
  (memory (export "memory") 1)
  (func (export "_initialize") (global.set $g (i32.add (global.get $g) (i32.const 41))))
  (func (export "next") (param $fail i32) (result i32)
    (if (local.get $fail) (then unreachable))
    (global.set $g (i32.add (global.get $g) (i32.const 1))) (global.get $g)))"""


async def test_files_calls_get_a_fresh_initialized_instance(
    runtime: Runtime, tmp_path: Path
) -> None:
    digest, wasm = module(COUNTER)
    runtime.load(digest, wasm)
    for _ in range(2):
        assert await runtime.call(digest, "next", [0], workdir=tmp_path, limits=LIMITS) == 42


async def test_numeric_calls_reuse_a_warm_instance_until_it_fails(runtime: Runtime) -> None:
    """The documented contract: initialised once, state kept (as wasmiot did), a trap retires it."""
    digest, wasm = module(COUNTER)
    runtime.load(digest, wasm)
    seen = [runtime.call_inline(digest, "next", [0], limits=LIMITS) for _ in range(3)]
    assert seen == [42, 43, 44]
    with pytest.raises(GuestError):
        runtime.call_inline(digest, "next", [1], limits=LIMITS)
    assert runtime.call_inline(digest, "next", [0], limits=LIMITS) == 42


async def test_inline_calls_only_for_small_pure_numeric_work(
    runtime: Runtime, tmp_path: Path
) -> None:
    add, add_wasm = module(ADD)
    runtime.load(add, add_wasm)
    assert runtime.call_inline(add, "add", [2, 3], limits=LIMITS) == 5
    loop = module("""(module (func (export "count") (param $n i64) (result i64) (local $i i64)
      (block $done (loop $again (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i64.add (local.get $i) (i64.const 1))) (br $again)))
      (local.get $i)))""")
    runtime.load(*loop)
    # Too much work for the inline budget: the pool takes it, and gets the full budget there.
    assert runtime.call_inline(loop[0], "count", [10 * INLINE_FUEL], limits=LIMITS) is NOT_INLINE
    assert (
        await runtime.call(loop[0], "count", [10 * INLINE_FUEL], workdir=None, limits=LIMITS)
        == 10 * INLINE_FUEL
    )
    # A fuel limit below the inline budget is final, not a reason to retry.
    with pytest.raises(GuestError) as err:
        runtime.call_inline(loop[0], "count", [10 * INLINE_FUEL], limits=CallLimits(fuel=1000))
    assert err.value.kind == "out_of_fuel"
    wasi, wasi_wasm = module(WASI)
    runtime.load(wasi, wasi_wasm)
    assert runtime.call_inline(wasi, "env_count", [], limits=LIMITS) is NOT_INLINE  # has imports
    assert runtime.call_inline(add, "add", [2, 3], limits=LIMITS, returns_bytes=True) is NOT_INLINE


async def test_wasi_stdio_goes_to_the_workdir(runtime: Runtime, tmp_path: Path) -> None:
    digest, wasm = module(WASI)
    runtime.load(digest, wasm)
    for fd, written, empty in ((1, "stdout.log", "stderr.log"), (2, "stderr.log", "stdout.log")):
        assert await runtime.call(digest, "hello", [fd], workdir=tmp_path, limits=LIMITS) == 0
        assert (tmp_path / written).read_text() == "hello from wasm\n"
        assert (tmp_path / empty).read_text() == ""  # each call starts both logs afresh
    # Without a workdir the output is discarded, not inherited.
    assert await runtime.call(digest, "hello", [1], workdir=None, limits=LIMITS) == 0


async def test_wasi_sees_only_the_workdir(runtime: Runtime, tmp_path: Path) -> None:
    digest, wasm = module(WASI)
    runtime.load(digest, wasm)
    work = tmp_path / "work"
    work.mkdir()
    assert await runtime.call(digest, "create", [], workdir=work, limits=LIMITS) == 0
    assert (work / "out.txt").read_text() == "hello from wasm\n"
    assert await runtime.call(digest, "escape", [], workdir=work, limits=LIMITS) != 0
    assert not (tmp_path / "escape.txt").exists()
    assert await runtime.call(digest, "create", [], workdir=None, limits=LIMITS) != 0


async def test_wasi_gets_no_environment_and_argv_is_the_function(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_SECRET", "do-not-leak")
    digest, wasm = module(WASI)
    runtime.load(digest, wasm)
    assert await runtime.call(digest, "env_count", [], workdir=None, limits=LIMITS) == 0
    argv_bytes = await runtime.call(digest, "argv_bytes", [], workdir=None, limits=LIMITS)
    assert argv_bytes == len(b"argv_bytes\0")


async def test_proc_exit(runtime: Runtime) -> None:
    digest, wasm = module(WASI)
    runtime.load(digest, wasm)
    assert await runtime.call(digest, "quit", [0], workdir=None, limits=LIMITS) is None
    with pytest.raises(GuestError) as err:
        await runtime.call(digest, "quit", [3], workdir=None, limits=LIMITS)
    assert (err.value.kind, err.value.message) == ("exit", "exited with code 3")


async def test_many_concurrent_calls(runtime: Runtime) -> None:
    digest, wasm = module(BYTES)
    runtime.load(digest, wasm)
    payloads = [f"payload {i}".encode() * (i + 1) for i in range(50)]
    results = await asyncio.gather(
        *(
            runtime.call(digest, "reverse", [p], workdir=None, limits=LIMITS, returns_bytes=True)
            for p in payloads
        )
    )
    assert results == [p[::-1] for p in payloads]


async def test_aclose_waits_for_calls_and_stops_every_thread(tmp_path: Path) -> None:
    rt = Runtime(tmp_path, HostDrivers({}), max_workers=2)
    digest, wasm = module(ADD)
    rt.load(digest, wasm)
    spin = asyncio.create_task(
        rt.call(digest, "spin", [], workdir=None, limits=CallLimits(timeout_s=0.1))
    )
    await asyncio.sleep(0.02)
    assert "wasm-epoch" in wasm_threads()
    await rt.aclose()
    assert wasm_threads() == []
    with pytest.raises(GuestError, match="time limit"):
        await spin
    with pytest.raises(RuntimeError, match="closed"):
        await rt.call(digest, "add", [1, 2], workdir=None, limits=LIMITS)


async def test_the_epoch_ticker_sleeps_while_idle(runtime: Runtime) -> None:
    ticks: list[float] = []
    engine = runtime._engine  # the tick count is only observable on the engine
    increment = engine.increment_epoch

    def counting() -> None:
        ticks.append(time.monotonic())
        increment()

    engine.increment_epoch = counting
    digest, wasm = module(ADD)
    runtime.load(digest, wasm)
    await asyncio.sleep(0.1)
    assert ticks == []
    with pytest.raises(GuestError, match="time limit"):
        await runtime.call(digest, "spin", [], workdir=None, limits=CallLimits(timeout_s=0.05))
    assert 5 <= len(ticks) <= 30  # ceil(0.05 / 0.01) + 1 ticks, with scheduling slack
    busy = len(ticks)
    await asyncio.sleep(0.1)
    assert len(ticks) <= busy + 1  # at most one tick already in flight when the call ended
