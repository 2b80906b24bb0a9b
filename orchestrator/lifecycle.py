"""The revision state machine: one table of allowed transitions, and the events that record them.

Pure: no I/O and no clock (callers pass ``at``). Theory of operation:

A revision is born QUEUED and waits its turn (one revision of a deployment applies at a time,
FIFO). The worker STARTs it (PLANNING: placement and plan), then it is PLANNED (DEPLOYING: the
plan's pushes and verifies run) and finally APPLIED at the plan's switch step (ACTIVE). The
same switch SUPERSEDEs the previously ACTIVE revision, so until then the old revision stays
ACTIVE and is what a rollback restores.

A failure while planning or deploying makes the revision FAILED, recording the reason and the
plan step. FAILED is transient: the rollback plan runs next and ends in ROLLED_BACK (the
previous ACTIVE revision, or nothing for a first revision, is what runs again) or, when the
rollback itself fails, BROKEN (devices hold an unknown mix; the reconciler and a newer
revision are the way out). Deleting the deployment REMOVEs its revisions that are not over
yet (queued, in flight or ACTIVE).

Every change is a :class:`Transition`, stored in order; a revision's state is the ``to`` of
its latest transition. The table below is the only place transitions are written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType

import msgspec

__all__ = [
    "IN_FLIGHT",
    "TERMINAL",
    "TRANSITIONS",
    "Event",
    "IllegalTransition",
    "State",
    "Transition",
    "apply",
    "next_state",
    "state_of",
]


class State(StrEnum):
    QUEUED = "QUEUED"
    PLANNING = "PLANNING"
    DEPLOYING = "DEPLOYING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    BROKEN = "BROKEN"
    SUPERSEDED = "SUPERSEDED"  # was ACTIVE, replaced by a newer ACTIVE revision
    REMOVED = "REMOVED"  # the deployment was deleted


class Event(StrEnum):
    START = "start"
    PLANNED = "planned"
    APPLIED = "applied"
    FAIL = "fail"
    ROLLED_BACK = "ROLLED_BACK"
    ROLLBACK_FAILED = "rollback_failed"
    SUPERSEDE = "supersede"
    REMOVE = "remove"


_S, _E = State, Event

TRANSITIONS: Mapping[State, Mapping[Event, State]] = MappingProxyType(
    {
        _S.QUEUED: MappingProxyType({_E.START: _S.PLANNING, _E.REMOVE: _S.REMOVED}),
        _S.PLANNING: MappingProxyType(
            {_E.PLANNED: _S.DEPLOYING, _E.FAIL: _S.FAILED, _E.REMOVE: _S.REMOVED}
        ),
        _S.DEPLOYING: MappingProxyType(
            {_E.APPLIED: _S.ACTIVE, _E.FAIL: _S.FAILED, _E.REMOVE: _S.REMOVED}
        ),
        _S.ACTIVE: MappingProxyType({_E.SUPERSEDE: _S.SUPERSEDED, _E.REMOVE: _S.REMOVED}),
        _S.FAILED: MappingProxyType(
            {
                _E.ROLLED_BACK: _S.ROLLED_BACK,
                _E.ROLLBACK_FAILED: _S.BROKEN,
                _E.REMOVE: _S.REMOVED,
            }
        ),
        # BROKEN, like ROLLED_BACK, is the end of this revision's story, kept as history: a
        # broken deployment is repaired by a newer revision (which a re-post of the same
        # manifest creates) and cleaned by the reconciler, neither of which rewrites it.
        _S.BROKEN: MappingProxyType({}),
        _S.ROLLED_BACK: MappingProxyType({}),
        _S.SUPERSEDED: MappingProxyType({}),
        _S.REMOVED: MappingProxyType({}),
    }
)

# States with no way out: the revision's story is over.
TERMINAL: frozenset[State] = frozenset(s for s, out in TRANSITIONS.items() if not out)

# States in which a worker owns the deployment (the FIFO queue waits). FAILED belongs here
# because its rollback is still to run; after a crash, revisions in these states are resumed.
IN_FLIGHT: frozenset[State] = frozenset({State.PLANNING, State.DEPLOYING, State.FAILED})


class IllegalTransition(ValueError):
    """``event`` is not allowed in ``state`` (the table has no such entry)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"event {event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


class Transition(msgspec.Struct, frozen=True):
    """One recorded state change of one revision; ``at`` is seconds since the epoch.

    ``reason`` says why (always set by FAIL and ROLLBACK_FAILED callers); ``step`` is the plan
    step id that failed.
    """

    revision: int
    from_: State = msgspec.field(name="from")
    to: State
    event: Event
    at: float
    reason: str | None = None
    step: str | None = None


def next_state(state: State, event: Event) -> State:
    """The state ``event`` leads to from ``state``; raise IllegalTransition if not allowed."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


def state_of(history: Sequence[Transition], revision: int) -> State:
    """The revision's current state: its latest transition's ``to``, QUEUED if it has none."""
    for transition in reversed(history):
        if transition.revision == revision:
            return transition.to
    return State.QUEUED


def apply(
    history: Sequence[Transition],
    revision: int,
    event: Event,
    at: float,
    *,
    reason: str | None = None,
    step: str | None = None,
) -> Transition:
    """The transition ``event`` makes for ``revision`` given ``history`` (oldest first).

    Returns the record to append; does not modify ``history``. Raises IllegalTransition.
    """
    current = state_of(history, revision)
    return Transition(
        revision=revision,
        from_=current,
        to=next_state(current, event),
        event=event,
        at=at,
        reason=reason,
        step=step,
    )
