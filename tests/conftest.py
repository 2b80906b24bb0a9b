"""Shared fixtures: built Wasm modules, free ports, temporary state dirs."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WASM_DIR = ROOT / "build" / "wasm"


def wasm_path(name: str) -> Path:
    """Path of a module built by ``make modules`` (``python -m modules.build``)."""
    path = WASM_DIR / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make modules` first")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


pytest_plugins = ["tests.stack", "tests.mdns_browser", "tests.orchestration"]
