"""Partitions, pure: N copies of a chain on distinct devices while the fleet allows, job names
that parse back, and round robin over the healthy copies.

Fleets and manifests are drawn with the strategies of ``tests/test_placement.py``; properties
are re-checked here without looking at how ``orchestrator.partitions`` works.
"""

from __future__ import annotations

from collections import Counter

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import jobs
from orchestrator.model import DeviceView, Manifest, ModuleRecord
from orchestrator.partitions import choose_partition, healthy_partitions, place_partitions
from orchestrator.placement import Infeasible, place
from tests.test_placement import (
    Modules,
    devices_st,
    manifests_st,
    module,
    modules_st,
    pipeline,
    violations,
)


def partitioned(manifest: Manifest, n: int) -> Manifest:
    return msgspec.structs.replace(manifest, partitions=n)


@given(manifests_st, st.integers(1, 4), devices_st, modules_st)
def test_partition_zero_is_the_plain_placement_and_every_copy_is_valid(
    manifest: Manifest, n: int, devices: list[DeviceView], modules: Modules
) -> None:
    result = place_partitions(partitioned(manifest, n), modules, devices)
    alone = place(manifest, modules, devices)
    if isinstance(alone, Infeasible):
        assert isinstance(result, Infeasible)
        return
    assert not isinstance(result, Infeasible)
    assert len(result) == n
    assert result[0].devices() == alone.devices()
    by_id = {d.id: d for d in devices}
    for copy in result:
        # Every copy satisfies every requirement of the manifest on its own.
        chosen = copy.devices()
        for i, device in enumerate(chosen):
            assert violations(manifest, modules, i, by_id[device], chosen[:i]) == []


@given(st.integers(1, 5), st.integers(1, 3), st.integers(1, 12))
def test_copies_use_distinct_devices_while_enough_qualify(
    n: int, steps: int, fleet_size: int
) -> None:
    mod = module("m", *(f"f{i}" for i in range(steps)))
    manifest = partitioned(pipeline(*(("m", f"f{i}") for i in range(steps))), n)
    devices = [
        DeviceView(id=f"d{i:02}", name=f"n{i}", interfaces=frozenset({"fd_write"}))
        for i in range(fleet_size)
    ]
    result = place_partitions(manifest, {"m": mod}, devices)
    assert not isinstance(result, Infeasible)
    sets = [set(p.devices()) for p in result]
    needed = sum(len(s) for s in sets)
    if needed <= fleet_size:
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                assert not a & b, (sets, fleet_size)
    # Sharing happens only for want of devices, and then every device is used.
    else:
        assert set().union(*sets) == {d.id for d in devices}


def test_a_copy_that_must_share_says_which_partition_had_the_device() -> None:
    mod = module("m", "f")
    devices = [DeviceView(id="a", name="a", interfaces=frozenset({"fd_write"}))]
    result = place_partitions(partitioned(pipeline(("m", "f")), 2), {"m": mod}, devices)
    assert not isinstance(result, Infeasible)
    assert [p.devices() for p in result] == [["a"], ["a"]]


def test_an_infeasible_later_partition_names_itself() -> None:
    # Partition 1 can only fail if partition 0 could not be placed either; the message of
    # a failure names the step, and for partition 0 stays exactly place()'s message.
    mod = module("m", "f", imports=(("env", "camera"),))
    devices = [DeviceView(id="a", name="a", interfaces=frozenset())]
    manifest = partitioned(pipeline(("m", "f")), 3)
    result = place_partitions(manifest, {"m": mod}, devices)
    alone = place(pipeline(("m", "f")), {"m": mod}, devices)
    assert isinstance(result, Infeasible) and isinstance(alone, Infeasible)
    assert result.message == alone.message


@given(
    st.lists(st.sampled_from(["a", "b", "c", "x-1", "dev.9"]), min_size=1),
    st.integers(0, 63),
    st.text(alphabet="0123456789abcdef", min_size=1, max_size=12),
)
def test_job_names_parse_back(devices: list[str], k: int, dep: str) -> None:
    for device in devices:
        assert jobs.parse_job_key(jobs.job_key(device, k)) == (device, k)
        assert jobs.device_of(jobs.job_key(device, k)) == device
    assert jobs.parent_deployment(jobs.remote_id(dep, k)) == (dep, k)


@given(
    st.lists(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=3), min_size=1, max_size=4),
    st.sets(st.sampled_from("abcdef")),
    st.integers(1, 60),
)
def test_round_robin_takes_only_healthy_copies_and_shares_evenly(
    chains: list[list[str]], unhealthy: set[str], executions: int
) -> None:
    picks = Counter(choose_partition(chains, unhealthy, turn) for turn in range(executions))
    healthy = healthy_partitions(chains, unhealthy)
    allowed = healthy or list(range(len(chains)))
    assert set(picks) <= set(allowed)
    if healthy:
        assert all(not set(chains[k]) & unhealthy for k in picks)
    # Round robin: counts differ by at most one between the allowed copies.
    counts = [picks.get(k, 0) for k in allowed]
    assert max(counts) - min(counts) <= 1


def test_module_record_helper_is_what_the_fleet_can_run() -> None:
    # Guard for the helpers borrowed from test_placement: a module with WASI imports only
    # runs on a device offering fd_write.
    mod: ModuleRecord = module("m", "f")
    assert mod.host_imports() <= frozenset({"fd_write"})


@given(manifests_st, st.integers(1, 3), devices_st, modules_st, st.data())
def test_kept_devices_stay_while_feasible(
    manifest: Manifest, n: int, devices: list[DeviceView], modules: Modules, data: st.DataObject
) -> None:
    """Re-placing with ``keep`` = a valid placement of the same fleet changes nothing; with
    one device gone, only the steps that ran on it move."""
    manifest = partitioned(manifest, n)
    first = place_partitions(manifest, modules, devices)
    if isinstance(first, Infeasible):
        return
    keep = [p.devices() for p in first]
    again = place_partitions(manifest, modules, devices[::-1], keep=keep)
    assert not isinstance(again, Infeasible)
    assert [p.devices() for p in again] == keep
    gone = data.draw(st.sampled_from(sorted({d for c in keep for d in c})))
    fewer = [d for d in devices if d.id != gone]
    moved = place_partitions(manifest, modules, fewer, keep=keep)
    if isinstance(moved, Infeasible):
        return
    for before, after in zip(keep, [p.devices() for p in moved], strict=True):
        assert gone not in after
        if gone not in before:
            assert after == before  # a partition the lost device was not part of stays put
