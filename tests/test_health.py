"""orchestrator.health: hysteresis properties (pure, Hypothesis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.health import HealthState, observe

thresholds = st.integers(min_value=1, max_value=6)
outcomes = st.lists(st.booleans(), max_size=60)
states = st.builds(
    HealthState,
    status=st.sampled_from(["healthy", "lost"]),
    ok_streak=st.integers(0, 10),
    fail_streak=st.integers(0, 10),
)


def run(
    state: HealthState, seq: list[bool], lost_after: int, back_after: int
) -> list[tuple[HealthState, bool]]:
    out = []
    for ok in seq:
        state, changed = observe(state, ok, lost_after=lost_after, back_after=back_after)
        out.append((state, changed))
    return out


def reference_status(seq: list[bool], lost_after: int, back_after: int) -> str:
    """An independent model: scan for runs long enough to flip the status."""
    status, run_ok, run_fail = "healthy", 0, 0
    for ok in seq:
        run_ok, run_fail = (run_ok + 1, 0) if ok else (0, run_fail + 1)
        if status == "healthy" and run_fail == lost_after:
            status = "lost"
        elif status == "lost" and run_ok == back_after:
            status = "healthy"
    return status


@given(seq=outcomes, lost_after=thresholds, back_after=thresholds)
def test_matches_the_reference_model(seq: list[bool], lost_after: int, back_after: int) -> None:
    trace = run(HealthState(), seq, lost_after, back_after)
    final = trace[-1][0].status if trace else "healthy"
    assert final == reference_status(seq, lost_after, back_after)


@given(state=states, seq=outcomes, lost_after=thresholds, back_after=thresholds)
def test_changes_only_at_the_threshold_streaks(
    state: HealthState, seq: list[bool], lost_after: int, back_after: int
) -> None:
    prev = state
    for new, changed in run(state, seq, lost_after, back_after):
        assert changed == (new.status != prev.status)
        if changed and new.status == "lost":
            assert new.fail_streak >= lost_after and new.ok_streak == 0
        if changed and new.status == "healthy":
            assert new.ok_streak >= back_after and new.fail_streak == 0
        # Streaks are exclusive: one of them is always zero after an observation.
        assert new.ok_streak == 0 or new.fail_streak == 0
        prev = new


@given(seq=outcomes, lost_after=thresholds, back_after=thresholds)
def test_no_flapping(seq: list[bool], lost_after: int, back_after: int) -> None:
    """Between two status changes there are at least as many observations as the threshold
    of the second change: a device cannot bounce on every check."""
    trace = run(HealthState(), seq, lost_after, back_after)
    changes = [i for i, (_, changed) in enumerate(trace) if changed]
    for a, b in itertools.pairwise(changes):
        needed = lost_after if trace[b][0].status == "lost" else back_after
        assert b - a >= needed


@given(
    before=st.integers(0, 20),
    after=st.integers(0, 20),
    lost_after=st.integers(2, 6),
    back_after=thresholds,
)
def test_single_failure_among_successes_never_changes_a_healthy_device(
    before: int, after: int, lost_after: int, back_after: int
) -> None:
    seq = [True] * before + [False] + [True] * after
    trace = run(HealthState(), seq, lost_after, back_after)
    assert all(s.status == "healthy" and not changed for s, changed in trace)


@given(
    before=st.integers(0, 20),
    after=st.integers(0, 20),
    lost_after=thresholds,
    back_after=st.integers(2, 6),
)
def test_single_success_among_failures_never_revives_a_lost_device(
    before: int, after: int, lost_after: int, back_after: int
) -> None:
    lost = HealthState(status="lost")
    seq = [False] * before + [True] + [False] * after
    trace = run(lost, seq, lost_after, back_after)
    assert all(s.status == "lost" and not changed for s, changed in trace)


@given(lost_after=thresholds, back_after=thresholds)
def test_exact_thresholds(lost_after: int, back_after: int) -> None:
    trace = run(HealthState(), [False] * lost_after, lost_after, back_after)
    assert [changed for _, changed in trace] == [False] * (lost_after - 1) + [True]
    lost = trace[-1][0]
    assert lost.status == "lost"
    trace = run(lost, [True] * back_after, lost_after, back_after)
    assert [changed for _, changed in trace] == [False] * (back_after - 1) + [True]
    assert trace[-1][0].status == "healthy"


@given(state=states, ok=st.booleans())
def test_state_persisted_under_bigger_thresholds_converges(state: HealthState, ok: bool) -> None:
    """A streak already past a (lowered) threshold flips at the next matching observation."""
    new, _ = observe(state, ok, lost_after=1, back_after=1)
    assert new.status == ("healthy" if ok else "lost")


def test_thresholds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="thresholds"):
        observe(HealthState(), True, lost_after=0, back_after=1)
    with pytest.raises(ValueError, match="thresholds"):
        observe(HealthState(), True, lost_after=1, back_after=0)
