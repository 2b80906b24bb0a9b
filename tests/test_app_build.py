"""Building app images (orchestrator.app_build): real build scripts, real clang, real zips.

The example app (examples/thermo-app) is built for real with the wasm32-wasi toolchain that
``make toolchain`` installs; its functions are then run with wasmtime to show the image holds
working code. Reproducibility is checked byte for byte, across copies in different places
with different mtimes, and as a Hypothesis property over arbitrary file trees.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wasmtime import Engine, Func, Linker, Module, Store, WasiConfig

from orchestrator.app_build import BuildError, build, pack, zip_entries
from orchestrator.app_image import ImageError, read_image
from tests.conftest import ROOT
from tests.test_app_image import (
    CONVERT_WASM,
    THRESHOLD_WASM,
    application,
    convert_package,
    js,
    threshold_package,
)

EXAMPLE = ROOT / "examples" / "thermo-app"


def example_copy(dest: Path) -> Path:
    """A copy of the example app without anything built in it."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("build", "package.wasm", "*.tmp"))
    return dest


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return root


def source_tree(root: Path) -> Path:
    """An app source dir with prebuilt package.wasm files (from WAT), plus non-image files."""
    return write_tree(
        root,
        {
            "application.json": js(application()),
            "README.md": b"not packed",
            "pkg-convert/package.json": js(convert_package()),
            "pkg-convert/package.wasm": CONVERT_WASM,
            "pkg-convert/convert.c": b"/* source: not packed */",
            "pkg-threshold/package.json": js(threshold_package()),
            "pkg-threshold/package.wasm": THRESHOLD_WASM,
            "pkg-threshold/limit.txt": b"100\n",
            "static/index.html": b"<p>hi</p>",
            "static/.DS_Store": b"junk",
            "notes/todo.txt": b"no package.json here: not a package",
        },
    )


def names(data: bytes) -> list[str]:
    with zipfile.ZipFile(BytesIO(data)) as archive:
        return archive.namelist()


# --- the example app, for real ---------------------------------------------------------------


@pytest.fixture(scope="module")
def built_example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, str]:
    if shutil.which("clang") is None:
        pytest.fail("clang is missing: run `make toolchain`")
    src = example_copy(tmp_path_factory.mktemp("one") / "thermo-app")
    result = build(src)
    assert result.path == src / "build" / "thermo-1.0.0.zip"
    assert result.path.read_bytes() == result.data
    return src, result.data, result.digest


def test_example_builds_and_validates(built_example: tuple[Path, bytes, str]) -> None:
    _, data, digest = built_example
    img = read_image(data)
    assert img.digest == digest
    assert (img.app.name, img.app.version) == ("thermo", "1.0.0")
    assert [p.name for p in img.app.pipelines] == ["main", "convert-only", "record"]
    assert img.app.uses == {"datalist": "datalist@1.0.0"}  # the orchestrator's result store
    # Folder names differ from package names: the package.json name is what counts.
    assert {n: p.folder for n, p in img.packages.items()} == {
        "convert": "pkg-convert",
        "threshold": "pkg-threshold",
    }
    assert img.packages["threshold"].files == {"limit.txt": b"100\n"}
    assert img.static is not None and img.static.index == "index.html"
    # Only the image's files are packed: no C source, no build script.
    assert sorted(names(data)) == [
        "application.json",
        "pkg-convert/package.json",
        "pkg-convert/package.wasm",
        "pkg-threshold/limit.txt",
        "pkg-threshold/package.json",
        "pkg-threshold/package.wasm",
        "static/index.html",
        "static/static.json",
    ]


def test_example_rebuilds_to_the_same_digest(
    built_example: tuple[Path, bytes, str], tmp_path: Path
) -> None:
    src, data, digest = built_example
    again = build(src)  # scripts run again, package.wasm rewritten
    assert again.data == data and again.digest == digest
    # Another copy, elsewhere, with other mtimes and permissions: still the same bytes.
    other = example_copy(tmp_path / "deeper" / "path" / "my-thermo")
    for path in other.rglob("*"):
        os.utime(path, (1_234_567_890, 1_234_567_890))
    (other / "pkg-threshold" / "limit.txt").chmod(0o600)
    assert build(other, tmp_path / "out.zip").digest == digest
    assert (tmp_path / "out.zip").read_bytes() == data


def test_example_functions_work(built_example: tuple[Path, bytes, str], tmp_path: Path) -> None:
    _, data, _ = built_example
    img = read_image(data)
    engine = Engine()

    def instance(wasm: bytes, workdir: Path | None) -> tuple[Store, dict[str, Func]]:
        store = Store(engine)
        wasi = WasiConfig()
        if workdir is not None:
            wasi.preopen_dir(str(workdir), ".")
        store.set_wasi(wasi)
        linker = Linker(engine)
        linker.define_wasi()
        inst = linker.instantiate(store, Module(engine, wasm))
        funcs = {k: v for k, v in inst.exports(store).items() if isinstance(v, Func)}
        if "_initialize" in funcs:
            funcs["_initialize"](store)
        return store, funcs

    convert = img.packages["convert"]
    assert convert.wasm is not None
    store, funcs = instance(convert.wasm, None)
    assert [funcs["c2f"](store, c) for c in (0, 40, -40, 37)] == [32, 104, -40, 98]

    threshold = img.packages["threshold"]
    assert threshold.wasm is not None
    (tmp_path / "limit.txt").write_bytes(threshold.files["limit.txt"])
    store, funcs = instance(threshold.wasm, tmp_path)
    assert [funcs["check"](store, f) for f in (99, 100, 101)] == [0, 0, 1]
    (tmp_path / "limit.txt").write_text(" -5\n")  # read at call time: no rebuild needed
    assert funcs["check"](store, -4) == 1
    (tmp_path / "limit.txt").write_text("hot")
    assert funcs["check"](store, 1000) == -1


# --- build scripts ---------------------------------------------------------------------------


def test_failing_build_script_names_the_package_and_shows_stderr(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "app")
    (src / "pkg-threshold" / "build.sh").write_text(
        "echo 'compiling' \nfor i in 1 2 3; do echo line$i >&2; done\necho 'cc: boom' >&2\nexit 3\n"
    )
    with pytest.raises(BuildError) as caught:
        build(src)
    message = str(caught.value)
    assert message.startswith("pkg-threshold: build.sh failed with exit status 3")
    assert message.endswith("line3\ncc: boom")
    assert not (src / "build").exists()  # nothing written


def test_scripts_run_in_sorted_order_in_their_folder_with_a_clean_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source_tree(tmp_path / "app")
    log = tmp_path / "log.txt"
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    for folder in ("pkg-threshold", "pkg-convert"):
        (src / folder / "build.sh").write_text(
            f'echo "$(basename "$PWD") $SOURCE_DATE_EPOCH ${{SECRET_TOKEN:-none}}" >> {log}\n'
        )
    build(src)
    assert log.read_text().splitlines() == ["pkg-convert 0 none", "pkg-threshold 0 none"]


def test_no_scripts_uses_the_wasm_already_there(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "app")
    (src / "pkg-convert" / "build.sh").write_text("exit 1\n")
    result = build(src, run_scripts=False)
    assert result.image.packages["convert"].wasm == CONVERT_WASM


def test_build_script_timeout_kills_what_the_script_started(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "app")
    pidfile = tmp_path / "child.pid"
    # A grandchild that would outlive the shell unless the whole process group is killed.
    (src / "pkg-convert" / "build.sh").write_text(f"sleep 60 &\necho $! > {pidfile}\nwait\n")
    try:
        with pytest.raises(BuildError, match=r"did not finish within 0\.5 s"):
            build(src, timeout_s=0.5)
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling a process table, with a deadline
        assert not alive(pid)
    finally:
        if pidfile.exists() and alive(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_build_writes_atomically_to_out(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "app")
    out = tmp_path / "images" / "x.zip"
    result = build(src, out)
    assert result.path == out and out.read_bytes() == result.data
    assert [p.name for p in out.parent.iterdir()] == ["x.zip"]  # no temp file left


def test_invalid_app_raises_image_error_and_writes_nothing(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "app")
    (src / "pkg-threshold" / "limit.txt").unlink()
    with pytest.raises(ImageError) as caught:
        build(src)
    assert caught.value.field == "pkg-threshold/limit.txt"
    assert not (src / "build").exists()


def test_missing_source_dir_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot read"):
        pack(tmp_path / "nope")


# --- pack --------------------------------------------------------------------------------------


def test_pack_takes_only_the_image_files(tmp_path: Path) -> None:
    data = pack(source_tree(tmp_path / "app"))
    assert names(data) == sorted(names(data))  # entries sorted
    assert set(names(data)) == {
        "application.json",
        "pkg-convert/package.json",
        "pkg-convert/package.wasm",
        "pkg-threshold/limit.txt",
        "pkg-threshold/package.json",
        "pkg-threshold/package.wasm",
        "static/index.html",
    }


def test_pack_zip_is_reproducible_in_its_metadata(tmp_path: Path) -> None:
    data = pack(source_tree(tmp_path / "app"))
    with zipfile.ZipFile(BytesIO(data)) as archive:
        assert archive.comment == b""
        for info in archive.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr == 0o100644 << 16
            assert info.create_system == 3
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.extra == b""


def test_pack_does_not_follow_hostile_file_names(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "app")
    (tmp_path / "secret.txt").write_text("secret")
    (src / "pkg-convert" / "package.json").write_bytes(
        js(convert_package(files=["../../secret.txt"]))
    )
    with pytest.raises(ImageError) as caught:
        pack(src)
    assert caught.value.field == "pkg-convert/package.json.files[0]"


# --- the property ------------------------------------------------------------------------------

SAFE = st.from_regex(r"[a-z0-9_][a-z0-9_-]{0,11}", fullmatch=True)  # supervisor check_name
DATA_NAMES = SAFE.filter(lambda n: n not in {"package.json", "package.wasm"})
STATIC_PATHS = st.lists(SAFE, min_size=1, max_size=3).map("/".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data_files=st.dictionaries(DATA_NAMES, st.binary(max_size=300), max_size=5),
    static=st.dictionaries(STATIC_PATHS, st.binary(max_size=300), max_size=6),
)
def test_pack_is_deterministic_and_round_trips(
    data_files: dict[str, bytes], static: dict[str, bytes]
) -> None:
    # A static path may not be both a file and a folder ("a" and "a/b").
    static = {p: b for p, b in static.items() if not any(q.startswith(p + "/") for q in static)}
    static.setdefault("index.html", b"<p>index</p>")
    pkg = convert_package(files=sorted(data_files))
    tree = {
        "application.json": js(
            application(packages=["convert"], pipelines=[application()["pipelines"][1]])
        ),
        "p/package.json": js(pkg),
        "p/package.wasm": CONVERT_WASM,
        **{f"p/{n}": b for n, b in data_files.items()},
        **{f"static/{p}": b for p, b in static.items()},
    }
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        first = pack(write_tree(Path(one) / "a", tree))
        second = pack(write_tree(Path(two) / "somewhere" / "else", dict(reversed(tree.items()))))
    assert first == second
    assert first == zip_entries(tree)  # exactly the tree, nothing more
    img = read_image(first)
    assert img.packages["convert"].files == data_files
    assert img.static is not None and img.static.files == static
    assert msgspec.json.decode(tree["p/package.json"])["files"] == sorted(data_files)
