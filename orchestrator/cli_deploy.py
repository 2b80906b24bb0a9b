"""``baton deploy``, ``baton deployments`` and ``baton status``: deploy a manifest or a
deployment descriptor and follow its revision, list deployments, show one in detail.

::

    baton deploy FILE [--dry-run] [--wait S] [--if-match REV]
    baton deployments
    baton status ID

Placements are explained per step: the chosen device and every candidate with its score or
the reasons it was rejected (:func:`explain_placement`). ``deploy`` follows its revision for
``--wait`` seconds, printing each transition, and exits 0 once that revision is active (or
was, and a newer one superseded it) or at once with ``--wait 0``; 1 when it ended otherwise
or still changes at the deadline, with one ``baton: error: …`` line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from orchestrator.cli_common import (
    Command,
    CommandCtx,
    as_text,
    non_negative,
    print_error,
    print_json,
    read_file,
    short,
    table,
)
from orchestrator.client import (
    JSON,
    TOML,
    Candidate,
    Deployment,
    Infeasible,
    Placement,
    PlacementResult,
    StepPlacement,
    Transition,
)

__all__ = ["add_commands", "candidate_table", "explain_placement", "format_status", "read_manifest"]

# A revision's story is over (or it runs): the deploy command stops following it.
SETTLED = frozenset({"active", "rolled_back", "broken", "superseded", "removed"})


def add_commands(command: Command) -> None:
    """Register ``baton deploy``, ``deployments`` and ``status`` with the CLI's
    ``command(name, handler, help, on=sub)``."""
    deploy = command(
        "deploy", cmd_deploy, "deploy a manifest (.json or .toml) or a deployment descriptor"
    )
    deploy.add_argument("manifest", metavar="FILE")
    deploy.add_argument(
        "--dry-run", action="store_true", help="only show where each step would run and why"
    )
    deploy.add_argument(
        "--wait",
        type=non_negative,
        default=60.0,
        metavar="S",
        help="seconds to follow the revision until it settles (default 60; 0 = do not wait)",
    )
    deploy.add_argument(
        "--if-match",
        type=int,
        metavar="REV",
        help="refuse the update unless REV is the deployment's current revision",
    )

    command("deployments", cmd_deployments, "list deployments")
    command("status", cmd_status, "show a deployment in detail").add_argument(
        "deployment", metavar="ID", help="deployment id or name"
    )


# --- deployments -------------------------------------------------------------------------------


def read_manifest(path: str) -> tuple[bytes, str]:
    """The manifest's bytes and media type (TOML for ``.toml``, JSON otherwise)."""
    file = Path(path)
    body = read_file(file)
    return body, TOML if file.suffix.lower() == ".toml" else JSON


async def cmd_deploy(ctx: CommandCtx, args: argparse.Namespace) -> int:
    body, ctype = read_manifest(args.manifest)
    if args.dry_run:
        return await _dry_run(ctx, body, ctype)
    start = time.monotonic()
    submission = await ctx.client.deploy(body, ctype, if_match=args.if_match)
    dep = submission.deployment
    number = dep.get("revision", 0)
    if not ctx.json:
        what = {201: "created", 202: "new revision", 200: "unchanged"}.get(
            submission.status, "accepted"
        )
        print(
            f"deployment {dep.get('name', '?')} ({short(dep.get('id', ''))}) "
            f"revision {number}: {what}"
        )
    if args.wait == 0:
        if ctx.json:
            print_json(dep)
        return 0
    dep = await _follow(ctx, dep, number, args.wait, changed=submission.changed)
    if ctx.json:
        print_json(dep)
    return _settled(ctx, dep, number, args.wait, time.monotonic() - start)


async def _dry_run(ctx: CommandCtx, body: bytes, ctype: str) -> int:
    result = await ctx.client.place(body, ctype)
    if ctx.json:
        print_json(result)
    else:
        print(explain_placement(result))
    if result.get("type") == "infeasible":
        if ctx.json:
            print_error(str(result.get("message", "the manifest cannot be placed")))
        return 1
    return 0


async def _follow(
    ctx: CommandCtx, dep: Deployment, number: int, wait_s: float, *, changed: bool = True
) -> Deployment:
    """Poll until revision ``number`` settles or ``wait_s`` passes, printing each transition.

    Events recorded while we follow are printed, whatever their revision (the old revision
    superseded or restored is part of the story).
    """
    key = dep.get("id") or dep.get("name", "")
    # Events already recorded are history, except those of a revision this post added.
    seen = {
        i for i, e in enumerate(dep.get("events", [])) if e.get("revision") != number or not changed
    }
    deadline = time.monotonic() + wait_s
    while True:
        if not ctx.json:
            seen = _progress(dep, seen)
        state = _revision_state(dep, number)
        left = deadline - time.monotonic()
        if state in SETTLED or left <= 0:
            return dep
        began = time.monotonic()
        dep = await ctx.client.get_deployment(key, wait_s=round(min(1.0, left), 3))
        if time.monotonic() - began < 0.2 and _revision_state(dep, number) == state:
            await asyncio.sleep(0.2)  # an orchestrator that does not hold ?wait


def _settled(ctx: CommandCtx, dep: Deployment, number: int, wait_s: float, took: float) -> int:
    """Report how revision ``number`` ended; the exit status (0 only if it became active)."""
    state = _revision_state(dep, number)
    name = dep.get("name", "?")
    if state == "active":
        if not ctx.json:
            hosts = _hosts(dep)
            print(f"revision {number} is ACTIVE{f' on {hosts}' if hosts else ''} ({took:.1f} s)")
        return 0
    if state == "superseded":
        if not ctx.json:
            print(f"revision {number} became active and was then superseded by a newer revision")
        return 0
    if state in SETTLED:
        error = _revision_error(dep, number)
        step = dep.get("failedStep") if dep.get("revision") == number else None
        where = f" at step {step}" if step else ""
        print_error(
            f"revision {number} of {name} ended {state.upper()}{where}"
            + (f": {error}" if error else "")
        )
        return 1
    print_error(
        f"revision {number} of {name} is still {state.upper() or 'pending'} after "
        f"{wait_s:g} s; follow it with `baton status {name}`"
    )
    return 1


def _progress(dep: Deployment, seen: set[int]) -> set[int]:
    """Print the deployment's events not printed yet; the indexes now printed."""
    for i, event in enumerate(dep.get("events", [])):
        if i not in seen:
            print(f"  {_event_line(event)}")
            seen.add(i)
    return seen


def _event_line(event: Transition) -> str:
    line = (
        f"{_time(event.get('at'))}  revision {event.get('revision', '?')}: "
        f"{_state(event.get('from'))} -> {_state(event.get('to'))}"
    )
    if event.get("step"):
        line += f" at step {event.get('step')}"
    if event.get("reason"):
        line += f" ({event.get('reason')})"
    return line


def _revision_state(dep: Deployment, number: int) -> str:
    for rev in dep.get("revisions", []):
        if rev.get("number") == number:
            return str(rev.get("state", "")).lower()
    return str(dep.get("state", "")).lower() if dep.get("revision") == number else ""


def _revision_error(dep: Deployment, number: int) -> str:
    for rev in dep.get("revisions", []):
        if rev.get("number") == number and rev.get("error"):
            return str(rev.get("error"))
    return str(dep.get("error") or "") if dep.get("revision") == number else ""


def _hosts(dep: Deployment) -> str:
    """Where it runs: ``cam, gw``, or per partition ``cam, gw | cam2, gw2 (2 partitions)``."""
    placement = dep.get("placement") or {}
    names = _names(placement.get("steps", []))
    partitions = [p.get("devices", []) for p in dep.get("partitions") or []]
    if not partitions:
        partitions = [[step.get("device", "") for step in placement.get("steps", [])]]
    chains = []
    for devices in partitions:
        chosen: list[str] = []
        for device in devices:
            host = names.get(device, short(device))
            if host not in chosen:
                chosen.append(host)
        chains.append(", ".join(chosen))
    if len(chains) > 1:
        return f"{' | '.join(chains)} ({len(chains)} partitions)"
    return chains[0]


async def cmd_deployments(ctx: CommandCtx, args: argparse.Namespace) -> int:
    deployments = await ctx.client.list_deployments()
    if ctx.json:
        return print_json(deployments)
    if not deployments:
        print("no deployments (`baton deploy FILE`)")
        return 0
    rows = [
        [
            d.get("name", ""),
            short(d.get("id", "")),
            as_text(d.get("revision")),
            _state(d.get("state")),
            as_text(d.get("active")),
            _hosts(d),
            d.get("error") or "",
        ]
        for d in deployments
    ]
    print(table(["NAME", "ID", "REVISION", "STATE", "ACTIVE", "DEVICES", "ERROR"], rows))
    return 0


async def cmd_status(ctx: CommandCtx, args: argparse.Namespace) -> int:
    dep = await ctx.client.get_deployment(args.deployment)
    if ctx.json:
        return print_json(dep)
    print(format_status(dep))
    return 0


def format_status(dep: Deployment) -> str:
    lines = [
        f"deployment  {dep.get('name', '?')}",
        f"id          {dep.get('id', '?')}",
        f"revision    {dep.get('revision', '?')} ({_state(dep.get('state'))})",
        f"active      {as_text(dep.get('active')) or 'none'}",
    ]
    if dep.get("error"):
        step = f" at step {dep.get('failedStep')}" if dep.get("failedStep") else ""
        lines.append(f"error       {dep.get('error')}{step}")
    placement = dep.get("placement")
    names = _names(placement.get("steps", [])) if placement else {}
    lines += ["", "PLACEMENT"]
    if placement and len(dep.get("partitions") or []) > 1:
        placement = cast(Placement, {**placement, "partitions": dep.get("partitions")})
    lines.append(explain_placement(placement) if placement else "  not placed yet")
    jobs = dep.get("jobs") or {}
    lines += ["", "JOBS"]
    if jobs:
        rows = []
        # A job key is the device id, "#<k>" added for partition k >= 1.
        parted = any("#" in key for key in jobs)
        for key, job in sorted(jobs.items()):
            device, _, partition = key.partition("#")
            scheduled, current = _digest(job.get("scheduled")), _digest(job.get("current"))
            rows.append(
                [
                    names.get(device, ""),
                    short(device),
                    *([partition or "0"] if parted else []),
                    short(scheduled) or "-",
                    short(current) or "-",
                    "yes" if scheduled == current else "no",
                ]
            )
        head = ["DEVICE", "ID", *(["PARTITION"] if parted else []), "SCHEDULED", "CURRENT"]
        lines.append(_indent(table([*head, "IN SYNC"], rows)))
    else:
        lines.append("  none")
    revisions = dep.get("revisions") or []
    if revisions:
        rows = [
            [
                as_text(r.get("number")),
                _state(r.get("state")),
                short(r.get("digest", "")),
                r.get("error") or "",
            ]
            for r in revisions
        ]
        lines += ["", "REVISIONS", _indent(table(["REV", "STATE", "DIGEST", "ERROR"], rows))]
    events = dep.get("events") or []
    lines += ["", "EVENTS"]
    if events:
        rows = []
        previous: float | None = None
        for e in events:
            at = e.get("at")
            delta = f"+{at - previous:.3f}s" if at is not None and previous is not None else ""
            previous = at if at is not None else previous
            rows.append(
                [
                    _time(at),
                    delta,
                    as_text(e.get("revision")),
                    f"{_state(e.get('from'))} -> {_state(e.get('to'))}",
                    e.get("event", ""),
                    " ".join(
                        x
                        for x in (
                            f"step {e['step']}" if e.get("step") else "",
                            e.get("reason") or "",
                        )
                        if x
                    ),
                ]
            )
        lines.append(
            _indent(table(["TIME", "DELTA", "REV", "TRANSITION", "EVENT", "DETAIL"], rows))
        )
    else:
        lines.append("  none")
    return "\n".join(lines)


# --- placement explanation ---------------------------------------------------------------------


def explain_placement(result: PlacementResult) -> str:
    """Per step, the chosen device and every candidate with its score or rejection reasons."""
    if result.get("type") == "infeasible":
        infeasible = cast(Infeasible, result)
        candidates = infeasible.get("candidates", [])
        head = (
            f"step {result.get('step', '?')}  {result.get('module', '?')}.{result.get('func', '?')}"
            f"  -> cannot be placed"
        )
        return "\n".join(
            [
                f"infeasible: {result.get('message', 'the manifest cannot be placed')}",
                "",
                head,
                _indent(candidate_table(candidates, chosen=None)),
            ]
        )
    steps = cast(Placement, result).get("steps", [])
    names = _names(steps)
    blocks = []
    for step in steps:
        device = step.get("device", "")
        who = names.get(device, "")
        head = (
            f"step {step.get('index', '?')}  {step.get('module', '?')}.{step.get('func', '?')}"
            f"  -> {who} ({short(device)})"
            if who
            else f"step {step.get('index', '?')}  {step.get('module', '?')}.{step.get('func', '?')}"
            f"  -> {short(device)}"
        )
        if step.get("kept"):
            head += "  (kept: it runs there now and still qualifies)"
        blocks.append(head + "\n" + _indent(candidate_table(step.get("candidates", []), device)))
    partitions = cast(Placement, result).get("partitions") or []
    if len(partitions) > 1:
        blocks.append(
            "partitions (the explanation above is partition 0's):\n"
            + "\n".join(
                f"  {p.get('partition', '?')}: "
                + " -> ".join(names.get(d, short(d)) for d in p.get("devices", []))
                for p in partitions
            )
        )
    return "\n\n".join(blocks) if blocks else "no steps"


PART_ORDER = ("cpu", "memory", "rtt", "colocation", "spread")


def candidate_table(candidates: Iterable[Candidate], chosen: str | None) -> str:
    candidates = list(candidates)
    parts = [p for p in PART_ORDER if any(p in (c.get("parts") or {}) for c in candidates)]
    parts += sorted({p for c in candidates for p in c.get("parts") or {}} - set(parts))
    rows = []
    for c in candidates:
        feasible = bool(c.get("feasible"))
        values = c.get("parts") or {}
        if feasible:
            verdict = "chosen" if c.get("device") == chosen else "feasible"
        else:
            verdict = "rejected: " + ("; ".join(c.get("reasons", [])) or "no reason given")
        rows.append(
            [
                c.get("name", ""),
                short(c.get("device", "")),
                f"{c.get('score', 0.0):.3f}" if feasible else "-",
                *[f"{values[p]:.3f}" if feasible and p in values else "-" for p in parts],
                verdict,
            ]
        )
    if not rows:
        return "(no devices)"
    headers = ["DEVICE", "ID", "SCORE", *[p.upper() for p in parts], "VERDICT"]
    return table(headers, rows, right={2, *range(3, 3 + len(parts))})


def _names(steps: Iterable[StepPlacement]) -> dict[str, str]:
    """Device id -> name, from the candidates a placement lists."""
    return {
        c.get("device", ""): c.get("name", "")
        for step in steps
        for c in step.get("candidates", [])
        if c.get("device")
    }


# --- output helpers ----------------------------------------------------------------------------


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line if line else line for line in text.splitlines())


def _digest(value: Any) -> str:
    """A content digest without its ``sha256:`` prefix, so both spellings compare equal."""
    return "" if value is None else str(value).removeprefix("sha256:")


def _state(value: Any) -> str:
    return str(value).upper() if value else "-"


def _time(at: float | None) -> str:
    if at is None:
        return "-"
    try:
        return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return str(at)
