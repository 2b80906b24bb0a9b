"""The example modules: a reproducible build, honest functions.json files, working ABIs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from wasmtime import (
    Engine,
    Func,
    FuncType,
    Instance,
    Linker,
    Memory,
    Module,
    Store,
    ValType,
    WasiConfig,
)

ROOT = Path(__file__).resolve().parent.parent
MODULES_DIR = ROOT / "modules"
BUILT_SUMS = ROOT / "build" / "wasm" / "SHA256SUMS"
MODULE_NAMES = sorted(p.parent.name for p in MODULES_DIR.glob("*/functions.json"))

# functions.json type -> the wasm value types one such parameter takes
PARAM_TYPES = {
    "integer": [["i32"], ["i64"]],
    "float": [["f32"], ["f64"]],
    "string": [["i32", "i32"]],  # (ptr, len) after alloc()
}
# functions.json output -> acceptable wasm result lists
OUTPUT_TYPES = {
    "integer": [["i32"], ["i64"]],
    "float": [["f32"], ["f64"]],
    "string": [["i64"]],  # (ptr << 32) | len
    "object": [["i64"]],  # JSON text, packed like a string
}


def read_sums(path: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    return sums


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wasm")
    proc = subprocess.run(
        [sys.executable, "-m", "modules.build", "--out", str(out), "--force"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == len(read_sums(out / "SHA256SUMS"))
    return out


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


class Guest:
    """One instance of a built module, with WASI, in its own store."""

    def __init__(
        self,
        engine: Engine,
        wasm: Path,
        *,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        host: Callable[[Linker], None] | None = None,
    ) -> None:
        self.store = Store(engine)
        wasi = WasiConfig()
        wasi.env = list((env or {}).items())
        if workdir is not None:
            wasi.preopen_dir(str(workdir), ".")
        self.store.set_wasi(wasi)
        linker = Linker(engine)
        linker.define_wasi()
        if host is not None:
            host(linker)
        self.instance = linker.instantiate(self.store, Module.from_file(engine, str(wasm)))
        if "_initialize" in self.instance.exports(self.store):
            self.call("_initialize")

    def func(self, name: str) -> Func:
        func = self.instance.exports(self.store)[name]
        assert isinstance(func, Func)
        return func

    @property
    def memory(self) -> Memory:
        memory = self.instance.exports(self.store)["memory"]
        assert isinstance(memory, Memory)
        return memory

    def call(self, name: str, *args: Any) -> Any:
        return self.func(name)(self.store, *args)

    def call_bytes(self, name: str, data: bytes) -> bytes:
        """The bytes ABI: alloc + write, (ptr, len) in, packed i64 out, dealloc both."""
        ptr = self.call("alloc", len(data))
        self.memory.write(self.store, data, ptr)
        packed = self.call(name, ptr, len(data)) & 0xFFFFFFFFFFFFFFFF
        out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
        out = bytes(self.memory.read(self.store, out_ptr, out_ptr + out_len))
        self.call("dealloc", ptr)
        self.call("dealloc", out_ptr)
        return out


@pytest.fixture
def guest(engine: Engine, fresh_build: Path) -> Callable[..., Guest]:
    def make(name: str, **kwargs: Any) -> Guest:
        return Guest(engine, fresh_build / f"{name}.wasm", **kwargs)

    return make


def test_build_is_reproducible(fresh_build: Path) -> None:
    if not BUILT_SUMS.exists():
        pytest.fail(f"{BUILT_SUMS} is missing: run `make modules` first")
    assert read_sums(fresh_build / "SHA256SUMS") == read_sums(BUILT_SUMS)


def test_sha256sums_lists_every_output_sorted(fresh_build: Path) -> None:
    lines = (fresh_build / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    names = [line.split("  ", 1)[1] for line in lines]
    assert names == sorted(names)  # by file name, so a rebuilt module changes one line
    sums = read_sums(fresh_build / "SHA256SUMS")
    assert set(sums) == {p.name for p in fresh_build.glob("*.wasm")}
    for name, digest in sums.items():
        assert hashlib.sha256((fresh_build / name).read_bytes()).hexdigest() == digest
    assert {f"{n}.wasm" for n in MODULE_NAMES} <= set(sums)


def test_every_c_module_is_described() -> None:
    sources = {p.parent.name for p in MODULES_DIR.glob("*/*.c") if p.stem == p.parent.name}
    assert sources == set(MODULE_NAMES)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_functions_json_matches_exports(name: str, engine: Engine, fresh_build: Path) -> None:
    described = json.loads((MODULES_DIR / name / "functions.json").read_text(encoding="utf-8"))
    module = Module.from_file(engine, str(fresh_build / f"{name}.wasm"))
    exports = {e.name: e.type for e in module.exports}
    assert "memory" in exports
    for func_name, desc in described.items():
        assert set(desc) == {"method", "parameters", "output", "mounts"}, func_name
        assert desc["method"] in {"GET", "POST"}
        ftype = exports.get(func_name)
        assert isinstance(ftype, FuncType), f"{name}.{func_name} is not an exported function"
        params = [str(p) for p in ftype.params]
        expected: list[list[str]] = [[]]
        for param in desc["parameters"]:
            assert set(param) == {"name", "type"}
            expected = [e + t for e in expected for t in PARAM_TYPES[param["type"]]]
        assert params in expected, f"{name}.{func_name}: wasm params {params}"
        assert [str(r) for r in ftype.results] in OUTPUT_TYPES[desc["output"]], func_name
        for mount in desc["mounts"]:
            assert set(mount) == {"name", "mediaType", "stage"}
            assert mount["stage"] in {"deployment", "execution", "output"}
            if mount["stage"] == "deployment":  # data files ship with the module
                assert (MODULES_DIR / name / mount["name"]).is_file()
    assert name != "fibo" or described["fibo"]["parameters"][0]["name"] == "param0"


def test_fibo(guest: Callable[..., Guest]) -> None:
    fibo = guest("fibo")
    assert [fibo.call("fibo", n) for n in (0, 1, 5, 8, 12, 34)] == [1, 1, 8, 34, 233, 9227465]
    assert fibo.call("add", 40, 2) == 42


def test_strings_through_the_alloc_abi(guest: Callable[..., Guest]) -> None:
    strings = guest("strings")
    stats = strings.call_bytes("stats", b"  hello wasm\tworld\n")
    assert json.loads(stats) == {"length": 19, "words": 3}
    assert stats == b'{"length":19,"words":3}'
    assert strings.call_bytes("shout", "héllo!".encode()) == "HéLLO!".encode()
    assert strings.call_bytes("stats", b"") == b'{"length":0,"words":0}'
    assert strings.call("mean", 1.0, 2.0) == 1.5


def test_textfile_uses_the_working_directory(guest: Callable[..., Guest], tmp_path: Path) -> None:
    textfile = guest("textfile", workdir=tmp_path)
    assert textfile.call("size") == -1
    assert textfile.call("upper") == -1
    (tmp_path / "input.txt").write_bytes(b"hi there\n")
    assert textfile.call("size") == 9
    assert textfile.call("upper") == 9
    assert (tmp_path / "output.txt").read_bytes() == b"HI THERE\n"
    assert textfile.call("prefix") == -1  # no data file yet
    (tmp_path / "prefix.txt").write_bytes((MODULES_DIR / "textfile" / "prefix.txt").read_bytes())
    assert textfile.call("prefix") == 12
    assert (tmp_path / "prefixed.txt").read_bytes() == b">> hi there\n"


def test_probe_sees_env_and_preopen(guest: Callable[..., Guest], tmp_path: Path) -> None:
    (tmp_path / "there.txt").write_text("x")
    probe = guest("probe", workdir=tmp_path, env={"A": "1", "B": "2"})
    assert probe.call("env_count") == 2

    def ask(func: str, path: str) -> int:
        data = path.encode()
        ptr = probe.call("alloc", len(data))
        probe.memory.write(probe.store, data, ptr)
        result: int = probe.call(func, ptr, len(data))
        probe.call("dealloc", ptr)
        return result

    assert ask("can_open", "there.txt") == 1
    assert ask("can_open", "absent.txt") == 0
    assert ask("can_open", "../etc/passwd") == 0
    assert ask("can_write", "new.txt") == 1
    assert (tmp_path / "new.txt").exists()
    assert guest("probe").call("env_count") == 0


def test_sensors_call_the_dht_host_functions(guest: Callable[..., Guest]) -> None:
    readings = {"getTemperature": 21.5, "getHumidity": 70.0}

    def host(linker: Linker) -> None:
        for fn in ("getTemperature", "getHumidity"):
            linker.define_func("dht", fn, FuncType([], [ValType.f32()]), lambda fn=fn: readings[fn])
        # sample() (tests/test_sensor_pipeline.py) also imports the sys clock and delay.
        linker.define_func("sys", "delay", FuncType([ValType.i32()], []), lambda ms: None)
        linker.define_func("sys", "millis", FuncType([], [ValType.i32()]), lambda: 0)

    sensors = guest("sensors", host=host)
    assert sensors.call("temperature") == 21.5
    assert sensors.call("humidity") == 70.0
    assert sensors.call("comfort") == 0
    readings["getHumidity"] = 45.0
    assert sensors.call("comfort") == 1


def test_camera_gets_the_image_through_alloc(guest: Callable[..., Guest], tmp_path: Path) -> None:
    image = bytes(range(256)) * 4

    def take_image(caller: Any, out_ptr_ptr: int, out_size_ptr: int) -> None:
        alloc, memory = caller.get("alloc"), caller.get("memory")
        ptr = alloc(caller, len(image))
        memory.write(caller, image, ptr)
        memory.write(caller, ptr.to_bytes(4, "little"), out_ptr_ptr)
        memory.write(caller, len(image).to_bytes(4, "little"), out_size_ptr)

    def host(linker: Linker) -> None:
        ftype = FuncType([ValType.i32(), ValType.i32()], [])
        linker.define_func("camera", "takeImageDynamicSize", ftype, take_image, access_caller=True)

    camera = guest("camera", host=host, workdir=tmp_path)
    assert camera.call("image_size") == 1024
    assert camera.call("image_checksum") == sum(image)
    assert camera.call("capture") == 1024
    assert (tmp_path / "image.ppm").read_bytes() == image


def test_wat_fixtures(engine: Engine, guest: Callable[..., Guest], fresh_build: Path) -> None:
    def exports(name: str) -> dict[str, Any]:
        store = Store(engine)
        module = Module.from_file(engine, str(fresh_build / f"{name}.wasm"))
        instance = Instance(store, module, [])
        return {k: (lambda *a, f=f: f(store, *a)) for k, f in instance.exports(store).items()}

    assert exports("spin")["ok"]() == 7
    assert exports("membomb")["small"]() == 1
    floaty = exports("floaty")
    assert floaty["half"](5.0) == 2.5
    assert floaty["neg"](3) == -3
    imports = Module.from_file(engine, str(fresh_build / "missing_import.wasm")).imports
    assert [(i.module, i.name) for i in imports] == [("nosuch", "thing")]
    hello = Module.from_file(engine, str(fresh_build / "wasi_hello.wasm"))
    run = next(e.type for e in hello.exports if e.name == "run")
    assert isinstance(run, FuncType)
    assert (run.params, run.results) == ([], [])
    assert [(i.module, i.name) for i in hello.imports] == [("wasi_snapshot_preview1", "fd_write")]


def test_wasi_hello_writes_stdout(engine: Engine, fresh_build: Path, tmp_path: Path) -> None:
    store = Store(engine)
    wasi = WasiConfig()
    wasi.stdout_file = str(tmp_path / "stdout")
    store.set_wasi(wasi)
    linker = Linker(engine)
    linker.define_wasi()
    module = Module.from_file(engine, str(fresh_build / "wasi_hello.wasm"))
    run = linker.instantiate(store, module).exports(store)["run"]
    assert isinstance(run, Func)
    run(store)
    del store  # closes the stdout file
    assert (tmp_path / "stdout").read_bytes() == b"hello\n"
