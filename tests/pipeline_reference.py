"""Python models of the example pipelines' modules (image, climate), written from their specs.

The tests compare what the Wasm modules compute with these models. They are deliberately
written differently from the C (regular expressions, :class:`fractions.Fraction`,
:class:`decimal.Decimal`) so that a shared mistake is unlikely; the contracts they follow are
the ones documented at the top of ``modules/image/image.c`` and ``modules/climate/climate.c``.
Every function raises :class:`Refused` where the module refuses its input.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

MAX_SIDE = 16384
MAX_IMAGE_FILE = 32 << 20
WINDOW = 5
MAX_READINGS = 10_000
MAX_CSV = 1 << 20
MAX_THRESHOLDS = 64 << 10
READINGS_HEADER = "index,elapsed_ms,temperature,humidity"


class Refused(ValueError):
    """The module refuses this input (grayscale returns -1, the others {"error": ...})."""


# Possessive quantifiers: a comment or a number is consumed whole, never given back to let
# the pattern match in some other way, exactly like the module's left-to-right scan.
_SEP = rb"(?:[ \t\n\x0b\x0c\r]|#[^\n\r]*+)++"
_HEADER = re.compile(
    rb"P(?P<kind>[56])"
    + (_SEP + rb"(?P<w>[0-9]++)")
    + (_SEP + rb"(?P<h>[0-9]++)")
    + (_SEP + rb"(?P<max>[0-9]++)")
    + rb"[ \t\n\x0b\x0c\r]"  # exactly one whitespace byte, then the raster
)


def parse_netpbm(data: bytes, kind: str) -> tuple[int, int, bytes]:
    """(width, height, raster) of a binary P6 (``kind="6"``) or P5 image, or Refused."""
    if len(data) > MAX_IMAGE_FILE:
        raise Refused("larger than 32 MiB")
    match = _HEADER.match(data)
    if match is None or match["kind"].decode() != kind:
        raise Refused("bad header")
    width, height, maxval = int(match["w"]), int(match["h"]), int(match["max"])
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or maxval != 255:
        raise Refused("bad numbers")
    raster = data[match.end() :]
    if len(raster) != width * height * (3 if kind == "6" else 1):
        raise Refused("raster size")
    return width, height, raster


def luma(r: int, g: int, b: int) -> int:
    return (299 * r + 587 * g + 114 * b + 500) // 1000


def grayscale(ppm: bytes) -> bytes:
    """The gray.pgm that image.grayscale writes for ``ppm``."""
    width, height, raster = parse_netpbm(ppm, "6")
    if width < 2 or height < 2:
        raise Refused("smaller than 2x2")
    lumas = [luma(*raster[i : i + 3]) for i in range(0, len(raster), 3)]
    out = bytearray()
    for y in range(height // 2):
        for x in range(width // 2):
            block = [lumas[(2 * y + dy) * width + 2 * x + dx] for dy in (0, 1) for dx in (0, 1)]
            out.append((sum(block) + 2) // 4)
    return f"P5\n{width // 2} {height // 2}\n255\n".encode() + bytes(out)


def half_up(value: Fraction) -> int:
    """``value`` rounded to an integer, halves away from zero."""
    rounded = math.floor(abs(value) + Fraction(1, 2))
    return rounded if value >= 0 else -rounded


def summary(pgm: bytes) -> dict[str, Any]:
    """image.summary's object for ``pgm``, with ``mean`` and ``dark`` as exact Fractions.

    ``mean_hundredths`` and ``dark_ten_thousandths`` are the rounded values the module prints.
    """
    width, height, raster = parse_netpbm(pgm, "5")
    pixels = list(raster)
    histogram = [sum(1 for v in pixels if lo <= v < lo + 64) for lo in (0, 64, 128, 192)]
    mean = Fraction(sum(pixels), len(pixels))
    dark = Fraction(sum(1 for v in pixels if v < 64), len(pixels))
    return {
        "width": width,
        "height": height,
        "pixels": len(pixels),
        "min": min(pixels),
        "max": max(pixels),
        "mean": mean,
        "mean_hundredths": half_up(mean * 100),
        "histogram": histogram,
        "dark": dark,
        "dark_ten_thousandths": half_up(dark * 10_000),
    }


_DECIMAL = r"-?[0-9]{1,6}(?:\.[0-9]{1,2})?"
_ROW = re.compile(rf"([0-9]{{1,10}}),[0-9]{{1,10}},({_DECIMAL}),({_DECIMAL})")


def hundredths(text: str) -> int:
    """A decimal with at most two places, in hundredths (exact)."""
    return int(Decimal(text) * 100)


def parse_readings(data: bytes) -> list[tuple[int, int]]:
    """(temperature, humidity) in hundredths per line of readings.csv, or Refused."""
    if len(data) > MAX_CSV:
        raise Refused("too large")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as err:
        raise Refused("not ASCII") from err
    *ended, last = text.split("\n")
    # "\r\n" ends a line as "\n" does; the last line's end is optional, but a lone "\r" is
    # not a line end, so it stays on an unterminated last line (and fails the match).
    lines = [line.removesuffix("\r") for line in ended] + ([last] if last else [])
    if not lines or lines[0] != READINGS_HEADER:
        raise Refused("not the readings header")
    readings: list[tuple[int, int]] = []
    for index, line in enumerate(lines[1:]):
        match = _ROW.fullmatch(line)
        if match is None or int(match[1]) != index:
            raise Refused(f"bad line {index + 2}")
        readings.append((hundredths(match[2]), hundredths(match[3])))
    if not readings:
        raise Refused("no readings")
    if len(readings) > MAX_READINGS:
        raise Refused("too many readings")
    return readings


def rolling_means(values: list[int], window: int) -> list[int]:
    """Means (hundredths, half away from zero) of every full window of ``values``."""
    return [
        half_up(Fraction(sum(values[end - window : end]), window))
        for end in range(window, len(values) + 1)
    ]


def fixed(value: int) -> float:
    """Hundredths as the float the module's two-decimal JSON number parses to."""
    return float(Decimal(value) / 100)


def rolling(data: bytes) -> dict[str, Any]:
    """climate.rolling's object for readings.csv ``data``."""
    readings = parse_readings(data)
    window = min(WINDOW, len(readings))
    t = rolling_means([r[0] for r in readings], window)
    h = rolling_means([r[1] for r in readings], window)
    return {
        "samples": len(readings),
        "window": window,
        "temperature": fixed(t[-1]),
        "humidity": fixed(h[-1]),
        "temperature_min": fixed(min(t)),
        "temperature_max": fixed(max(t)),
        "humidity_min": fixed(min(h)),
        "humidity_max": fixed(max(h)),
    }


KEYS = ("temperature", "humidity")


def parse_thresholds(data: bytes) -> dict[str, tuple[int, int]]:
    """key -> (min, max) in hundredths from thresholds.txt, or Refused."""
    if len(data) > MAX_THRESHOLDS:
        raise Refused("too large")
    bands: dict[str, tuple[int, int]] = {}
    for raw in data.split(b"\n"):
        line = raw.removesuffix(b"\r").decode("latin-1")
        fields = re.split(r"[ \t]+", line.strip(" \t"))
        if fields == [""] or fields[0].startswith("#"):
            continue
        if len(fields) != 3 or fields[0] not in KEYS or fields[0] in bands:
            raise Refused(f"bad line {line!r}")
        if not all(re.fullmatch(_DECIMAL, f) for f in fields[1:]):
            raise Refused(f"bad numbers {line!r}")
        lo, hi = hundredths(fields[1]), hundredths(fields[2])
        if lo > hi:
            raise Refused("min above max")
        bands[fields[0]] = (lo, hi)
    if set(bands) != set(KEYS):
        raise Refused("missing a key")
    return bands


def alert(temperature: float, humidity: float, thresholds: bytes) -> dict[str, Any]:
    """climate.alert's object for these values and thresholds.txt bytes."""
    given = dict(zip(KEYS, (temperature, humidity), strict=True))
    values: dict[str, int] = {}
    for key, value in given.items():
        if not math.isfinite(value) or abs(value) > 1e9:
            raise Refused(f"{key} out of range")
        # The product is the same IEEE double the module computes; Decimal holds it exactly.
        values[key] = int(Decimal(value * 100.0).to_integral_value(rounding=ROUND_HALF_UP))
    bands = parse_thresholds(thresholds)

    def text(v: int) -> str:
        return f"{'-' if v < 0 else ''}{abs(v) // 100}.{abs(v) % 100:02d}"

    reasons = []
    for key in KEYS:
        lo, hi = bands[key]
        if values[key] < lo:
            reasons.append(f"{key} {text(values[key])} below {text(lo)}")
        elif values[key] > hi:
            reasons.append(f"{key} {text(values[key])} above {text(hi)}")
    return {
        "alert": bool(reasons),
        "reasons": reasons,
        "temperature": fixed(values["temperature"]),
        "humidity": fixed(values["humidity"]),
        "limits": {key: [fixed(bands[key][0]), fixed(bands[key][1])] for key in KEYS},
    }
