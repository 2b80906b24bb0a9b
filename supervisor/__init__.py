"""Baton: run WebAssembly pipelines across a fleet of IoT devices (device supervisor)."""

__version__ = "0.1.0"
