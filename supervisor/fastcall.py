"""A lean way to call a numeric Wasm export, for the hot path of small pure functions.

wasmtime-py's ``Func.__call__`` rebuilds the function's type and converts every value through
``Val`` objects on each call, which costs far more than a small guest (fibonacci) runs. For a
function whose parameters and results are all numbers, :class:`NumericCall` prepares the
value kinds and ``wasmtime_val_t`` arrays once and then calls ``wasmtime_func_call`` directly.

It relies on wasmtime-py internals (``wasmtime._ffi``, ``wasmtime._func.enter_wasm``), which is
why wasmtime is pinned to one exact version; traps are raised exactly as ``Func.__call__``
raises them. A call object belongs to one store and is used by one thread at a time (it
reuses its arrays).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from wasmtime import WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime._func import enter_wasm

_KINDS = {
    "i32": (ffi.WASMTIME_I32.value, "i32"),
    "i64": (ffi.WASMTIME_I64.value, "i64"),
    "f32": (ffi.WASMTIME_F32.value, "f32"),
    "f64": (ffi.WASMTIME_F64.value, "f64"),
}


class NumericCall:
    """Calls one numeric export of one instance; build it once, call it many times."""

    def __init__(self, func: Any, params: Sequence[str], results: Sequence[str]) -> None:
        if len(results) > 1 or any(t not in _KINDS for t in (*params, *results)):
            raise ValueError("only functions of numbers with at most one result")
        self._func = func._func  # the raw wasmtime_func_t the public Func wraps
        self._params = [_KINDS[t] for t in params]
        self._result = _KINDS[results[0]][1] if results else None
        self._args = (ffi.wasmtime_val_t * len(params))()
        self._out = (ffi.wasmtime_val_t * len(results))()

    def __call__(self, store: Any, values: Sequence[int | float]) -> int | float | None:
        args = self._args
        for slot, (kind, field), value in zip(args, self._params, values, strict=True):
            slot.kind = kind
            setattr(slot.of, field, value)
        with enter_wasm(store) as trap:
            error = ffi.wasmtime_func_call(
                store._context(),
                ctypes.byref(self._func),
                args,
                len(args),
                self._out,
                len(self._out),
                trap,
            )
            if bool(error):  # a NULL pointer is falsy
                raise WasmtimeError._from_ptr(error)
        if self._result is None:
            return None
        result: int | float = getattr(self._out[0].of, self._result)
        return result
