"""Host functions that Wasm guests import, grouped into device drivers.

A *driver* owns one import namespace (``sys``, ``camera``, ``dht``) and offers host functions,
each with one implementation per Wasm signature it accepts. :class:`HostDrivers` is the set a
device has, built from its profile by :func:`build_drivers`; the runtime asks it which imports
exist (:meth:`HostDrivers.provides`) and links only those a module imports
(:meth:`HostDrivers.define`).

Host functions run on the runtime's worker thread, inside a guest call, possibly several at
once: implementations must be thread-safe and must only touch guest memory through the
``Caller`` they are given. A host function fails the guest call by raising; because
wasmtime-py passes that exception back through one process-wide slot (``LAST_EXCEPTION``),
which concurrent calls can overwrite, the guard in :meth:`HostDrivers.define` also records it
per thread and the runtime reads it back with :func:`take_host_fault`.

Every driver has a ``simulated`` kind, so any profile runs on any machine; the real-hardware
kinds (:mod:`supervisor.hardware`) plug in through :data:`DRIVER_KINDS`.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from supervisor import hardware
from supervisor.errors import Unprocessable

WASI_MODULE = "wasi_snapshot_preview1"

#: Every function of WASI preview 1; ``Linker.define_wasi`` provides all of them.
WASI_FUNCTIONS: tuple[str, ...] = (
    "args_get", "args_sizes_get", "environ_get", "environ_sizes_get", "clock_res_get",
    "clock_time_get", "fd_advise", "fd_allocate", "fd_close", "fd_datasync", "fd_fdstat_get",
    "fd_fdstat_set_flags", "fd_fdstat_set_rights", "fd_filestat_get", "fd_filestat_set_size",
    "fd_filestat_set_times", "fd_pread", "fd_prestat_get", "fd_prestat_dir_name", "fd_pwrite",
    "fd_read", "fd_readdir", "fd_renumber", "fd_seek", "fd_sync", "fd_tell", "fd_write",
    "path_create_directory", "path_filestat_get", "path_filestat_set_times", "path_link",
    "path_open", "path_readlink", "path_remove_directory", "path_rename", "path_symlink",
    "path_unlink_file", "poll_oneoff", "proc_exit", "proc_raise", "sched_yield", "random_get",
    "sock_accept", "sock_recv", "sock_send", "sock_shutdown",
)  # fmt: skip

#: A Wasm function signature as value-type names: ``(("i32", "i32"), ("i64",))``.
Signature = tuple[tuple[str, ...], tuple[str, ...]]

MAX_DELAY_MS = 5000
MAX_PRINT_BYTES = 4096
_GUEST_LOG = logging.getLogger("supervisor.guest")


class HostTrap(Exception):
    """Raised by a host function to fail the guest call with a clear message."""


@dataclass(frozen=True)
class HostFault:
    """A host function's exception, recorded for the thread that ran it."""

    function: str  # "camera.takeImageDynamicSize"
    error: BaseException


_FAULTS = threading.local()


def take_host_fault() -> HostFault | None:
    """Return and clear the last exception a host function raised on this thread."""
    fault: HostFault | None = getattr(_FAULTS, "fault", None)
    _FAULTS.fault = None
    return fault


def signature_of(functype: Any) -> Signature:
    """The value-type names of a ``wasmtime.FuncType``."""
    return (
        tuple(str(t) for t in functype.params),
        tuple(str(t) for t in functype.results),
    )


def _format(sig: Signature) -> str:
    return f"({', '.join(sig[0])}) -> ({', '.join(sig[1])})"


@dataclass(frozen=True)
class HostFunc:
    """One importable host function: an implementation per accepted signature.

    With ``caller=True`` every implementation receives the ``wasmtime.Caller`` first.
    """

    impls: Mapping[Signature, Callable[..., Any]]
    caller: bool = False


class Driver(ABC):
    """A device capability exposed to guests as one import namespace."""

    @abstractmethod
    def functions(self) -> Mapping[str, HostFunc]:
        """Host functions by import name; called once, when the drivers are assembled."""


# --- guest memory through the Caller -------------------------------------------------------

_U32 = 0xFFFFFFFF
I32: Signature = (("i32",), ())
PTR_LEN: Signature = (("i32", "i32"), ())


def _memory(caller: Any) -> Any:
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise HostTrap("the module exports no memory")
    return memory


def read_guest(caller: Any, ptr: int, length: int) -> bytes:
    """Copy ``length`` bytes at ``ptr`` out of the caller's memory, bounds-checked."""
    memory = _memory(caller)
    ptr, length = ptr & _U32, length & _U32
    if ptr + length > memory.data_len(caller):
        raise HostTrap(f"read of {length} bytes at {ptr} is outside the guest's memory")
    return bytes(memory.read(caller, ptr, ptr + length))


def write_guest(caller: Any, ptr: int, data: bytes) -> None:
    """Copy ``data`` into the caller's memory at ``ptr``, bounds-checked."""
    memory = _memory(caller)
    ptr &= _U32
    # Memory.write/read use slice semantics (negative offsets, clamping): check ourselves.
    if ptr + len(data) > memory.data_len(caller):
        raise HostTrap(f"write of {len(data)} bytes at {ptr} is outside the guest's memory")
    if data:
        memory.write(caller, data, ptr)


def _guest_alloc(caller: Any, size: int) -> int:
    alloc = caller.get("alloc")
    if not isinstance(alloc, wasmtime.Func):
        raise HostTrap("the module exports no alloc(i32) -> i32")
    ptr = int(alloc(caller, size)) & _U32
    if ptr == 0:
        raise HostTrap(f"alloc({size}) returned a null pointer")
    return ptr


# --- drivers -------------------------------------------------------------------------------


class SysDriver(Driver):
    """``sys``: time, sleeping and logging; every device has it."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._wall, self._monotonic, self._sleep = wall, monotonic, sleep
        self._start = monotonic()

    def functions(self) -> Mapping[str, HostFunc]:
        """``millis``, ``delay``, ``print``, ``println``, ``printInt``."""
        return {
            "millis": HostFunc({((), ("i64",)): self.epoch_ms, ((), ("i32",)): self.uptime_ms}),
            "delay": HostFunc({I32: self.delay}),
            "print": HostFunc({PTR_LEN: self.print}, caller=True),
            "println": HostFunc({PTR_LEN: self.print}, caller=True),
            "printInt": HostFunc({I32: self.print_int}),
        }

    def epoch_ms(self) -> int:
        """Unix time in milliseconds (the ``() -> i64`` variant)."""
        return int(self._wall() * 1000)

    def uptime_ms(self) -> int:
        """Milliseconds since the driver started, wrapped into the positive i32 range.

        The reference returns epoch milliseconds as i32, which cannot fit; a wrapping
        monotonic counter still gives guests correct differences over ~24 days.
        """
        return int((self._monotonic() - self._start) * 1000) & 0x7FFFFFFF

    def delay(self, ms: int) -> None:
        """Sleep, capped at :data:`MAX_DELAY_MS`: epoch deadlines cannot interrupt the host."""
        self._sleep(min(max(ms, 0), MAX_DELAY_MS) / 1000)

    def print(self, caller: Any, ptr: int, length: int) -> None:
        """Log the guest's UTF-8 text (truncated to :data:`MAX_PRINT_BYTES`)."""
        data = read_guest(caller, ptr, min(length & _U32, MAX_PRINT_BYTES))
        _GUEST_LOG.info("%s", data.decode("utf-8", errors="replace"))

    def print_int(self, value: int) -> None:
        """Log an integer."""
        _GUEST_LOG.info("%d", value)


class CameraDriver(Driver):
    """``camera``: hands the guest one image per call from ``capture``."""

    def __init__(self, capture: Callable[[], bytes]) -> None:
        self._capture = capture

    def functions(self) -> Mapping[str, HostFunc]:
        """``takeImageDynamicSize`` and ``takeImageStaticSize``."""
        return {
            "takeImageDynamicSize": HostFunc({PTR_LEN: self.take_dynamic}, caller=True),
            "takeImageStaticSize": HostFunc({PTR_LEN: self.take_static}, caller=True),
        }

    def take_dynamic(self, caller: Any, out_ptr_ptr: int, out_size_ptr: int) -> None:
        """Write the image into a buffer from the guest's ``alloc``; store ptr and len (u32 LE).

        Unlike the reference Rust port, the image never goes to offset 0.
        """
        image = self._capture()
        ptr = _guest_alloc(caller, len(image))
        write_guest(caller, ptr, image)
        write_guest(caller, out_ptr_ptr, struct.pack("<I", ptr))
        write_guest(caller, out_size_ptr, struct.pack("<I", len(image)))

    def take_static(self, caller: Any, out_ptr: int, size_ptr: int) -> None:
        """Write at most the u32 LE capacity at ``size_ptr``; store the written length there."""
        (capacity,) = struct.unpack("<I", read_guest(caller, size_ptr, 4))
        image = self._capture()[:capacity]
        write_guest(caller, out_ptr, image)
        write_guest(caller, size_ptr, struct.pack("<I", len(image)))


class DhtDriver(Driver):
    """``dht``: a temperature/humidity sensor (DHT22 in the reference)."""

    def __init__(self, temperature: Callable[[], float], humidity: Callable[[], float]) -> None:
        self._temperature, self._humidity = temperature, humidity

    def functions(self) -> Mapping[str, HostFunc]:
        """``getTemperature`` and ``getHumidity``, both ``() -> f32``."""
        f32: Signature = ((), ("f32",))
        return {
            "getTemperature": HostFunc({f32: lambda: float(self._temperature())}),
            "getHumidity": HostFunc({f32: lambda: float(self._humidity())}),
        }


class SimulatedCamera:
    """Images from a folder, in sorted filename order, rotating per capture."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._next = 0
        self._lock = threading.Lock()  # captures come from several worker threads

    def capture(self) -> bytes:
        """The next image's bytes; :class:`HostTrap` when the folder has none."""
        files = sorted(
            p for p in self._folder.iterdir() if p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise HostTrap(f"the simulated camera has no images in {self._folder}")
        with self._lock:
            index, self._next = self._next % len(files), self._next + 1
        return files[index].read_bytes()


class SimulatedDht:
    """A smooth synthetic climate: temperature 21±4 °C over 10 min, humidity 50±10 % over 15."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def temperature(self) -> float:
        """Degrees Celsius at ``clock()``."""
        return 21 + 4 * math.sin(2 * math.pi * self._clock() / 600)

    def humidity(self) -> float:
        """Relative humidity in percent at ``clock()``."""
        return 50 + 10 * math.sin(2 * math.pi * self._clock() / 900 + 1)


# --- assembling a device's drivers -----------------------------------------------------------


class HostDrivers:
    """The host functions one device offers; ``sys`` is always present."""

    def __init__(self, drivers: Mapping[str, Driver]) -> None:
        all_drivers: dict[str, Driver] = {"sys": SysDriver(), **drivers}
        self._functions = {ns: dict(d.functions()) for ns, d in all_drivers.items()}

    def interfaces(self) -> list[str]:
        """Import names for the device description: host functions, then WASI."""
        names = [name for funcs in self._functions.values() for name in funcs]
        return list(dict.fromkeys([*names, *WASI_FUNCTIONS]))

    def namespaces(self) -> list[str]:
        """Driver namespaces, ``sys`` first."""
        return list(self._functions)

    def provides(self, module: str, name: str) -> bool:
        """Whether ``module.name`` is a host function of this device (any signature)."""
        return name in self._functions.get(module, {})

    def define(self, linker: Any, imports: Iterable[tuple[str, str, Any]]) -> None:
        """Define on ``linker`` the host functions in ``imports`` (module, name, FuncType).

        Raises :class:`Unprocessable` for an import this device lacks or whose signature no
        implementation accepts.
        """
        done: set[tuple[str, str]] = set()
        for module, name, functype in imports:
            if (module, name) in done:
                continue
            func = self._functions.get(module, {}).get(name)
            if func is None:
                raise Unprocessable(
                    f"module imports {module}.{name}, which this device does not provide"
                )
            sig = signature_of(functype)
            impl = func.impls.get(sig)
            if impl is None:
                offered = " or ".join(_format(s) for s in func.impls)
                raise Unprocessable(
                    f"module imports {module}.{name} as {_format(sig)}, "
                    f"but this device provides {offered}"
                )
            linker.define_func(
                module, name, functype, _guard(f"{module}.{name}", impl), access_caller=func.caller
            )
            done.add((module, name))


def _guard(function: str, impl: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any) -> Any:
        try:
            return impl(*args)
        except BaseException as exc:
            _FAULTS.fault = HostFault(function, exc)
            raise

    return guarded


DriverFactory = Callable[[Mapping[str, object], Path], Driver]


def _options(name: str, options: Mapping[str, object], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed - {"kind"})
    if unknown:
        raise ValueError(f"driver {name!r}: unknown option(s) {', '.join(unknown)}")


def _simulated_camera(options: Mapping[str, object], base_dir: Path) -> Driver:
    _options("camera", options, {"images"})
    images = options.get("images")
    if not isinstance(images, str) or not images:
        raise ValueError("driver 'camera' (simulated) needs 'images': a folder of image files")
    folder = base_dir / images
    if not folder.is_dir():
        raise ValueError(f"driver 'camera' (simulated): {folder} is not a folder")
    return CameraDriver(SimulatedCamera(folder).capture)


def _simulated_dht(options: Mapping[str, object], base_dir: Path) -> Driver:
    _options("dht", options, set())
    sensor = SimulatedDht()
    return DhtDriver(sensor.temperature, sensor.humidity)


def _command_camera(options: Mapping[str, object], base_dir: Path) -> Driver:
    _options("camera", options, {"command", "timeout"})
    command = options.get("command")
    if not (
        isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)
    ):
        raise ValueError(
            "driver 'camera' (command) needs 'command': the capture program and its arguments "
            'as a list of strings, e.g. ["rpicam-still", "-n", "-e", "png", "-o", "-"]'
        )
    timeout = options.get("timeout", hardware.CAPTURE_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError("driver 'camera' (command): 'timeout' must be a positive number of s")
    return CameraDriver(hardware.CommandCamera(command, timeout_s=float(timeout)).capture)


def _iio_dht(options: Mapping[str, object], base_dir: Path) -> Driver:
    _options("dht", options, {"device"})
    device = options.get("device")
    if not isinstance(device, str) or not device:
        raise ValueError(
            "driver 'dht' (iio) needs 'device': the sensor's IIO folder, "
            'e.g. "/sys/bus/iio/devices/iio:device0"'
        )
    folder = base_dir / device
    if not folder.is_dir():
        raise ValueError(f"driver 'dht' (iio): {folder} is not a folder (is the overlay on?)")
    sensor = hardware.IioDht(folder)
    return DhtDriver(sensor.temperature, sensor.humidity)


#: Driver name -> kind -> factory. A new kind of hardware registers here.
DRIVER_KINDS: dict[str, dict[str, DriverFactory]] = {
    "camera": {"simulated": _simulated_camera, "command": _command_camera},
    "dht": {"simulated": _simulated_dht, "iio": _iio_dht},
}


def build_drivers(spec: Mapping[str, Mapping[str, object]], base_dir: Path) -> HostDrivers:
    """Drivers from a device profile's ``drivers`` table; relative paths resolve in base_dir.

    Raises :class:`ValueError` for an unknown driver, kind or option.
    """
    drivers: dict[str, Driver] = {}
    for name, options in spec.items():
        kinds = DRIVER_KINDS.get(name)
        if kinds is None:
            known = ", ".join(sorted(DRIVER_KINDS))
            raise ValueError(f"unknown driver {name!r} (known: {known}; sys is built in)")
        kind = options.get("kind")
        factory = kinds.get(kind) if isinstance(kind, str) else None
        if factory is None:
            known = ", ".join(sorted(kinds))
            raise ValueError(f"driver {name!r}: unknown kind {kind!r} (known: {known})")
        drivers[name] = factory(options, base_dir)
    return HostDrivers(drivers)
