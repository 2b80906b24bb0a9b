"""orchestrator.wasm_inspect: imports/exports of real built modules, and functions.json checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.model import Mount, Param
from orchestrator.wasm_inspect import InvalidModule, inspect_wasm, parse_functions
from tests.conftest import ROOT, WASM_DIR, wasm_path

BUILT = sorted(WASM_DIR.glob("*.wasm"))
DESCRIBED = sorted((ROOT / "modules").glob("*/functions.json"))


def _exports(name: str) -> dict[str, int]:
    return inspect_wasm(wasm_path(name).read_bytes())[1]


@pytest.mark.parametrize("path", BUILT, ids=[p.stem for p in BUILT])
def test_every_built_module_inspects(path: Path) -> None:
    imports, exports = inspect_wasm(path.read_bytes())
    assert all(ns and n for ns, n in imports)
    assert exports and min(exports.values()) >= 0
    assert "memory" not in exports  # function exports only


def test_known_imports_and_exports() -> None:
    imports, exports = inspect_wasm(wasm_path("camera").read_bytes())
    assert ("camera", "takeImageDynamicSize") in imports
    assert exports["image_size"] == 0
    imports, exports = inspect_wasm(wasm_path("fibo").read_bytes())
    assert imports == [] and exports["fibo"] == 1 and exports["add"] == 2
    assert _exports("strings")["shout"] == 2  # one string = pointer + length
    imports, _ = inspect_wasm(wasm_path("missing_import").read_bytes())
    assert imports == [("nosuch", "thing")]
    imports, _ = inspect_wasm(wasm_path("textfile").read_bytes())
    assert ("wasi_snapshot_preview1", "path_open") in imports


@pytest.mark.parametrize(
    "data",
    [b"", b"\0as", b"\0asm", b"(module)", b'(module (func (export "f")))', b"\x7fELF\2\1\1"],
    ids=["empty", "short", "magic-only", "wat", "wat-func", "elf"],
)
def test_garbage_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidModule) as err:
        inspect_wasm(data)
    assert err.value.field == "wasm"


def test_truncated_module_is_invalid() -> None:
    wasm = wasm_path("fibo").read_bytes()
    for cut in (9, len(wasm) // 2, len(wasm) - 1):
        with pytest.raises(InvalidModule, match="invalid WebAssembly"):
            inspect_wasm(wasm[:cut])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=0), noise=st.binary(max_size=64))
def test_any_prefix_plus_noise_is_valid_or_invalid_module(cut: int, noise: bytes) -> None:
    """Never another exception: a prefix may be a valid module (cut at a section boundary)."""
    wasm = wasm_path("strings").read_bytes()
    data = wasm[: cut % len(wasm)] + noise
    try:
        imports, exports = inspect_wasm(data)
    except InvalidModule:
        return
    assert all(ns and n for ns, n in imports) and all(v >= 0 for v in exports.values())


@pytest.mark.parametrize("path", DESCRIBED, ids=[p.parent.name for p in DESCRIBED])
def test_every_functions_json_matches_its_binary(path: Path) -> None:
    exports = _exports(path.parent.name)
    from_bytes = parse_functions(path.read_bytes(), exports)
    assert from_bytes == parse_functions(json.loads(path.read_text()), exports)
    assert set(from_bytes) == set(json.loads(path.read_text()))
    for name, spec in from_bytes.items():
        assert spec.name == name and spec.method == spec.method.lower()


def test_parsed_specs_are_normalised() -> None:
    strings = parse_functions(
        (ROOT / "modules/strings/functions.json").read_bytes(), _exports("strings")
    )
    assert strings["mean"].params == [Param("a", "number"), Param("b", "number")]
    assert strings["mean"].output == "number" and strings["stats"].output == "object"
    textfile = parse_functions(
        (ROOT / "modules/textfile/functions.json").read_bytes(), _exports("textfile")
    )
    assert textfile["upper"].output is None  # the result is the output file
    assert textfile["upper"].method == "post"
    assert textfile["prefix"].mounts_at("deployment") == [
        Mount("prefix.txt", "deployment", "text/plain")
    ]
    assert textfile["size"].output == "integer"


def test_older_parameter_forms() -> None:
    exports = {"f": 3, "g": 2}
    legacy = {"method": "GET", "param1": "float", "param0": "string", "output": "integer"}
    bare = {"method": "post", "parameters": ["integer", "boolean"], "output": "float"}
    specs = parse_functions({"f": legacy, "g": bare}, exports)
    assert specs["f"].params == [Param("param0", "string"), Param("param1", "number")]
    assert specs["g"].params == [Param("param0", "integer"), Param("param1", "boolean")]
    assert specs["g"].output == "number" and specs["g"].method == "post"


def _fn(**overrides: Any) -> dict[str, Any]:
    return {"method": "GET", "parameters": [], "output": "integer", "mounts": []} | overrides


def _mount(name: str, stage: str = "execution", **extra: Any) -> dict[str, Any]:
    return {"name": name, "mediaType": "text/plain", "stage": stage} | extra


BAD: list[tuple[str, Any, dict[str, int], str]] = [
    (
        "arity",
        {"stats": _fn(parameters=[{"name": "n", "type": "integer"}])},
        {"stats": 2},
        r"^functions\.stats\.parameters: takes 2 Wasm values, described 1$",
    ),
    ("unknown", {"nope": _fn()}, {"f": 0}, r"^functions\.nope: .*exports no such function"),
    (
        "mount-escape",
        {"f": _fn(mounts=[_mount("../x")])},
        {"f": 0},
        r"^functions\.f\.mounts\[0\]\.name: unsafe name '\.\./x'",
    ),
    (
        "mount-slash",
        {"f": _fn(mounts=[_mount("a/b")])},
        {"f": 0},
        r"^functions\.f\.mounts\[0\]\.name:",
    ),
    (
        "mount-twice",
        {"f": _fn(mounts=[_mount("a"), _mount("a", "output")])},
        {"f": 0},
        r"^functions\.f\.mounts\[1\]\.name: mount 'a' listed twice",
    ),
    (
        "stage",
        {"f": _fn(mounts=[_mount("a", "later")])},
        {"f": 0},
        r"^functions\.f\.mounts\[0\]\.stage:",
    ),
    (
        "media-type",
        {"f": _fn(mounts=[_mount("a", mediaType="text")])},
        {"f": 0},
        r"^functions\.f\.mounts\[0\]\.mediaType:",
    ),
    (
        "param-type",
        {"f": _fn(parameters=[{"name": "x", "type": "int"}])},
        {"f": 1},
        r"^functions\.f\.parameters\[0\]\.type: must be one of",
    ),
    (
        "param-twice",
        {"f": _fn(parameters=[{"name": "x", "type": "integer"}] * 2)},
        {"f": 2},
        r"^functions\.f\.parameters\[1\]: parameter 'x' listed twice",
    ),
    ("output", {"f": _fn(output="double")}, {"f": 0}, r"^functions\.f\.output:"),
    ("no-output", {"f": _fn(output=None)}, {"f": 0}, r"^functions\.f\.output:"),
    ("method", {"f": _fn(method="FETCH")}, {"f": 0}, r"^functions\.f\.method:"),
    ("func-name", {"a/b": _fn()}, {"a/b": 0}, r"^functions\.a/b: unsafe name"),
    ("legacy-gap", {"f": {"method": "GET", "param1": "integer"}}, {"f": 1}, r"param0 is missing"),
    ("not-object", [1, 2], {}, r"^functions: must be an object"),
    ("empty", {}, {}, r"^functions: describes no function"),
]


@pytest.mark.parametrize(
    ("doc", "exports", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_mismatches_name_the_field(doc: Any, exports: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidModule, match=message):
        parse_functions(doc, exports)


def test_invalid_json_bytes() -> None:
    with pytest.raises(InvalidModule, match=r"^functions: not valid JSON"):
        parse_functions(b"{nope", {})
