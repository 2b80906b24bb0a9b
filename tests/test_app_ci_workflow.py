"""The example app's CI workflow (and README) cannot drift from the real ``baton`` CLI.

Every ``baton …`` command in examples/thermo-app/.github/workflows/baton-app.yml and in the
example's README is parsed with the CLI's own argparse parser; the files they name must exist
in the example, and the toolchain the workflow installs must be the one ``make toolchain``
installs (so CI builds the same bytes as a developer's machine).
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from orchestrator import cli
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "thermo-app"
WORKFLOW = EXAMPLE / ".github" / "workflows" / "baton-app.yml"


def workflow() -> dict[str, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def steps() -> list[dict[str, Any]]:
    jobs = workflow()["jobs"]
    assert len(jobs) == 1
    (job,) = jobs.values()
    return list(job["steps"])


def run_lines() -> list[str]:
    return [
        line.strip()
        for step in steps()
        for line in str(step.get("run", "")).splitlines()
        if line.strip()
    ]


def baton_commands(lines: list[str]) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in lines if line.startswith("baton ")]


def readme_commands() -> list[list[str]]:
    text = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    lines = [
        line.split("#", 1)[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
        for line in block.splitlines()
    ]
    return baton_commands(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    try:
        return cli.build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse reports a usage error by exiting
        pytest.fail(f"`baton {shlex.join(argv)}` does not parse (exit {stop.code})")


def test_workflow_runs_build_validate_push_deploy_in_order() -> None:
    commands = baton_commands(run_lines())
    assert [c[:2] for c in commands] == [
        ["app", "build"],
        ["app", "validate"],
        ["app", "push"],
        ["deploy", "deploy/lab.json"],
    ]


@pytest.mark.parametrize("source", ["workflow", "readme"])
def test_every_baton_command_parses_with_the_real_cli(source: str) -> None:
    commands = baton_commands(run_lines()) if source == "workflow" else readme_commands()
    assert len(commands) >= 4
    for argv in commands:
        args = parse(argv)
        assert getattr(args, "handler", None) is not None, argv  # a command, not just a group


def test_the_pushed_image_is_the_built_one_and_the_files_exist() -> None:
    by_verb = {tuple(c[:2]): parse(c) for c in baton_commands(run_lines())}
    built = by_verb["app", "build"]
    assert Path(built.source) == Path(".")
    assert by_verb["app", "validate"].source == built.out
    assert by_verb["app", "push"].image == built.out
    assert (EXAMPLE / by_verb["deploy", "deploy/lab.json"].manifest).is_file()
    assert by_verb["deploy", "deploy/lab.json"].wait == 120


def test_credentials_come_from_secrets() -> None:
    (job,) = workflow()["jobs"].values()
    env = job["env"]
    assert env["BATON_URL"] == "${{ secrets.BATON_URL }}"
    assert env["BATON_TOKEN"] == "${{ secrets.BATON_TOKEN }}"
    assert not any("token" in line.lower() and "secrets" not in line for line in run_lines())


def test_workflow_installs_the_toolchain_make_toolchain_installs() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    wanted = set(re.findall(r"--no-install-recommends \\\n\s*([^;>\n]+)", makefile)[0].split())
    installs = [line for line in run_lines() if line.startswith("apt-get install")]
    assert len(installs) == 1
    assert wanted <= set(installs[0].split()), wanted
    assert {"clang", "lld", "wasi-libc"} <= wanted
