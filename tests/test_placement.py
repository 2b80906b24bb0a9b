"""Placement: properties over random small fleets, and the examples the design promises.

The strategies draw from tiny alphabets (five device ids, three host functions, a handful of
modules and functions, a name that is also an id) so pins collide, constraints bite, the same
function repeats and infeasible manifests are common. Requirements are re-checked here by
``violations``, written independently of ``orchestrator.placement``.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.model import (
    Constraints,
    DeviceView,
    FunctionSpec,
    Manifest,
    ModuleRecord,
    Step,
)
from orchestrator.placement import Candidate, Infeasible, Placement, Weights, place

IDS = ["d0", "d1", "d2", "d3", "d4"]
NAMES = ["cam", "gw", "d1"]  # "d1" is also an id: a pin may match one device's id, another's name
HOST = ["a", "b", "c"]
FUNCS = ["f", "g", "h"]
KNOWN = ["m0", "m1", "m1@2", "m2"]  # m1 and m1@2 are two versions of one module
PINS = [*IDS, *NAMES, "nowhere"]


def record(
    key: str, imports: frozenset[str], exports: frozenset[str], described: frozenset[str]
) -> ModuleRecord:
    return ModuleRecord(
        name=key.split("@", maxsplit=1)[0],
        version=key.split("@")[1] if "@" in key else "1",
        digest="0" * 64,
        imports=[("env", name) for name in sorted(imports)],
        exports=dict.fromkeys(sorted(exports), 1),
        functions={name: FunctionSpec(name) for name in sorted(described)},
    )


subsets = st.frozensets


def mostly(
    usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any], odds: int = 4
) -> st.SearchStrategy[Any]:
    """``usual`` ``odds`` times to one: enough feasible pipelines to test, enough failures."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda pick: usual if pick else other)


devices_st = st.lists(
    st.builds(
        DeviceView,
        id=st.sampled_from(IDS),
        name=st.sampled_from(NAMES),
        interfaces=mostly(st.just(frozenset(HOST)), subsets(st.sampled_from(HOST))),
        labels=st.dictionaries(st.just("role"), st.sampled_from(["x", "y"])),
        zone=st.sampled_from([None, "z1", "z2"]),
        status=mostly(st.just("healthy"), st.just("lost")),
        cordoned=mostly(st.just(False), st.just(True)),
        cpu=st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1),
        memory=st.sampled_from([0.0, 0.5, 1.0]),
        rtt_ms=st.sampled_from([None, 0.0, 5.0, 50.0]),
        deployments=st.integers(0, 2),
    ),
    unique_by=lambda d: d.id,
    min_size=2,  # no devices, or one, are examples below, not cases worth drawing often
    max_size=5,
)
# Every known module is present; steps name an unknown one ("mx") now and then.
modules_st = st.fixed_dictionaries(
    {
        key: st.tuples(
            subsets(st.sampled_from(HOST), max_size=1),
            mostly(st.just(frozenset(FUNCS)), subsets(st.sampled_from(FUNCS))),
            subsets(st.sampled_from(FUNCS)),
        )
        for key in KNOWN
    }
).map(lambda d: {key: record(key, *parts) for key, parts in d.items()})
manifests_st = st.builds(
    Manifest,
    name=st.just("p"),
    sequence=st.lists(
        st.builds(
            Step,
            module=mostly(st.sampled_from(KNOWN), st.just("mx"), odds=12),
            func=st.sampled_from(FUNCS),
            device=mostly(st.none(), st.sampled_from(PINS)),
        ),
        min_size=1,
        max_size=5,
    ),
    constraints=mostly(
        st.just(Constraints()),
        st.builds(
            Constraints,
            labels=st.dictionaries(st.just("role"), st.sampled_from(["x", "y"])),
            zones=st.lists(st.sampled_from(["z1", "z2"]), unique=True, max_size=2),
        ),
    ),
    spread=st.booleans(),
)
weights_st = st.just(Weights()) | st.builds(
    Weights, *[st.sampled_from([0.0, 0.5, 1.0, 2.0])] * 4, st.sampled_from([0.0, 0.25])
)
load_st = st.none() | st.dictionaries(st.sampled_from(IDS), st.integers(0, 2))

Modules = dict[str, ModuleRecord]


def violations(
    manifest: Manifest, modules: Modules, index: int, device: DeviceView, earlier: list[str]
) -> list[str]:
    """Which requirements ``device`` breaks for step ``index``, given earlier steps' devices."""
    step = manifest.sequence[index]
    found = []
    rec = modules.get(step.module)
    if rec is None:
        found.append("unknown module")
    else:
        if step.func not in rec.functions and step.func not in rec.exports:
            found.append("no function")
        if not {name for _, name in rec.imports} <= device.interfaces:
            found.append("imports")
        for before, where in zip(manifest.sequence, earlier, strict=False):
            same = modules[before.module].name == rec.name and before.func == step.func
            if same and where == device.id:
                found.append("runs it already")
    if step.device is not None and step.device not in {device.id, device.name}:
        found.append("pin")
    found += ["label" for k, v in manifest.constraints.labels.items() if device.labels.get(k) != v]
    if manifest.constraints.zones and device.zone not in manifest.constraints.zones:
        found.append("zone")
    if device.status != "healthy":
        found.append("status")
    if device.cordoned:
        found.append("cordoned")
    return found


def by_id(devices: list[DeviceView]) -> dict[str, DeviceView]:
    return {d.id: d for d in devices}


@settings(max_examples=150)
@given(manifests_st, modules_st, devices_st, weights_st, load_st)
def test_every_placement_satisfies_every_requirement(
    manifest: Manifest,
    modules: Modules,
    devices: list[DeviceView],
    weights: Weights,
    load: dict[str, int] | None,
) -> None:
    result = place(manifest, modules, devices, weights, load=load)
    if isinstance(result, Placement):
        chosen = result.devices()
        assert len(chosen) == len(manifest.sequence)
        for index, device in enumerate(chosen):
            assert (
                violations(manifest, modules, index, by_id(devices)[device], chosen[:index]) == []
            )


@settings(max_examples=150)
@given(manifests_st, modules_st, devices_st, weights_st, load_st, st.data())
def test_result_does_not_depend_on_device_order(
    manifest: Manifest,
    modules: Modules,
    devices: list[DeviceView],
    weights: Weights,
    load: dict[str, int] | None,
    data: st.DataObject,
) -> None:
    shuffled = data.draw(st.permutations(devices))
    assert place(manifest, modules, shuffled, weights, load=load) == place(
        manifest, modules, devices, weights, load=load
    )


@settings(max_examples=150)
@given(manifests_st, modules_st, devices_st, weights_st)
def test_infeasible_always_explains(
    manifest: Manifest, modules: Modules, devices: list[DeviceView], weights: Weights
) -> None:
    result = place(manifest, modules, devices, weights)
    if not isinstance(result, Infeasible):
        return
    assert [c.device for c in result.candidates] == sorted(d.id for d in devices)
    assert all(not c.feasible and c.reasons for c in result.candidates)
    step = manifest.sequence[result.step]
    assert (result.module, result.func) == (step.module, step.func)
    assert f"step {result.step}" in result.message
    # The steps before it were placeable, and given their devices no device can take it.
    prefix = msgspec.structs.replace(manifest, sequence=manifest.sequence[: result.step])
    before = place(prefix, modules, devices, weights)
    assert isinstance(before, Placement)
    for device in devices:
        assert violations(manifest, modules, result.step, device, before.devices())


@settings(max_examples=150)
@given(manifests_st, modules_st, devices_st, weights_st, load_st, st.data())
def test_removing_an_unused_device_changes_nothing(
    manifest: Manifest,
    modules: Modules,
    devices: list[DeviceView],
    weights: Weights,
    load: dict[str, int] | None,
    data: st.DataObject,
) -> None:
    result = place(manifest, modules, devices, weights, load=load)
    if not isinstance(result, Placement):
        return
    unused = [d.id for d in devices if d.id not in result.devices()]
    gone = data.draw(st.sets(st.sampled_from(unused)) if unused else st.just(set[str]()))
    fewer = [d for d in devices if d.id not in gone]
    again = place(manifest, modules, fewer, weights, load=load)
    assert isinstance(again, Placement)
    assert again.devices() == result.devices()


@settings(max_examples=150)
@given(manifests_st, modules_st, devices_st, weights_st, load_st)
def test_every_step_explains_every_device_and_picks_the_first_feasible(
    manifest: Manifest,
    modules: Modules,
    devices: list[DeviceView],
    weights: Weights,
    load: dict[str, int] | None,
) -> None:
    result = place(manifest, modules, devices, weights, load=load)
    if not isinstance(result, Placement):
        return
    chosen = result.devices()
    for index, step in enumerate(result.steps):
        assert (step.index, step.module, step.func) == (
            index,
            manifest.sequence[index].module,
            manifest.sequence[index].func,
        )
        assert sorted(c.device for c in step.candidates) == sorted(d.id for d in devices)
        assert step.candidates[0].feasible
        assert step.candidates[0].device == step.device
        feasible = [c for c in step.candidates if c.feasible]
        assert step.candidates == feasible + [c for c in step.candidates if not c.feasible]
        assert feasible == sorted(feasible, key=lambda c: (-c.score, c.device))
        rejected = step.candidates[len(feasible) :]
        assert [c.device for c in rejected] == sorted(c.device for c in rejected)
        for c in step.candidates:
            device = by_id(devices)[c.device]
            assert c.name == device.name
            found = violations(manifest, modules, index, device, chosen[:index])
            # One reason per broken requirement, none when feasible.
            assert len(c.reasons) == len(found)
            assert c.feasible == (not found)
            if not c.feasible:
                assert (c.score, c.parts) == (0.0, {})
            else:
                if manifest.spread:
                    colocation = -weights.colocation if c.device in chosen[:index] else 0.0
                else:
                    colocated = index > 0 and chosen[index - 1] == c.device
                    colocation = weights.colocation if colocated else 0.0
                assert c.parts == expected_parts(device, weights, load or {}, colocation)
                assert math.isclose(c.score, sum(c.parts.values()), abs_tol=1e-9)


def expected_parts(
    device: DeviceView, w: Weights, load: dict[str, int], colocation: float
) -> dict[str, float]:
    rtt = 0.0 if device.rtt_ms is None else w.rtt / (1 + device.rtt_ms / 10)
    return {
        "cpu": w.cpu * (1 - device.cpu),
        "memory": w.memory * (1 - device.memory),
        "rtt": rtt,
        "colocation": colocation,
        "spread": 0.0 - w.spread * (device.deployments + load.get(device.id, 0)),
    }


@settings(max_examples=150)
@given(manifests_st, modules_st, devices_st, load_st)
def test_spread_reuses_a_device_only_when_no_fresh_one_qualifies(
    manifest: Manifest, modules: Modules, devices: list[DeviceView], load: dict[str, int] | None
) -> None:
    # A co-location weight larger than every other part together makes "fresh first" strict.
    weights = Weights(colocation=100.0)
    result = place(msgspec.structs.replace(manifest, spread=True), modules, devices, weights)
    if not isinstance(result, Placement):
        return
    chosen = result.devices()
    for index, where in enumerate(chosen):
        if where not in chosen[:index]:
            continue
        fresh = [d for d in devices if d.id not in chosen[:index]]
        assert all(violations(manifest, modules, index, d, chosen[:index]) for d in fresh)


@given(manifests_st, modules_st, devices_st, load_st)
def test_results_round_trip_as_tagged_json(
    manifest: Manifest, modules: Modules, devices: list[DeviceView], load: dict[str, int] | None
) -> None:
    result = place(manifest, modules, devices, load=load)
    wire = msgspec.json.encode(result)
    assert msgspec.json.decode(wire, type=Placement | Infeasible) == result


# --- examples ---------------------------------------------------------------------------

WASI = ("wasi_snapshot_preview1", "fd_write")
BASIC = frozenset({"fd_write"})


def module(name: str, *funcs: str, imports: tuple[tuple[str, str], ...] = (WASI,)) -> ModuleRecord:
    return ModuleRecord(
        name=name,
        version="1",
        digest="0" * 64,
        imports=list(imports),
        exports=dict.fromkeys(funcs, 1),
        functions={f: FunctionSpec(f) for f in funcs},
    )


def device(
    id: str, *, name: str | None = None, interfaces: frozenset[str] = BASIC, **kw: Any
) -> DeviceView:
    return DeviceView(id=id, name=name or id, interfaces=interfaces, **kw)


def pipeline(*steps: tuple[str, str] | Step, constraints: Constraints | None = None) -> Manifest:
    sequence = [s if isinstance(s, Step) else Step(*s) for s in steps]
    return Manifest(name="p", sequence=sequence, constraints=constraints or Constraints())


def reasons(candidates: list[Candidate]) -> dict[str, list[str]]:
    return {c.device: c.reasons for c in candidates}


def test_middle_step_goes_to_the_only_device_with_its_host_function() -> None:
    camera = (("camera", "takeImageDynamicSize"), WASI)
    modules = {
        "prep": module("prep", "scale"),
        "cam": module("cam", "take", imports=camera),
        "post": module("post", "encode"),
    }
    devices = [
        device("c", cpu=0.0),  # the idlest: would win every step on score alone
        device("b", interfaces=BASIC | {"takeImageDynamicSize"}, cpu=0.9),
        device("a", cpu=0.5),
    ]
    result = place(
        pipeline(("prep", "scale"), ("cam", "take"), ("post", "encode")), modules, devices
    )
    assert isinstance(result, Placement)
    assert result.devices()[1] == "b"
    middle = result.steps[1]
    assert reasons(middle.candidates) == {
        "b": [],
        "a": ["lacks host functions takeImageDynamicSize"],
        "c": ["lacks host functions takeImageDynamicSize"],
    }
    # The last step stays on b: co-location (2.0) outweighs c's spare CPU (0.9).
    assert result.devices() == ["c", "b", "b"]


def test_spread_sends_each_step_to_a_fresh_device() -> None:
    camera = (("camera", "takeImageDynamicSize"), WASI)
    modules = {"cam": module("cam", "take", imports=camera), "img": module("img", "gray", "sum")}
    devices = [
        device("cam-node", interfaces=BASIC | {"takeImageDynamicSize"}),
        device("compute", cpu=0.2),
        device("sensor", cpu=0.5),
    ]
    steps = (("cam", "take"), ("img", "gray"), ("img", "sum"))
    packed = place(pipeline(*steps), modules, devices)
    assert isinstance(packed, Placement)
    assert packed.devices() == ["cam-node", "cam-node", "cam-node"]  # co-location wins
    spread = place(msgspec.structs.replace(pipeline(*steps), spread=True), modules, devices)
    assert isinstance(spread, Placement)
    assert spread.devices() == ["cam-node", "compute", "sensor"]
    last = {c.device: c for c in spread.steps[2].candidates}
    assert last["cam-node"].parts["colocation"] == -2.0
    assert last["compute"].parts["colocation"] == -2.0
    assert last["sensor"].parts["colocation"] == 0.0
    # With more steps than devices, spread falls back to the least bad used device.
    more = (*steps, ("img", "other"))
    modules["img"] = module("img", "gray", "sum", "other")
    four = place(msgspec.structs.replace(pipeline(*more), spread=True), modules, devices)
    assert isinstance(four, Placement)
    assert four.devices()[:3] == ["cam-node", "compute", "sensor"]
    assert four.devices()[3] == "cam-node"  # idlest CPU among the used


def test_colocation_breaks_an_otherwise_equal_score() -> None:
    modules = {"m": module("m", "f", "g")}
    devices = [device("a"), device("b")]
    alone = place(pipeline(("m", "g")), modules, devices)
    assert isinstance(alone, Placement)
    assert alone.devices() == ["a"]  # equal scores: the smaller id
    result = place(pipeline(Step("m", "f", device="b"), ("m", "g")), modules, devices)
    assert isinstance(result, Placement)
    assert result.devices() == ["b", "b"]
    best, other = result.steps[1].candidates
    assert best.parts["colocation"] == 2.0 and other.parts["colocation"] == 0.0
    assert best.score - other.score == pytest.approx(2.0)


def test_a_pinned_step_goes_to_its_device_by_id_or_name() -> None:
    modules = {"m": module("m", "f")}
    devices = [device("a", cpu=0.0), device("b", name="cam-1", cpu=0.9)]
    for pin in ("b", "cam-1"):
        result = place(pipeline(Step("m", "f", device=pin)), modules, devices)
        assert isinstance(result, Placement)
        assert result.devices() == ["b"]
        assert reasons(result.steps[0].candidates)["a"] == [f"not pinned (step pinned to {pin})"]


def test_lost_and_cordoned_devices_are_skipped() -> None:
    modules = {"m": module("m", "f")}
    devices = [device("a", status="lost"), device("b", cordoned=True), device("c", cpu=1.0)]
    result = place(pipeline(("m", "f")), modules, devices)
    assert isinstance(result, Placement)
    assert result.devices() == ["c"]
    assert reasons(result.steps[0].candidates) == {"c": [], "a": ["is lost"], "b": ["is cordoned"]}
    none_left = place(pipeline(("m", "f")), modules, devices[:2])
    assert isinstance(none_left, Infeasible)
    assert none_left.message == "step 0 (m.f) cannot be placed: none of 2 devices qualifies"


def test_the_same_function_twice_needs_two_devices() -> None:
    modules = {"fibo": module("fibo", "fibo"), "fibo@2": module("fibo", "fibo")}
    devices = [device("a"), device("b")]
    twice = pipeline(("fibo", "fibo"), ("fibo@2", "fibo"))
    result = place(twice, modules, devices)
    assert isinstance(result, Placement)
    assert result.devices() == ["a", "b"]
    assert reasons(result.steps[1].candidates)["a"] == ["already runs fibo.fibo for step 0"]
    alone = place(twice, modules, devices[:1])
    assert isinstance(alone, Infeasible)
    assert alone.step == 1


def test_unknown_module_and_missing_function_are_named() -> None:
    modules = {"m": module("m", "f")}
    devices = [device("a"), device("b", status="lost")]
    unknown = place(pipeline(("m", "f"), ("cam", "take")), modules, devices)
    assert isinstance(unknown, Infeasible)
    assert (unknown.step, unknown.module, unknown.func) == (1, "cam", "take")
    assert "module cam is unknown" in unknown.message
    assert reasons(unknown.candidates) == {
        "a": ["module cam is unknown"],
        "b": ["module cam is unknown", "is lost"],
    }
    missing = place(pipeline(("m", "x")), modules, devices)
    assert isinstance(missing, Infeasible)
    assert reasons(missing.candidates)["a"] == ["module m has no function 'x'"]


def test_label_and_zone_constraints_explain_themselves() -> None:
    modules = {"m": module("m", "f")}
    devices = [
        device("a", labels={"role": "compute"}, zone="line-2"),
        device("b", zone="line-1"),
        device("c", labels={"role": "camera"}, zone="line-1"),
    ]
    where = Constraints(labels={"role": "camera"}, zones=["line-1"])
    result = place(pipeline(("m", "f"), constraints=where), modules, devices)
    assert isinstance(result, Placement)
    assert reasons(result.steps[0].candidates) == {
        "c": [],
        "a": ["label role=camera required, has role=compute", "zone line-2 not in [line-1]"],
        "b": ["label role=camera required, has no role"],
    }


def test_scores_rtt_and_load() -> None:
    modules = {"m": module("m", "f")}
    unmeasured, far = device("a"), device("b", rtt_ms=1000.0)
    result = place(pipeline(("m", "f")), modules, [unmeasured, far])
    assert isinstance(result, Placement)
    assert result.devices() == ["b"]  # measured, however slow, beats never measured
    assert result.steps[0].candidates[1].parts["rtt"] == 0.0
    busy = place(pipeline(("m", "f")), modules, [far], load={"b": 3})
    assert isinstance(busy, Placement)
    assert busy.steps[0].candidates[0].parts["spread"] == -0.75
    shifted = place(pipeline(("m", "f")), modules, [unmeasured, far], load={"b": 1})
    assert isinstance(shifted, Placement)
    assert shifted.devices() == ["a"]


def test_edge_cases() -> None:
    modules = {"m": module("m", "f")}
    assert place(pipeline(), modules, []) == Placement([])
    nobody = place(pipeline(("m", "f")), modules, [])
    assert isinstance(nobody, Infeasible)
    assert nobody.message == "step 0 (m.f) cannot be placed: no devices are known"
    with pytest.raises(ValueError, match="device id a appears twice"):
        place(pipeline(("m", "f")), modules, [device("a"), device("a", cpu=1.0)])
    with pytest.raises(ValueError, match="weight rtt must be a finite number"):
        Weights(rtt=math.nan)
