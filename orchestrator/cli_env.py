"""``baton env …``: the orchestrator's environments (device groups a descriptor deploys to).

::

    baton env list                      every environment
    baton env show NAME                 one environment
    baton env set NAME [--label K=V …] [--zone Z …] [--timeout-ms N] [--memory-bytes N]
                       [--fuel N] [--description TEXT]
    baton env delete NAME               refused (409) while a deployment was derived from it

``set`` creates the environment or updates it: the options given replace those fields,
labels are added or updated one by one (``--label K=`` removes ``K``), zones given replace
the zone list. Failures propagate to :func:`orchestrator.cli.main`, which prints them as
``baton: error: …`` with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from orchestrator.cli_common import Command, CommandCtx, print_json, table
from orchestrator.client import ApiError

__all__ = ["add_commands", "format_environment"]

_LIMITS = (("timeout_ms", "timeoutMs"), ("memory_bytes", "memoryBytes"), ("fuel", "fuel"))


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from err
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_commands(command: Command) -> None:
    """Register ``baton env …`` with the CLI's ``command(name, handler, help, on=sub)``."""
    env = command("env", cmd_env_list, "list, show, set and delete environments")
    esub = env.add_subparsers(title="environment commands", metavar="ACTION")
    command("list", cmd_env_list, "list environments", esub)
    command("show", cmd_env_show, "show one environment", esub).add_argument("name", metavar="NAME")
    s = command("set", cmd_env_set, "create or update an environment", esub)
    s.add_argument("name", metavar="NAME")
    s.add_argument(
        "--label",
        action="append",
        default=[],
        type=_label,
        metavar="K=V",
        help="a label every device must have (repeatable; K= removes K)",
    )
    s.add_argument(
        "--zone",
        action="append",
        default=[],
        metavar="ZONE",
        help="a zone the environment spans (repeatable; replaces the list)",
    )
    s.add_argument("--timeout-ms", type=_positive_int, metavar="N", help="default call timeout")
    s.add_argument("--memory-bytes", type=_positive_int, metavar="N", help="default memory cap")
    s.add_argument("--fuel", type=_positive_int, metavar="N", help="default fuel budget")
    s.add_argument("--description", metavar="TEXT")
    command("delete", cmd_env_delete, "delete an environment", esub).add_argument(
        "name", metavar="NAME"
    )


def updated_spec(current: Mapping[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    """The body ``baton env set`` sends: ``current`` with the given options applied."""
    spec: dict[str, Any] = {
        "labels": dict((current or {}).get("labels") or {}),
        "zones": list((current or {}).get("zones") or []),
        "limits": dict((current or {}).get("limits") or {}),
        "description": (current or {}).get("description") or "",
    }
    for key, value in args.label:
        if value:
            spec["labels"][key] = value
        else:
            spec["labels"].pop(key, None)
    if args.zone:
        spec["zones"] = list(dict.fromkeys(args.zone))
    for attr, field in _LIMITS:
        value = getattr(args, attr)
        if value is not None:
            spec["limits"][field] = value
    if args.description is not None:
        spec["description"] = args.description
    return spec


async def cmd_env_list(ctx: CommandCtx, args: argparse.Namespace) -> int:
    envs = await ctx.client.list_environments()
    if ctx.json:
        return print_json(envs)
    rows = [
        (
            e.get("name", "?"),
            _labels(e.get("labels") or {}) or "-",
            ",".join(e.get("zones") or []) or "-",
            _limits(e.get("limits") or {}) or "-",
            e.get("description") or "",
        )
        for e in envs
    ]
    _out(table(("NAME", "LABELS", "ZONES", "LIMITS", "DESCRIPTION"), rows))
    return 0


async def cmd_env_show(ctx: CommandCtx, args: argparse.Namespace) -> int:
    env = await ctx.client.get_environment(args.name)
    if ctx.json:
        return print_json(env)
    _out(format_environment(env))
    return 0


async def cmd_env_set(ctx: CommandCtx, args: argparse.Namespace) -> int:
    try:
        current: dict[str, Any] | None = await ctx.client.get_environment(args.name)
    except ApiError as err:
        if err.status != 404:
            raise
        current = None
    env = await ctx.client.put_environment(args.name, updated_spec(current, args))
    if ctx.json:
        return print_json(env)
    _out(f"environment {env.get('name', args.name)} {'updated' if current else 'created'}")
    _out(format_environment(env))
    return 0


async def cmd_env_delete(ctx: CommandCtx, args: argparse.Namespace) -> int:
    result = await ctx.client.delete_environment(args.name)
    if ctx.json:
        return print_json(result)
    _out(f"environment {args.name} deleted")
    return 0


def format_environment(env: Mapping[str, Any]) -> str:
    lines = [
        f"name:         {env.get('name', '?')}",
        f"labels:       {_labels(env.get('labels') or {}) or '-'}",
        f"zones:        {', '.join(env.get('zones') or []) or '- (any)'}",
        f"limits:       {_limits(env.get('limits') or {}) or '-'}",
    ]
    if env.get("description"):
        lines.append(f"description:  {env['description']}")
    return "\n".join(lines)


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _limits(limits: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(limits.items()))


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
