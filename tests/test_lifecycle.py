"""The revision state machine: the whole table, and properties of random event sequences."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.lifecycle import (
    IN_FLIGHT,
    TERMINAL,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    Transition,
    apply,
    next_state,
    state_of,
)

LISTED = [(s, e, to) for s, out in TRANSITIONS.items() for e, to in out.items()]
UNLISTED = [(s, e) for s in State for e in Event if e not in TRANSITIONS[s]]


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)


def test_terminal_states() -> None:
    assert {State.ROLLED_BACK, State.BROKEN, State.SUPERSEDED, State.REMOVED} == TERMINAL
    assert not IN_FLIGHT & TERMINAL


def test_the_transitions_the_design_names() -> None:
    """The brief's list, written out once more so a table edit cannot drop one silently."""
    named = {
        (State.QUEUED, Event.START, State.PLANNING),
        (State.PLANNING, Event.PLANNED, State.DEPLOYING),
        (State.DEPLOYING, Event.APPLIED, State.ACTIVE),
        (State.PLANNING, Event.FAIL, State.FAILED),
        (State.DEPLOYING, Event.FAIL, State.FAILED),
        (State.FAILED, Event.ROLLED_BACK, State.ROLLED_BACK),
        (State.FAILED, Event.ROLLBACK_FAILED, State.BROKEN),
        (State.ACTIVE, Event.SUPERSEDE, State.SUPERSEDED),
    } | {(s, Event.REMOVE, State.REMOVED) for s in State if s not in TERMINAL}
    assert named <= set(LISTED)


@pytest.mark.parametrize(("state", "event", "to"), LISTED)
def test_every_listed_transition_works(state: State, event: Event, to: State) -> None:
    assert next_state(state, event) is to


@pytest.mark.parametrize(("state", "event"), UNLISTED)
def test_every_unlisted_transition_raises(state: State, event: Event) -> None:
    with pytest.raises(IllegalTransition) as info:
        next_state(state, event)
    assert info.value.state is state
    assert info.value.event is event


def test_apply_starts_from_queued_and_follows_each_revision() -> None:
    history: list[Transition] = []
    history.append(apply(history, 1, Event.START, 10.0))
    history.append(apply(history, 2, Event.REMOVE, 11.0))  # another revision, own state
    history.append(apply(history, 1, Event.PLANNED, 12.0))
    history.append(apply(history, 1, Event.FAIL, 13.0, reason="bad digest", step="verify:d1"))
    assert [t.to for t in history] == [
        State.PLANNING,
        State.REMOVED,
        State.DEPLOYING,
        State.FAILED,
    ]
    assert history[-1].from_ is State.DEPLOYING
    assert (history[-1].reason, history[-1].step, history[-1].at) == (
        "bad digest",
        "verify:d1",
        13.0,
    )
    assert state_of(history, 1) is State.FAILED
    assert state_of(history, 2) is State.REMOVED
    assert state_of(history, 3) is State.QUEUED


def test_apply_does_not_modify_history_and_raises_on_illegal() -> None:
    history = (apply((), 1, Event.START, 1.0),)
    with pytest.raises(IllegalTransition):
        apply(history, 1, Event.APPLIED, 2.0)
    assert len(history) == 1


def test_transition_wire_name_is_from() -> None:
    t = Transition(
        revision=3, from_=State.ACTIVE, to=State.SUPERSEDED, event=Event.SUPERSEDE, at=5.5
    )
    doc = msgspec.json.decode(msgspec.json.encode(t))
    assert doc == {
        "revision": 3,
        "from": "ACTIVE",
        "to": "SUPERSEDED",
        "event": "supersede",
        "at": 5.5,
        "reason": None,
        "step": None,
    }
    assert msgspec.json.decode(msgspec.json.encode(t), type=Transition) == t
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(t), type=Transition) == t


@given(st.lists(st.sampled_from(list(Event)), max_size=30))
def test_random_events_follow_the_table_or_raise(events: list[Event]) -> None:
    history: list[Transition] = []
    for i, event in enumerate(events):
        before = state_of(history, 1)
        if event in TRANSITIONS[before]:
            t = apply(history, 1, event, float(i))
            assert (t.from_, t.to) == (before, TRANSITIONS[before][event])
            assert before not in TERMINAL
            history.append(t)
        else:
            with pytest.raises(IllegalTransition):
                apply(history, 1, event, float(i))
    path = [State.QUEUED] + [t.to for t in history]
    # Once terminal, always terminal: nothing is recorded after a terminal state.
    for i, s in enumerate(path):
        if s in TERMINAL:
            assert i == len(path) - 1
    # ACTIVE only ever follows DEPLOYING, which only ever follows PLANNING.
    for prev, cur in itertools.pairwise(path):
        if cur is State.ACTIVE:
            assert prev is State.DEPLOYING
        if cur is State.DEPLOYING:
            assert prev is State.PLANNING
    if State.ACTIVE in path:
        first = path.index(State.ACTIVE)
        assert path[first - 2 : first] == [State.PLANNING, State.DEPLOYING]


def test_only_deploying_leads_to_active_and_only_planning_to_deploying() -> None:
    """The graph-level version of the property: no other edge enters ACTIVE or DEPLOYING."""
    into = {to: {s for s, e, t in LISTED if t is to} for to in State}
    assert into[State.ACTIVE] == {State.DEPLOYING}
    assert into[State.DEPLOYING] == {State.PLANNING}
    assert into[State.PLANNING] == {State.QUEUED}
    assert into[State.QUEUED] == set()
