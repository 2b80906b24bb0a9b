"""Placement and the orchestrator's core device: built-in packages run only there, and only
built-in packages run there; label and zone constraints do not apply to it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.model import (
    Constraints,
    DeviceView,
    FunctionSpec,
    Manifest,
    ModuleRecord,
    Param,
    Step,
)
from orchestrator.placement import CORE_ONLY, WASM_ONLY, Infeasible, Placement, place

CORE = DeviceView(
    id="orchestrator",
    name="orchestrator",
    interfaces=frozenset(),
    labels={"baton.core": "true"},
    core=True,
)
WASI = frozenset({"fd_write", "proc_exit"})


def sensor(i: int, *, role: str = "sensor", zone: str | None = "lab") -> DeviceView:
    return DeviceView(
        id=f"dev{i}", name=f"dev{i}", interfaces=WASI, labels={"role": role}, zone=zone
    )


def wasm(name: str, *funcs: str, imports: frozenset[str] = frozenset()) -> ModuleRecord:
    return ModuleRecord(
        name=name,
        version="1",
        digest=name.encode().hex().ljust(64, "0")[:64],
        imports=[("wasi_snapshot_preview1", i) for i in sorted(imports)],
        exports=dict.fromkeys(funcs, 1),
        functions={f: FunctionSpec(f, [Param("n")]) for f in funcs},
    )


DATALIST = ModuleRecord(
    name="datalist",
    version="1.0.0",
    digest="d" * 64,
    imports=[],
    exports={"push": 2, "get": 0},
    functions={
        "push": FunctionSpec("push", [Param("value", "string")], "object", "post"),
        "get": FunctionSpec("get", [], "object"),
    },
    runtime="core",
)
FIBO = wasm("fibo", "fibo", imports=frozenset({"fd_write"}))
MODULES = {"fibo": FIBO, "datalist": DATALIST}


ANYWHERE = Constraints()


def pipeline(*steps: tuple[str, str], constraints: Constraints = ANYWHERE) -> Manifest:
    return Manifest(name="p", sequence=[Step(m, f) for m, f in steps], constraints=constraints)


def test_a_built_in_step_goes_to_the_core_device_and_a_wasm_step_never_does() -> None:
    result = place(
        pipeline(("fibo", "fibo"), ("datalist", "push")), MODULES, [CORE, sensor(1), sensor(2)]
    )
    assert isinstance(result, Placement), result
    assert result.devices()[1] == "orchestrator"
    assert result.devices()[0] in {"dev1", "dev2"}
    fibo_core = next(c for c in result.steps[0].candidates if c.device == "orchestrator")
    assert not fibo_core.feasible and fibo_core.reasons == [WASM_ONLY]
    push_devs = {c.device: c for c in result.steps[1].candidates}
    assert push_devs["dev1"].reasons == [CORE_ONLY] and push_devs["dev2"].reasons == [CORE_ONLY]


def test_constraints_do_not_apply_to_the_core_device() -> None:
    # A pipeline for sensors in the lab can still end with a built-in step.
    constrained = pipeline(
        ("fibo", "fibo"),
        ("datalist", "push"),
        constraints=Constraints(labels={"role": "sensor"}, zones=["lab"]),
    )
    devices = [CORE, sensor(1, role="camera"), sensor(2), sensor(3, zone="yard")]
    result = place(constrained, MODULES, devices)
    assert isinstance(result, Placement), result
    assert result.devices() == ["dev2", "orchestrator"]
    # ... but the constraints still reject the other devices, with their reasons.
    reasons = {c.device: c.reasons for c in result.steps[0].candidates}
    assert any("role=sensor" in r for r in reasons["dev1"])
    assert any("zone yard" in r for r in reasons["dev3"])


def test_without_a_core_device_a_built_in_step_is_infeasible_and_says_why() -> None:
    result = place(pipeline(("datalist", "push")), MODULES, [sensor(1), sensor(2)])
    assert isinstance(result, Infeasible)
    assert all(c.reasons == [CORE_ONLY] for c in result.candidates)


def test_a_cordoned_core_device_takes_no_built_in_step() -> None:
    cordoned = DeviceView(
        **{**{f: getattr(CORE, f) for f in CORE.__struct_fields__}, "cordoned": True}
    )
    result = place(pipeline(("datalist", "push")), MODULES, [cordoned, sensor(1)])
    assert isinstance(result, Infeasible)
    core = next(c for c in result.candidates if c.device == "orchestrator")
    assert core.reasons == ["is cordoned"]


def test_the_core_device_is_never_avoided() -> None:
    # Partitions avoid the devices other partitions run on; the core device hosts them all.
    result = place(
        pipeline(("fibo", "fibo"), ("datalist", "push")),
        MODULES,
        [CORE, sensor(1), sensor(2)],
        avoid={"orchestrator": "runs partition 0", "dev1": "runs partition 0"},
    )
    assert isinstance(result, Placement), result
    assert result.devices() == ["dev2", "orchestrator"]


fleets = st.lists(
    st.builds(
        lambda i, role, zone, core, iface: DeviceView(
            id=f"d{i:02d}",
            name=f"d{i:02d}",
            interfaces=frozenset({"fd_write"}) if iface else frozenset(),
            labels={"role": role},
            zone=zone,
            core=core,
        ),
        st.integers(0, 30),
        st.sampled_from(["sensor", "camera"]),
        st.sampled_from(["lab", "yard", None]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=8,
    unique_by=lambda d: d.id,
)
steps = st.lists(
    st.sampled_from([("fibo", "fibo"), ("datalist", "push"), ("datalist", "get")]),
    min_size=1,
    max_size=4,
    unique=True,
)


@settings(max_examples=300, deadline=None)
@given(
    fleet=fleets,
    chosen=steps,
    labelled=st.booleans(),
    zoned=st.booleans(),
)
def test_built_in_steps_run_only_on_core_devices_and_only_they_run_there(
    fleet: list[DeviceView],
    chosen: list[tuple[str, str]],
    labelled: bool,
    zoned: bool,
) -> None:
    constraints = Constraints(
        labels={"role": "sensor"} if labelled else {}, zones=["lab"] if zoned else []
    )
    manifest = pipeline(*chosen, constraints=constraints)
    result = place(manifest, MODULES, fleet)
    by_id = {d.id: d for d in fleet}
    if isinstance(result, Placement):
        for step, device_id in zip(manifest.sequence, result.devices(), strict=True):
            device = by_id[device_id]
            assert device.core == (MODULES[step.module].runtime == "core")
            if not device.core:  # constraints still bind ordinary devices
                assert not labelled or device.labels.get("role") == "sensor"
                assert not zoned or device.zone == "lab"
    else:
        step = manifest.sequence[result.step]
        core_step = MODULES[step.module].runtime == "core"
        for candidate in result.candidates:
            device = by_id[candidate.device]
            assert candidate.reasons
            if core_step and not device.core:
                assert CORE_ONLY in candidate.reasons
            if not core_step and device.core:
                assert WASM_ONLY in candidate.reasons
            if device.core:  # never rejected for a label or zone
                assert not any("label" in r or "zone" in r for r in candidate.reasons)
        # Feasible when a core device exists for a built-in step: it is never rejected then.
        if core_step:
            assert not any(d.core for d in fleet)
