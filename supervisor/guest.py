"""The guest-call ABI and the naming of guest failures (pure helpers around wasmtime).

Values: ``int``/``float`` fill one Wasm parameter each; ``bytes`` fill two (a pointer from the
guest's exported ``alloc`` and a length). A function returning bytes returns one i64 packed as
``(ptr << 32) | len``. Failures: every way a guest can fail becomes a :class:`GuestError`
with a ``kind`` (``timeout``, ``out_of_fuel``, ``memory_limit``, ``trap``, ``exit``, ``link``,
``abi``, ``output``). A trap counts as ``memory_limit`` when the exported ``memory`` cannot grow
one more page under the cap, because wasmtime reports a refused ``memory.grow`` only as -1 to
the guest. ``output`` is a returned result larger than :attr:`CallLimits.result_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import wasmtime

from supervisor.drivers import HostFault
from supervisor.errors import GuestError

UNLIMITED_FUEL = 2**62
_PAGE = 65536
_GROWTH_STEP = 1024 * 1024
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_NUMERIC = ("i32", "i64", "f32", "f64")
_INT_RANGE = {"i32": 32, "i64": 64}
Arg = int | float | bytes


@dataclass(frozen=True)
class FuncSig:
    """A function export's value types: each of ``"i32" | "i64" | "f32" | "f64"``."""

    params: tuple[str, ...]
    results: tuple[str, ...]


@dataclass(frozen=True)
class CallLimits:
    """Per-call budget; ``fuel=None`` means unlimited.

    ``result_bytes`` caps a returned string or JSON document: it is copied out of the guest,
    kept in the request history and sent inline, so a guest must not be able to make the
    daemon hold its whole memory (large results belong in output files).
    """

    timeout_s: float = 10.0
    fuel: int | None = None
    memory_bytes: int = 256 * 1024 * 1024
    result_bytes: int = 1024 * 1024


def coerce(func: str, sig: FuncSig, args: tuple[Arg, ...], returns_bytes: bool) -> list[Arg]:
    """Check ``args`` against ``sig`` before anything runs; ints wrap to signed, ints->floats."""
    bad = [t for t in (*sig.params, *sig.results) if t not in _NUMERIC]
    if bad or len(sig.results) > 1:
        raise GuestError("abi", f"{func} has an unsupported signature {sig}")
    width = sum(2 if isinstance(a, bytes | bytearray) else 1 for a in args)
    if width != len(sig.params):
        raise GuestError("abi", f"{func} takes {len(sig.params)} parameter(s), got {width}")
    if returns_bytes and sig.results != ("i64",):
        raise GuestError("abi", f"{func} must return one i64 (ptr << 32 | len) to return bytes")
    values: list[Arg] = []
    index = 0
    for arg in args:
        ty = sig.params[index]
        if isinstance(arg, bytes | bytearray):
            if sig.params[index : index + 2] != ("i32", "i32"):
                raise GuestError("abi", f"parameter {index} of {func} is {ty}, got bytes")
            values.append(bytes(arg))
            index += 2
            continue
        if isinstance(arg, int) and ty in _INT_RANGE:
            bits = _INT_RANGE[ty]
            if not -(2 ** (bits - 1)) <= arg < 2**bits:
                raise GuestError("abi", f"parameter {index} of {func} is out of the {ty} range")
            values.append(arg - 2**bits if arg >= 2 ** (bits - 1) else arg)
        elif ty in ("f32", "f64"):
            values.append(float(arg))
        else:
            raise GuestError("abi", f"parameter {index} of {func} is {ty}, got {arg!r}")
        index += 1
    return values


def pass_bytes(store: Any, exports: Any, data: bytes) -> list[int | float]:
    alloc, memory = exports.get("alloc"), exports.get("memory")
    if not isinstance(alloc, wasmtime.Func) or not isinstance(memory, wasmtime.Memory):
        raise GuestError("abi", "bytes arguments need exported memory and alloc(i32) -> i32")
    ptr = int(alloc(store, len(data))) & _U32
    if ptr == 0 or ptr + len(data) > memory.data_len(store):
        raise GuestError("abi", f"alloc({len(data)}) returned an unusable pointer {ptr}")
    if data:
        memory.write(store, data, ptr)
    return [ptr - 2**32 if ptr >= 2**31 else ptr, len(data)]


def read_packed(store: Any, exports: Any, packed: int, max_bytes: int) -> bytes:
    """The bytes a guest returned as ``(ptr << 32) | len``; refused (kind ``output``) before
    anything is copied when ``len`` exceeds ``max_bytes``."""
    memory = exports.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise GuestError("abi", "returning bytes needs an exported memory")
    packed &= _U64  # i64 results come back signed
    ptr, length = packed >> 32, packed & _U32
    if ptr + length > memory.data_len(store):
        raise GuestError("abi", f"returned bytes {ptr}+{length} lie outside the guest's memory")
    if length > max_bytes:
        raise GuestError(
            "output",
            f"returned {length} bytes, more than this device's limit of {max_bytes} bytes "
            "for a result (write large results to an output file)",
        )
    return bytes(memory.read(store, ptr, ptr + length))


def memory_full(store: Any, instance: Any, limits: CallLimits) -> bool:
    """Whether the guest's memory is at its cap, give or take one growth step.

    wasmtime-py has no hook for a refused ``memory.grow`` (the guest just sees -1), so this
    judges by the size the memory reached: a guest growing in steps (an allocator asking for
    1 MiB at a time) stops up to a step short of the cap, so a trap within
    :func:`growth_margin` of it counts as hitting the cap. A refused single request larger
    than that still reads as a plain trap.
    """
    try:
        memory = instance.exports(store).get("memory")
        if not isinstance(memory, wasmtime.Memory):
            return False
        return int(memory.data_len(store)) + growth_margin(limits) > limits.memory_bytes
    except wasmtime.WasmtimeError:  # only used to name the failure; never fail over it
        return False


def growth_margin(limits: CallLimits) -> int:
    """How far below its cap a trapped guest's memory may be and still count as full: one
    page, or a 1 MiB growth step where the cap is large enough (at least 16 MiB) for that
    margin not to swallow most of the cap."""
    return max(_PAGE, min(_GROWTH_STEP, limits.memory_bytes // 16))


def exit_code(exc: BaseException) -> int | None:
    """The WASI exit status if ``exc`` is a ``proc_exit``, else None."""
    return int(exc.code) if isinstance(exc, wasmtime.ExitTrap) else None


def is_memory(value: object) -> bool:
    return isinstance(value, wasmtime.Memory)


def is_wasmtime(exc: BaseException) -> bool:
    return isinstance(exc, wasmtime.WasmtimeError | wasmtime.Trap)


def classify(
    exc: BaseException, limits: CallLimits, memory_full: bool, *, instantiating: bool
) -> GuestError:
    code = exit_code(exc)
    if code is not None:
        return GuestError("exit", f"exited with code {code}")
    if isinstance(exc, wasmtime.Trap):
        trap_code = exc.trap_code
        if trap_code == wasmtime.TrapCode.INTERRUPT:
            return GuestError("timeout", f"exceeded its time limit of {_ms(limits.timeout_s)} ms")
        if trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            fuel = limits.fuel or UNLIMITED_FUEL
            return GuestError("out_of_fuel", f"ran out of fuel ({fuel} units)")
        if memory_full:
            return GuestError("memory_limit", memory_message(limits))
        return GuestError("trap", reason(exc))
    if isinstance(exc, wasmtime.WasmtimeError):
        if "exceeds memory limits" in str(exc):
            return GuestError("memory_limit", memory_message(limits))
        return GuestError("link" if instantiating else "trap", reason(exc))
    # Arguments are checked before the call, so a plain Python exception here is a host
    # function's, reported through wasmtime-py's process-wide slot from a concurrent call.
    return GuestError("trap", f"the guest trapped in a host function ({type(exc).__name__})")


def reason(exc: BaseException) -> str:
    """The useful line of a wasmtime message: the cause, not the backtrace header."""
    lines = [line.strip() for line in str(exc).splitlines()]
    cause = next((line for i, line in enumerate(lines) if line and "Caused by:" in lines[:i]), None)
    head = lines[0] if lines else type(exc).__name__
    if cause is None:
        return head
    cause = cause.removeprefix("wasm trap: ")
    return cause if head.startswith("error while executing") else f"{head}: {cause}"


def memory_message(limits: CallLimits) -> str:
    return f"exceeded its memory limit of {limits.memory_bytes} bytes"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}" if abs(ms - round(ms)) < 1e-6 else f"{ms:.3f}".rstrip("0")


def failure(
    raised: BaseException,
    fault: HostFault | None,
    limits: CallLimits,
    *,
    store: Any,
    instance: Any,
) -> GuestError | None:
    """Name the failure of a call; ``None`` for WASI ``proc_exit(0)``, a normal end.

    ``fault`` is the host function's own record of its exception, which wins over what
    wasmtime-py reports (its slot for host exceptions is shared by all threads).
    """
    cause: BaseException = fault.error if fault is not None else raised
    if exit_code(cause) == 0:
        return None
    if fault is not None and not is_wasmtime(cause):
        return GuestError("trap", f"host function {fault.function} failed: {cause}")
    full = instance is not None and memory_full(store, instance, limits)
    return classify(cause, limits, full, instantiating=instance is None)
