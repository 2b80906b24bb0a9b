"""What the ``baton`` command modules share: the context they are handed, how they register
their commands, and how they print.

:mod:`orchestrator.cli` owns the parser and the context; :mod:`orchestrator.cli_app`,
:mod:`orchestrator.cli_env` and :mod:`orchestrator.cli_results` add their commands through
an ``add_commands(command: Command)`` hook and see the context only as :class:`CommandCtx`,
so they never import the CLI that imports them. Output goes to stdout: :func:`print_json`
for ``--json``, :func:`table` for people.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import msgspec

from orchestrator.client import OrchestratorClient

__all__ = ["Command", "CommandCtx", "print_json", "table"]


class CommandCtx(Protocol):
    """What a command uses of the CLI's context (``orchestrator.cli.Ctx``)."""

    @property
    def client(self) -> OrchestratorClient: ...

    @property
    def json(self) -> bool: ...


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
