"""``baton run`` and ``baton trace``: run a deployment's pipeline, show an execution.

::

    baton run ID [--arg k=v ...] [--file mount=path ...] [--async]
    baton trace EXEC_ID

Both print the execution (its value or error, output links made absolute against the
orchestrator's URL, and every hop of its trace) and exit 1 when it failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from orchestrator.cli_common import (
    Command,
    CommandCtx,
    pair,
    print_error,
    print_json,
    read_file,
    table,
)
from orchestrator.client import Execution

__all__ = ["add_commands", "format_execution"]


def add_commands(command: Command) -> None:
    """Register ``baton run`` and ``baton trace`` with the CLI's
    ``command(name, handler, help, on=sub)``."""
    run = command("run", cmd_run, "run a deployment's pipeline")
    run.add_argument("deployment", metavar="ID", help="deployment id or name")
    run.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="K=V",
        type=pair("--arg", "K=V"),
        help="a named argument (repeatable)",
    )
    run.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="MOUNT=PATH",
        type=pair("--file", "MOUNT=PATH"),
        help="an input file for an execution-stage mount (repeatable)",
    )
    run.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="return an execution id at once (see `baton trace`)",
    )

    command("trace", cmd_trace, "show an execution and its trace").add_argument(
        "execution", metavar="EXEC_ID"
    )


async def cmd_run(ctx: CommandCtx, args: argparse.Namespace) -> int:
    files = {mount: read_file(Path(path)) for mount, path in args.file}
    execution = await ctx.client.execute(
        args.deployment, dict(args.arg), files or None, asynchronous=args.asynchronous
    )
    if ctx.json:
        print_json(execution)
    elif args.asynchronous:
        ident = execution.get("id", "?")
        print(
            f"execution {ident} is {execution.get('status', 'running')}; "
            f"follow it with `baton trace {ident}`"
        )
    else:
        print(format_execution(execution, ctx.url))
    return _execution_exit(execution)


async def cmd_trace(ctx: CommandCtx, args: argparse.Namespace) -> int:
    execution = await ctx.client.get_execution(args.execution)
    if ctx.json:
        print_json(execution)
    else:
        print(format_execution(execution, ctx.url))
    return _execution_exit(execution)


def _execution_exit(execution: Execution) -> int:
    if execution.get("status") == "failed":
        print_error(
            f"execution {execution.get('id', '?')} failed: "
            f"{execution.get('error') or 'no reason given'}"
        )
        return 1
    return 0


def format_execution(execution: Execution, base_url: str = "") -> str:
    status = execution.get("status", "?")
    lines = [f"execution  {execution.get('id', '?')} ({status}, {_ms(execution.get('ms'))} ms)"]
    if status == "done":
        lines.append(f"value      {_value(execution.get('value'))}")
    elif status == "failed":
        lines.append(f"error      {execution.get('error') or 'no reason given'}")
    for link in execution.get("outputs") or []:
        absolute = base_url + link if link.startswith("/") and base_url else link
        lines.append(f"output     {absolute}")
    trace = execution.get("trace") or []
    if trace:
        rows = [
            [
                str(i),
                hop.get("device") or "?",
                hop.get("requestId") or "-",
                _ms(hop.get("ms")),
                {True: "ok", False: "failed", None: "-"}.get(hop.get("success"), "-"),
            ]
            for i, hop in enumerate(trace, start=1)
        ]
        lines += ["", table(["HOP", "DEVICE", "REQUEST ID", "MS", "RESULT"], rows, right={0, 3})]
    return "\n".join(lines)


# --- output helpers ----------------------------------------------------------------------------


def _ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
