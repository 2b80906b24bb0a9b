"""Host functions, through real wasmtime guests written inline as WAT."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import wasmtime

from supervisor.drivers import (
    MAX_DELAY_MS,
    WASI_FUNCTIONS,
    WASI_MODULE,
    CameraDriver,
    DhtDriver,
    Driver,
    HostDrivers,
    SimulatedCamera,
    SimulatedDht,
    SysDriver,
    build_drivers,
)
from supervisor.errors import GuestError, Unprocessable
from supervisor.runtime import CallLimits, Runtime

LIMITS = CallLimits(timeout_s=5.0)

SYS = """(module
  (import "sys" "millis" (func $millis (result i64)))
  (import "sys" "delay" (func $delay (param i32)))
  (import "sys" "print" (func $print (param i32 i32)))
  (import "sys" "println" (func $println (param i32 i32)))
  (import "sys" "printInt" (func $print_int (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "h\\c3\\a9llo \\ff!")
  (func (export "millis") (result i64) call $millis)
  (func (export "delay") (param i32) (call $delay (local.get 0)))
  (func (export "talk")
    (call $print (i32.const 16) (i32.const 9))
    (call $println (i32.const 16) (i32.const 6))
    (call $print_int (i32.const -7)))
  (func (export "overrun") (call $print (i32.const 65530) (i32.const 100))))"""

MILLIS32 = """(module (import "sys" "millis" (func $m (result i32)))
  (func (export "millis") (result i32) call $m))"""

# A guest with a bump allocator from 1024; out-pointers live at 16 (ptr) and 20 (len).
CAMERA = """(module
  (import "camera" "takeImageDynamicSize" (func $dynamic (param i32 i32)))
  (import "camera" "takeImageStaticSize" (func $static (param i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32)
    global.get $heap
    global.get $heap local.get $n i32.add global.set $heap)
  (func $packed (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (func (export "dynamic") (result i64)
    (call $dynamic (i32.const 16) (i32.const 20))
    (call $packed (i32.load (i32.const 16)) (i32.load (i32.const 20))))
  (func (export "dynamic_ptr") (result i32)
    (call $dynamic (i32.const 16) (i32.const 20)) (i32.load (i32.const 16)))
  (func (export "static") (param $capacity i32) (result i64)
    (i32.store (i32.const 20) (local.get $capacity))
    (call $static (i32.const 512) (i32.const 20))
    (call $packed (i32.const 512) (i32.load (i32.const 20)))))"""

NO_ALLOC = """(module
  (import "camera" "takeImageDynamicSize" (func $dynamic (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "dynamic") (call $dynamic (i32.const 16) (i32.const 20))))"""

DHT = """(module
  (import "dht" "getTemperature" (func $t (result f32)))
  (import "dht" "getHumidity" (func $h (result f32)))
  (func (export "temperature") (result f32) call $t)
  (func (export "humidity") (result f32) call $h))"""


def module(wat: str) -> tuple[str, bytes]:
    wasm = bytes(wasmtime.wat2wasm(wat))
    return hashlib.sha256(wasm).hexdigest(), wasm


class Clock:
    """A settable clock for the injectable time sources."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(b"second image")
    (folder / "a.jpg").write_bytes(b"first")
    (folder / ".hidden").write_bytes(b"never served")
    return folder


RuntimeFactory = Callable[[dict[str, Driver]], Runtime]


@pytest.fixture
async def make_runtime(tmp_path: Path) -> AsyncIterator[RuntimeFactory]:
    runtimes: list[Runtime] = []

    def make(drivers: dict[str, Driver]) -> Runtime:
        runtimes.append(Runtime(tmp_path / "cache", HostDrivers(drivers), max_workers=4))
        return runtimes[-1]

    yield make
    for rt in runtimes:
        await rt.aclose()


async def run(rt: Runtime, wat: str, func: str, *args: int, as_bytes: bool = False) -> object:
    digest, wasm = module(wat)
    rt.load(digest, wasm)
    return await rt.call(digest, func, args, workdir=None, limits=LIMITS, returns_bytes=as_bytes)


def test_interfaces_list_host_functions_then_wasi(images: Path) -> None:
    drivers = HostDrivers({"camera": CameraDriver(SimulatedCamera(images).capture)})
    assert drivers.namespaces() == ["sys", "camera"]
    assert drivers.interfaces() == [
        "millis",
        "delay",
        "print",
        "println",
        "printInt",
        "takeImageDynamicSize",
        "takeImageStaticSize",
        *WASI_FUNCTIONS,
    ]
    assert drivers.provides("camera", "takeImageStaticSize")
    assert not drivers.provides("dht", "getTemperature")
    assert not drivers.provides("sys", "takeImageStaticSize")


def test_every_listed_wasi_function_is_provided_by_the_linker() -> None:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    for name in WASI_FUNCTIONS:
        assert isinstance(linker.get(store, WASI_MODULE, name), wasmtime.Func), name


async def test_millis_by_import_type(make_runtime: RuntimeFactory) -> None:
    wall, monotonic = Clock(1_700_000_000.123), Clock(1000.0)
    rt = make_runtime({"sys": SysDriver(wall=wall, monotonic=monotonic)})
    assert await run(rt, SYS, "millis") == 1_700_000_000_123
    monotonic.now += 5.5
    assert await run(rt, MILLIS32, "millis") == 5500
    monotonic.now += 2**31 / 1000  # past the i32 range: wraps, stays non-negative
    assert await run(rt, MILLIS32, "millis") == 5500


async def test_delay_is_capped(make_runtime: RuntimeFactory) -> None:
    slept: list[float] = []
    rt = make_runtime({"sys": SysDriver(sleep=slept.append)})
    for ms in (250, 60_000, -5):
        await run(rt, SYS, "delay", ms)
    assert slept == [0.25, MAX_DELAY_MS / 1000, 0.0]


async def test_print_logs_guest_text(
    make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rt = make_runtime({})
    with caplog.at_level(logging.INFO, logger="supervisor.guest"):
        await run(rt, SYS, "talk")
    guest = [r.getMessage() for r in caplog.records if r.name == "supervisor.guest"]
    assert guest == ["héllo \ufffd!", "héllo", "-7"]


async def test_out_of_bounds_print_traps(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime({})
    with pytest.raises(GuestError) as err:
        await run(rt, SYS, "overrun")
    assert err.value.kind == "trap"
    assert err.value.message.startswith("host function sys.print failed: read of 100 bytes")


async def test_camera_dynamic_size_rotates_sorted_images(
    make_runtime: RuntimeFactory, images: Path
) -> None:
    rt = make_runtime({"camera": CameraDriver(SimulatedCamera(images).capture)})
    shots = [await run(rt, CAMERA, "dynamic", as_bytes=True) for _ in range(3)]
    assert shots == [b"first", b"second image", b"first"]
    assert await run(rt, CAMERA, "dynamic_ptr") == 1024  # from the guest's alloc, never 0


async def test_camera_static_size_truncates_to_capacity(
    make_runtime: RuntimeFactory, images: Path
) -> None:
    rt = make_runtime({"camera": CameraDriver(SimulatedCamera(images).capture)})
    assert await run(rt, CAMERA, "static", 3, as_bytes=True) == b"fir"
    assert await run(rt, CAMERA, "static", 100, as_bytes=True) == b"second image"


async def test_camera_failures_trap_with_a_clear_message(
    make_runtime: RuntimeFactory, tmp_path: Path, images: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rt = make_runtime({"camera": CameraDriver(SimulatedCamera(empty).capture)})
    with pytest.raises(GuestError) as err:
        await run(rt, CAMERA, "dynamic", as_bytes=True)
    assert (err.value.kind, err.value.message) == (
        "trap",
        f"host function camera.takeImageDynamicSize failed: "
        f"the simulated camera has no images in {empty}",
    )
    rt = make_runtime({"camera": CameraDriver(SimulatedCamera(images).capture)})
    with pytest.raises(GuestError, match="exports no alloc"):
        await run(rt, NO_ALLOC, "dynamic")


async def test_a_guest_timeout_inside_a_host_function_is_a_timeout(
    make_runtime: RuntimeFactory, images: Path
) -> None:
    rt = make_runtime({"camera": CameraDriver(SimulatedCamera(images).capture)})
    digest, wasm = module("""(module
      (import "camera" "takeImageDynamicSize" (func $dynamic (param i32 i32)))
      (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (loop $l br $l) i32.const 0)
      (func (export "dynamic") (call $dynamic (i32.const 16) (i32.const 20))))""")
    rt.load(digest, wasm)
    with pytest.raises(GuestError) as err:
        await rt.call(digest, "dynamic", [], workdir=None, limits=CallLimits(timeout_s=0.05))
    assert err.value.kind == "timeout"


async def test_concurrent_host_faults_reach_their_own_calls(
    make_runtime: RuntimeFactory, tmp_path: Path, images: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    good = make_runtime({"camera": CameraDriver(SimulatedCamera(images).capture)})
    bad = make_runtime({"camera": CameraDriver(SimulatedCamera(empty).capture)})
    results = await asyncio.gather(
        *(run(rt, CAMERA, "dynamic", as_bytes=True) for rt in [good, bad] * 10),
        return_exceptions=True,
    )
    assert all(isinstance(r, bytes) for r in results[::2])
    assert all(isinstance(r, GuestError) and "no images" in r.message for r in results[1::2])


async def test_dht_follows_the_injected_clock(make_runtime: RuntimeFactory) -> None:
    clock = Clock(150.0)  # a quarter of the 600 s temperature period
    sensor = SimulatedDht(clock)
    rt = make_runtime({"dht": DhtDriver(sensor.temperature, sensor.humidity)})
    assert await run(rt, DHT, "temperature") == 25.0
    clock.now = 0.0
    assert await run(rt, DHT, "temperature") == 21.0
    assert await run(rt, DHT, "humidity") == pytest.approx(50 + 10 * math.sin(1), rel=1e-6)


async def test_an_import_of_the_wrong_type_is_unprocessable(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime({})
    digest, wasm = module('(module (import "sys" "millis" (func (param i32) (result i64))))')
    with pytest.raises(Unprocessable) as err:
        rt.load(digest, wasm)
    assert err.value.message == (
        "module imports sys.millis as (i32) -> (i64), "
        "but this device provides () -> (i64) or () -> (i32)"
    )


async def test_imports_of_absent_drivers_are_unprocessable(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime({})
    digest, wasm = module(DHT)
    with pytest.raises(Unprocessable, match=r"imports dht\.getTemperature, which this device"):
        rt.load(digest, wasm)


def test_build_drivers_from_a_profile(tmp_path: Path, images: Path) -> None:
    drivers = build_drivers(
        {"camera": {"kind": "simulated", "images": "images"}, "dht": {"kind": "simulated"}},
        base_dir=tmp_path,
    )
    assert drivers.namespaces() == ["sys", "camera", "dht"]
    assert drivers.provides("dht", "getHumidity")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"lidar": {"kind": "simulated"}}, "unknown driver 'lidar'"),
        (
            {"dht": {"kind": "dht22"}},
            "driver 'dht': unknown kind 'dht22' \\(known: iio, simulated\\)",
        ),
        ({"dht": {}}, "driver 'dht': unknown kind None"),
        ({"dht": {"kind": "simulated", "pin": 4}}, "driver 'dht': unknown option\\(s\\) pin"),
        ({"camera": {"kind": "simulated"}}, "needs 'images'"),
        ({"camera": {"kind": "simulated", "images": "nope"}}, "nope is not a folder"),
    ],
)
def test_build_drivers_rejects_bad_profiles(
    tmp_path: Path, spec: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_drivers(spec, base_dir=tmp_path)
