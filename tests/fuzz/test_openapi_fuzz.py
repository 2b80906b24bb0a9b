"""Schemathesis against both daemons' own ``/openapi.json``: every operation, no 5xx, and
answers that match the document (status code, content type, body schema).

Both daemons run as real processes on 127.0.0.1 (``fuzz_fleet``), seeded with a registered
device, two modules, two ACTIVE deployments, an execution and a call with an output file.
Each operation of the document the daemon serves is fuzzed in two modes — positive (data
the schema allows) and negative (data it forbids) — and, where a route takes ids in its
path, once more with the seeded ids there, so requests reach real state instead of a 404.

Generated data never leaves the machine: every URL in a body is pointed at the orchestrator
on 127.0.0.1 and every valid host or address at 127.0.0.1, and a registration's valid port
becomes the seeded supervisor's (:func:`loopback_only`). Both daemons have mDNS off.

Bounded: ``MAX_EXAMPLES`` cases per operation, mode and variant (ten times as many with
``BATON_SOAK=1``; ``BATON_FUZZ_EXAMPLES`` sets it outright), no shrinking. The seed comes from
``BATON_CHAOS_SEED`` when set and is in every failure message. How many cases each daemon got,
and their statuses, go to ``build/chaos-stats.json`` (section ``fuzz``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from yarl import URL

from orchestrator.errors import BadRequest
from orchestrator.routes import check_host
from tests.chaos import knobs
from tests.daemons import OrchestratorProcess
from tests.fuzz.fuzz_fleet import PortTaken, Seeded, seed
from tests.support import SupervisorProcess

MAX_EXAMPLES = int(os.environ.get("BATON_FUZZ_EXAMPLES") or 40 * knobs.SCALE)
pytestmark = pytest.mark.timeout(300 * knobs.SCALE)
AnyCase = Case[Any]
Operation = APIOperation[Any, Any, Any, Any]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CALL_TIMEOUT_S = 30

# A 5xx is a server error unless the operation documents it as someone else's failure: the
# supervisor's 502 for a module it could not fetch (generated URLs lead to a 404 on the
# orchestrator), the reference's 500 for a failed call in the history, the orchestrator's 502
# when a device refused or did not answer (a generated registration asking for TLS, say).
# Schema conformance still checks those answers' bodies.
UPSTREAM_FAILURES: dict[str, set[int]] = {
    "POST /deploy": {502},
    "GET /request-history/{id}": {500},
    "POST /devices": {502},
    "POST /file/device/discovery/register": {502},
    "POST /deployments/{id}/executions": {502},
    "DELETE /deployments/{id}": {502},
}


def no_server_error(ctx: CheckContext, response: Response, case: AnyCase) -> bool | None:
    """``not_a_server_error``, less the documented upstream failures above."""
    if response.status_code in UPSTREAM_FAILURES.get(case.operation.label, set()):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Fleet:
    seeded: Seeded
    orchestrator: OrchestratorProcess
    supervisor: SupervisorProcess


def start_fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Both daemons, started and seeded; a run alongside may take a free port first, so a
    clash (detected by ``seed``) starts them again on other ports."""
    for attempt in range(3):
        root = tmp_path_factory.mktemp("fuzz")
        orch = OrchestratorProcess(root / "orchestrator")
        sup = SupervisorProcess(root / "supervisor", name="fuzz-sup")
        try:
            orch.start()
            sup.start()
            return Fleet(asyncio.run(seed(orch, sup)), orch, sup)
        except BaseException as err:
            orch.kill()
            sup.kill()
            if not isinstance(err, PortTaken) or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    started = start_fleet(tmp_path_factory)
    try:
        yield started
    finally:
        started.orchestrator.kill()
        started.supervisor.kill()


# --- keeping generated data on 127.0.0.1 ------------------------------------------------------


def _is_host(value: str) -> bool:
    try:
        check_host(value, "host")
    except BadRequest:
        return False
    return True


def _pin_urls(value: Any, sink: URL) -> Any:
    """``value`` with every absolute URL in it (recursively) moved to ``sink``'s address."""
    if isinstance(value, dict):
        pinned = {k: _pin_urls(v, sink) for k, v in value.items()}
        if isinstance(pinned.get("url"), str):  # an endpoint: its url + path is the address
            pinned["url"] = str(sink)
        return pinned
    if isinstance(value, list):
        return [_pin_urls(v, sink) for v in value]
    if isinstance(value, str) and ":" in value:
        try:
            url = URL(value)
        except (ValueError, TypeError):
            return value  # nothing aiohttp could request either: it parses URLs the same way
        if url.host is not None and (url.host, url.port) != (sink.host, sink.port):
            return str(sink.with_path(url.path))
    return value


def loopback_only(case: AnyCase, fleet: Fleet) -> None:
    """Point every address a generated body names at 127.0.0.1 (see the module docstring)."""
    body: Any = case.body
    if case.operation.label in {"POST /devices", "POST /file/device/discovery/register"}:
        if not isinstance(body, dict):
            return
        if isinstance(body.get("host"), str) and _is_host(body["host"]):
            body["host"] = "127.0.0.1"
        if isinstance(body.get("addresses"), list):
            body["addresses"] = [
                "127.0.0.1" if isinstance(a, str) and _is_host(a) else a for a in body["addresses"]
            ]
        port = body.get("port", 5000)  # the default port, were nothing sent
        if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            body["port"] = fleet.supervisor.port
    elif isinstance(body, dict | list | str):
        case.body = _pin_urls(body, URL(fleet.seeded.orchestrator))


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Tally:
    cases: int = 0
    by_operation: dict[str, dict[str, int]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    http_layer_refusals: int = 0

    def count(self, label: str, status: int) -> None:
        self.cases += 1
        code = str(status)
        seen = self.by_operation.setdefault(label, {})
        seen[code] = seen.get(code, 0) + 1
        self.statuses[code] = self.statuses.get(code, 0) + 1


@dataclass
class Variant:
    """Values fixed for one run of an operation (the rest is generated)."""

    path_parameters: dict[str, Any] | None = None
    query: dict[str, Any] | None = None
    body: Any = None
    media_type: str | None = None

    def strategy_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"path_parameters": self.path_parameters, "query": self.query}
        if self.body is not None:
            kwargs["body"] = self.body
            kwargs["media_type"] = self.media_type
        return kwargs


HTTP_LINE_LIMIT = 8190  # aiohttp's default max_line_size and max_field_size


def over_http_limits(request: Any) -> bool:
    """Whether ``request`` (a prepared request) has a request line or a header too long."""
    line = len(f"{request.method} {request.path_url} HTTP/1.1".encode())
    fields = (len(f"{k}: {v}".encode()) for k, v in request.headers.items())
    return line > HTTP_LINE_LIMIT or any(n > HTTP_LINE_LIMIT for n in fields)


def run_operation(
    op: Operation,
    mode: GenerationMode,
    variant: Variant,
    base_url: str,
    fleet: Fleet,
    tally: Tally,
    seed_value: int,
) -> None:
    """Up to MAX_EXAMPLES cases of ``op``; a failure is recorded, not raised."""
    strategy = op.as_strategy(generation_mode=mode, **variant.strategy_kwargs())

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @hypothesis.seed(seed_value)
    @given(case=strategy)
    def run(case: AnyCase) -> None:
        loopback_only(case, fleet)
        response = case.call(base_url=base_url, timeout=CALL_TIMEOUT_S)
        tally.count(op.label, response.status_code)
        if over_http_limits(response.request):
            # aiohttp's HTTP parser refuses a request line or header over 8190 bytes with a
            # plain-text 400 before any route or middleware runs; only that answer is owed.
            assert response.status_code == 400, response.status_code
            tally.http_layer_refusals += 1
            return
        case.validate_response(response, checks=CHECKS)

    seeded = ", seeded" if variant != Variant() else ""
    where = f"{op.label} [{mode.value}{seeded}]"
    try:
        run()
    except Unsatisfiable:
        # No request breaks the schema of a route without parameters or body: nothing to send.
        if mode is not GenerationMode.NEGATIVE:
            tally.failures.append(f"{where}: no case could be generated")
    except (Exception, FailureGroup) as err:  # every operation runs; the test fails at the end
        tally.failures.append(f"{where}: {type(err).__name__}: {err}"[:4000])


def fuzz(
    daemon: str,
    base_url: str,
    fleet: Fleet,
    variants: dict[str, Variant],
    destructive: set[str],
) -> Tally:
    """Every operation of the document ``base_url`` serves, in both modes; the seeded variant
    of a ``destructive`` operation runs after everything else (it removes seeded state)."""
    with urllib.request.urlopen(base_url + "/openapi.json", timeout=10) as resp:
        document = json.loads(resp.read())
    # from_dict, not from_url: from_url leaves out the operation that serves the document.
    schema = schemathesis.openapi.from_dict(document)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    listed = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert {(op.method.upper(), op.path) for op in operations} == listed
    unknown = set(variants) - {op.label for op in operations}
    assert not unknown, f"seeded variants for operations the document lacks: {unknown}"

    seed_value = knobs.seed()
    tally = Tally()
    started = time.monotonic()
    runs = [(op, Variant()) for op in operations]
    runs += [(op, variants[op.label]) for op in operations if op.label in variants]
    runs.sort(key=lambda run: run[0].label in destructive and run[1] != Variant())
    for op, variant in runs:
        for mode in MODES:
            run_operation(op, mode, variant, base_url, fleet, tally, seed_value)
    counters = {
        "cases": tally.cases,
        "operations": len(operations),
        "maxExamples": MAX_EXAMPLES,
        "seconds": round(time.monotonic() - started, 1),
        "seed": seed_value,
        "failures": len(tally.failures),
        "httpLayerRefusals": tally.http_layer_refusals,
        "statuses": dict(sorted(tally.statuses.items())),
        "byOperation": dict(sorted(tally.by_operation.items())),
    }
    knobs.record("fuzz", {daemon: counters})
    print(knobs.summary(f"fuzz {daemon}", {k: counters[k] for k in ("cases", "seconds")}))
    missed = [op.label for op in operations if op.label not in tally.by_operation]
    assert not tally.failures, f"{knobs.SEED_ENV}={seed_value}\n\n" + "\n\n".join(tally.failures)
    assert not missed, f"operations that never got a request: {missed}"
    return tally


def test_supervisor_api_under_fuzzing(fleet: Fleet) -> None:
    s = fleet.seeded
    text_call = {"deployment": s.text_deployment, "module": "textfile", "function": "upper"}
    variants = {
        "GET /{deployment}/modules/{module}/{function}": Variant(
            {"deployment": s.fibo_deployment, "module": "fibo", "function": "fibo"},
            query={"param0": "7"},
        ),
        "POST /{deployment}/modules/{module}/{function}": Variant(text_call),
        "GET /request-history/{id}": Variant({"id": s.request_id}),
        "GET /module_results/{deployment}/{module}/{id}/{file}": Variant(
            {
                "deployment": s.text_deployment,
                "module": "textfile",
                "id": s.request_id,
                "file": s.output_file,
            }
        ),
        "GET /module_results/{deployment}/{module}/{file}": Variant(
            {"deployment": s.text_deployment, "module": "textfile", "file": s.output_file}
        ),
        "GET /module_results/{module}/{file}": Variant(
            {"module": "textfile", "file": s.output_file}
        ),
        "GET /{deployment}/modules/{module}/{function}/{file}": Variant(
            text_call | {"file": s.output_file}
        ),
        "DELETE /deploy/{deployment}": Variant({"deployment": s.fibo_deployment}),
    }
    tally = fuzz("supervisor", s.supervisor, fleet, variants, {"DELETE /deploy/{deployment}"})
    # The seeded ids did reach real state.
    assert tally.by_operation["GET /{deployment}/modules/{module}/{function}"].get("200")
    assert tally.by_operation["GET /module_results/{deployment}/{module}/{id}/{file}"].get("200")
    assert fleet.supervisor.proc is not None and fleet.supervisor.proc.poll() is None
    log = fleet.supervisor.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


def test_orchestrator_api_under_fuzzing(fleet: Fleet) -> None:
    s = fleet.seeded
    device = {"id": s.device_id}
    variants = {
        "GET /devices/{id}": Variant(device),
        "POST /devices/{id}/cordon": Variant(device),
        "POST /devices/{id}/uncordon": Variant(device),
        "GET /modules/{ref}": Variant({"ref": "fibo"}),
        "GET /blobs/{digest}": Variant({"digest": s.fibo_digest}),
        "GET /deployments/{id}": Variant({"id": s.fibo_deployment}),
        "POST /deployments/{id}/executions": Variant(
            {"id": s.fibo_deployment}, body={"param0": "5"}, media_type="application/json"
        ),
        "GET /executions/{id}": Variant({"id": s.execution_id}),
        "DELETE /deployments/{id}": Variant({"id": s.text_deployment}),
    }
    tally = fuzz("orchestrator", s.orchestrator, fleet, variants, {"DELETE /deployments/{id}"})
    assert tally.by_operation["POST /deployments/{id}/executions"].get("200")
    assert fleet.orchestrator.proc is not None and fleet.orchestrator.proc.poll() is None
    log = fleet.orchestrator.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    # Whatever was generated, the orchestrator only ever knew devices on 127.0.0.1.
    with urllib.request.urlopen(s.orchestrator + "/devices", timeout=10) as resp:
        devices = json.loads(resp.read())
    assert devices and all(URL(d["url"]).host == "127.0.0.1" for d in devices), devices
