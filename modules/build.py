"""Build the example and test Wasm modules: ``python -m modules.build [--out DIR] [--force]``.

Targets:

- every ``modules/<name>/<name>.c`` (plus any other ``.c`` in that folder) is compiled with
  Debian's clang for ``wasm32-wasi`` into ``<out>/<name>.wasm``. A line ``// baton: pure`` in
  the main source selects a pure module (``-nostartfiles -Wl,--no-entry``: no libc start-up,
  no ``_initialize``); otherwise the module is a WASI reactor (``-mexec-model=reactor``) and
  exports ``_initialize``, which the host calls once per instance;
- every ``tests/wasm/<name>.wat`` is assembled with ``wasmtime.wat2wasm``.

``<out>/SHA256SUMS`` lists ``"<sha256>  <name>.wasm"`` for every target, sorted by name.

The output is byte-reproducible: sources are compiled in a fixed order with ``-O2``,
``-ffile-prefix-map`` and ``-Wl,--strip-all``, so no path, timestamp or symbol name is embedded.
Like make, a target is rebuilt only when one of its sources (or this script) is newer than
its output; ``--force`` rebuilds everything. A compile error prints clang's message on
stderr and the exit status is 1; a missing toolchain or a name clash exits with 2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import wasmtime

ROOT = Path(__file__).resolve().parent.parent
MODULES_DIR = ROOT / "modules"
WAT_DIR = ROOT / "tests" / "wasm"
DEFAULT_OUT = ROOT / "build" / "wasm"
SUMS_NAME = "SHA256SUMS"
TOOLCHAIN_HINT = (
    "run `make toolchain` (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)"
)

Model = Literal["pure", "reactor", "wat"]

_MODEL_RE = re.compile(r"^\s*//\s*baton:\s*(pure|reactor)\b", re.MULTILINE)

COMMON_CFLAGS: tuple[str, ...] = (
    "--target=wasm32-wasi",
    "-O2",
    "-std=c11",
    "-Wall",
    "-Wextra",
    f"-ffile-prefix-map={ROOT}=.",
    "-Wl,--strip-all",
)
MODEL_CFLAGS: dict[Model, tuple[str, ...]] = {
    "pure": ("-nostartfiles", "-Wl,--no-entry"),
    "reactor": ("-mexec-model=reactor",),
}


class BuildError(Exception):
    """A target failed to build; the message is the compiler's output."""


@dataclass(frozen=True, slots=True)
class Target:
    """One ``<name>.wasm`` to produce and the files it is made from."""

    name: str
    model: Model
    sources: tuple[Path, ...]  # compiled or assembled, in this order
    deps: tuple[Path, ...]  # everything whose change makes the output stale

    @property
    def filename(self) -> str:
        return f"{self.name}.wasm"


@dataclass(frozen=True, slots=True)
class Result:
    target: Target
    built: bool
    digest: str = ""
    size: int = 0
    error: str = ""


def c_model(source: Path) -> Model:
    """The execution model declared by a ``// baton: pure|reactor`` line (default reactor)."""
    match = _MODEL_RE.search(source.read_text(encoding="utf-8"))
    return "pure" if match is not None and match.group(1) == "pure" else "reactor"


def discover() -> list[Target]:
    """All buildable targets, sorted by name. Raises BuildError on a name clash."""
    script = Path(__file__).resolve()
    targets: dict[str, Target] = {}
    for folder in sorted(p for p in MODULES_DIR.iterdir() if p.is_dir()):
        main = folder / f"{folder.name}.c"
        if not main.is_file():
            continue
        others = sorted(p for p in folder.glob("*.c") if p != main)
        headers = sorted(folder.glob("*.h"))
        sources = (main, *others)
        targets[folder.name] = Target(
            folder.name, c_model(main), sources, (*sources, *headers, script)
        )
    for wat in sorted(WAT_DIR.glob("*.wat")) if WAT_DIR.is_dir() else []:
        if wat.stem in targets:
            raise BuildError(f"{wat} clashes with module {MODULES_DIR / wat.stem}")
        targets[wat.stem] = Target(wat.stem, "wat", (wat,), (wat, script))
    return [targets[name] for name in sorted(targets)]


def is_up_to_date(target: Target, output: Path) -> bool:
    """True if ``output`` exists and no dependency is newer (make semantics)."""
    try:
        built_at = output.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(dep.stat().st_mtime_ns <= built_at for dep in target.deps)


def clang_argv(clang: str, target: Target, output: Path) -> list[str]:
    """The clang command line for a C target; sources are given relative to ROOT."""
    if target.model == "wat":
        raise ValueError(f"{target.name} is not a C target")
    sources = [str(src.relative_to(ROOT)) for src in target.sources]
    return [clang, *COMMON_CFLAGS, *MODEL_CFLAGS[target.model], "-o", str(output), *sources]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_one(target: Target, out_dir: Path, clang: str | None, *, force: bool) -> Result:
    """Build ``target`` into ``out_dir`` unless it is up to date; never raises BuildError."""
    output = out_dir / target.filename
    built = force or not is_up_to_date(target, output)
    if built:
        tmp = out_dir / f".{target.filename}.{os.getpid()}.tmp"
        try:
            if target.model == "wat":
                try:
                    wasm = wasmtime.wat2wasm(target.sources[0].read_text(encoding="utf-8"))
                except wasmtime.WasmtimeError as exc:
                    return Result(target, built=True, error=f"{target.sources[0]}: {exc}")
                tmp.write_bytes(bytes(wasm))
            else:
                if clang is None:
                    return Result(target, built=True, error=f"clang not found: {TOOLCHAIN_HINT}")
                proc = subprocess.run(
                    clang_argv(clang, target, tmp),
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    return Result(target, built=True, error=(proc.stderr + proc.stdout).strip())
                if proc.stderr.strip():  # warnings: show them, the build still counts
                    print(proc.stderr.rstrip(), file=sys.stderr)
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    return Result(target, built=built, digest=sha256(output), size=output.stat().st_size)


def write_sums(out_dir: Path, results: Sequence[Result]) -> None:
    """Write SHA256SUMS (only if its content changed, so its mtime means something)."""
    text = "".join(
        f"{r.digest}  {r.target.filename}\n"
        for r in sorted(results, key=lambda r: r.target.filename)
    )
    path = out_dir / SUMS_NAME
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = out_dir / f".{SUMS_NAME}.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modules.build",
        description="Build modules/*/<name>.c and tests/wasm/<name>.wat into <out>/<name>.wasm",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (default: build/wasm)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "-j", "--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler runs"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.out.resolve()
    try:
        targets = discover()
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    needs_clang = any(t.model != "wat" for t in targets)
    clang = shutil.which("clang")
    if needs_clang and clang is None:
        print(f"error: clang not found: {TOOLCHAIN_HINT}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda t: build_one(t, out_dir, clang, force=args.force), targets))

    failed = [r for r in results if r.error]
    for r in results:
        if r.error:
            print(f"FAILED      {r.target.filename}")
        else:
            status = "built" if r.built else "up-to-date"
            print(f"{status:<11} {r.target.filename:<22} {r.size:>7} B  sha256:{r.digest[:16]}")
    for r in failed:
        print(f"error: {r.target.filename}:\n{r.error}", file=sys.stderr)
    if failed:
        return 1
    write_sums(out_dir, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
