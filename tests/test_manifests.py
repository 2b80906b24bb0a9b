"""Manifest parsing, reference checks, digests and immutable fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.manifests import (
    ManifestError,
    check_references,
    immutable_change,
    manifest_digest,
    parse_manifest,
)
from orchestrator.model import Constraints, FunctionSpec, Limits, Manifest, ModuleRecord, Step

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"

PIPELINE: dict[str, Any] = {
    "name": "camera-pipeline",
    "sequence": [
        {"module": "camera", "func": "snap", "device": "dev-cam"},
        {"module": "resize@1.2.0", "func": "half"},
        {"module": "classify", "func": "label"},
    ],
    "constraints": {"labels": {"site": "lab"}, "zones": ["a", "b"]},
    "limits": {"classify.label": {"timeoutMs": 2000, "fuel": 10_000_000}},
}

PIPELINE_TOML = b"""
name = "camera-pipeline"

[[sequence]]
module = "camera"
func = "snap"
device = "dev-cam"

[[sequence]]
module = "resize@1.2.0"
func = "half"

[[sequence]]
module = "classify"
func = "label"

[constraints]
labels = { site = "lab" }
zones = ["a", "b"]

[limits."classify.label"]
timeoutMs = 2000
fuel = 10_000_000
"""


def expected() -> Manifest:
    return Manifest(
        name="camera-pipeline",
        sequence=[
            Step("camera", "snap", "dev-cam"),
            Step("resize@1.2.0", "half"),
            Step("classify", "label"),
        ],
        constraints=Constraints(labels={"site": "lab"}, zones=["a", "b"]),
        limits={"classify.label": Limits(timeoutMs=2000, fuel=10_000_000)},
    )


def body(**changes: Any) -> bytes:
    doc = {**PIPELINE, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def refused(data: bytes, content_type: str = "application/json") -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, content_type)
    return info.value


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (json.dumps(PIPELINE).encode(), "application/json"),
        (json.dumps(PIPELINE).encode(), "Application/JSON; charset=utf-8"),
        (msgspec.msgpack.encode(PIPELINE), "application/msgpack"),
        (msgspec.msgpack.encode(PIPELINE), "application/x-msgpack"),
        (PIPELINE_TOML, "application/toml"),
    ],
)
def test_every_format_decodes_to_the_same_manifest(data: bytes, content_type: str) -> None:
    assert parse_manifest(data, content_type) == expected()


def test_minimal_manifest() -> None:
    m = parse_manifest(b'{"name": "m", "sequence": [{"module": "x", "func": "f"}]}')
    assert m == Manifest(name="m", sequence=[Step("x", "f")])


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (body(extra=1), "extra"),
        (
            body(sequence=[{"module": "a", "func": "f"}, {"module": "b", "func": "g", "x": 1}]),
            "sequence[1].x",
        ),
        (body(sequence=[{"module": "a", "func": "f"}, {"module": "b"}]), "sequence[1].func"),
        (body(sequence=[{"module": "a", "func": 3}]), "sequence[0].func"),
        (body(constraints={"zone": "a"}), "constraints.zone"),
        (body(limits={"a.f": {"fuel": "lots"}}), "limits[...].fuel"),
        (body(name=...), "name"),
        (body(sequence=[]), "sequence"),
        (body(name=""), "name"),
        (body(name="-leading-dash"), "name"),
        (body(name="has space"), "name"),
        (body(name="x" * 65), "name"),
        (body(limits={"a.f": {"timeoutMs": 0}}), 'limits["a.f"].timeoutMs'),
        (body(limits={"a.f": {"memoryBytes": -1}}), 'limits["a.f"].memoryBytes'),
        (b"[]", ""),
    ],
)
def test_invalid_manifests_name_the_field(data: bytes, field: str) -> None:
    err = refused(data)
    assert (err.status, err.field) == (422, field)
    assert field in str(err)


def test_longest_name_is_accepted() -> None:
    assert parse_manifest(body(name="a" + "b._-" * 15 + "xyz")).name.startswith("ab._-")


def test_toml_unknown_field_has_its_path() -> None:
    err = refused(
        PIPELINE_TOML + b'\n[[sequence]]\nmodule = "m"\nfunc = "f"\nfnuc = "g"\n',
        "application/toml",
    )
    assert (err.status, err.field) == (422, "sequence[3].fnuc")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"\xc1", "application/msgpack"),
        (b"name = ", "application/toml"),
        (b"\xff\xfe", "application/toml"),
    ],
)
def test_undecodable_bodies_are_400(data: bytes, content_type: str) -> None:
    assert refused(data, content_type).status == 400


@pytest.mark.parametrize(
    "content_type", ["", "application/octet-stream", "application/x-www-form-urlencoded"]
)
def test_other_content_types_mean_json(content_type: str) -> None:
    assert parse_manifest(json.dumps(PIPELINE).encode(), content_type) == expected()
    err = refused(PIPELINE_TOML, content_type)
    assert (err.status, err.field) == (400, "")
    assert "not valid json" in err.message


def module(name: str, *funcs: str) -> ModuleRecord:
    return ModuleRecord(
        name=name,
        version="1.0.0",
        digest="0" * 64,
        imports=[],
        exports=dict.fromkeys(funcs, 0),
        functions={f: FunctionSpec(f) for f in funcs},
    )


def test_references_resolve() -> None:
    modules = {
        "camera": module("camera", "snap"),
        "resize@1.2.0": module("resize", "half", "double"),
        "classify": module("classify", "label"),
    }
    check_references(expected(), modules)
    del modules["resize@1.2.0"]
    with pytest.raises(ManifestError) as info:
        check_references(expected(), modules)
    assert (info.value.status, info.value.field) == (422, "sequence[1].module")
    modules["resize@1.2.0"] = module("resize", "double")
    with pytest.raises(ManifestError) as info:
        check_references(expected(), modules)
    assert (info.value.status, info.value.field) == (422, "sequence[1].func")
    assert "double" in info.value.message


def test_digest_ignores_key_order_and_spelled_out_defaults() -> None:
    reordered = json.dumps(dict(reversed(PIPELINE.items())), sort_keys=True).encode()
    assert manifest_digest(parse_manifest(reordered)) == manifest_digest(expected())
    plain = b'{"name": "m", "sequence": [{"module": "x", "func": "f"}]}'
    spelled = (
        b'{"limits": {"x.f": {}}, "constraints": {"zones": [], "labels": {}},'
        b' "sequence": [{"func": "f", "module": "x", "device": null}], "name": "m"}'
    )
    assert manifest_digest(parse_manifest(plain)) == manifest_digest(parse_manifest(spelled))
    assert manifest_digest(parse_manifest(plain)) == manifest_digest(
        Manifest(name="m", sequence=[Step("x", "f")])
    )


def test_digest_sees_every_change() -> None:
    base = manifest_digest(expected())
    changes = [
        body(name="other"),
        body(sequence=list(reversed(PIPELINE["sequence"]))),
        body(constraints={"zones": ["b", "a"]}),
        body(limits={"classify.label": {"timeoutMs": 2001}}),
        body(sequence=[{**s, "device": "dev-x"} for s in PIPELINE["sequence"]]),
    ]
    digests = {manifest_digest(parse_manifest(c)) for c in changes}
    assert len(digests) == len(changes)
    assert base not in digests


names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
manifests = st.builds(
    Manifest,
    name=names,
    sequence=st.lists(st.builds(Step, names, names, st.none() | names), min_size=1, max_size=4),
    constraints=st.builds(
        Constraints,
        labels=st.dictionaries(names, names, max_size=3),
        zones=st.lists(names, max_size=3),
    ),
    limits=st.dictionaries(
        names,
        st.builds(Limits, st.none() | st.integers(1, 10**6), st.none() | st.integers(1, 10**9)),
        max_size=2,
    ),
)


@given(manifests, st.sampled_from(["json", "msgpack"]), st.randoms())
def test_round_trip_keeps_the_digest(m: Manifest, fmt: str, rnd: Any) -> None:
    doc = msgspec.to_builtins(m)
    items = list(doc.items())
    rnd.shuffle(items)
    if fmt == "json":
        parsed = parse_manifest(msgspec.json.encode(dict(items)))
    else:
        parsed = parse_manifest(msgspec.msgpack.encode(dict(items)), "application/msgpack")
    assert parsed == m
    assert manifest_digest(parsed) == manifest_digest(m)


def test_immutable_change() -> None:
    old = expected()
    assert immutable_change(old, old) is None
    assert immutable_change(old, msgspec.structs.replace(old, sequence=old.sequence[:1])) is None
    assert immutable_change(old, msgspec.structs.replace(old, name="renamed")) == "name"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in MANIFESTS.glob("*") if p.suffix in {".json", ".toml"}),
    ids=lambda p: p.name,
)
def test_shipped_manifests_parse(path: Path) -> None:
    content_type = "application/toml" if path.suffix == ".toml" else "application/json"
    manifest = parse_manifest(path.read_bytes(), content_type)
    assert manifest_digest(manifest)
