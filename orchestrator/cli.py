"""The ``baton`` CLI and the ``baton-orchestrator`` daemon entry point.

The orchestrator (discovery, placement, deployments, executions) is being built next; until
it lands these commands say so plainly instead of pretending to work.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

NOT_YET = (
    "the Baton orchestrator is not part of this release yet; drive supervisors directly "
    "through their HTTP API (see README, 'The supervisor protocol')"
)


def main(argv: Sequence[str] | None = None) -> int:
    print(f"baton: {NOT_YET}", file=sys.stderr)
    return 2


def orchestrator_main(argv: Sequence[str] | None = None) -> int:
    print(f"baton-orchestrator: {NOT_YET}", file=sys.stderr)
    return 2
