"""Deployment descriptors: parsing (400/422 naming the field) and :func:`derive` (pure)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.app_image import PipelineSpec, StepSpec
from orchestrator.apps import AppRecord
from orchestrator.descriptors import (
    Descriptor,
    Params,
    derive,
    is_descriptor,
    merge_limits,
    parse_descriptor,
    sniff_descriptor,
)
from orchestrator.environments import Environment
from orchestrator.errors import BadRequest, OrchestratorError, Unprocessable
from orchestrator.manifests import manifest_digest
from orchestrator.model import Limits, Step

APP = AppRecord(
    name="thermo",
    version="1.0.0",
    digest="sha256:" + "a" * 64,
    size=1234,
    description="",
    pipelines=[
        PipelineSpec(
            name="main",
            sequence=[StepSpec("convert", "c2f"), StepSpec("threshold", "check")],
            limits={"convert.c2f": Limits(timeoutMs=1000, fuel=50)},
        ),
        PipelineSpec(name="spread", sequence=[StepSpec("convert", "c2f")], spread=True),
    ],
    packages={"convert": "convert@1.0.0", "threshold": "threshold@2"},
    static=None,
    uploadedAt=0.0,
)
LAB = Environment(
    name="lab",
    labels={"site": "lab"},
    zones=["bench", "rack"],
    limits=Limits(timeoutMs=200, memoryBytes=1 << 20),
)


def body(**fields: Any) -> bytes:
    return json.dumps(
        {"schemaVersion": 1, "app": "thermo@1.0.0", "environment": "lab"} | fields
    ).encode()


def refused(raw: bytes, content_type: str = "application/json") -> OrchestratorError:
    with pytest.raises(OrchestratorError) as info:
        parse_descriptor(raw, content_type)
    return info.value


# --- parsing ---------------------------------------------------------------------------------


def test_parse_minimal_and_full() -> None:
    d = parse_descriptor(body())
    assert d == Descriptor(schemaVersion=1, app="thermo@1.0.0", environment="lab")
    full = parse_descriptor(
        body(
            name="t",
            pipeline="main",
            digest="sha256:" + "b" * 64,
            params={
                "zones": ["bench"],
                "partitions": 3,
                "limitations": {"convert.c2f": {"fuel": 9}},
            },
        )
    )
    assert full.params == Params(
        zones=["bench"], partitions=3, limitations={"convert.c2f": Limits(fuel=9)}
    )
    toml = b'schemaVersion = 1\napp = "thermo"\nenvironment = "lab"\n[params]\npartitions = 2\n'
    assert parse_descriptor(toml, "application/toml").params.partitions == 2
    packed = msgspec.msgpack.encode({"schemaVersion": 1, "app": "thermo", "environment": "lab"})
    assert parse_descriptor(packed, "application/msgpack").app == "thermo"


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"\xff\xfe", 400, None),
        (b"[1, 2]", 422, None),
        (body(schemaVersion=2), 422, "schemaVersion"),
        (body(extra=1), 422, "extra"),
        (body(app="../etc"), 422, "app"),
        (body(app="thermo@../x"), 422, "app"),
        (body(app="http://other:3000/apps/thermo/1.0.0"), 422, "digest"),
        (body(environment="a b"), 422, "environment"),
        (body(name="-x"), 422, "name"),
        (body(pipeline=""), 422, "pipeline"),
        (body(digest="md5:abc"), 422, "digest"),
        (body(params={"partitions": 0}), 422, "params.partitions"),
        (body(params={"partitions": 10_000}), 422, "params.partitions"),
        (body(params={"partitions": "2"}), 422, "params.partitions"),
        (body(params={"zones": [""]}), 422, "params.zones[0]"),
        (body(params={"limitations": {"convert.c2f": {"fuel": -1}}}), 422, None),
        (body(params={"nope": 1}), 422, "params.nope"),
    ],
)
def test_parse_refusals_name_the_field(raw: bytes, status: int, field: str | None) -> None:
    err = refused(raw)
    assert err.status == status, err.message
    if field is not None:
        assert err.field == field, err.message
    if status == 400:
        assert isinstance(err, BadRequest)


def test_sniff_tells_descriptors_from_manifests() -> None:
    assert is_descriptor({"schemaVersion": 1, "app": "a", "environment": "e"})
    assert not is_descriptor({"name": "x", "sequence": []})
    assert sniff_descriptor(b'{"name": "x", "sequence": []}', "application/json") is None
    assert sniff_descriptor(b"garbage", "application/json") is None  # the manifest path says 400
    assert sniff_descriptor(body(), "application/json; charset=utf-8") is not None
    with pytest.raises(Unprocessable):  # a descriptor, but an invalid one
        sniff_descriptor(body(schemaVersion=7), "application/json")


# --- derive ----------------------------------------------------------------------------------


def test_derive_builds_the_manifest() -> None:
    d = parse_descriptor(body(params={"limitations": {"threshold.check": {"fuel": 7}}}))
    m = derive(d, APP, LAB)
    assert m.name == "thermo-lab" and m.app == "thermo@1.0.0" and m.partitions == 1
    assert m.sequence == [Step("convert@1.0.0", "c2f"), Step("threshold@2", "check")]
    assert m.constraints.labels == {"site": "lab"} and m.constraints.zones == ["bench", "rack"]
    # Environment → pipeline → params, field by field.
    assert m.limits == {
        "convert.c2f": Limits(timeoutMs=1000, fuel=50, memoryBytes=1 << 20),
        "threshold.check": Limits(timeoutMs=200, fuel=7, memoryBytes=1 << 20),
    }
    assert not m.spread
    spread = derive(parse_descriptor(body(pipeline="spread", name="s")), APP, LAB)
    assert spread.spread and spread.name == "s" and len(spread.sequence) == 1


def test_derive_refusals() -> None:
    with pytest.raises(Unprocessable) as info:
        derive(parse_descriptor(body(params={"zones": ["cellar"]})), APP, LAB)
    assert info.value.field == "params.zones"
    with pytest.raises(Unprocessable) as info:
        derive(parse_descriptor(body(params={"limitations": {"x.y": {"fuel": 1}}})), APP, LAB)
    assert info.value.field == "params.limitations"
    with pytest.raises(Unprocessable) as info:
        derive(parse_descriptor(body(pipeline="other")), APP, LAB)
    assert info.value.field == "pipeline"
    # An environment without zones takes any zone the descriptor names.
    anywhere = Environment(name="lab")
    m = derive(parse_descriptor(body(params={"zones": ["cellar"]})), APP, anywhere)
    assert m.constraints.zones == ["cellar"] and m.limits == {
        "convert.c2f": APP.pipelines[0].limits["convert.c2f"]
    }


# --- properties ------------------------------------------------------------------------------

positive = st.one_of(st.none(), st.integers(min_value=1, max_value=10**9))
limits = st.builds(Limits, timeoutMs=positive, fuel=positive, memoryBytes=positive)
keys = st.sampled_from(["convert.c2f", "threshold.check"])


@given(
    env_limits=limits,
    overrides=st.dictionaries(keys, limits, max_size=2),
    partitions=st.integers(min_value=1, max_value=64),
    zones=st.one_of(st.none(), st.lists(st.sampled_from(["bench", "rack"]), unique=True)),
)
def test_derive_properties(
    env_limits: Limits,
    overrides: dict[str, Limits],
    partitions: int,
    zones: list[str] | None,
) -> None:
    env = Environment(
        name="lab", labels={"site": "lab"}, zones=["bench", "rack"], limits=env_limits
    )
    d = Descriptor(
        schemaVersion=1,
        app="thermo@1.0.0",
        environment="lab",
        params=Params(zones=zones, limitations=overrides, partitions=partitions),
    )
    first, second = derive(d, APP, env), derive(d, APP, env)
    assert first == second and manifest_digest(first) == manifest_digest(second)  # deterministic
    assert first.partitions == partitions  # carried
    assert first.constraints.zones == (zones if zones is not None else ["bench", "rack"])
    for key in ("convert.c2f", "threshold.check"):
        got = first.limits.get(key, Limits())
        pipeline = APP.pipelines[0].limits.get(key)
        expected = merge_limits(env_limits, pipeline, overrides.get(key))
        assert got == expected
        for attr in Limits.__struct_fields__:
            param = getattr(overrides.get(key, Limits()), attr)
            if param is not None:  # a param limit always wins over the environment's
                assert getattr(got, attr) == param
            elif pipeline is None or getattr(pipeline, attr) is None:
                assert getattr(got, attr) == getattr(env_limits, attr)
