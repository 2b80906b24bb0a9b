"""The ``baton`` CLI against a real orchestrator and real supervisors on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_run import baton
from tests.conftest import ROOT
from tests.orchestration import Orchestrator
from tests.stack import Stack


async def test_push_deploy_run_status_undeploy(
    stack: Stack,
    orchestrator: Orchestrator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(ROOT)
    for _ in range(3):
        dev = await stack.make_device()
        code, out, err = await baton(
            capsys,
            orchestrator.url,
            "devices",
            "register",
            "127.0.0.1",
            "--port",
            dev.url.rsplit(":", 1)[1],
        )
        assert code == 0, err
    code, out, err = await baton(capsys, orchestrator.url, "modules", "push", "modules/fibo")
    assert code == 0, err
    code, out, err = await baton(
        capsys, orchestrator.url, "deploy", "manifests/fibo-chain.json", "--dry-run"
    )
    assert code == 0 and "fibo.fibo" in out, (out, err)
    code, out, err = await baton(capsys, orchestrator.url, "deploy", "manifests/fibo-chain.json")
    assert code == 0 and "ACTIVE" in out, (out, err)
    code, out, err = await baton(
        capsys, orchestrator.url, "--json", "run", "fibo-chain", "--arg", "param0=5"
    )
    assert code == 0, err
    run = json.loads(out)
    assert run["value"] == 34 and len(run["trace"]) == 2
    code, out, err = await baton(capsys, orchestrator.url, "trace", run["id"])
    assert code == 0 and run["trace"][0]["requestId"] in out
    code, out, err = await baton(capsys, orchestrator.url, "status", "fibo-chain")
    assert code == 0 and "ACTIVE" in out
    # A three-hop pipeline: the trace shows every hop with its device and request id.
    three = tmp_path / "three.json"
    three.write_text(
        json.dumps({"name": "three", "sequence": [{"module": "fibo", "func": "fibo"}] * 3})
    )
    code, out, err = await baton(capsys, orchestrator.url, "deploy", str(three))
    assert code == 0, err
    code, out, err = await baton(capsys, orchestrator.url, "run", "three", "--arg", "param0=3")
    assert code == 0, err
    hops = [line for line in out.splitlines() if ":fibo:fibo:" in line]
    assert len(hops) == 3 and "3" in out, out  # fibo(3)=3 at every hop
    code, out, err = await baton(capsys, orchestrator.url, "undeploy", "fibo-chain")
    assert code == 0, err
    code, out, err = await baton(capsys, orchestrator.url, "status", "fibo-chain")
    assert code == 1 and err.startswith("baton: error:") and "Traceback" not in err
