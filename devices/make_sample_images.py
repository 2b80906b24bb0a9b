"""Regenerate the synthetic sample images the simulated camera serves (binary PPM, P6).

Run ``python devices/make_sample_images.py``; the output is deterministic, so the committed
files never change unless this script does.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent / "images"


def ppm(width: int, height: int, pixel: object) -> bytes:
    body = bytearray()
    for y in range(height):
        for x in range(width):
            body += bytes(pixel(x, y))  # type: ignore[operator]
    return f"P6\n{width} {height}\n255\n".encode() + bytes(body)


def main() -> None:
    (HERE / "01-gradient.ppm").write_bytes(ppm(64, 48, lambda x, y: (x * 4, y * 5, 128)))
    (HERE / "02-checker.ppm").write_bytes(
        ppm(64, 48, lambda x, y: (230, 230, 230) if (x // 8 + y // 8) % 2 else (20, 20, 20))
    )
    (HERE / "03-sunset.ppm").write_bytes(
        ppm(64, 48, lambda x, y: (255 - y * 3, 120 - y * 2, 40 + x))
    )


if __name__ == "__main__":
    main()
