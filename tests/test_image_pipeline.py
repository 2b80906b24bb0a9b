"""The image pipeline (camera.capture -> image.grayscale -> image.summary), checked for correctness.

Three levels: the ``image`` module directly in wasmtime against the Python model in
``tests/pipeline_reference.py`` (sample images, generated images, malformed ones); one
supervisor started from a device profile serving the functions over HTTP; and
``manifests/image-pipeline.toml`` deployed by an orchestrator onto the three example devices,
where every hop's result is recomputed independently from the image the camera really took.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from supervisor.config import load_profile
from tests import pipeline_reference as model
from tests.fleet import DEVICES, FLEET, deploy_file, fetch, hop_entries, start_fleet
from tests.orchestration import Orchestrator
from tests.stack import Device, Stack
from tests.support import Step, mini_manifest, upload
from tests.wasi_guest import WasiGuest

SAMPLES = sorted((DEVICES / "images").glob("*.ppm"))
SUMMARY_KEYS = {"width", "height", "pixels", "min", "max", "mean", "histogram", "dark"}


@pytest.fixture(scope="module")
def image() -> WasiGuest:
    return WasiGuest("image")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """One folder for every call of this module's wasmtime tests (hypothesis runs many
    examples per test, and function-scoped fixtures are not reset between them): each helper
    writes its input file and removes the output file before calling, so no call sees
    another's files."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def check_summary(value: Any, pgm: bytes) -> None:
    """``value`` is image.summary's object for ``pgm``, as the model computes it."""
    expected = model.summary(pgm)
    assert set(value) == SUMMARY_KEYS, value
    for key in ("width", "height", "pixels", "min", "max", "histogram"):
        assert value[key] == expected[key], key
    # Rounded half up to hundredths, the mean can be exactly 0.005 off (plus float noise).
    assert abs(value["mean"] - float(expected["mean"])) <= 0.005 + 1e-9
    assert round(value["mean"] * 100) == expected["mean_hundredths"]
    assert round(value["dark"] * 10_000) == expected["dark_ten_thousandths"]


def outcome(label: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(label)


def pixels_of(pgm: bytes) -> int:
    width, height, _ = model.parse_netpbm(pgm, "5")
    return width * height


def expect_summary(guest: WasiGuest, folder: Path, pgm: bytes) -> None:
    """summary() on ``pgm`` gives the model's object, or an error exactly when it refuses."""
    (folder / "gray.pgm").write_bytes(pgm)
    value = guest.call_json(folder, "summary")
    try:
        model.summary(pgm)
    except model.Refused:
        outcome("refused")
        assert set(value) == {"error"} and value["error"].startswith("gray.pgm: "), value
    else:
        outcome("accepted")
        check_summary(value, pgm)


def run_grayscale(guest: WasiGuest, folder: Path, ppm: bytes) -> tuple[int, bytes | None]:
    (folder / "gray.pgm").unlink(missing_ok=True)
    (folder / "image.ppm").write_bytes(ppm)
    pixels = guest.call(folder, "grayscale")
    out = folder / "gray.pgm"
    return pixels, out.read_bytes() if out.exists() else None


# --- the module in wasmtime -----------------------------------------------------------------


def test_there_are_sample_images() -> None:
    assert len(SAMPLES) >= 3


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_images_through_the_module(sample: Path, image: WasiGuest, workdir: Path) -> None:
    ppm = sample.read_bytes()
    pixels, gray = run_grayscale(image, workdir, ppm)
    assert gray == model.grayscale(ppm)
    width, height, _ = model.parse_netpbm(ppm, "6")
    assert pixels == (width // 2) * (height // 2)
    check_summary(image.call_json(workdir, "summary"), gray)


def test_known_values_by_hand(image: WasiGuest, workdir: Path) -> None:
    # 2x2 -> 1 pixel: lumas 76 (red), 150 (green), 29 (blue), 255 (white); (510 + 2) / 4 = 128.
    ppm = b"P6 2 2 255\n" + bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    assert run_grayscale(image, workdir, ppm) == (1, b"P5\n1 1\n255\n\x80")
    assert image.call_json(workdir, "summary") == {
        "width": 1,
        "height": 1,
        "pixels": 1,
        "min": 128,
        "max": 128,
        "mean": 128.0,
        "histogram": [0, 0, 1, 0],
        "dark": 0.0,
    }
    # Odd sizes drop the last row and column; the rounding is half up.
    (workdir / "gray.pgm").write_bytes(b"P5\n3 1\n255\n\x00\x00\x01")
    assert image.call_json(workdir, "summary")["mean"] == 0.33
    (workdir / "gray.pgm").write_bytes(b"P5\n8 1\n255\n" + bytes([0] * 7 + [1]))
    assert image.call_json(workdir, "summary")["mean"] == 0.13  # 0.125 rounds up
    assert run_grayscale(image, workdir, b"P6\n3 3\n255\n" + bytes(range(27)))[0] == 1


@st.composite
def netpbm(draw: st.DrawFn, kind: str) -> bytes:
    """A valid binary P6/P5 image with an arbitrary (legal) header layout."""
    separators = st.lists(
        st.sampled_from([" ", "\t", "\n", "\r", "\x0b", "\x0c", "# a comment\n", "#\r", "#x#\n"]),
        min_size=1,
        max_size=3,
    ).map("".join)
    width, height = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    numbers = [f"{'0' * draw(st.integers(0, 2))}{n}" for n in (width, height, 255)]
    header = f"P{kind}" + "".join(draw(separators) + n for n in numbers)
    header += draw(st.sampled_from([" ", "\t", "\n", "\r", "\x0b", "\x0c"]))
    channels = 3 if kind == "6" else 1
    raster = draw(st.binary(min_size=width * height * channels, max_size=width * height * channels))
    return header.encode() + raster


@settings(max_examples=150, deadline=None)
@given(ppm=netpbm("6"))
def test_grayscale_matches_the_model(ppm: bytes, image: WasiGuest, workdir: Path) -> None:
    pixels, gray = run_grayscale(image, workdir, ppm)
    try:
        expected = model.grayscale(ppm)
    except model.Refused:
        assert (pixels, gray) == (-1, None)  # only 1-pixel-wide or -high images here
        return
    assert gray == expected and pixels == pixels_of(expected)


@settings(max_examples=150, deadline=None)
@given(pgm=netpbm("5"))
def test_summary_matches_the_model(pgm: bytes, image: WasiGuest, workdir: Path) -> None:
    expect_summary(image, workdir, pgm)


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    """A valid image with a few bytes replaced, inserted or cut off."""
    data = bytearray(draw(netpbm(kind)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "truncate"]))
        byte = draw(st.sampled_from([*b" \n#0912P56\x00\xff", draw(st.integers(0, 255))]))
        if action == "replace" and at < len(data):
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(ppm=mutated("6"))
def test_damaged_images_are_refused_exactly_when_the_model_refuses(
    ppm: bytes, image: WasiGuest, workdir: Path
) -> None:
    pixels, gray = run_grayscale(image, workdir, ppm)
    try:
        expected = model.grayscale(ppm)
    except model.Refused:
        outcome("refused")
        assert (pixels, gray) == (-1, None)
    else:
        outcome("accepted")
        assert (pixels, gray) == (pixels_of(expected), expected)


@settings(max_examples=300, deadline=None)
@given(pgm=mutated("5"))
def test_damaged_gray_images_are_refused_exactly_when_the_model_refuses(
    pgm: bytes, image: WasiGuest, workdir: Path
) -> None:
    expect_summary(image, workdir, pgm)


RASTER_2X2 = bytes(range(12))
MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "magic only": b"P6",
    "ascii ppm": b"P3\n2 2\n255\n" + RASTER_2X2,
    "a pgm": b"P5\n2 2\n255\n" + RASTER_2X2[:4],
    "raster too short": b"P6\n2 2\n255\n" + RASTER_2X2[:-1],
    "bytes after the raster": b"P6\n2 2\n255\n" + RASTER_2X2 + b"\n",
    "16-bit": b"P6\n2 2\n65535\n" + RASTER_2X2 * 2,
    "maxval 15": b"P6\n2 2\n15\n" + RASTER_2X2,
    "zero width": b"P6\n0 2\n255\n",
    "too wide": b"P6\n16385 2\n255\n" + bytes(16385 * 2 * 3),
    "huge number": b"P6\n99999999999999999999999 2\n255\n" + RASTER_2X2,
    "negative": b"P6\n-2 2\n255\n" + RASTER_2X2,
    "no separator": b"P62 2\n255\n" + RASTER_2X2,
    "glued numbers": b"P6\n2x2\n255\n" + RASTER_2X2,
    "comment never ends": b"P6\n# 2 2 255",
    "comment after maxval": b"P6\n2 2\n255# c\n" + RASTER_2X2,
    "no whitespace before raster": b"P6\n2 2\n255" + RASTER_2X2,
    "one pixel": b"P6\n1 1\n255\n\x01\x02\x03",
    "one row": b"P6\n4 1\n255\n" + RASTER_2X2,
    "promises 16384x16384": b"P6\n16384 16384\n255\n" + RASTER_2X2,
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_images_are_refused_with_minus_one(
    name: str, image: WasiGuest, workdir: Path
) -> None:
    ppm = MALFORMED[name]
    with pytest.raises(model.Refused):
        model.grayscale(ppm)
    assert run_grayscale(image, workdir, ppm) == (-1, None)
    assert (workdir / "stderr.log").read_text().startswith("grayscale: image.ppm: ")
    expect_summary(image, workdir, ppm.replace(b"P6", b"P5", 1))


def test_files_over_32_mib_are_refused(image: WasiGuest, workdir: Path) -> None:
    # 4096 x 2731 is within the side limit, but the raster alone is just over 32 MiB.
    big = b"P6\n4096 2731\n255\n" + bytes(4096 * 2731 * 3)
    with pytest.raises(model.Refused):
        model.grayscale(big)
    assert run_grayscale(image, workdir, big) == (-1, None)
    assert "larger than 32 MiB" in (workdir / "stderr.log").read_text()


def test_missing_inputs_are_refused(image: WasiGuest, workdir: Path) -> None:
    assert image.call(workdir, "grayscale") == -1
    assert image.call_json(workdir, "summary") == {"error": "gray.pgm: missing or unreadable"}


def test_the_sample_images_are_what_the_generator_makes(tmp_path: Path) -> None:
    # devices/make_sample_images.py is a script, not a package module: load it by path.
    spec = importlib.util.spec_from_file_location(
        "make_sample_images", DEVICES / "make_sample_images.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    vars(script)["HERE"] = tmp_path
    script.main()
    made = sorted(tmp_path.iterdir())
    assert [p.name for p in made] == [p.name for p in SAMPLES]
    assert all(p.read_bytes() == s.read_bytes() for p, s in zip(made, SAMPLES, strict=True))


# --- one supervisor -------------------------------------------------------------------------

IMAGE_STEPS = [
    Step("image", "grayscale", method="post", execution=["image.ppm"], output=["gray.pgm"]),
    Step("image", "summary", result="object", method="post", execution=["gray.pgm"]),
]


async def device_from(stack: Stack, profile: str) -> Device:
    return await stack.make_device(
        profile=load_profile(DEVICES / f"{profile}.toml"), profile_dir=DEVICES, name=profile
    )


async def post_file(stack: Stack, url: str, name: str, data: bytes) -> dict[str, Any]:
    async with stack.session.post(url, params={"wait": "10"}, data=upload(name, data)) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def test_a_supervisor_serves_grayscale_and_summary_for_each_sample(stack: Stack) -> None:
    dev = await device_from(stack, "compute-node")
    node = mini_manifest("img", dev.url, stack.files_url, IMAGE_STEPS)
    assert (await stack.deploy(dev, node)).status == 200
    for sample in SAMPLES:
        ppm = sample.read_bytes()
        gray_call = await post_file(
            stack, f"{dev.url}/img/modules/image/grayscale", "image.ppm", ppm
        )
        assert gray_call["success"] is True, gray_call
        gray = await fetch(stack, gray_call["outputs"][0])
        assert gray == model.grayscale(ppm)
        assert gray_call["value"] == pixels_of(gray)
        summary = await post_file(stack, f"{dev.url}/img/modules/image/summary", "gray.pgm", gray)
        assert summary["success"] is True, summary
        check_summary(summary["value"], gray)


async def test_a_malformed_image_fails_the_call_and_nothing_else(stack: Stack) -> None:
    dev = await device_from(stack, "compute-node")
    node = mini_manifest("img", dev.url, stack.files_url, IMAGE_STEPS)
    assert (await stack.deploy(dev, node)).status == 200
    url = f"{dev.url}/img/modules/image/grayscale"
    for name in ("raster too short", "ascii ppm", "empty"):
        failed = await post_file(stack, url, "image.ppm", MALFORMED[name])
        assert failed["success"] is False and failed["status"] == "failed", failed
        assert failed["error"]["kind"] == "output" and "gray.pgm" in failed["result"]
    summary = await post_file(
        stack, f"{dev.url}/img/modules/image/summary", "gray.pgm", b"P5\n2 2\n255\n\x00"
    )
    assert summary["success"] is True
    assert summary["value"] == {"error": "gray.pgm: raster too short"}
    # The device and the function are fine afterwards.
    ok = await post_file(stack, url, "image.ppm", SAMPLES[0].read_bytes())
    assert ok["success"] is True and ok["value"] == 32 * 24


async def test_the_camera_node_captures_the_sample_images_in_turn(stack: Stack) -> None:
    dev = await device_from(stack, "camera-node")
    steps = [Step("camera", "capture", output=["image.ppm"])]
    assert (
        await stack.deploy(dev, mini_manifest("cap", dev.url, stack.files_url, steps))
    ).status == 200
    for sample in SAMPLES:
        call = await stack.call(f"{dev.url}/cap/modules/camera/capture", wait=10)
        assert call["success"] is True and call["value"] == sample.stat().st_size, call
        assert await fetch(stack, call["outputs"][0]) == sample.read_bytes()


# --- the manifest, through an orchestrator --------------------------------------------------


async def test_image_pipeline_runs_on_three_devices_and_every_hop_is_right(
    stack: Stack, orchestrator: Orchestrator
) -> None:
    orch = orchestrator
    await start_fleet(stack, orch)
    for module in ("camera", "image"):
        await orch.push_module(module)
    dep = await deploy_file(orch, "image-pipeline.toml")
    _, devices = await orch.get("/devices")
    name_of = {d["id"]: d["name"] for d in devices}
    placed = [name_of[s["device"]] for s in dep["placement"]["steps"]]
    assert placed[0] == "camera-node" and sorted(placed) == sorted(FLEET), placed

    captured = set()
    for _ in SAMPLES:  # the camera rotates: one run per sample image
        status, run = await orch.run(dep["id"])
        assert status == 200 and run["status"] == "done", run
        assert [hop["device"] for hop in run["trace"]] == placed
        capture, grayscale, summary = await hop_entries(stack, run)
        ppm = await fetch(stack, capture["outputs"][0])
        assert ppm in {s.read_bytes() for s in SAMPLES}
        assert capture["value"] == len(ppm)
        captured.add(ppm)
        gray = await fetch(stack, grayscale["outputs"][0])
        assert gray == model.grayscale(ppm)
        check_summary(run["value"], gray)
        assert summary["value"] == run["value"]
    assert len(captured) == len(SAMPLES)
