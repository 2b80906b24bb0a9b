"""``baton modules …``: list the orchestrator's modules, and push one.

::

    baton modules list
    baton modules push DIR_OR_WASM [--name N] [--version V] [--functions F] [--file m=path]

:func:`module_upload` works out, offline, what a push sends (the binary, its
``functions.json`` and the data files that names); the push itself is ``POST /modules``.
Failures are :class:`~orchestrator.cli_common.CliError`, reported by :func:`orchestrator.cli.main`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.cli_common import (
    CliError,
    Command,
    CommandCtx,
    pair,
    print_json,
    read_file,
    short,
    table,
)

__all__ = ["ModuleUpload", "add_commands", "deployment_mounts", "module_upload"]


def add_commands(command: Command) -> None:
    """Register ``baton modules list|push`` with the CLI's
    ``command(name, handler, help, on=sub)``."""
    modules = command("modules", cmd_modules_list, "list or push modules")
    msub = modules.add_subparsers(title="module commands", metavar="ACTION")
    command("list", cmd_modules_list, "list modules", msub)
    push = command("push", cmd_modules_push, "upload a module", msub)
    push.add_argument(
        "source",
        metavar="DIR_OR_WASM",
        help="a module directory (modules/NAME/, binary from build/wasm/NAME.wasm) or a .wasm",
    )
    push.add_argument("--name", help="module name (default: the directory or file name)")
    push.add_argument("--version", help="module version (the orchestrator's default is 1)")
    push.add_argument("--functions", metavar="FILE", help="functions.json describing the module")
    push.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="MOUNT=PATH",
        type=pair("--file", "MOUNT=PATH"),
        help="a data file for a deployment-stage mount (repeatable)",
    )


async def cmd_modules_list(ctx: CommandCtx, args: argparse.Namespace) -> int:
    modules = await ctx.client.list_modules()
    if ctx.json:
        return print_json(modules)
    if not modules:
        print("no modules yet (`baton modules push DIR_OR_WASM`)")
        return 0
    rows = [
        [
            m.get("name", ""),
            m.get("version", ""),
            short(m.get("digest", "")),
            ", ".join(sorted(m.get("functions") or m.get("exports") or {})),
            ", ".join(sorted(m.get("data_files") or {})),
        ]
        for m in modules
    ]
    print(table(["NAME", "VERSION", "DIGEST", "FUNCTIONS", "DATA FILES"], rows))
    return 0


@dataclass
class ModuleUpload:
    name: str
    wasm: Path
    functions: Path | None
    files: dict[str, Path]


def module_upload(
    source: str,
    *,
    name: str | None = None,
    functions: str | None = None,
    files: Sequence[tuple[str, str]] = (),
    cwd: Path | None = None,
) -> ModuleUpload:
    """Work out what ``baton modules push`` uploads for ``source`` (a directory or a .wasm).

    A directory ``modules/fibo/`` means the binary ``fibo.wasm`` from the directory itself or
    from ``build/wasm/`` under the working directory, its ``functions.json``, and the data
    file of every deployment-stage mount that ``functions.json`` names, from the directory.
    A ``.wasm`` file ``NAME.wasm`` means that binary and, unless ``--functions`` is given, the
    ``functions.json`` next to it or else in ``modules/NAME/`` (with the data files beside
    it). ``--file`` adds or overrides data files.
    """
    where = cwd or Path.cwd()
    path = Path(source)
    explicit = {mount: Path(p) for mount, p in files}
    if path.is_dir():
        stem = path.resolve().name
        candidates = [path / f"{stem}.wasm", where / "build" / "wasm" / f"{stem}.wasm"]
        wasm = next((c for c in candidates if c.is_file()), None)
        if wasm is None:
            raise CliError(
                f"no {stem}.wasm in {path} or {where / 'build' / 'wasm'} "
                "(build it with `make modules`)"
            )
        data_dir = path
    elif path.is_file():
        wasm, stem = path, path.stem
        # build/wasm/fibo.wasm is described by modules/fibo/functions.json.
        data_dir = next(
            (
                d
                for d in (path.parent, where / "modules" / stem)
                if (d / "functions.json").is_file()
            ),
            path.parent,
        )
    else:
        raise CliError(f"{source}: no such module directory or .wasm file")
    functions_path = Path(functions) if functions else data_dir / "functions.json"
    if functions and not functions_path.is_file():
        raise CliError(f"--functions {functions}: no such file")
    found = functions_path if functions_path.is_file() else None
    data: dict[str, Path] = {}
    if found is not None:
        for mount in deployment_mounts(found):
            if mount in explicit:
                continue
            file = data_dir / mount
            if not file.is_file():
                raise CliError(
                    f"{found} names the deployment-stage mount {mount!r} but {file} does not "
                    f"exist; pass --file {mount}=PATH"
                )
            data[mount] = file
    for mount, file in explicit.items():
        if not file.is_file():
            raise CliError(f"--file {mount}={file}: no such file")
        data[mount] = file
    return ModuleUpload(name or stem, wasm, found, data)


def deployment_mounts(functions_json: Path) -> list[str]:
    """Names of the deployment-stage mounts in a wasmiot ``functions.json``, in order."""
    try:
        doc = json.loads(functions_json.read_bytes())
    except (OSError, ValueError) as err:
        raise CliError(f"cannot read {functions_json}: {err}") from err
    if not isinstance(doc, dict):
        raise CliError(f"{functions_json} must map function names to descriptions")
    mounts: list[str] = []
    for spec in doc.values():
        for mount in spec.get("mounts", []) if isinstance(spec, dict) else []:
            if (
                isinstance(mount, dict)
                and mount.get("stage") == "deployment"
                and isinstance(mount.get("name"), str)
                and mount["name"] not in mounts
            ):
                mounts.append(mount["name"])
    return mounts


async def cmd_modules_push(ctx: CommandCtx, args: argparse.Namespace) -> int:
    upload = module_upload(args.source, name=args.name, functions=args.functions, files=args.file)
    record = await ctx.client.push_module(
        upload.name,
        read_file(upload.wasm),
        version=args.version,
        functions=read_file(upload.functions) if upload.functions else None,
        files={mount: read_file(p) for mount, p in upload.files.items()},
    )
    if ctx.json:
        return print_json(record)
    funcs = ", ".join(sorted(record.get("functions") or {})) or "none described"
    extra = f", data files: {', '.join(sorted(upload.files))}" if upload.files else ""
    print(
        f"pushed {record.get('name', upload.name)}@{record.get('version', '?')} "
        f"({short(record.get('digest', ''))}) from {upload.wasm}; functions: {funcs}{extra}"
    )
    return 0
