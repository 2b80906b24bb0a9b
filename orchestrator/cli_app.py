"""``baton app …``: build, validate, push and inspect application images.

::

    baton app build DIR [-o OUT] [--no-scripts]   run build.sh scripts, pack, write the zip
    baton app validate IMAGE_OR_DIR               check a zip (or pack a directory in memory)
    baton app push IMAGE                          upload a zip: POST /apps
    baton app list                                the orchestrator's applications
    baton app show NAME[@VERSION]                 one application, or one version of it

``build`` and ``validate`` work offline; they never contact the orchestrator. Their failures
are reported here, as ``baton: error: <field>: <message>`` with exit status 1; API failures
propagate to :func:`orchestrator.cli.main`, which reports them the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.app_build import BuildError, build, pack
from orchestrator.app_image import AppImage, ImageError, image_digest, read_image
from orchestrator.cli_common import Command, CommandCtx, print_json, table

__all__ = ["add_commands", "describe_image", "image_summary"]

PROG = "baton"


def add_commands(command: Command) -> None:
    """Register ``baton app …`` with the CLI's ``command(name, handler, help, on=sub)``."""
    app = command("app", cmd_app_list, "build, validate, push and list application images")
    asub = app.add_subparsers(title="app commands", metavar="ACTION")
    b = command("build", cmd_app_build, "build an app image from an app source directory", asub)
    b.add_argument("source", metavar="DIR", help="the app directory (holds application.json)")
    b.add_argument(
        "-o",
        "--out",
        metavar="OUT",
        help="where to write the image (default DIR/build/NAME-VERSION.zip)",
    )
    b.add_argument(
        "--no-scripts",
        dest="run_scripts",
        action="store_false",
        help="do not run the packages' build.sh (package.wasm files are already built)",
    )
    v = command("validate", cmd_app_validate, "check an app image or app directory", asub)
    v.add_argument("source", metavar="IMAGE_OR_DIR", help="a .zip image or an app directory")
    command("push", cmd_app_push, "upload an app image to the orchestrator", asub).add_argument(
        "image", metavar="IMAGE", help="the .zip built by `baton app build`"
    )
    command("list", cmd_app_list, "list the orchestrator's applications", asub)
    command("show", cmd_app_show, "show an application or one of its versions", asub).add_argument(
        "app", metavar="NAME[@VERSION]"
    )


# --- offline: build and validate ---------------------------------------------------------------


async def cmd_app_build(ctx: CommandCtx, args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    try:
        result = await asyncio.to_thread(
            build, Path(args.source), out, run_scripts=args.run_scripts
        )
    except (BuildError, ImageError) as err:
        return _fail(err)
    summary = image_summary(result.image) | {"path": str(result.path)}
    if ctx.json:
        return print_json(summary)
    _say(f"built {result.path}")
    _say(f"digest  {result.digest}")
    _say(f"size    {len(result.data)} bytes")
    _say(f"packages {', '.join(sorted(result.image.packages))}")
    return 0


async def cmd_app_validate(ctx: CommandCtx, args: argparse.Namespace) -> int:
    try:
        image = await asyncio.to_thread(_load, Path(args.source))
    except (BuildError, ImageError) as err:
        return _fail(err)
    if ctx.json:
        return print_json(image_summary(image))
    _say(describe_image(image))
    return 0


def _load(source: Path) -> AppImage:
    """Read a zip image, or pack a source directory in memory (nothing is written)."""
    if source.is_dir():
        return read_image(pack(source))
    try:
        data = source.read_bytes()
    except OSError as err:
        raise BuildError(f"cannot read {source}: {err.strerror or err}") from err
    return read_image(data)


def image_summary(image: AppImage) -> dict[str, Any]:
    """The image as JSON: what ``--json`` prints for build and validate."""
    return {
        "name": image.app.name,
        "version": image.app.version,
        "digest": image.digest,
        "size": image.size,
        "packages": {
            name: {
                "version": pkg.spec.version,
                "folder": pkg.folder,
                "runtime": pkg.spec.runtime,
                "functions": sorted(pkg.functions),
                "requires": sorted(pkg.spec.requires),
                "files": sorted(pkg.files),
            }
            for name, pkg in sorted(image.packages.items())
        },
        "pipelines": [
            {"name": p.name, "steps": [f"{s.module}.{s.func}" for s in p.sequence]}
            for p in image.app.pipelines
        ],
        "static": None
        if image.static is None
        else {
            "name": image.static.name,
            "index": image.static.index,
            "files": len(image.static.files),
        },
    }


def describe_image(image: AppImage) -> str:
    """A person's view of a valid image: what it holds and how its pipelines run."""
    lines = [
        f"{image.app.name}@{image.app.version}  valid",
        f"digest  {image.digest}",
        f"size    {image.size} bytes",
        "packages:",
    ]
    for name, pkg in sorted(image.packages.items()):
        requires = ", ".join(sorted(pkg.spec.requires)) or "-"
        lines.append(f"  {name}@{pkg.spec.version} ({pkg.folder}/)  requires: {requires}")
        for fname, fn in sorted(pkg.functions.items()):
            params = ", ".join(f"{p.name}: {p.type}" for p in fn.params)
            mounts = "".join(f"  [{m.stage} {m.name}]" for m in fn.mounts)
            lines.append(f"    {fname}({params}) -> {fn.output or 'file'}{mounts}")
    for name, ref in sorted(image.app.uses.items()):
        lines.append(f"  {name}: the orchestrator's built-in {ref}")
    lines.append("pipelines:")
    for pipeline in image.app.pipelines:
        steps = " -> ".join(f"{s.module}.{s.func}" for s in pipeline.sequence)
        lines.append(f"  {pipeline.name}: {steps}")
    if image.static is not None:
        lines.append(
            f"static: {image.static.name} ({_count(len(image.static.files), 'file')}, "
            f"index {image.static.index})"
        )
    return "\n".join(lines)


# --- the orchestrator: push, list, show ---------------------------------------------------------


async def cmd_app_push(ctx: CommandCtx, args: argparse.Namespace) -> int:
    path = Path(args.image)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as err:
        return _fail(BuildError(f"cannot read {path}: {err.strerror or err}"))
    answer = await ctx.client.push_app(data)
    if ctx.json:
        return print_json(answer)
    what = "pushed" if answer.get("created", True) else "unchanged (already pushed)"
    digest = answer.get("digest") or image_digest(data)
    _say(f"{what} {answer.get('name', '?')}@{answer.get('version', '?')}  {digest}")
    if packages := _packages(answer.get("packages")):
        _say(f"packages {packages}")
    return 0


def _packages(value: Any) -> str:
    """The server's packages: ``{name: "module@version"}`` (or a list of names or objects)."""
    if isinstance(value, Mapping):
        return ", ".join(str(ref) for _, ref in sorted(value.items()))
    if isinstance(value, list):
        return ", ".join(
            f"{p.get('name', '?')}@{p.get('version', '?')}" if isinstance(p, Mapping) else str(p)
            for p in value
        )
    return ""


async def cmd_app_list(ctx: CommandCtx, args: argparse.Namespace) -> int:
    apps = await ctx.client.list_apps()
    if ctx.json:
        return print_json(apps)
    if not apps:
        _say("no applications yet (`baton app push IMAGE`)")
        return 0
    rows = [
        [
            str(a.get("name", "")),
            ", ".join(_versions(a.get("versions"))) or str(a.get("version", "")),
            str(a.get("latest", "")),
        ]
        for a in apps
    ]
    _say(table(["NAME", "VERSIONS", "LATEST"], rows))
    return 0


async def cmd_app_show(ctx: CommandCtx, args: argparse.Namespace) -> int:
    name, _, version = str(args.app).partition("@")
    answer = await ctx.client.get_app(name, version or None)
    if ctx.json:
        return print_json(answer)
    if not version:
        versions = _versions(answer.get("versions"))
        _say(f"{answer.get('name', name)}: {', '.join(versions) or 'no versions'}")
        return 0
    _say(f"{answer.get('name', name)}@{answer.get('version', version)}")
    for key in ("digest", "size", "description", "imageUrl"):
        if answer.get(key) not in (None, ""):
            _say(f"{key:<12}{answer[key]}")
    if packages := _packages(answer.get("packages")):
        _say(f"{'packages':<12}{packages}")
    pipelines = answer.get("pipelines")
    if isinstance(pipelines, list):
        for pipeline in pipelines:
            if isinstance(pipeline, Mapping):
                steps = pipeline.get("sequence") or pipeline.get("steps") or []
                shown = " -> ".join(
                    f"{s.get('module')}.{s.get('func')}" if isinstance(s, Mapping) else str(s)
                    for s in steps
                )
                _say(f"pipeline    {pipeline.get('name', '?')}: {shown}")
    return 0


def _versions(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(v.get("version", "?")) if isinstance(v, Mapping) else str(v) for v in value]


# --- output --------------------------------------------------------------------------------------


def _fail(err: BuildError | ImageError) -> int:
    sys.stderr.write(f"{PROG}: error: {err}\n")
    return 1


def _say(text: str) -> None:
    """One line (or block) on stdout, for people or for ``--json`` readers."""
    sys.stdout.write(text + "\n")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"
