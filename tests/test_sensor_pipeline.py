"""The sensor pipeline (sensors.sample -> climate.rolling -> climate.alert), checked for correctness.

``sensors.sample`` runs in wasmtime against a scripted DHT and clock; ``climate`` against the
Python model in ``tests/pipeline_reference.py`` (hand-made, generated and damaged inputs); and
``manifests/sensor-pipeline.json`` is deployed by an orchestrator onto the example devices,
where the readings the sensor node really took are checked against the simulated curve and
both later hops are recomputed from them.
"""

from __future__ import annotations

import itertools
import math
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from wasmtime import FuncType, Linker, ValType

from tests import pipeline_reference as model
from tests.conftest import ROOT
from tests.fleet import deploy_file, fetch, hop_entries, start_fleet
from tests.orchestration import Orchestrator
from tests.stack import Stack
from tests.wasi_guest import WasiGuest

THRESHOLDS = (ROOT / "modules" / "climate" / "thresholds.txt").read_bytes()
HEADER = model.READINGS_HEADER + "\n"


@pytest.fixture(scope="module")
def climate() -> WasiGuest:
    return WasiGuest("climate")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """One folder for this module's wasmtime calls (hypothesis runs many examples per test and
    does not reset function-scoped fixtures between them): each call first writes the input
    files it needs, so none sees another's."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def rolling(guest: WasiGuest, folder: Path, csv: bytes) -> Any:
    (folder / "readings.csv").write_bytes(csv)
    return guest.call_json(folder, "rolling")


def alert(guest: WasiGuest, folder: Path, t: float, h: float, thresholds: bytes) -> Any:
    (folder / "thresholds.txt").write_bytes(thresholds)
    return guest.call_json(folder, "alert", t, h)


def csv_of(readings: list[tuple[str, str]], end: str = "\n") -> bytes:
    lines = [model.READINGS_HEADER] + [f"{i},{i * 10},{t},{h}" for i, (t, h) in enumerate(readings)]
    return (end.join(lines) + end).encode()


# --- climate.rolling ------------------------------------------------------------------------


def test_rolling_by_hand(climate: WasiGuest, workdir: Path) -> None:
    readings = [("20", "50"), ("21", "52"), ("22.5", "54"), ("23", "50.5"), ("19", "41")]
    readings += [("18.01", "40"), ("-3.3", "39.99")]
    # Windows of 5 (hundredths): t sums 10550, 10351, 7921 -> 21.10, 20.70, 15.84;
    # h sums 24750, 23750, 22549 -> 49.50, 47.50, 45.10 (45.098 rounds up).
    assert rolling(climate, workdir, csv_of(readings)) == {
        "samples": 7,
        "window": 5,
        "temperature": 15.84,
        "humidity": 45.10,
        "temperature_min": 15.84,
        "temperature_max": 21.10,
        "humidity_min": 45.10,
        "humidity_max": 49.50,
    }
    # Fewer readings than the window: one mean over all of them; halves round away from zero.
    short = rolling(climate, workdir, csv_of([("-0.01", "1"), ("-0.02", "2")], end="\r\n"))
    assert (short["window"], short["temperature"], short["humidity"]) == (2, -0.02, 1.5)


value_text = st.builds(
    lambda v, places: (
        f"{'-' if v < 0 else ''}{abs(v) // 100}"
        + ("" if places == 0 else f".{abs(v) % 100:02d}"[: places + 1])
    ),
    st.integers(-999_999_99, 999_999_99),
    st.integers(0, 2),
)


@st.composite
def readings_csv(draw: st.DrawFn) -> bytes:
    readings = draw(st.lists(st.tuples(value_text, value_text), min_size=1, max_size=25))
    data = csv_of(readings, end=draw(st.sampled_from(["\n", "\r\n"])))
    return data if draw(st.booleans()) else data.rstrip(b"\r\n")


def expect_rolling(guest: WasiGuest, folder: Path, csv: bytes) -> None:
    value = rolling(guest, folder, csv)
    try:
        expected = model.rolling(csv)
    except model.Refused:
        event("refused")
        assert set(value) == {"error"} and value["error"].startswith("readings.csv: "), value
    else:
        event("accepted")
        assert value == expected


@settings(max_examples=200, deadline=None)
@given(csv=readings_csv())
def test_rolling_matches_the_model(csv: bytes, climate: WasiGuest, workdir: Path) -> None:
    expect_rolling(climate, workdir, csv)


@st.composite
def damaged_csv(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(readings_csv()))
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(data)))
        # Mostly digits and rarely a cut, which often leave the file valid: both outcomes
        # get exercised.
        byte = draw(st.sampled_from([*b",.-\r\n0123456789x\x00", draw(st.integers(0, 255))]))
        action = draw(st.sampled_from(["replace", "replace", "insert", "insert", "truncate"]))
        if action == "replace" and at < len(data):
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(csv=damaged_csv())
def test_damaged_readings_are_refused_exactly_when_the_model_refuses(
    csv: bytes, climate: WasiGuest, workdir: Path
) -> None:
    expect_rolling(climate, workdir, csv)


@pytest.mark.parametrize(
    ("csv", "reason"),
    [
        (b"", "line 1: not the readings header"),
        (HEADER.encode(), "no readings"),
        (b"index,temperature,humidity\n0,21,50\n", "line 1: not the readings header"),
        (f"{HEADER}1,0,21,50\n".encode(), "line 2: bad index"),
        (f"{HEADER}0,0,21.123,50\n".encode(), "line 2: bad temperature"),
        (f"{HEADER}0,0,1234567,50\n".encode(), "line 2: bad temperature"),
        (f"{HEADER}0,0,nan,50\n".encode(), "line 2: bad temperature"),
        (f"{HEADER}0,0,21,50,\n".encode(), "line 2: expected the end of the line"),
        (f"{HEADER}0,0,21,50\n\n".encode(), "line 3: bad index"),
        (f"{HEADER}0,0,21,50\r".encode(), "line 2: expected the end of the line"),
        (f"{HEADER}0,0,21;50\n".encode(), "line 2: expected ','"),
        (f"{HEADER}0,-1,21,50\n".encode(), "line 2: bad elapsed_ms"),
    ],
)
def test_malformed_readings_name_the_problem(
    csv: bytes, reason: str, climate: WasiGuest, workdir: Path
) -> None:
    with pytest.raises(model.Refused):
        model.rolling(csv)
    assert rolling(climate, workdir, csv) == {"error": f"readings.csv: {reason}"}


def test_rolling_limits(climate: WasiGuest, workdir: Path) -> None:
    most = csv_of([("21", "50")] * model.MAX_READINGS)
    assert rolling(climate, workdir, most)["samples"] == model.MAX_READINGS
    too_many = csv_of([("21", "50")] * (model.MAX_READINGS + 1))
    assert rolling(climate, workdir, too_many) == {
        "error": "readings.csv: line 10002: more than 10000 readings"
    }
    assert rolling(climate, workdir, HEADER.encode() + b"x" * model.MAX_CSV) == {
        "error": "readings.csv: too large"
    }
    (workdir / "readings.csv").unlink()
    assert climate.call_json(workdir, "rolling") == {"error": "readings.csv: missing or unreadable"}


# --- climate.alert --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "h", "reasons"),
    [
        (18.0, 30.0, []),  # the bands are inclusive
        (26.0, 60.0, []),
        (21.004, 59.996, []),  # 21.00 and 60.00 after rounding to hundredths
        (17.99, 45.0, ["temperature 17.99 below 18.00"]),
        (26.01, 60.01, ["temperature 26.01 above 26.00", "humidity 60.01 above 60.00"]),
        (-40.0, 0.0, ["temperature -40.00 below 18.00", "humidity 0.00 below 30.00"]),
    ],
)
def test_alert_with_the_shipped_thresholds(
    t: float, h: float, reasons: list[str], climate: WasiGuest, workdir: Path
) -> None:
    value = alert(climate, workdir, t, h, THRESHOLDS)
    assert value["alert"] is bool(reasons) and value["reasons"] == reasons
    assert value["limits"] == {"temperature": [18.0, 26.0], "humidity": [30.0, 60.0]}
    assert value == model.alert(t, h, THRESHOLDS)


decimal_text = st.builds(
    lambda v: f"{'-' if v < 0 else ''}{abs(v) // 100}.{abs(v) % 100:02d}",
    st.integers(-100_000, 100_000),
)


@st.composite
def thresholds_file(draw: st.DrawFn) -> bytes:
    blank = st.sampled_from([" ", "\t", "  \t"])
    lines = []
    for key in draw(st.permutations(model.KEYS)):
        lo, hi = sorted(draw(st.lists(decimal_text, min_size=2, max_size=2)), key=float)
        lines.append(draw(blank) + key + draw(blank) + lo + draw(blank) + hi)
        lines += draw(
            st.lists(st.sampled_from(["", "# note", "  # indented note", " "]), max_size=2)
        )
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines).encode()


@settings(max_examples=200, deadline=None)
@given(
    t=st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1500, 1500),
    h=st.floats(-1500, 1500),
    thresholds=thresholds_file(),
)
def test_alert_matches_the_model(
    t: float, h: float, thresholds: bytes, climate: WasiGuest, workdir: Path
) -> None:
    value = alert(climate, workdir, t, h, thresholds)
    try:
        expected = model.alert(t, h, thresholds)
    except model.Refused:
        event("refused")
        assert set(value) == {"error"}, value
    else:
        event("alert" if expected["alert"] else "quiet")
        assert value == expected


@pytest.mark.parametrize(
    ("thresholds", "reason"),
    [
        (b"", "needs a temperature and a humidity line"),
        (b"temperature 18 26\n", "needs a temperature and a humidity line"),
        (b"temperature 18 26\nhumidity 30 60\ntemperature 1 2\n", "line 3: key given twice"),
        (b"temp 18 26\n", "line 1: unknown key (expected temperature or humidity)"),
        (b"temperature 26 18\n", "line 1: min is above max"),
        (b"temperature 18\n", "line 1: bad min"),
        (b"temperature 18 \n", "line 1: bad max"),
        (b"temperature 18 26 30\n", "line 1: unexpected text after max"),
        (b"# ok\n\ntemperature 18.001 26\n", "line 3: bad min"),
        (b"x" * (model.MAX_THRESHOLDS + 1), "too large"),
    ],
)
def test_malformed_thresholds_name_the_problem(
    thresholds: bytes, reason: str, climate: WasiGuest, workdir: Path
) -> None:
    with pytest.raises(model.Refused):
        model.parse_thresholds(thresholds)
    assert alert(climate, workdir, 20.0, 50.0, thresholds) == {"error": f"thresholds.txt: {reason}"}


def test_alert_refuses_values_that_are_not_finite(climate: WasiGuest, workdir: Path) -> None:
    for t, h, key in (
        (math.nan, 50.0, "temperature"),
        (20.0, math.inf, "humidity"),
        (2e9, 1.0, "temperature"),
    ):
        assert alert(climate, workdir, t, h, THRESHOLDS) == {
            "error": f"{key}: not a finite number within +-1e9"
        }


# --- sensors.sample -------------------------------------------------------------------------


class ScriptedDevice:
    """A DHT and a clock for sensors.sample: readings from lists, time advanced by delays."""

    def __init__(self, temperatures: list[float], humidities: list[float]) -> None:
        self.temperatures, self.humidities = temperatures, humidities
        self.delays: list[int] = []
        self.now = 1_000_000
        self.reads = 0

    def link(self, linker: Linker) -> None:
        f32, i32 = ValType.f32(), ValType.i32()
        linker.define_func("dht", "getTemperature", FuncType([], [f32]), self._temperature)
        linker.define_func("dht", "getHumidity", FuncType([], [f32]), self._humidity)
        linker.define_func("sys", "delay", FuncType([i32], []), self._delay)
        linker.define_func("sys", "millis", FuncType([], [i32]), lambda: self.now)

    def _temperature(self) -> float:
        self.reads += 1
        return self.temperatures[(self.reads - 1) % len(self.temperatures)]

    def _humidity(self) -> float:
        return self.humidities[(self.reads - 1) % len(self.humidities)]

    def _delay(self, ms: int) -> None:
        self.delays.append(ms)
        self.now = (self.now + ms + 1) & 0x7FFFFFFF  # the host is never exactly on time


def f32(value: float) -> float:
    """``value`` as the f32 a DHT host function returns."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def test_sample_writes_one_line_per_reading(tmp_path: Path) -> None:
    device = ScriptedDevice([21.125, -3.456, 19.994999], [50.0, 61.005, 0.0])
    sensors = WasiGuest("sensors", host=device.link)
    assert sensors.call(tmp_path, "sample", 5, 250) == 5
    assert device.delays == [250] * 4
    lines = (tmp_path / "readings.csv").read_text().splitlines()
    assert lines[0] == model.READINGS_HEADER and len(lines) == 6
    for i, line in enumerate(lines[1:]):
        t, h = f32(device.temperatures[i % 3]), f32(device.humidities[i % 3])
        assert line == f"{i},{i * 251},{t:.2f},{h:.2f}"
    # f32(61.005) is 61.005001...; an exact tie (21.125) rounds to even, as Python does.
    assert lines[1:4] == ["0,0,21.12,50.00", "1,251,-3.46,61.01", "2,502,19.99,0.00"]
    assert model.parse_readings((tmp_path / "readings.csv").read_bytes())  # rolling takes it


@pytest.mark.parametrize(
    ("count", "interval", "readings", "delay"),
    [
        (0, 10, 1, None),
        (-7, 10, 1, None),
        (10_000, 0, 500, 0),
        (3, -5, 3, 0),
        (2, 10**9, 2, 60_000),
    ],
)
def test_sample_clamps_its_arguments(
    count: int, interval: int, readings: int, delay: int | None, tmp_path: Path
) -> None:
    device = ScriptedDevice([20.0], [50.0])
    sensors = WasiGuest("sensors", host=device.link)
    assert sensors.call(tmp_path, "sample", count, interval) == readings
    assert device.delays == ([] if delay is None else [delay] * (readings - 1))
    assert len((tmp_path / "readings.csv").read_text().splitlines()) == readings + 1


def test_sample_elapsed_time_survives_the_clock_wrapping(tmp_path: Path) -> None:
    device = ScriptedDevice([20.0], [50.0])
    device.now = 0x7FFFFFFF - 5
    sensors = WasiGuest("sensors", host=device.link)
    assert sensors.call(tmp_path, "sample", 3, 9) == 3
    elapsed = [line.split(",")[1] for line in (tmp_path / "readings.csv").read_text().splitlines()]
    assert elapsed[1:] == ["0", "10", "20"]


def test_a_failed_reading_writes_no_file(tmp_path: Path) -> None:
    device = ScriptedDevice([20.0, math.nan], [50.0])
    sensors = WasiGuest("sensors", host=device.link)
    assert sensors.call(tmp_path, "sample", 3, 0) == -1
    assert not (tmp_path / "readings.csv").exists()


# --- the manifest, through an orchestrator --------------------------------------------------

COUNT, INTERVAL_MS = 12, 20
# The simulated DHT: 21 +- 4 degC over 600 s and 50 +- 10 %RH over 900 s.
T_RANGE, H_RANGE = (17.0, 25.0), (40.0, 60.0)
T_SLOPE, H_SLOPE = 4 * 2 * math.pi / 600, 10 * 2 * math.pi / 900  # steepest change per second


def check_readings(csv: bytes) -> None:
    """The readings are the simulated curve's: in range, smooth, and spaced by the interval."""
    rows = [line.split(",") for line in csv.decode().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(COUNT))
    elapsed = [int(r[1]) for r in rows]
    assert elapsed[0] == 0 and elapsed == sorted(elapsed)
    # sys.millis floors, so two readings interval ms apart may read 1 ms less.
    assert all(b - a >= INTERVAL_MS - 1 for a, b in itertools.pairwise(elapsed))
    span_s = elapsed[-1] / 1000 + 1  # + 1 s for the time between a clock read and a reading
    for column, (lo, hi), slope in ((2, T_RANGE, T_SLOPE), (3, H_RANGE, H_SLOPE)):
        values = [float(r[column]) for r in rows]
        assert all(lo <= v <= hi for v in values), values
        assert all(len(r[column].split(".")[1]) == 2 for r in rows)
        assert max(values) - min(values) <= slope * span_s + 0.02, values


async def test_sensor_pipeline_samples_smooths_and_alerts_correctly(
    stack: Stack, orchestrator: Orchestrator
) -> None:
    orch = orchestrator
    await start_fleet(stack, orch)
    for module in ("sensors", "climate"):
        await orch.push_module(module)
    dep = await deploy_file(orch, "sensor-pipeline.json")
    status, run = await orch.run(dep["id"], count=COUNT, interval_ms=INTERVAL_MS)
    assert status == 200 and run["status"] == "done", run
    assert len(run["trace"]) == 3 and run["trace"][0]["device"] == "sensor-node"
    sample, smoothed, alerted = await hop_entries(stack, run)
    assert sample["value"] == COUNT
    csv = await fetch(stack, sample["outputs"][0])
    check_readings(csv)
    assert smoothed["value"] == model.rolling(csv)
    expected = model.alert(
        smoothed["value"]["temperature"], smoothed["value"]["humidity"], THRESHOLDS
    )
    assert alerted["value"] == run["value"] == expected
