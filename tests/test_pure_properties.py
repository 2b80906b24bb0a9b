"""Properties of the pure cores: argument coercion, chaining, protocol decoding, history."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import protocol
from supervisor.calls import coerce_args, decode_result, query_text, reference_result, wasm_arity
from supervisor.chain import build_forward
from supervisor.errors import BadRequest
from supervisor.history import History, Record
from supervisor.protocol import Endpoint, EndpointRequest, Parameter, ParamSpec

names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
json_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.booleans(),
)
json_values = st.recursive(
    json_scalars | st.none(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=10,
)


@given(
    st.lists(
        st.tuples(names, st.sampled_from(["integer", "number", "string", "boolean"])),
        unique_by=lambda p: p[0],
        max_size=5,
    ),
    st.data(),
)
def test_coercion_by_name_matches_coercion_by_position(
    params: list[tuple[str, str]], data: st.DataObject
) -> None:
    specs = [ParamSpec(n, t) for n, t in params]
    values: dict[str, str] = {}
    for name, type_ in params:
        value = data.draw(
            {
                "integer": st.integers(-(2**63), 2**63 - 1).map(str),
                "number": st.floats(allow_nan=False, allow_infinity=False).map(repr),
                "string": st.text(max_size=10),
                "boolean": st.sampled_from(["true", "false", "1", "0"]),
            }[type_]
        )
        values[name] = value
    by_name = coerce_args(specs, [], dict(reversed(list(values.items()))))
    by_position = coerce_args(
        specs, [], {f"param{i}": values[n] for i, (n, _) in enumerate(params)}
    )
    assert by_name == by_position
    assert len(by_name) == len(specs)
    assert wasm_arity(specs) == sum(2 if isinstance(a, bytes) else 1 for a in by_name)


@given(st.text(max_size=10).filter(lambda t: not t.strip().lstrip("+-").isdigit()))
def test_bad_integer_is_a_bad_request_naming_the_parameter(text: str) -> None:
    try:
        int(text)
    except ValueError:
        pass
    else:
        return
    with pytest.raises(BadRequest) as info:
        coerce_args([ParamSpec("n", "integer")], ["i64"], {"n": text})
    assert info.value.field == "n"


def test_missing_parameter_is_named() -> None:
    with pytest.raises(BadRequest, match="'b'"):
        coerce_args([ParamSpec("a"), ParamSpec("b")], ["i64", "i64"], {"a": "1"})


def test_undeclared_parameters_follow_the_wasm_signature_positionally() -> None:
    assert coerce_args([], ["i64", "f64"], {"x": "3", "y": "2.5"}) == [3, 2.5]


@given(json_values)
def test_json_results_round_trip_through_reference_shape(value: Any) -> None:
    raw = json.dumps(value).encode()
    decoded = decode_result(raw, "object")
    assert decoded == json.loads(raw)
    rendered = reference_result(decoded, [])
    assert rendered[1] is None and json.loads(rendered[0]) == json.loads(raw)


@given(st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False))
def test_scalars_survive_a_hop(value: int | float) -> None:
    """What one hop forwards, the next hop parses back to the same number."""
    endpoint = Endpoint(
        url="http://127.0.0.1:1", path="/d/modules/m/f", request=EndpointRequest([Parameter("x")])
    )
    fwd = build_forward(endpoint, value, {})
    kind = "integer" if isinstance(value, int) else "number"
    (back,) = coerce_args([ParamSpec("x", kind)], [], fwd.query)
    assert not isinstance(back, bytes)
    assert back == value or (isinstance(value, float) and math.isclose(back, value))


@given(
    st.dictionaries(names, json_scalars, min_size=1, max_size=5),
    st.lists(names, unique=True, max_size=5),
)
def test_object_results_travel_by_parameter_name(value: dict[str, Any], wanted: list[str]) -> None:
    endpoint = Endpoint(
        url="http://h:1/", path="/p", request=EndpointRequest([Parameter(n) for n in wanted])
    )
    fwd = build_forward(endpoint, value, {})
    assert set(fwd.query) == set(wanted) & set(value)
    for name, text in fwd.query.items():
        assert text == query_text(value[name])
    assert fwd.url == "http://h:1/p" and fwd.method == "GET"


def test_files_force_post_and_take_the_next_mount_name() -> None:
    endpoint = msgspec.convert(
        {
            "url": "http://h:1",
            "path": "/d/modules/m/f",
            "method": "get",
            "request": {"parameters": [], "request_body": {"encoding": {"in.bin": {}}}},
        },
        Endpoint,
    )
    fwd = build_forward(endpoint, 3, {"out.bin": Path("/tmp/x")})
    assert fwd.method == "POST" and fwd.files == [("in.bin", Path("/tmp/x"))]


@settings(max_examples=200)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_never_fails_with_anything_but_a_protocol_error(body: bytes) -> None:
    try:
        node = protocol.decode(body, protocol.DeploymentNode)
        protocol.validate_node(node)
    except protocol.ProtocolError as err:
        assert err.status in (400, 422)


@given(st.text(min_size=1, max_size=30))
def test_check_name_refuses_every_traversal(name: str) -> None:
    try:
        protocol.check_name(name, "f")
    except protocol.ProtocolError:
        return
    assert "/" not in name and "\\" not in name and ".." not in name and name not in {".", ""}
    assert Path(name).name == name


def _entry(i: int) -> protocol.HistoryEntry:
    return protocol.HistoryEntry(
        request_id=f"d:m:f:{i}",
        deployment_id="d",
        module_name="m",
        function_name="f",
        method="GET",
        request_args={"i": str(i)},
        request_files={},
        work_queued_at="now",
    )


@given(st.integers(1, 10), st.lists(st.booleans(), max_size=40))
def test_history_is_bounded_and_never_evicts_pending(limit: int, finished: list[bool]) -> None:
    async def scenario() -> None:
        evicted: list[Record] = []
        history = History(limit, on_evict=evicted.append)
        records = []
        for i, done in enumerate(finished):
            record = Record(_entry(i))
            history.add(record)
            records.append(record)
            if done:
                history.finish(record)
        pending = [r for r in records if not r.finished]
        assert all(history.get(r.entry.request_id) is r for r in pending)
        assert len(history) <= max(limit, len(pending))
        assert not any(not r.finished for r in evicted)
        kept = {e.request_id for e in history.entries()}
        assert kept.isdisjoint({r.entry.request_id for r in evicted})

    asyncio.run(scenario())


def test_content_digest_ignores_key_order() -> None:
    from supervisor.protocol import node_digest

    body: dict[str, Any] = {
        "deploymentId": "d",
        "modules": [
            {
                "id": "1",
                "name": "m",
                "urls": {"binary": "http://h/x", "other": {"a": "u", "b": "v"}},
            }
        ],
        "endpoints": {},
        "instructions": {"modules": {}},
        "mounts": {},
    }
    reordered = json.loads(json.dumps(body, sort_keys=True))
    reordered["modules"][0]["urls"]["other"] = {"b": "v", "a": "u"}
    a = protocol.decode(json.dumps(body).encode(), protocol.DeploymentNode)
    b = protocol.decode(json.dumps(reordered).encode(), protocol.DeploymentNode)
    assert node_digest(a) == node_digest(b)
    body["modules"][0]["urls"]["other"]["a"] = "changed"
    c = protocol.decode(json.dumps(body).encode(), protocol.DeploymentNode)
    assert node_digest(c) != node_digest(a)


def test_invalid_json_from_a_guest_is_a_guest_error() -> None:
    from supervisor.errors import GuestError

    with pytest.raises(GuestError) as info:
        decode_result(b"{not json", "object")
    assert info.value.kind == "abi"
    assert decode_result(b"{not json", "string") == "{not json"


@given(st.lists(st.floats(0, 20, allow_nan=False), max_size=30))
def test_histogram_buckets_are_cumulative(durations: list[float]) -> None:
    from supervisor.metrics import BUCKETS, Metrics

    metrics = Metrics()
    for seconds in durations:
        metrics.call("d", "m", "f", seconds, ok=True)
    text = metrics.render(deployments=1, in_flight=0)
    for bound in BUCKETS:
        line = f'baton_call_duration_seconds_bucket{{deployment="d",module="m",function="f",le="{bound}"}}'
        if durations:
            count = int(next(x for x in text.splitlines() if x.startswith(line)).rsplit(" ", 1)[1])
            assert count == sum(1 for d in durations if d <= bound)
    if durations:
        assert f'le="+Inf"}} {len(durations)}' in text
