"""Apply and rollback plans as DAGs, and the one-device reconciler: examples and properties."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.plan import Action, PlanStep, plan_apply, ready, reconcile, rollback_plan

devices = st.sampled_from([f"dev-{i}" for i in range(6)])
digests = st.sampled_from(["a" * 64, "b" * 64, "c" * 64])
placements = st.dictionaries(devices, digests, max_size=6)


def run(plan: Sequence[PlanStep]) -> list[set[str]]:
    """Simulate the executor: each round runs every ready step; returns the rounds."""
    done: set[str] = set()
    rounds: list[set[str]] = []
    while batch := ready(plan, done, set()):
        rounds.append({s.id for s in batch})
        done |= rounds[-1]
    return rounds


def order(plan: Sequence[PlanStep]) -> dict[str, int]:
    return {step_id: i for i, batch in enumerate(run(plan)) for step_id in batch}


def test_plan_example() -> None:
    old = {"dev-1": "a", "dev-2": "a", "dev-3": "a"}
    new = {"dev-1": "b", "dev-2": "a", "dev-4": "b"}
    assert plan_apply(old, new) == [
        PlanStep("push:dev-1", "push", "dev-1", ()),
        PlanStep("push:dev-4", "push", "dev-4", ()),
        PlanStep("verify:dev-1", "verify", "dev-1", ("push:dev-1",)),
        PlanStep("verify:dev-4", "verify", "dev-4", ("push:dev-4",)),
        PlanStep("switch", "switch", None, ("verify:dev-1", "verify:dev-4")),
        PlanStep("remove:dev-3", "remove", "dev-3", ("switch",)),
    ]
    assert run(plan_apply(old, new)) == [
        {"push:dev-1", "push:dev-4"},
        {"verify:dev-1", "verify:dev-4"},
        {"switch"},
        {"remove:dev-3"},
    ]


def test_first_revision_pushes_everywhere() -> None:
    assert [s.id for s in plan_apply({}, {"d": "x"})] == ["push:d", "verify:d", "switch"]


def test_ready_skips_done_and_running() -> None:
    plan = plan_apply({}, {"d1": "x", "d2": "x"})
    assert [s.id for s in ready(plan, set(), {"push:d1"})] == ["push:d2"]
    assert [s.id for s in ready(plan, {"push:d1"}, {"push:d2"})] == ["verify:d1"]
    assert ready(plan, {s.id for s in plan}, set()) == []


def test_rollback_example() -> None:
    old = {"dev-1": "a", "dev-2": "a", "dev-3": "a"}
    new = {"dev-1": "b", "dev-2": "b", "dev-4": "b", "dev-5": "b"}
    # dev-2's push was never started; dev-5's was started (maybe landed); dev-3 untouched.
    assert rollback_plan(old, new, {"dev-1", "dev-4", "dev-5"}) == [
        PlanStep("push:dev-1", "push", "dev-1", ()),
        PlanStep("verify:dev-1", "verify", "dev-1", ("push:dev-1",)),
        PlanStep("remove:dev-4", "remove", "dev-4", ("verify:dev-1",)),
        PlanStep("remove:dev-5", "remove", "dev-5", ("verify:dev-1",)),
    ]
    assert rollback_plan(old, new, set()) == []


def test_reconcile_example() -> None:
    desired = {"dep-a": "1", "dep-b": "2", "dep-c": "3"}
    observed = {"dep-b": "2", "dep-c": "old", "dep-z": "9", "dep-y": "8"}
    assert reconcile(desired, observed) == [
        Action("remove", "dep-y"),
        Action("remove", "dep-z"),
        Action("deploy", "dep-a"),
        Action("deploy", "dep-c"),
    ]
    # A device that rebooted empty gets everything again.
    assert reconcile(desired, {}) == [Action("deploy", d) for d in sorted(desired)]


def check_dag(plan: Sequence[PlanStep]) -> dict[str, int]:
    """Ids are unique, deps exist, and running ready rounds completes every step."""
    ids = [s.id for s in plan]
    assert len(ids) == len(set(ids))
    assert all(a in ids for s in plan for a in s.after)
    at = order(plan)
    assert set(at) == set(ids)
    assert all(at[a] < at[s.id] for s in plan for a in s.after)
    return at


@given(placements)
def test_unchanged_revision_only_switches(x: dict[str, str]) -> None:
    assert plan_apply(x, x) == [PlanStep("switch", "switch", None, ())]


@given(placements, placements)
def test_apply_plan_is_a_dag_in_the_right_order(old: dict[str, str], new: dict[str, str]) -> None:
    plan = plan_apply(old, new)
    at = check_dag(plan)
    assert plan == plan_apply(dict(reversed(old.items())), dict(reversed(new.items())))
    by_kind = {k: [s for s in plan if s.kind == k] for k in ("push", "verify", "switch", "remove")}
    assert len(by_kind["switch"]) == 1
    assert {s.device for s in by_kind["push"]} == {d for d in new if old.get(d) != new[d]}
    assert {s.device for s in by_kind["verify"]} == {s.device for s in by_kind["push"]}
    assert {s.device for s in by_kind["remove"]} == set(old) - set(new)
    for push in by_kind["push"]:
        assert push.after == ()  # pushes run in parallel
        assert at[push.id] < at[f"verify:{push.device}"]
    assert all(at[v.id] < at["switch"] for v in by_kind["verify"])
    assert all(at["switch"] < at[r.id] for r in by_kind["remove"])


@given(placements, placements, st.data())
def test_rollback_plan_restores_old(
    old: dict[str, str], new: dict[str, str], data: st.DataObject
) -> None:
    pushable = sorted(s.device for s in plan_apply(old, new) if s.kind == "push" and s.device)
    pushed = set(data.draw(st.lists(st.sampled_from(pushable), unique=True)) if pushable else [])
    plan = rollback_plan(old, new, pushed)
    check_dag(plan)
    # Simulate: every pushed device holds new content; the rollback must give back old's.
    held = {d: (new[d] if d in pushed else old[d]) for d in set(old) | pushed}
    for step in plan:
        assert step.device is not None
        if step.kind == "push":
            held[step.device] = old[step.device]
        elif step.kind == "remove":
            del held[step.device]
    assert held == {d: old[d] for d in old}


def apply_actions(
    observed: Mapping[str, str], desired: Mapping[str, str], actions: list[Action]
) -> dict[str, str]:
    result = dict(observed)
    for action in actions:
        if action.kind == "deploy":
            result[action.deployment] = desired[action.deployment]
        else:
            del result[action.deployment]
    return result


deployments = st.dictionaries(st.sampled_from([f"dep-{i}" for i in range(6)]), digests, max_size=6)


@given(deployments)
def test_reconcile_of_equal_states_is_empty(x: dict[str, str]) -> None:
    assert reconcile(x, x) == []


@given(deployments, deployments)
def test_reconcile_converges(desired: dict[str, str], observed: dict[str, str]) -> None:
    actions = reconcile(desired, observed)
    assert apply_actions(observed, desired, actions) == desired
    assert len({a.deployment for a in actions}) == len(actions)  # one action per deployment
    assert reconcile(desired, apply_actions(observed, desired, actions)) == []
