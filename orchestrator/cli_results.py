"""``baton results``: what built-in ``datalist.push`` steps stored, per deployment.

::

    baton results                          deployments with stored results, and their counts
    baton results DEPLOYMENT [--limit N] [--after SEQ] [--json]
                                           a deployment's entries (by id or name), newest last
    baton results DEPLOYMENT --clear       drop them

Registered by :mod:`orchestrator.cli` through :func:`add_commands`; talks to the orchestrator
only through :class:`orchestrator.client.OrchestratorClient`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrator.cli_common import Command, CommandCtx

__all__ = ["add_commands", "cmd_results", "format_counts", "format_entries"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def add_commands(command: Command) -> None:
    """Register ``baton results`` with the CLI's ``command(name, handler, help)``."""
    p = command("results", cmd_results, "show the results built-in datalist steps stored")
    p.add_argument(
        "deployment",
        metavar="DEPLOYMENT",
        nargs="?",
        help="deployment id or name (none: every deployment's count)",
    )
    p.add_argument("--limit", type=_count, help="at most N entries (default 100)")
    p.add_argument("--after", type=_count, metavar="SEQ", help="only entries after SEQ")
    p.add_argument("--clear", action="store_true", help="drop the deployment's results")


async def cmd_results(ctx: CommandCtx, args: argparse.Namespace) -> int:
    client = ctx.client
    if args.deployment is None:
        if args.clear:
            print("baton: error: --clear needs a DEPLOYMENT", file=sys.stderr)  # noqa: T201
            return 2
        counts = await client.result_counts()
        names = {d["id"]: d["name"] for d in await client.list_deployments()}
        return _out(ctx, counts, lambda: format_counts(counts, names))
    if args.clear:
        cleared = await client.clear_results(args.deployment)
        return _out(
            ctx,
            cleared,
            lambda: f"removed {cleared.get('removed', 0)} results of {cleared.get('deployment')}",
        )
    limit = args.limit if args.limit else None
    body = await client.get_results(args.deployment, limit=limit, after=args.after)
    return _out(ctx, body, lambda: format_entries(body))


def _out(ctx: CommandCtx, body: Any, text: Callable[[], str]) -> int:
    if ctx.json:
        print(json.dumps(body, indent=2, sort_keys=True))  # noqa: T201
    else:
        print(text())  # noqa: T201
    return 0


def format_counts(counts: dict[str, int], names: dict[str, str]) -> str:
    if not counts:
        return "no results stored"
    rows = [[names.get(dep, "(removed)"), dep, str(n)] for dep, n in sorted(counts.items())]
    return _table(["DEPLOYMENT", "ID", "RESULTS"], rows, right={2})


def format_entries(body: dict[str, Any]) -> str:
    entries = body.get("entries") or []
    title = body.get("name") or body.get("deployment", "?")
    count = body.get("count", len(entries))
    head = f"{title} ({body.get('deployment')}): {count} result{'' if count == 1 else 's'}"
    if not entries:
        return head
    rows = [
        [
            str(e.get("seq", "")),
            _time(e.get("at")),
            str(e.get("partition", 0)),
            json.dumps(e.get("value"), sort_keys=True),
        ]
        for e in entries
    ]
    return head + "\n" + _table(["SEQ", "AT", "PARTITION", "VALUE"], rows, right={0})


def _time(at: Any) -> str:
    if not isinstance(at, int | float):
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> str:
    rows = [list(r) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])
