"""Partitions: placing N independent copies of one pipeline, and choosing one per execution.

Pure. A manifest with ``partitions: N`` runs N copies of its whole chain. Copy ``k`` is
placed after copies ``0..k-1`` with every device they use *avoided* (rejected with a reason
naming the partition), so the copies land on distinct devices while the fleet has enough
capable ones. When it has not, copy ``k`` is placed again with those devices allowed but
counted as load, so it shares the least busy of them instead of failing: a partition is
worth having even on a shared device (its own endpoints and files, see ``orchestrator.jobs``),
and a small lab fleet must still be able to run a descriptor written for a factory.

Re-placing (failover, move back) passes where each partition runs now as ``keep``: a step
stays on its device while that device is still feasible for it, and a partition's devices are
avoided by the others, so a lost device moves only the partition it belonged to.

Each copy is an ordinary :class:`~orchestrator.placement.Placement`, explanations included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from orchestrator.model import DeviceView, Manifest, ModuleRecord
from orchestrator.placement import Infeasible, Placement, Weights, place

__all__ = ["choose_partition", "healthy_partitions", "place_partitions"]


def place_partitions(
    manifest: Manifest,
    modules: Mapping[str, ModuleRecord],
    devices: Sequence[DeviceView],
    weights: Weights = Weights(),  # noqa: B008 - frozen, so sharing the default is safe
    *,
    load: Mapping[str, int] | None = None,
    keep: Sequence[Sequence[str]] = (),
) -> list[Placement] | Infeasible:
    """One placement per partition (``manifest.partitions`` of them), or the first Infeasible.

    Partition 0 is placed exactly as :func:`~orchestrator.placement.place` would place the
    manifest alone, so a deployment without partitions is unaffected. ``keep[k]`` lists the
    devices partition ``k`` runs on now: each step stays on its device while that device is
    still feasible for it (failover moves only what it must).
    """
    placements: list[Placement] = []
    used: dict[str, int] = {}  # device id -> the first partition that uses it
    extra = dict(load or {})
    for k in range(manifest.partitions):
        prefer = keep[k] if k < len(keep) else ()
        # Devices another partition runs on now, or got in this placement; never its own.
        taken = {d: j for j, chain in enumerate(keep) if j > k for d in chain} | used
        avoid = {
            d: f"runs partition {j} of this deployment" for d, j in taken.items() if d not in prefer
        }
        result = place(manifest, modules, devices, weights, load=extra, avoid=avoid, prefer=prefer)
        if isinstance(result, Infeasible) and avoid:
            # Not enough distinct devices: share, steered to the least used by the load.
            result = place(manifest, modules, devices, weights, load=extra, prefer=prefer)
        if isinstance(result, Infeasible):
            if k:
                return msgspec.structs.replace(result, message=f"partition {k}: {result.message}")
            return result
        placements.append(result)
        for device in result.devices():
            used.setdefault(device, k)
            extra[device] = extra.get(device, 0) + 1
    return placements


def healthy_partitions(
    partitions: Sequence[Sequence[str]], unhealthy: frozenset[str] | set[str]
) -> list[int]:
    """Indexes of the partitions none of whose devices is in ``unhealthy``."""
    return [k for k, devices in enumerate(partitions) if not unhealthy.intersection(devices)]


def choose_partition(
    partitions: Sequence[Sequence[str]], unhealthy: frozenset[str] | set[str], turn: int
) -> int:
    """The partition execution number ``turn`` starts on: round robin over the healthy ones.

    When none is healthy, round robin over all of them: the execution then fails fast naming
    the device, which says more than refusing to try.
    """
    if not partitions:
        raise ValueError("no partitions")
    healthy = healthy_partitions(partitions, unhealthy) or list(range(len(partitions)))
    return healthy[turn % len(healthy)]
