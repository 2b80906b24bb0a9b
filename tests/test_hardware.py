"""The real-hardware driver kinds, driven through real guests with stand-in hardware.

A shell command stands in for the camera program and a folder of text files for the
kernel's IIO device: the drivers only see a process's stdout and sysfs-style files, exactly
what they see on a Raspberry Pi.
"""

from __future__ import annotations

import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from supervisor.drivers import build_drivers
from supervisor.errors import GuestError
from supervisor.hardware import CommandCamera, HardwareError, IioDht
from supervisor.runtime import Runtime
from tests.test_drivers import CAMERA, DHT, run

IMAGE = Path(__file__).resolve().parent.parent / "devices" / "images" / "01-gradient.ppm"


def printer(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_command_camera_hands_the_guest_the_programs_stdout(tmp_path: Path) -> None:
    drivers = build_drivers(
        {"camera": {"kind": "command", "command": ["cat", str(IMAGE)]}}, tmp_path
    )
    rt = Runtime(tmp_path / "cache", drivers, max_workers=2)
    try:
        assert await run(rt, CAMERA, "dynamic", as_bytes=True) == IMAGE.read_bytes()
    finally:
        await rt.aclose()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/nonexistent/rpicam-still"], "camera command not found: /nonexistent/rpicam-still"),
        (
            printer("import sys; print('no cameras available', file=sys.stderr); sys.exit(3)"),
            "camera command exited with status 3: no cameras available",
        ),
        (printer("pass"), "camera command printed no image"),
        (printer("import time; time.sleep(30)"), "camera command took longer than 0.5 s"),
    ],
)
def test_a_failed_capture_says_what_the_program_did(argv: list[str], message: str) -> None:
    with pytest.raises(HardwareError) as err:
        CommandCamera(argv, timeout_s=0.5).capture()
    assert str(err.value) == message


async def test_a_failed_capture_fails_the_call_not_the_device(tmp_path: Path) -> None:
    drivers = build_drivers({"camera": {"kind": "command", "command": ["false"]}}, tmp_path)
    rt = Runtime(tmp_path / "cache", drivers, max_workers=2)
    try:
        with pytest.raises(GuestError) as err:
            await run(rt, CAMERA, "dynamic", as_bytes=True)
        assert err.value.kind == "trap"
        assert "camera command exited with status 1" in err.value.message
    finally:
        await rt.aclose()


def iio_device(tmp_path: Path, temp: str, humidity: str) -> Path:
    device = tmp_path / "iio:device0"
    device.mkdir(exist_ok=True)
    (device / "in_temp_input").write_text(temp)
    (device / "in_humidityrelative_input").write_text(humidity)
    return device


async def test_an_iio_dht_reads_the_kernels_milli_units(tmp_path: Path) -> None:
    device = iio_device(tmp_path, "23400\n", "51700\n")
    drivers = build_drivers({"dht": {"kind": "iio", "device": str(device)}}, tmp_path)
    rt = Runtime(tmp_path / "cache", drivers, max_workers=2)
    try:
        assert await run(rt, DHT, "temperature") == pytest.approx(23.4)
        assert await run(rt, DHT, "humidity") == pytest.approx(51.7)
    finally:
        await rt.aclose()


def test_an_iio_dht_that_never_answers_or_holds_junk_is_an_error(tmp_path: Path) -> None:
    device = iio_device(tmp_path, "not a number", "1")
    with pytest.raises(HardwareError, match="does not hold a number"):
        IioDht(device).temperature()
    (device / "in_humidityrelative_input").unlink()
    with pytest.raises(HardwareError, match="failed 3 times"):
        IioDht(device).humidity()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"camera": {"kind": "command"}}, "needs 'command'"),
        ({"camera": {"kind": "command", "command": "rpicam-still -o -"}}, "needs 'command'"),
        ({"camera": {"kind": "command", "command": ["x"], "timeout": 0}}, "'timeout' must be"),
        ({"camera": {"kind": "command", "command": ["x"], "lens": "wide"}}, "unknown option"),
        ({"dht": {"kind": "iio"}}, "needs 'device'"),
        ({"dht": {"kind": "iio", "device": "/nonexistent/iio:device9"}}, "is not a folder"),
    ],
)
def test_hardware_profiles_are_checked_before_serving(
    tmp_path: Path, spec: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_drivers(spec, tmp_path)


@pytest.mark.parametrize("profile", ["camera-node", "sensor-node"])
def test_the_hardware_table_each_profile_documents_is_a_valid_driver(
    profile: str, tmp_path: Path
) -> None:
    path = IMAGE.parent.parent / f"{profile}.toml"
    notes = tomllib.loads(path.read_text())["hardware"]
    snippet = textwrap.dedent(notes[notes.index("  [drivers.") :])
    spec = tomllib.loads(snippet)["drivers"]
    assert all(options["kind"] != "simulated" for options in spec.values())
    if profile == "sensor-node":
        # No DHT here: the documented device folder is the one missing piece.
        with pytest.raises(
            ValueError, match=r"iio:device0 is not a folder \(is the overlay on\?\)"
        ):
            build_drivers(spec, tmp_path)
    else:
        assert build_drivers(spec, tmp_path).provides("camera", "takeImageDynamicSize")
