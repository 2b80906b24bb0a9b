"""Placement: which device runs each step of a manifest, and why every other device does not.

Theory of operation
-------------------
``place`` is a pure function (no I/O, clock, randomness or global state): the same manifest,
modules, devices, weights and load always give the same answer, whatever order ``devices``
comes in. It walks the manifest's steps in order (greedy) and, for each step, looks at every
device in two passes:

1. **Filter.** A device is *feasible* for a step when all of these hold; otherwise every
   failed requirement is recorded as a human-readable reason (all of them, not the first):

   - the step's module is known and has the function (described in ``functions``, or at least
     exported from the binary);
   - the device offers every host function the module imports (``module.host_imports()`` is a
     subset of ``device.interfaces``; wasmiot matches import *names* only);
   - if the step is pinned (``step.device``), the device's id or name is that pin;
   - every ``constraints.labels`` entry is equal in ``device.labels``, and the device's zone is
     in ``constraints.zones`` when that list is non-empty;
   - the device is ``healthy`` and not cordoned;
   - the device does not already run the same ``module.func`` for an earlier step: a wasmiot
     deployment document can route only one (module, function) per device, so repeating a
     function in a pipeline needs a second device. Modules are compared by record *name*,
     since two versions of one module would share the device's ``/{module}/{func}`` route.

2. **Score** the feasible devices (higher is better) as the sum of these parts, each reported
   in ``Candidate.parts`` so an operator can see why one device beat another:

   - ``cpu``: ``weights.cpu * (1 - cpu)`` and ``memory``: ``weights.memory * (1 - memory)``,
     the headroom, with usage clamped to 0..1 (NaN counts as fully used);
   - ``rtt``: ``weights.rtt / (1 + rtt_ms / 10)``, so 0 ms earns the full weight and 10 ms
     half. An unmeasured RTT earns 0: a device we have never reached must not outrank one we
     know answers, and the orchestrator measures every device on its first health check;
   - ``colocation``: ``weights.colocation`` on the device chosen for the previous step (the
     chain's hop then stays on the device instead of crossing the network), else 0. A
     manifest with ``spread`` turns this around: every device chosen for an earlier step of
     the manifest gets ``-weights.colocation``, so each step goes to a fresh device while one
     is feasible, and back to a used one (the least bad) only when none is;
   - ``spread``: ``-weights.spread * (device.deployments + load[device.id])``, steering new
     work away from busy devices; ``load`` lets a caller count placements not yet recorded.

   The device with the highest score wins; ties go to the smallest device id.

The result is a ``Placement`` with, for every step, the chosen device and a ``Candidate`` for
every device (best first: feasible by score then id, then infeasible by id), or ``Infeasible``
for the first step no device can take, again with every device's reasons.

Greedy is not complete: an earlier unpinned step may take the only device a later pinned step
could use for the same function. Pipelines are short and such conflicts rare; the explanation
then names the earlier step, so the user can pin it elsewhere.

Cost is O(steps x devices) plus one sort of the devices: facts that do not change between
steps (constraints, status, score without co-location, missing imports per module, the
resulting Candidate) are worked out once, and a Candidate whose verdict repeats is one shared
object, so the result must be treated as read-only. About 65 ms for 10 steps over 10,000
devices on a laptop-class CPU; the orchestrator's budget is 100 ms.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from orchestrator.model import DeviceView, Manifest, ModuleRecord, Step

__all__ = ["Candidate", "Infeasible", "Placement", "StepPlacement", "Weights", "place"]


class Weights(msgspec.Struct, frozen=True):
    """Relative importance of each score part; every weight must be a finite number."""

    cpu: float = 1.0
    memory: float = 1.0
    rtt: float = 0.5
    colocation: float = 2.0
    spread: float = 0.25

    def __post_init__(self) -> None:
        # A NaN weight would make scores incomparable and the result depend on device order.
        for field in self.__struct_fields__:
            if not math.isfinite(getattr(self, field)):
                raise ValueError(f"weight {field} must be a finite number")


class Candidate(msgspec.Struct, frozen=True):
    """One device judged for one step: feasible with a score, or rejected with reasons."""

    device: str  # device id
    name: str
    feasible: bool
    reasons: list[str]  # why it was rejected; empty when feasible
    score: float  # 0.0 when infeasible
    parts: dict[str, float]  # score components by name; empty when infeasible


class StepPlacement(msgspec.Struct, frozen=True):
    """Where step ``index`` runs, and every device's candidacy, best first then by id."""

    index: int
    module: str
    func: str
    device: str
    candidates: list[Candidate]
    kept: bool = False  # on the device asked for by ``prefer``, though not the best score


class Placement(msgspec.Struct, frozen=True, tag="placement"):
    """Every step placed, in manifest order."""

    steps: list[StepPlacement]

    def devices(self) -> list[str]:
        """The chosen device id of each step, in step order."""
        return [step.device for step in self.steps]


class Infeasible(msgspec.Struct, frozen=True, tag="infeasible"):
    """The first step that cannot be placed, with every device's reasons (sorted by id)."""

    step: int
    module: str
    func: str
    candidates: list[Candidate]
    message: str


def place(
    manifest: Manifest,
    modules: Mapping[str, ModuleRecord],
    devices: Sequence[DeviceView],
    weights: Weights = Weights(),  # noqa: B008 - frozen, so sharing the default is safe
    *,
    load: Mapping[str, int] | None = None,
    avoid: Mapping[str, str] | None = None,
    prefer: Sequence[str | None] | None = None,
) -> Placement | Infeasible:
    """Place every step of ``manifest`` on one of ``devices``, greedily in step order.

    ``modules`` is keyed by each step's ``module`` string exactly as written in the manifest.
    ``avoid`` rejects devices (id -> the reason shown) for every step, e.g. those another
    partition of the same deployment already runs on. ``prefer[i]``, when feasible for step
    ``i``, is chosen for it whatever its score (``kept`` in the result): failover re-places a
    deployment, and the steps whose devices are fine should stay where they run.
    Raises ``ValueError`` if two devices share an id (the answer would depend on their order).
    Candidates whose verdict does not change between steps are one shared object: treat the
    result as read-only.
    """
    # Explanations for 10 steps over 10,000 devices are ~100,000 small objects, none in a
    # reference cycle; the cyclic collector would rescan the caller's whole heap many times
    # over for nothing (a third of the time in the benchmark). Pause it, restore it after.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _place(manifest, modules, devices, weights, load or {}, avoid or {}, prefer or ())
    finally:
        if paused:
            gc.enable()


def _place(  # noqa: PLR0917 - private, called once with place()'s arguments
    manifest: Manifest,
    modules: Mapping[str, ModuleRecord],
    devices: Sequence[DeviceView],
    weights: Weights,
    load: Mapping[str, int],
    avoid: Mapping[str, str],
    prefer: Sequence[str | None],
) -> Placement | Infeasible:
    fleet = _Fleet(manifest, devices, weights, load, avoid)
    runs: dict[tuple[str, str], dict[int, int]] = {}  # (module name, func) -> device -> step
    steps: list[StepPlacement] = []
    previous: int | None = None  # position of the device chosen for the previous step
    used: dict[int, None] = {}  # positions chosen so far, in order (spread penalises them)
    for index, step in enumerate(manifest.sequence):
        record = modules.get(step.module)
        routed = step.module if record is None else record.name  # as the device routes it
        taken = runs.setdefault((routed, step.func), {})
        if manifest.spread:
            nudged, nudge = list(used), -weights.colocation
        else:
            nudged, nudge = ([] if previous is None else [previous]), weights.colocation
        feasible, rejected, common = fleet.judge(step, record, taken, nudged, nudge)
        if not feasible:
            message = _explain(index, step.module, step.func, common, len(fleet.ordered))
            return Infeasible(index, step.module, step.func, rejected, message)
        chosen, kept = feasible[0].device, False
        wanted = prefer[index] if index < len(prefer) else None
        if wanted is not None and wanted != chosen and any(c.device == wanted for c in feasible):
            chosen, kept = wanted, True
        candidates = feasible + rejected
        steps.append(StepPlacement(index, step.module, step.func, chosen, candidates, kept))
        previous = fleet.position[chosen]
        used[previous] = None
        taken[previous] = index
    return Placement(steps)


class _Fleet:
    """The devices in id order, with every fact about them that does not depend on the step.

    Working these out once per ``place`` call (fixed reasons, score without co-location, the
    Candidate most steps reuse as is, the order by score) keeps 10 steps over 10,000 devices
    within the orchestrator's 100 ms budget: a step then only revisits devices it affects.
    """

    def __init__(
        self,
        manifest: Manifest,
        devices: Sequence[DeviceView],
        weights: Weights,
        load: Mapping[str, int],
        avoid: Mapping[str, str] | None = None,
    ) -> None:
        self.ordered = sorted(devices, key=lambda d: d.id)
        for before, after in itertools.pairwise(self.ordered):
            if before.id == after.id:
                raise ValueError(f"device id {before.id} appears twice")
        self.weights = weights
        self.position = {d.id: i for i, d in enumerate(self.ordered)}
        labels = sorted(manifest.constraints.labels.items())
        zones = manifest.constraints.zones
        self.fixed = [_fixed_reasons(d, labels, zones) for d in self.ordered]
        for i, device in enumerate(self.ordered):
            # The core device hosts every partition's built-in steps (their device-side ids
            # differ), so it is never avoided.
            if avoid and device.id in avoid and not device.core:
                self.fixed[i].append(avoid[device.id])
        self.base = [_base_parts(d, weights, load.get(d.id, 0)) for d in self.ordered]
        self.usual = [
            Candidate(d.id, d.name, False, reasons, 0.0, {})
            if reasons
            else Candidate(d.id, d.name, True, [], total, parts)
            for d, reasons, (parts, total) in zip(self.ordered, self.fixed, self.base, strict=True)
        ]
        self.usable = [not reasons for reasons in self.fixed]
        # Best first; ids are already ascending and the sort is stable, so ties stay by id.
        self.by_score = sorted(range(len(self.ordered)), key=lambda i: -self.base[i][1])
        self._lacking: dict[str, dict[int, str]] = {}
        self._rejects: dict[tuple[int, tuple[str, ...]], Candidate] = {}

    def lacking(self, key: str, record: ModuleRecord) -> dict[int, str]:
        """By device position, why it cannot satisfy ``record``'s imports (absent if it can)."""
        if key not in self._lacking:
            self._lacking[key] = _lacking(record, self.ordered)
        return self._lacking[key]

    def _rejected(self, i: int, because: tuple[str, ...]) -> Candidate:
        """Device ``i`` rejected for ``because`` and its fixed reasons, shared across steps."""
        key = (i, because)
        if key not in self._rejects:
            device = self.ordered[i]
            reasons = [*because, *self.fixed[i]]
            self._rejects[key] = Candidate(device.id, device.name, False, reasons, 0.0, {})
        return self._rejects[key]

    def judge(
        self,
        step: Step,
        record: ModuleRecord | None,
        taken: Mapping[int, int],
        nudged: Sequence[int],
        nudge: float,
    ) -> tuple[list[Candidate], list[Candidate], list[str]]:
        """Feasible candidates best first, rejected ones by id, and reasons shared by all.

        The devices at positions ``nudged`` get ``nudge`` as their co-location part.
        """
        common: list[str] = []
        lacking: dict[int, str] = {}
        if record is None:
            common.append(f"module {step.module} is unknown")
        else:
            if step.func not in record.functions and step.func not in record.exports:
                common.append(f"module {step.module} has no function '{step.func}'")
            lacking = self.lacking(step.module, record)
        everyone = range(len(self.ordered))
        # Only these devices can have a reason specific to this step; the rest keep ``usual``.
        suspects: Iterable[int] = everyone
        if not common and step.device is None:
            suspects = sorted(lacking.keys() | taken.keys())
        candidates = list(self.usual)
        ok = list(self.usable)
        for i in suspects:
            device = self.ordered[i]
            reasons = list(common)
            if i in lacking:
                reasons.append(lacking[i])
            if step.device is not None and step.device not in (device.id, device.name):
                reasons.append(f"not pinned (step pinned to {step.device})")
            if i in taken:
                routed = record.name if record is not None else step.module
                reasons.extend(self.fixed[i])
                reasons.append(f"already runs {routed}.{step.func} for step {taken[i]}")
                candidates[i] = Candidate(device.id, device.name, False, reasons, 0.0, {})
                ok[i] = False
            elif reasons:
                # Missing imports and pins reject the same devices for the same words in
                # many steps: reuse one Candidate per (device, reasons) across steps.
                candidates[i] = self._rejected(i, tuple(reasons))
                ok[i] = False

        moved = set(nudged)
        feasible = [candidates[i] for i in self.by_score if ok[i] and i not in moved]
        for i in nudged:
            if not ok[i]:
                continue
            # Co-location moves a few devices' scores: put each in its place in the order.
            device = self.ordered[i]
            parts = {**self.base[i][0], "colocation": nudge}
            nudged_one = Candidate(device.id, device.name, True, [], _total(parts), parts)
            feasible.insert(bisect.bisect_left(feasible, _rank(nudged_one), key=_rank), nudged_one)
        rejected = [candidates[i] for i in everyone if not ok[i]]
        return feasible, rejected, common


def _rank(candidate: Candidate) -> tuple[float, str]:
    return (-candidate.score, candidate.device)


def _fixed_reasons(
    device: DeviceView, labels: Sequence[tuple[str, str]], zones: Sequence[str]
) -> list[str]:
    """Reasons that reject ``device`` for every step: constraints and status.

    Label and zone constraints say where a pipeline's *devices* may be; they do not apply to
    the orchestrator's core device, so a pipeline constrained to ``role=sensor`` can still
    end with a built-in step (which runs only there).
    """
    reasons: list[str] = []
    if device.core:
        labels, zones = (), ()
    for key, wanted in labels:
        has = device.labels.get(key)
        if has is None:
            reasons.append(f"label {key}={wanted} required, has no {key}")
        elif has != wanted:
            reasons.append(f"label {key}={wanted} required, has {key}={has}")
    if zones and device.zone not in zones:
        where = "no zone" if device.zone is None else f"zone {device.zone}"
        reasons.append(f"{where} not in [{', '.join(zones)}]")
    if device.status != "healthy":
        reasons.append(f"is {device.status}")
    if device.cordoned:
        reasons.append("is cordoned")
    return reasons


CORE_ONLY = "built-in package: runs only on the orchestrator"
WASM_ONLY = "the orchestrator runs only built-in packages"


def _lacking(record: ModuleRecord, ordered: Sequence[DeviceView]) -> dict[int, str]:
    """By device position, why it cannot run ``record``: a built-in (``runtime == "core"``)
    package runs only on the core device and nothing else does; otherwise the host imports
    a device lacks."""
    out: dict[int, str] = {}
    if record.runtime == "core":
        return {i: CORE_ONLY for i, device in enumerate(ordered) if not device.core}
    # Usually no device, or one, is the core device.
    out.update((i, WASM_ONLY) for i, device in enumerate(ordered) if device.core)
    needed = record.host_imports()
    if not needed:
        return out
    # Fleets are mostly a few kinds of device: judge each distinct interface set once.
    verdicts: dict[frozenset[str], str] = {}
    for i, device in enumerate(ordered):
        if device.core:
            continue
        verdict = verdicts.get(device.interfaces)
        if verdict is None:
            missing = needed - device.interfaces
            verdict = f"lacks host functions {', '.join(sorted(missing))}" if missing else ""
            verdicts[device.interfaces] = verdict
        if verdict:
            out[i] = verdict
    return out


def _unit(x: float) -> float:
    """Clamp a usage fraction to 0..1; NaN (unknown) counts as fully used, the safe side."""
    if x >= 0.0:
        return min(x, 1.0)
    return 0.0 if x < 0.0 else 1.0


def _base_parts(device: DeviceView, weights: Weights, extra: int) -> tuple[dict[str, float], float]:
    """Score parts of ``device`` when it is not co-located, and their total."""
    rtt = device.rtt_ms
    # Unmeasured earns 0 (see the module docstring); a negative RTT is a clock glitch.
    rtt_part = 0.0 if rtt is None or math.isnan(rtt) else weights.rtt / (1 + max(rtt, 0.0) / 10)
    # Negative counts are nonsense from a caller; they must not reward a device.
    busy = max(device.deployments, 0) + max(extra, 0)
    parts = {
        "cpu": weights.cpu * (1.0 - _unit(device.cpu)),
        "memory": weights.memory * (1.0 - _unit(device.memory)),
        "rtt": rtt_part,
        "colocation": 0.0,
        "spread": 0.0 - weights.spread * busy,  # not -w*n: that reports -0.0 for idle devices
    }
    return parts, _total(parts)


def _total(parts: Mapping[str, float]) -> float:
    # Always summed in the same order, so equal parts give bit-identical totals.
    return parts["cpu"] + parts["memory"] + parts["rtt"] + parts["colocation"] + parts["spread"]


def _explain(index: int, module: str, func: str, common: list[str], count: int) -> str:
    where = f"step {index} ({module}.{func})"
    if count == 0:
        return f"{where} cannot be placed: no devices are known"
    if common:
        return f"{where} cannot be placed: {'; '.join(common)}"
    return f"{where} cannot be placed: none of {count} devices qualifies"
