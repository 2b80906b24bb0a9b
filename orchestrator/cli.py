"""The ``baton`` command-line client of the orchestrator.

``baton`` talks to the orchestrator only through :mod:`orchestrator.client`. It finds the
orchestrator from ``--url`` or ``BATON_URL`` (default ``http://127.0.0.1:3000``), the
bearer token from ``--token-file`` or ``BATON_TOKEN``, and for an ``https://`` orchestrator
the CA to verify it with from ``--ca`` or ``BATON_CA`` (default: the system trust store;
verification is never turned off). Output is plain aligned tables for
people, or with ``--json`` the API's JSON for scripts. Every failure is one line on stderr
(``baton: error: ...``) and exit status 1; a usage error exits 2; never a traceback.

Commands::

    baton devices                          list devices
    baton devices cordon|uncordon ID       stop / resume placing steps on a device
    baton devices register HOST [--port P] [--name N] [--tls]
    baton modules push DIR_OR_WASM [--name N] [--version V] [--functions F] [--file m=path]
    baton modules list
    baton app build DIR [-o OUT] [--no-scripts] | validate IMAGE_OR_DIR | push IMAGE
    baton app list | show NAME[@VERSION]
    baton env list | show NAME | set NAME [--label K=V] [--zone Z] [--timeout-ms N] … | delete NAME
    baton deploy FILE [--dry-run] [--wait S] [--if-match REV]   (a manifest or a descriptor)
    baton deployments
    baton status ID
    baton run ID [--arg k=v ...] [--file mount=path ...] [--async]
    baton trace EXEC_ID
    baton results [DEPLOYMENT] [--limit N] [--after SEQ] [--clear]
    baton undeploy ID
    baton simulate [--profile FILE ...] [--count N] [--base-port P] [--state-root DIR]
                   [--orchestrator URL] [--mdns] [--name-prefix P] [--ready-file PATH]

``baton simulate`` is the one command that does not only talk to the orchestrator: it runs
a fleet of real supervisor processes on this machine (see :mod:`orchestrator.simulate`)
until SIGINT or SIGTERM, and exits 0 after stopping them, 1 if one died or the fleet did not
come up, 2 for unusable options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from orchestrator import cli_app, cli_env, cli_results, simulate
from orchestrator.cli_common import print_json, table
from orchestrator.client import (
    JSON,
    TOML,
    ApiError,
    Candidate,
    Deployment,
    Execution,
    Infeasible,
    OrchestratorClient,
    Placement,
    PlacementResult,
    StepPlacement,
    Transition,
)
from orchestrator.tls import TlsError, client_context

DEFAULT_URL = "http://127.0.0.1:3000"
PROG = "baton"
# A revision's story is over (or it runs): the deploy command stops following it.
SETTLED = frozenset({"active", "rolled_back", "broken", "superseded", "removed"})
SHORT_ID = 12


class CliError(Exception):
    """A failure to report as ``baton: error: <message>`` with exit status 1."""


class UsageError(Exception):
    """A bad command line the parser could not catch (exit status 2)."""


@dataclass
class Ctx:
    client: OrchestratorClient
    json: bool
    url: str


Handler = Callable[[Ctx, argparse.Namespace], Awaitable[int]]


# --- entry points ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2), already printed
        return stop.code if isinstance(stop.code, int) else 2
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        url = _url(getattr(args, "url", None))
        token = _token(getattr(args, "token_file", None))
        context = _ssl_context(getattr(args, "ca", None))
        return asyncio.run(_run(handler, args, url, token, context))
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except ApiError as err:
        _error(_describe(err))
        return 1
    except CliError as err:
        _error(str(err))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:  # `baton devices | head`
        return 1
    except Exception as err:  # noqa: BLE001 - the CLI promises a message, never a traceback
        _error(f"unexpected {type(err).__name__}: {err}")
        return 1


async def _run(
    handler: Handler,
    args: argparse.Namespace,
    url: str,
    token: str | None,
    context: ssl.SSLContext | None = None,
) -> int:
    timeout = float(getattr(args, "timeout", 60.0))
    async with OrchestratorClient(
        url, token=token, timeout_s=timeout, ssl_context=context
    ) as client:
        return await handler(Ctx(client, bool(getattr(args, "json", False)), url), args)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _describe(err: ApiError) -> str:
    message = err.message
    if err.field and not message.startswith(f"{err.field}:"):
        message += f" (field: {err.field})"
    if isinstance(err.detail, str) and err.detail and err.detail not in message:
        message += f": {err.detail}"
    if err.status == 401 and "token" not in message.lower():
        message += " (pass --token-file or set BATON_TOKEN)"
    if err.status == 0 and "certificate verify failed" in message:
        message += " (pass --ca or set BATON_CA to the fleet's CA certificate)"
    return message


def _url(flag: str | None, name: str = "--url") -> str:
    url = flag or os.environ.get("BATON_URL") or DEFAULT_URL
    source = name if flag else "BATON_URL" if os.environ.get("BATON_URL") else "default"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise UsageError(f"{source} {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def _token(path: str | None) -> str | None:
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise CliError(f"cannot read the token file {path}: {err.strerror or err}") from err
        if not token:
            raise CliError(f"the token file {path} is empty")
        return token
    return os.environ.get("BATON_TOKEN", "").strip() or None


def _ssl_context(path: str | None) -> ssl.SSLContext | None:
    """The context an https:// orchestrator is verified with (None: the system store)."""
    ca = path or os.environ.get("BATON_CA", "").strip() or None
    if ca is None:
        return None
    try:
        return client_context(Path(ca))
    except TlsError as err:
        raise CliError(str(err)) from err


# --- the command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before or after the command: every parser gets them, with
    # SUPPRESS defaults so a subcommand's parser does not reset what the main one parsed.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"orchestrator URL (env BATON_URL; default {DEFAULT_URL})",
    )
    common.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="file holding the bearer token (env BATON_TOKEN holds the token itself)",
    )
    common.add_argument(
        "--ca",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="PEM CA certificate to verify an https:// orchestrator with "
        "(env BATON_CA; default: the system trust store)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the API's JSON instead of tables",
    )
    common.add_argument(
        "--timeout",
        type=_positive,
        default=argparse.SUPPRESS,
        metavar="S",
        help="seconds to wait for each API answer (default 60)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Drive a Baton orchestrator: devices, modules, deployments, executions.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Handler, help_: str, on: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = on.add_parser(
            name, parents=[common], help=help_, description=help_
        )
        p.set_defaults(handler=handler)
        return p

    devices = command("devices", cmd_devices, "list devices (and cordon/uncordon/register)")
    dsub = devices.add_subparsers(title="device commands", metavar="ACTION")
    command("list", cmd_devices, "list devices", dsub)
    command("cordon", cmd_cordon, "stop placing steps on a device", dsub).add_argument(
        "device", metavar="ID", help="device id or name"
    )
    command("uncordon", cmd_uncordon, "place steps on a device again", dsub).add_argument(
        "device", metavar="ID", help="device id or name"
    )
    register = command("register", cmd_register, "register a device by address", dsub)
    register.add_argument("host")
    register.add_argument("--port", type=int, default=5000)
    register.add_argument("--name")
    register.add_argument("--tls", action="store_true", help="the device serves HTTPS")

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
        type=_pair("--file", "MOUNT=PATH"),
        help="a data file for a deployment-stage mount (repeatable)",
    )

    cli_app.add_commands(command)  # baton app build|validate|push|list|show
    cli_env.add_commands(command)  # baton env list|show|set|delete
    cli_results.add_commands(command)  # baton results [DEPLOYMENT]

    deploy = command(
        "deploy", cmd_deploy, "deploy a manifest (.json or .toml) or a deployment descriptor"
    )
    deploy.add_argument("manifest", metavar="FILE")
    deploy.add_argument(
        "--dry-run", action="store_true", help="only show where each step would run and why"
    )
    deploy.add_argument(
        "--wait",
        type=_non_negative,
        default=60.0,
        metavar="S",
        help="seconds to follow the revision until it settles (default 60; 0 = do not wait)",
    )
    deploy.add_argument(
        "--if-match",
        type=int,
        metavar="REV",
        help="refuse the update unless REV is the deployment's current revision",
    )

    command("deployments", cmd_deployments, "list deployments")
    command("status", cmd_status, "show a deployment in detail").add_argument(
        "deployment", metavar="ID", help="deployment id or name"
    )

    run = command("run", cmd_run, "run a deployment's pipeline")
    run.add_argument("deployment", metavar="ID", help="deployment id or name")
    run.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="K=V",
        type=_pair("--arg", "K=V"),
        help="a named argument (repeatable)",
    )
    run.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="MOUNT=PATH",
        type=_pair("--file", "MOUNT=PATH"),
        help="an input file for an execution-stage mount (repeatable)",
    )
    run.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="return an execution id at once (see `baton trace`)",
    )

    command("trace", cmd_trace, "show an execution and its trace").add_argument(
        "execution", metavar="EXEC_ID"
    )
    command("undeploy", cmd_undeploy, "remove a deployment from every device").add_argument(
        "deployment", metavar="ID", help="deployment id or name"
    )

    _simulate_arguments(
        command(
            "simulate",
            cmd_simulate,
            "run a fleet of simulated supervisors on this machine until Ctrl-C or SIGTERM",
        )
    )
    return parser


def _simulate_arguments(sim: argparse.ArgumentParser) -> None:
    sim.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="FILE",
        help="device profile, e.g. devices/compute-node.toml (repeatable: used round-robin)",
    )
    sim.add_argument("--count", type=int, default=3, metavar="N", help="devices (default 3)")
    sim.add_argument(
        "--base-port",
        type=int,
        metavar="P",
        help="use ports P..P+N-1 (default: free ports chosen by the system)",
    )
    sim.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address every device listens on (default 127.0.0.1)",
    )
    sim.add_argument(
        "--state-root",
        metavar="DIR",
        help="keep each device's state dir and log under DIR, so devices keep their ids "
        "across runs (default: a temporary directory, removed on exit)",
    )
    sim.add_argument(
        "--orchestrator",
        metavar="URL",
        help="orchestrator the devices register with (default: the --url of this command)",
    )
    sim.add_argument(
        "--mdns",
        action="store_true",
        help="advertise over mDNS on --host instead of registering directly",
    )
    sim.add_argument(
        "--name-prefix",
        metavar="P",
        help="name devices P-01, P-02, ... (default: the profile's name, or 'sim')",
    )
    sim.add_argument(
        "--wait",
        type=_positive,
        default=60.0,
        metavar="S",
        help="seconds to wait for every device to be up and listed (default 60)",
    )
    sim.add_argument(
        "--ready-file",
        metavar="PATH",
        help="write the fleet as JSON to PATH once ready (removed on exit)",
    )


def _pair(flag: str, shape: str) -> Callable[[str], tuple[str, str]]:
    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} takes {shape}, got {text!r}")
        return key, value

    parse.__name__ = shape  # argparse names the type in its message
    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


# --- devices ---------------------------------------------------------------------------------


async def cmd_devices(ctx: Ctx, args: argparse.Namespace) -> int:
    devices = await ctx.client.list_devices()
    if ctx.json:
        return print_json(devices)
    if not devices:
        print("no devices known yet (they appear over mDNS, or `baton devices register HOST`)")
        return 0
    rows = [
        [
            d.get("name", ""),
            _short(d.get("id", "")),
            d.get("status", ""),
            d.get("url", ""),
            _text(d.get("apiVersion")),
            "yes" if d.get("cordoned") else "no",
            _labels(d.get("labels") or {}),
        ]
        for d in devices
    ]
    print(table(["NAME", "ID", "STATUS", "URL", "API", "CORDONED", "LABELS"], rows))
    return 0


async def device_id(ctx: Ctx, key: str) -> str:
    """The full id of the device ``key`` names: its id, its name or a unique id prefix.

    The API takes full ids; tables show names and short ids, so accept those too. A key that
    matches nothing is passed on as is, for the orchestrator to refuse with its own message.
    """
    devices = await ctx.client.list_devices()
    ids = [d.get("id", "") for d in devices]
    if key in ids:
        return key
    for matches in (
        [d.get("id", "") for d in devices if d.get("name") == key],
        [i for i in ids if i.startswith(key)],
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CliError(f"{key!r} matches {len(matches)} devices; give more of the id")
    return key


async def cmd_cordon(ctx: Ctx, args: argparse.Namespace) -> int:
    device = await ctx.client.cordon(await device_id(ctx, args.device))
    if ctx.json:
        return print_json(device)
    print(f"cordoned {_device_name(device)}: no new steps will be placed on it")
    return 0


async def cmd_uncordon(ctx: Ctx, args: argparse.Namespace) -> int:
    device = await ctx.client.uncordon(await device_id(ctx, args.device))
    if ctx.json:
        return print_json(device)
    print(f"uncordoned {_device_name(device)}: steps may be placed on it again")
    return 0


async def cmd_register(ctx: Ctx, args: argparse.Namespace) -> int:
    device = await ctx.client.register_device(args.host, args.port, args.name, tls=args.tls)
    if ctx.json:
        return print_json(device)
    print(f"registered {_device_name(device)} at {device.get('url', '?')}")
    return 0


def _device_name(device: Mapping[str, Any]) -> str:
    return f"{device.get('name', '?')} ({_short(str(device.get('id', '?')))})"


# --- modules ---------------------------------------------------------------------------------


async def cmd_modules_list(ctx: Ctx, args: argparse.Namespace) -> int:
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
            _short(m.get("digest", "")),
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


async def cmd_modules_push(ctx: Ctx, args: argparse.Namespace) -> int:
    upload = module_upload(args.source, name=args.name, functions=args.functions, files=args.file)
    record = await ctx.client.push_module(
        upload.name,
        _read(upload.wasm),
        version=args.version,
        functions=_read(upload.functions) if upload.functions else None,
        files={mount: _read(p) for mount, p in upload.files.items()},
    )
    if ctx.json:
        return print_json(record)
    funcs = ", ".join(sorted(record.get("functions") or {})) or "none described"
    extra = f", data files: {', '.join(sorted(upload.files))}" if upload.files else ""
    print(
        f"pushed {record.get('name', upload.name)}@{record.get('version', '?')} "
        f"({_short(record.get('digest', ''))}) from {upload.wasm}; functions: {funcs}{extra}"
    )
    return 0


# --- deployments -------------------------------------------------------------------------------


def read_manifest(path: str) -> tuple[bytes, str]:
    """The manifest's bytes and media type (TOML for ``.toml``, JSON otherwise)."""
    file = Path(path)
    body = _read(file)
    return body, TOML if file.suffix.lower() == ".toml" else JSON


async def cmd_deploy(ctx: Ctx, args: argparse.Namespace) -> int:
    body, ctype = read_manifest(args.manifest)
    if args.dry_run:
        return await _dry_run(ctx, body, ctype)
    start = time.monotonic()
    submission = await ctx.client.deploy(body, ctype, if_match=args.if_match)
    dep = submission.deployment
    number = dep.get("revision", 0)
    if not ctx.json:
        what = {201: "created", 202: "new revision", 200: "unchanged"}.get(
            submission.status, "accepted"
        )
        print(
            f"deployment {dep.get('name', '?')} ({_short(dep.get('id', ''))}) "
            f"revision {number}: {what}"
        )
    if args.wait == 0:
        if ctx.json:
            print_json(dep)
        return 0
    dep = await _follow(ctx, dep, number, args.wait, changed=submission.changed)
    if ctx.json:
        print_json(dep)
    return _settled(ctx, dep, number, args.wait, time.monotonic() - start)


async def _dry_run(ctx: Ctx, body: bytes, ctype: str) -> int:
    result = await ctx.client.place(body, ctype)
    if ctx.json:
        print_json(result)
    else:
        print(explain_placement(result))
    if result.get("type") == "infeasible":
        if ctx.json:
            _error(str(result.get("message", "the manifest cannot be placed")))
        return 1
    return 0


async def _follow(
    ctx: Ctx, dep: Deployment, number: int, wait_s: float, *, changed: bool = True
) -> Deployment:
    """Poll until revision ``number`` settles or ``wait_s`` passes, printing each transition.

    Events recorded while we follow are printed, whatever their revision (the old revision
    superseded or restored is part of the story).
    """
    key = dep.get("id") or dep.get("name", "")
    # Events already recorded are history, except those of a revision this post added.
    seen = {
        i for i, e in enumerate(dep.get("events", [])) if e.get("revision") != number or not changed
    }
    deadline = time.monotonic() + wait_s
    while True:
        if not ctx.json:
            seen = _progress(dep, seen)
        state = _revision_state(dep, number)
        left = deadline - time.monotonic()
        if state in SETTLED or left <= 0:
            return dep
        began = time.monotonic()
        dep = await ctx.client.get_deployment(key, wait_s=round(min(1.0, left), 3))
        if time.monotonic() - began < 0.2 and _revision_state(dep, number) == state:
            await asyncio.sleep(0.2)  # an orchestrator that does not hold ?wait


def _settled(ctx: Ctx, dep: Deployment, number: int, wait_s: float, took: float) -> int:
    """Report how revision ``number`` ended; the exit status (0 only if it became active)."""
    state = _revision_state(dep, number)
    name = dep.get("name", "?")
    if state == "active":
        if not ctx.json:
            hosts = _hosts(dep)
            print(f"revision {number} is ACTIVE{f' on {hosts}' if hosts else ''} ({took:.1f} s)")
        return 0
    if state == "superseded":
        if not ctx.json:
            print(f"revision {number} became active and was then superseded by a newer revision")
        return 0
    if state in SETTLED:
        error = _revision_error(dep, number)
        step = dep.get("failedStep") if dep.get("revision") == number else None
        where = f" at step {step}" if step else ""
        _error(
            f"revision {number} of {name} ended {state.upper()}{where}"
            + (f": {error}" if error else "")
        )
        return 1
    _error(
        f"revision {number} of {name} is still {state.upper() or 'pending'} after "
        f"{wait_s:g} s; follow it with `baton status {name}`"
    )
    return 1


def _progress(dep: Deployment, seen: set[int]) -> set[int]:
    """Print the deployment's events not printed yet; the indexes now printed."""
    for i, event in enumerate(dep.get("events", [])):
        if i not in seen:
            print(f"  {_event_line(event)}")
            seen.add(i)
    return seen


def _event_line(event: Transition) -> str:
    line = (
        f"{_time(event.get('at'))}  revision {event.get('revision', '?')}: "
        f"{_state(event.get('from'))} -> {_state(event.get('to'))}"
    )
    if event.get("step"):
        line += f" at step {event.get('step')}"
    if event.get("reason"):
        line += f" ({event.get('reason')})"
    return line


def _revision_state(dep: Deployment, number: int) -> str:
    for rev in dep.get("revisions", []):
        if rev.get("number") == number:
            return str(rev.get("state", "")).lower()
    return str(dep.get("state", "")).lower() if dep.get("revision") == number else ""


def _revision_error(dep: Deployment, number: int) -> str:
    for rev in dep.get("revisions", []):
        if rev.get("number") == number and rev.get("error"):
            return str(rev.get("error"))
    return str(dep.get("error") or "") if dep.get("revision") == number else ""


def _hosts(dep: Deployment) -> str:
    """Where it runs: ``cam, gw``, or per partition ``cam, gw | cam2, gw2 (2 partitions)``."""
    placement = dep.get("placement") or {}
    names = _names(placement.get("steps", []))
    partitions = [p.get("devices", []) for p in dep.get("partitions") or []]
    if not partitions:
        partitions = [[step.get("device", "") for step in placement.get("steps", [])]]
    chains = []
    for devices in partitions:
        chosen: list[str] = []
        for device in devices:
            host = names.get(device, _short(device))
            if host not in chosen:
                chosen.append(host)
        chains.append(", ".join(chosen))
    if len(chains) > 1:
        return f"{' | '.join(chains)} ({len(chains)} partitions)"
    return chains[0]


async def cmd_deployments(ctx: Ctx, args: argparse.Namespace) -> int:
    deployments = await ctx.client.list_deployments()
    if ctx.json:
        return print_json(deployments)
    if not deployments:
        print("no deployments (`baton deploy FILE`)")
        return 0
    rows = [
        [
            d.get("name", ""),
            _short(d.get("id", "")),
            _text(d.get("revision")),
            _state(d.get("state")),
            _text(d.get("active")),
            _hosts(d),
            d.get("error") or "",
        ]
        for d in deployments
    ]
    print(table(["NAME", "ID", "REVISION", "STATE", "ACTIVE", "DEVICES", "ERROR"], rows))
    return 0


async def cmd_status(ctx: Ctx, args: argparse.Namespace) -> int:
    dep = await ctx.client.get_deployment(args.deployment)
    if ctx.json:
        return print_json(dep)
    print(format_status(dep))
    return 0


def format_status(dep: Deployment) -> str:
    lines = [
        f"deployment  {dep.get('name', '?')}",
        f"id          {dep.get('id', '?')}",
        f"revision    {dep.get('revision', '?')} ({_state(dep.get('state'))})",
        f"active      {_text(dep.get('active')) or 'none'}",
    ]
    if dep.get("error"):
        step = f" at step {dep.get('failedStep')}" if dep.get("failedStep") else ""
        lines.append(f"error       {dep.get('error')}{step}")
    placement = dep.get("placement")
    names = _names(placement.get("steps", [])) if placement else {}
    lines += ["", "PLACEMENT"]
    if placement and len(dep.get("partitions") or []) > 1:
        placement = cast(Placement, {**placement, "partitions": dep.get("partitions")})
    lines.append(explain_placement(placement) if placement else "  not placed yet")
    jobs = dep.get("jobs") or {}
    lines += ["", "JOBS"]
    if jobs:
        rows = []
        # A job key is the device id, "#<k>" added for partition k >= 1.
        parted = any("#" in key for key in jobs)
        for key, job in sorted(jobs.items()):
            device, _, partition = key.partition("#")
            scheduled, current = _digest(job.get("scheduled")), _digest(job.get("current"))
            rows.append(
                [
                    names.get(device, ""),
                    _short(device),
                    *([partition or "0"] if parted else []),
                    _short(scheduled) or "-",
                    _short(current) or "-",
                    "yes" if scheduled == current else "no",
                ]
            )
        head = ["DEVICE", "ID", *(["PARTITION"] if parted else []), "SCHEDULED", "CURRENT"]
        lines.append(_indent(table([*head, "IN SYNC"], rows)))
    else:
        lines.append("  none")
    revisions = dep.get("revisions") or []
    if revisions:
        rows = [
            [
                _text(r.get("number")),
                _state(r.get("state")),
                _short(r.get("digest", "")),
                r.get("error") or "",
            ]
            for r in revisions
        ]
        lines += ["", "REVISIONS", _indent(table(["REV", "STATE", "DIGEST", "ERROR"], rows))]
    events = dep.get("events") or []
    lines += ["", "EVENTS"]
    if events:
        rows = []
        previous: float | None = None
        for e in events:
            at = e.get("at")
            delta = f"+{at - previous:.3f}s" if at is not None and previous is not None else ""
            previous = at if at is not None else previous
            rows.append(
                [
                    _time(at),
                    delta,
                    _text(e.get("revision")),
                    f"{_state(e.get('from'))} -> {_state(e.get('to'))}",
                    e.get("event", ""),
                    " ".join(
                        x
                        for x in (
                            f"step {e['step']}" if e.get("step") else "",
                            e.get("reason") or "",
                        )
                        if x
                    ),
                ]
            )
        lines.append(
            _indent(table(["TIME", "DELTA", "REV", "TRANSITION", "EVENT", "DETAIL"], rows))
        )
    else:
        lines.append("  none")
    return "\n".join(lines)


async def cmd_undeploy(ctx: Ctx, args: argparse.Namespace) -> int:
    answer = await ctx.client.undeploy(args.deployment)
    if ctx.json:
        return print_json(answer)
    print(f"removed deployment {args.deployment} from every device")
    return 0


# --- placement explanation ---------------------------------------------------------------------


def explain_placement(result: PlacementResult) -> str:
    """Per step, the chosen device and every candidate with its score or rejection reasons."""
    if result.get("type") == "infeasible":
        infeasible = cast(Infeasible, result)
        candidates = infeasible.get("candidates", [])
        head = (
            f"step {result.get('step', '?')}  {result.get('module', '?')}.{result.get('func', '?')}"
            f"  -> cannot be placed"
        )
        return "\n".join(
            [
                f"infeasible: {result.get('message', 'the manifest cannot be placed')}",
                "",
                head,
                _indent(candidate_table(candidates, chosen=None)),
            ]
        )
    steps = cast(Placement, result).get("steps", [])
    names = _names(steps)
    blocks = []
    for step in steps:
        device = step.get("device", "")
        who = names.get(device, "")
        head = (
            f"step {step.get('index', '?')}  {step.get('module', '?')}.{step.get('func', '?')}"
            f"  -> {who} ({_short(device)})"
            if who
            else f"step {step.get('index', '?')}  {step.get('module', '?')}.{step.get('func', '?')}"
            f"  -> {_short(device)}"
        )
        if step.get("kept"):
            head += "  (kept: it runs there now and still qualifies)"
        blocks.append(head + "\n" + _indent(candidate_table(step.get("candidates", []), device)))
    partitions = cast(Placement, result).get("partitions") or []
    if len(partitions) > 1:
        blocks.append(
            "partitions (the explanation above is partition 0's):\n"
            + "\n".join(
                f"  {p.get('partition', '?')}: "
                + " -> ".join(names.get(d, _short(d)) for d in p.get("devices", []))
                for p in partitions
            )
        )
    return "\n\n".join(blocks) if blocks else "no steps"


PART_ORDER = ("cpu", "memory", "rtt", "colocation", "spread")


def candidate_table(candidates: Iterable[Candidate], chosen: str | None) -> str:
    candidates = list(candidates)
    parts = [p for p in PART_ORDER if any(p in (c.get("parts") or {}) for c in candidates)]
    parts += sorted({p for c in candidates for p in c.get("parts") or {}} - set(parts))
    rows = []
    for c in candidates:
        feasible = bool(c.get("feasible"))
        values = c.get("parts") or {}
        if feasible:
            verdict = "chosen" if c.get("device") == chosen else "feasible"
        else:
            verdict = "rejected: " + ("; ".join(c.get("reasons", [])) or "no reason given")
        rows.append(
            [
                c.get("name", ""),
                _short(c.get("device", "")),
                f"{c.get('score', 0.0):.3f}" if feasible else "-",
                *[f"{values[p]:.3f}" if feasible and p in values else "-" for p in parts],
                verdict,
            ]
        )
    if not rows:
        return "(no devices)"
    headers = ["DEVICE", "ID", "SCORE", *[p.upper() for p in parts], "VERDICT"]
    return table(headers, rows, right={2, *range(3, 3 + len(parts))})


def _names(steps: Iterable[StepPlacement]) -> dict[str, str]:
    """Device id -> name, from the candidates a placement lists."""
    return {
        c.get("device", ""): c.get("name", "")
        for step in steps
        for c in step.get("candidates", [])
        if c.get("device")
    }


# --- executions --------------------------------------------------------------------------------


async def cmd_run(ctx: Ctx, args: argparse.Namespace) -> int:
    files = {mount: _read(Path(path)) for mount, path in args.file}
    execution = await ctx.client.execute(
        args.deployment, dict(args.arg), files or None, asynchronous=args.asynchronous
    )
    if ctx.json:
        print_json(execution)
    elif args.asynchronous:
        ident = execution.get("id", "?")
        print(
            f"execution {ident} is {execution.get('status', 'running')}; "
            f"follow it with `baton trace {ident}`"
        )
    else:
        print(format_execution(execution, ctx.url))
    return _execution_exit(execution)


async def cmd_trace(ctx: Ctx, args: argparse.Namespace) -> int:
    execution = await ctx.client.get_execution(args.execution)
    if ctx.json:
        print_json(execution)
    else:
        print(format_execution(execution, ctx.url))
    return _execution_exit(execution)


def _execution_exit(execution: Execution) -> int:
    if execution.get("status") == "failed":
        _error(
            f"execution {execution.get('id', '?')} failed: "
            f"{execution.get('error') or 'no reason given'}"
        )
        return 1
    return 0


def format_execution(execution: Execution, base_url: str = "") -> str:
    status = execution.get("status", "?")
    lines = [f"execution  {execution.get('id', '?')} ({status}, {_ms(execution.get('ms'))} ms)"]
    if status == "done":
        lines.append(f"value      {_value(execution.get('value'))}")
    elif status == "failed":
        lines.append(f"error      {execution.get('error') or 'no reason given'}")
    for link in execution.get("outputs") or []:
        absolute = base_url + link if link.startswith("/") and base_url else link
        lines.append(f"output     {absolute}")
    trace = execution.get("trace") or []
    if trace:
        rows = [
            [
                str(i),
                hop.get("device") or "?",
                hop.get("requestId") or "-",
                _ms(hop.get("ms")),
                {True: "ok", False: "failed", None: "-"}.get(hop.get("success"), "-"),
            ]
            for i, hop in enumerate(trace, start=1)
        ]
        lines += ["", table(["HOP", "DEVICE", "REQUEST ID", "MS", "RESULT"], rows, right={0, 3})]
    return "\n".join(lines)


# --- simulate ------------------------------------------------------------------------------------


async def cmd_simulate(ctx: Ctx, args: argparse.Namespace) -> int:
    """Run the fleet in the foreground; 0 after a stop signal (see the module docstring)."""
    spec = simulate.Spec(
        count=args.count,
        profiles=tuple(Path(p) for p in args.profile),
        host=args.host,
        base_port=args.base_port,
        state_root=Path(args.state_root) if args.state_root else None,
        orchestrator_url=_url(args.orchestrator, "--orchestrator")
        if args.orchestrator
        else ctx.url,
        token=ctx.client.token,
        mdns=args.mdns,
        name_prefix=args.name_prefix,
        wait_s=args.wait,
        ready_file=Path(args.ready_file) if args.ready_file else None,
    )

    def ready(fleet: simulate.Ready) -> None:
        # Flushed: a script reading a pipe learns at once that the fleet is up.
        if ctx.json:
            print(json.dumps(fleet.to_json(), indent=2), flush=True)
            return
        print(format_fleet(fleet), flush=True)

    try:
        await simulate.run(spec, on_ready=ready, progress=_note)
    except simulate.SpecError as err:
        raise UsageError(str(err)) from None
    except simulate.SimulationError as err:
        raise CliError(str(err)) from None
    return 0


def format_fleet(fleet: simulate.Ready) -> str:
    """The fleet's table and the ready line that ends it."""
    rows = [
        [
            d.name,
            _short(d.id),
            d.url,
            str(d.pid),
            d.profile.name if d.profile else "-",
        ]
        for d in fleet.devices
    ]
    via = {
        "direct": "registered themselves with",
        "mdns": "advertised over mDNS to",
    }[fleet.registration]
    if fleet.listed:
        where = f"{via} {fleet.orchestrator_url} and listed healthy"
    else:
        where = f"not (yet) listed by {fleet.orchestrator_url or 'any orchestrator'}"
    kept = "removed on exit" if fleet.temporary else "kept"
    return (
        table(["NAME", "ID", "URL", "PID", "PROFILE"], rows, right={3})
        + f"\nready: {len(fleet.devices)} devices up in {fleet.seconds:.1f} s, {where}; "
        f"state and logs in {fleet.state_root} ({kept}); Ctrl-C or SIGTERM stops them"
    )


def _note(message: str) -> None:
    """Progress on stderr, so that stdout holds only the table or the JSON."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- output helpers ----------------------------------------------------------------------------


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line if line else line for line in text.splitlines())


def _short(ident: str) -> str:
    return ident[:SHORT_ID]


def _digest(value: Any) -> str:
    """A content digest without its ``sha256:`` prefix, so both spellings compare equal."""
    return "" if value is None else str(value).removeprefix("sha256:")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _state(value: Any) -> str:
    return str(value).upper() if value else "-"


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _time(at: float | None) -> str:
    if at is None:
        return "-"
    try:
        return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return str(at)


def _ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}") from err
