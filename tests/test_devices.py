"""Every device profile in devices/ loads, and its simulated drivers really serve guests."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import load_profile
from supervisor.drivers import build_drivers
from tests.conftest import ROOT
from tests.fleet import FLEET
from tests.stack import Stack
from tests.support import Step, mini_manifest

PROFILES = sorted((ROOT / "devices").glob("*.toml"))


def test_there_are_profiles() -> None:
    assert {p.stem for p in PROFILES} >= {"camera-node", "sensor-node", "compute-node"}


def test_every_file_in_devices_is_exercised() -> None:
    """A file added to devices/ fails this until a test runs it.

    Profiles: the fleet of tests/fleet.py starts every one, and the image pipeline
    (tests/test_image_pipeline.py) runs a step on each of them. Images: the image tests run
    every ``images/*.ppm`` through grayscale and summary, and the camera node serves each.
    The generator: tests/test_image_pipeline.py checks it remakes the images byte for byte.
    """
    folder = ROOT / "devices"
    files = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    images = {f"images/{p.name}" for p in (folder / "images").glob("*.ppm")}
    assert files == {f"{name}.toml" for name in FLEET} | images | {"make_sample_images.py"}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_loads_and_builds_its_drivers(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name and profile.description and profile.labels and profile.hardware
    drivers = build_drivers(profile.drivers, path.parent)
    assert set(profile.drivers) <= set(drivers.namespaces())


async def test_camera_node_serves_images_to_guests(stack: Stack) -> None:
    profile = load_profile(ROOT / "devices" / "camera-node.toml")
    dev = await stack.make_device(profile=profile, profile_dir=ROOT / "devices")
    steps = [Step("camera", "image_size"), Step("camera", "image_checksum")]
    assert (
        await stack.deploy(dev, mini_manifest("cam", dev.url, stack.files_url, steps))
    ).status == 200
    images = sorted((ROOT / "devices" / "images").glob("*.ppm"))
    sizes = [
        (await stack.call(f"{dev.url}/cam/modules/camera/image_size", wait=5))["value"]
        for _ in images
    ]
    assert sizes == [p.stat().st_size for p in images]  # rotates through the folder in order
    checksum = (await stack.call(f"{dev.url}/cam/modules/camera/image_checksum", wait=5))["value"]
    assert checksum == sum(images[0].read_bytes())  # back to the first image


async def test_sensor_node_reads_the_synthetic_curve(stack: Stack) -> None:
    profile = load_profile(ROOT / "devices" / "sensor-node.toml")
    dev = await stack.make_device(profile=profile, profile_dir=ROOT / "devices")
    steps = [
        Step("sensors", "temperature", result="number"),
        Step("sensors", "humidity", result="number"),
    ]
    assert (
        await stack.deploy(dev, mini_manifest("sens", dev.url, stack.files_url, steps))
    ).status == 200
    t = (await stack.call(f"{dev.url}/sens/modules/sensors/temperature", wait=5))["value"]
    h = (await stack.call(f"{dev.url}/sens/modules/sensors/humidity", wait=5))["value"]
    assert 17 <= t <= 25 and 40 <= h <= 60


async def test_compute_node_refuses_a_camera_module(stack: Stack) -> None:
    profile = load_profile(ROOT / "devices" / "compute-node.toml")
    dev = await stack.make_device(profile=profile, profile_dir=ROOT / "devices")
    node = mini_manifest("nocam", dev.url, stack.files_url, [Step("camera", "image_size")])
    async with stack.session.post(dev.url + "/deploy", json=node) as resp:
        body = await resp.json()
    assert resp.status == 422 and "camera.takeImageDynamicSize" in body["result"]
