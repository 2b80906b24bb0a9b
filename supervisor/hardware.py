"""Real-hardware sources behind the ``camera`` and ``dht`` drivers, for devices that have them.

Both are optional: nothing here is needed to install, test or simulate a device, and neither
needs a Python package beyond the standard library.

- :class:`CommandCamera` (profile ``kind = "command"``) runs the capture program a device
  already has and takes the image from its standard output, e.g. on Raspberry Pi OS
  ``["rpicam-still", "-n", "-t", "1", "-e", "png", "-o", "-"]`` or, for a USB webcam,
  ``["fswebcam", "-q", "--no-banner", "-"]``; modules that read PPM (as the example pipeline
  does) want either piped through ``pngtopnm``: ``["sh", "-c", "... | pngtopnm"]``. A capture
  that fails, prints nothing or takes too long fails the guest's call with the program's own
  words.
- :class:`IioDht` (profile ``kind = "iio"``) reads a DHT11/DHT22 through the Linux kernel's
  industrial-I/O driver (``dtoverlay=dht11,gpiopin=4`` in ``/boot/firmware/config.txt``; the
  driver handles DHT22 too), which exposes milli-degrees Celsius and milli-percent relative
  humidity as text files. The kernel does the bit-banging with the timing a Python loop can't
  hold; a read the sensor did not answer (EIO, common on DHTs) is retried a few times.

Both run on the runtime's worker threads inside a guest call: they block that thread (never
the event loop) and are safe to call concurrently.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

MAX_IMAGE_BYTES = 32 * 1024 * 1024
CAPTURE_TIMEOUT_S = 10.0
IIO_ATTEMPTS = 3
IIO_RETRY_PAUSE_S = 0.1


class HardwareError(RuntimeError):
    """A device could not be read; the message is shown as the guest call's failure."""


class CommandCamera:
    """Images from the standard output of a capture command, one run per capture."""

    def __init__(self, argv: Sequence[str], *, timeout_s: float = CAPTURE_TIMEOUT_S) -> None:
        if not argv:
            raise ValueError("the camera command is empty")
        self._argv = list(argv)
        self._timeout_s = timeout_s
        # One camera, one capture at a time: most camera stacks refuse a second opener.
        self._lock = threading.Lock()

    def capture(self) -> bytes:
        """Run the command once; its stdout. Raises :class:`HardwareError` on any failure."""
        with self._lock:
            try:
                # argv comes from the device's own profile, never from a request.
                done = subprocess.run(
                    self._argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=self._timeout_s,
                    check=False,
                )
            except FileNotFoundError as err:
                raise HardwareError(f"camera command not found: {self._argv[0]}") from err
            except subprocess.TimeoutExpired as err:
                raise HardwareError(
                    f"camera command took longer than {self._timeout_s:g} s"
                ) from err
        if done.returncode != 0:
            words = done.stderr.decode(errors="replace").strip().splitlines()
            said = f": {words[-1]}" if words else ""
            raise HardwareError(f"camera command exited with status {done.returncode}{said}")
        if not done.stdout:
            raise HardwareError("camera command printed no image")
        if len(done.stdout) > MAX_IMAGE_BYTES:
            raise HardwareError(f"camera image is larger than {MAX_IMAGE_BYTES} bytes")
        return done.stdout


class IioDht:
    """Temperature and humidity from a kernel IIO device folder (``/sys/bus/iio/devices/…``)."""

    def __init__(self, device: Path) -> None:
        self._temperature = device / "in_temp_input"
        self._humidity = device / "in_humidityrelative_input"

    def temperature(self) -> float:
        """Degrees Celsius."""
        return self._read(self._temperature) / 1000

    def humidity(self) -> float:
        """Relative humidity in percent."""
        return self._read(self._humidity) / 1000

    def _read(self, path: Path) -> int:
        last: Exception | None = None
        for attempt in range(IIO_ATTEMPTS):
            try:
                return int(path.read_text().strip())
            except OSError as err:  # EIO/ETIMEDOUT: the sensor missed this read
                last = err
            except ValueError as err:
                raise HardwareError(f"{path} does not hold a number") from err
            if attempt + 1 < IIO_ATTEMPTS:
                time.sleep(IIO_RETRY_PAUSE_S)  # a DHT needs a moment before it answers again
        raise HardwareError(f"reading {path} failed {IIO_ATTEMPTS} times: {last}")
