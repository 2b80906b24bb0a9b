"""What the ``baton`` command modules share: the context they are handed, how they register
their commands, how they fail, and how they print.

:mod:`orchestrator.cli` owns the parser and the context; the command modules
(``orchestrator.cli_modules``, ``cli_app``, ``cli_env``, ``cli_results``, ``cli_deploy``,
``cli_run``, ``cli_simulate``) add their commands through an ``add_commands(command:
Command)`` hook and see the context only as :class:`CommandCtx`, so they never import the
CLI that imports them. Output goes to stdout: :func:`print_json` for ``--json``,
:func:`table` for people. A command fails with :class:`CliError` (exit status 1) or
:class:`UsageError` (2), which :func:`orchestrator.cli.main` reports, or reports a failure
itself with :func:`print_error` and returns 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from orchestrator.client import OrchestratorClient

__all__ = [
    "DEFAULT_URL",
    "PROG",
    "CliError",
    "Command",
    "CommandCtx",
    "UsageError",
    "as_text",
    "non_negative",
    "orchestrator_url",
    "pair",
    "positive",
    "print_error",
    "print_json",
    "read_file",
    "short",
    "table",
]

PROG = "baton"
DEFAULT_URL = "http://127.0.0.1:3000"
SHORT_ID = 12  # how much of an id tables show


class CliError(Exception):
    """A failure to report as ``baton: error: <message>`` with exit status 1."""


class UsageError(Exception):
    """A bad command line the parser could not catch (exit status 2)."""


class CommandCtx(Protocol):
    """What a command uses of the CLI's context (``orchestrator.cli.Ctx``)."""

    @property
    def client(self) -> OrchestratorClient: ...

    @property
    def json(self) -> bool: ...

    @property
    def url(self) -> str: ...


Command = Callable[..., argparse.ArgumentParser]
"""The CLI's ``command(name, handler, help, on=subparsers)``: adds and returns a subparser."""


def print_json(value: Any) -> int:
    """Print ``value`` as indented JSON (what ``--json`` promises); the exit status 0."""
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")
    return 0


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Plain text with aligned columns; columns in ``right`` are right-aligned."""
    body = [[_cell(x) for x in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    align_right = set(right)

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(widths[i]) if i in align_right else c.ljust(widths[i])
            for i, c in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in body)])


def _cell(value: Any) -> str:
    return " ".join(str(value).split())  # one line per row, whatever the server sent


def short(ident: str) -> str:
    """An id as tables show it (its first :data:`SHORT_ID` characters)."""
    return ident[:SHORT_ID]


def as_text(value: Any) -> str:
    """``value`` as a table cell: ``None`` is blank."""
    return "" if value is None else str(value)


def print_error(message: str) -> None:
    """Report a failure the way every ``baton`` failure is reported: one line on stderr."""
    sys.stderr.write(f"{PROG}: error: {message}\n")


def read_file(path: Path) -> bytes:
    """The file's bytes; an unreadable file is a :class:`CliError` naming it."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}") from err


def orchestrator_url(flag: str | None, name: str = "--url") -> str:
    """The orchestrator's URL: ``flag`` (the option ``name``), else ``BATON_URL``, else
    :data:`DEFAULT_URL`; anything but an http:// or https:// URL is a :class:`UsageError`."""
    url = flag or os.environ.get("BATON_URL") or DEFAULT_URL
    source = name if flag else "BATON_URL" if os.environ.get("BATON_URL") else "default"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise UsageError(f"{source} {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


# --- argument types ----------------------------------------------------------------------------


def pair(flag: str, shape: str) -> Callable[[str], tuple[str, str]]:
    """An argparse type for ``flag``'s ``KEY=VALUE`` (``shape`` names it in the message)."""

    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} takes {shape}, got {text!r}")
        return key, value

    parse.__name__ = shape  # argparse names the type in its message
    return parse


def non_negative(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def positive(text: str) -> float:
    """An argparse type: a finite number of seconds, more than 0."""
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value
