"""``baton simulate``: run a fleet of real supervisor processes on this machine.

::

    baton simulate [--profile FILE ...] [--count N] [--base-port P] [--state-root DIR]
                   [--orchestrator URL] [--mdns] [--name-prefix P] [--ready-file PATH]

The fleet (:mod:`orchestrator.simulate`) runs in the foreground until SIGINT or SIGTERM;
the command exits 0 after stopping it, 1 if a device died or the fleet did not come up
(:class:`~orchestrator.cli_common.CliError`), 2 for unusable options
(:class:`~orchestrator.cli_common.UsageError`). Progress goes to stderr, so stdout holds only
the fleet's table (or its JSON) once it is ready.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator import simulate
from orchestrator.cli_common import (
    PROG,
    CliError,
    Command,
    CommandCtx,
    UsageError,
    orchestrator_url,
    positive,
    short,
    table,
)

__all__ = ["add_commands", "format_fleet"]


def add_commands(command: Command) -> None:
    """Register ``baton simulate`` with the CLI's ``command(name, handler, help, on=sub)``."""
    sim = command(
        "simulate",
        cmd_simulate,
        "run a fleet of simulated supervisors on this machine until Ctrl-C or SIGTERM",
    )
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
        type=positive,
        default=60.0,
        metavar="S",
        help="seconds to wait for every device to be up and listed (default 60)",
    )
    sim.add_argument(
        "--ready-file",
        metavar="PATH",
        help="write the fleet as JSON to PATH once ready (removed on exit)",
    )


async def cmd_simulate(ctx: CommandCtx, args: argparse.Namespace) -> int:
    """Run the fleet in the foreground; 0 after a stop signal (see the module docstring)."""
    spec = simulate.Spec(
        count=args.count,
        profiles=tuple(Path(p) for p in args.profile),
        host=args.host,
        base_port=args.base_port,
        state_root=Path(args.state_root) if args.state_root else None,
        orchestrator_url=orchestrator_url(args.orchestrator, "--orchestrator")
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
            short(d.id),
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
