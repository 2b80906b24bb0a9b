"""Applying a revision as a small DAG of steps, rolling it back, and reconciling one device.

Pure: inputs are maps of device id -> content digest of the mini-manifest a revision puts on
that device (``old`` = the ACTIVE revision, ``new`` = the one being applied); outputs are
frozen steps and actions for the async executor and reconciler to carry out.

The apply plan is::

    push:d  ->  verify:d  ->  switch  ->  remove:e
    (each device d whose content changes, in parallel)   (each device e no longer used)

``switch`` is where the orchestrator starts routing to the new revision (it is APPLIED and the
old one SUPERSEDED). Nothing before it is visible to callers, so a failure before ``switch``
rolls back with :func:`rollback_plan`; a removal that fails after it is only a leftover,
which the level-triggered reconciler cleans up, not a reason to roll back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Literal

import msgspec

__all__ = ["Action", "PlanStep", "plan_apply", "ready", "reconcile", "rollback_plan"]

StepKind = Literal["push", "verify", "switch", "remove"]
SWITCH = "switch"


class PlanStep(msgspec.Struct, frozen=True):
    """One step: ``id`` is ``kind:device`` (or ``switch``); it may run once ``after`` are done."""

    id: str
    kind: StepKind
    device: str | None
    after: tuple[str, ...]


class Action(msgspec.Struct, frozen=True):
    """What the reconciler does to one device for one deployment."""

    kind: Literal["deploy", "remove"]
    deployment: str


def _push_and_verify(devices: Sequence[str]) -> list[PlanStep]:
    pushes = [PlanStep(f"push:{d}", "push", d, ()) for d in devices]
    verifies = [PlanStep(f"verify:{d}", "verify", d, (f"push:{d}",)) for d in devices]
    return pushes + verifies


def _removes(devices: Sequence[str], after: tuple[str, ...]) -> list[PlanStep]:
    return [PlanStep(f"remove:{d}", "remove", d, after) for d in devices]


def plan_apply(old: Mapping[str, str], new: Mapping[str, str]) -> list[PlanStep]:
    """The steps that replace ``old`` with ``new``, in a deterministic topological order.

    Pushes go to every device whose digest differs (none to devices already holding the new
    content); ``switch`` is always present, so an unchanged revision still becomes ACTIVE.
    Order: pushes, verifies, switch, removes; each group sorted by device id.
    """
    changed = sorted(d for d, digest in new.items() if old.get(d) != digest)
    steps = _push_and_verify(changed)
    steps.append(PlanStep(SWITCH, "switch", None, tuple(f"verify:{d}" for d in changed)))
    steps += _removes(sorted(d for d in old if d not in new), (SWITCH,))
    return steps


def rollback_plan(
    old: Mapping[str, str], new: Mapping[str, str], pushed: AbstractSet[str]
) -> list[PlanStep]:
    """The steps that undo a failed apply of ``new`` before its switch, restoring ``old``.

    ``pushed`` holds the devices a push of ``new`` was *started* on, finished or not: a push
    that timed out may still have landed. Those that had different ``old`` content get it
    pushed (and verified) again; those only ``new`` uses have it removed. Removals wait for
    every re-verify, so no restored device is left forwarding to a device being emptied.
    There is no switch: routing never left ``old``.
    """
    repush = sorted(d for d in pushed if d in old and old[d] != new.get(d))
    steps = _push_and_verify(repush)
    after = tuple(f"verify:{d}" for d in repush)
    steps += _removes(sorted(d for d in pushed if d in new and d not in old), after)
    return steps


def ready(
    plan: Sequence[PlanStep], done: AbstractSet[str], running: AbstractSet[str]
) -> list[PlanStep]:
    """Steps of ``plan`` not done nor running whose ``after`` are all done, in plan order."""
    return [
        step
        for step in plan
        if step.id not in done and step.id not in running and all(a in done for a in step.after)
    ]


def reconcile(desired: Mapping[str, str], observed: Mapping[str, str]) -> list[Action]:
    """The actions that make one device's ``observed`` deployments equal ``desired``.

    Both map deployment id -> content digest. Deploy what is missing or different, remove
    what should not be there. Removals come first (each group sorted by deployment id) so
    a small device frees memory before it is asked to load something new.
    """
    removes = [Action("remove", d) for d in sorted(observed) if d not in desired]
    deploys = [Action("deploy", d) for d in sorted(desired) if observed.get(d) != desired[d]]
    return removes + deploys
