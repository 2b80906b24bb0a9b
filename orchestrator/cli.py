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

``baton simulate`` (:mod:`orchestrator.cli_simulate`) is the one command that does not only
talk to the orchestrator: it runs a fleet of real supervisor processes on this machine
until SIGINT or SIGTERM, and exits 0 after stopping them, 1 if one died or the fleet did not
come up, 2 for unusable options.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import (
    cli_app,
    cli_deploy,
    cli_env,
    cli_modules,
    cli_results,
    cli_run,
    cli_simulate,
)
from orchestrator.cli_common import (
    DEFAULT_URL,
    PROG,
    CliError,
    UsageError,
    as_text,
    orchestrator_url,
    positive,
    print_error,
    print_json,
    short,
    table,
)
from orchestrator.client import ApiError, OrchestratorClient
from orchestrator.tls import TlsError, client_context


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
        url = orchestrator_url(getattr(args, "url", None))
        token = _token(getattr(args, "token_file", None))
        context = _ssl_context(getattr(args, "ca", None))
        return asyncio.run(_run(handler, args, url, token, context))
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except ApiError as err:
        print_error(_describe(err))
        return 1
    except CliError as err:
        print_error(str(err))
        return 1
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except BrokenPipeError:  # `baton devices | head`
        return 1
    except Exception as err:  # noqa: BLE001 - the CLI promises a message, never a traceback
        print_error(f"unexpected {type(err).__name__}: {err}")
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
        type=positive,
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

    # The other commands live in their own modules; registered in the order `--help` lists them.
    cli_modules.add_commands(command)  # baton modules list|push
    cli_app.add_commands(command)  # baton app build|validate|push|list|show
    cli_env.add_commands(command)  # baton env list|show|set|delete
    cli_results.add_commands(command)  # baton results [DEPLOYMENT]
    cli_deploy.add_commands(command)  # baton deploy | deployments | status
    cli_run.add_commands(command)  # baton run | trace
    command("undeploy", cmd_undeploy, "remove a deployment from every device").add_argument(
        "deployment", metavar="ID", help="deployment id or name"
    )
    cli_simulate.add_commands(command)  # baton simulate
    return parser


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
            short(d.get("id", "")),
            d.get("status", ""),
            d.get("url", ""),
            as_text(d.get("apiVersion")),
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
    return f"{device.get('name', '?')} ({short(str(device.get('id', '?')))})"


async def cmd_undeploy(ctx: Ctx, args: argparse.Namespace) -> int:
    answer = await ctx.client.undeploy(args.deployment)
    if ctx.json:
        return print_json(answer)
    print(f"removed deployment {args.deployment} from every device")
    return 0


# --- output helpers ----------------------------------------------------------------------------


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
