"""Health hysteresis: when a device counts as ``lost`` and when it is ``healthy`` again.

Pure: no I/O, no clock. The monitor feeds one boolean per health check into :func:`observe`
and acts on the returned "changed" flag. Hysteresis avoids flapping: one dropped packet must
not trigger a failover, and one lucky answer from a dying device must not move work back.

Contract (``lost_after`` and ``back_after`` are both >= 1):

- a ``healthy`` device becomes ``lost`` exactly when its run of consecutive failures reaches
  ``lost_after``;
- a ``lost`` device becomes ``healthy`` exactly when its run of consecutive successes reaches
  ``back_after``;
- a success resets the failure run to 0 and a failure resets the success run to 0, so a
  single observation of the other kind breaks a run;
- nothing else changes the status.

The reference orchestrator used 5 and 5 at a 15 s interval (~75 s to notice an outage);
Baton makes interval and thresholds configurable (the monitor's defaults detect in ~15 s).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["HealthState", "Status", "observe"]

Status = Literal["healthy", "lost"]


class HealthState(msgspec.Struct, frozen=True):
    """A device's liveness and the current run of equal observations.

    A newly found device starts ``healthy`` with empty runs: it has just answered its
    description request, which is as good as a health check for that moment.
    """

    status: Status = "healthy"
    ok_streak: int = 0
    fail_streak: int = 0


def observe(
    state: HealthState, ok: bool, *, lost_after: int, back_after: int
) -> tuple[HealthState, bool]:
    """Fold one health-check outcome into ``state``; return the new state and whether the
    status changed.

    Uses ``>=`` rather than ``==`` for the thresholds so that a state persisted under larger
    thresholds (the configuration changed between runs) still converges at the next check.
    Raises ``ValueError`` when a threshold is below 1 (a 0 would make every status change
    happen without evidence).
    """
    if lost_after < 1 or back_after < 1:
        raise ValueError(
            f"thresholds must be >= 1 (lost_after={lost_after}, back_after={back_after})"
        )
    if ok:
        ok_streak, fail_streak = state.ok_streak + 1, 0
        status: Status = state.status
        if status == "lost" and ok_streak >= back_after:
            status = "healthy"
    else:
        ok_streak, fail_streak = 0, state.fail_streak + 1
        status = state.status
        if status == "healthy" and fail_streak >= lost_after:
            status = "lost"
    new = HealthState(status=status, ok_streak=ok_streak, fail_streak=fail_streak)
    return new, status != state.status
