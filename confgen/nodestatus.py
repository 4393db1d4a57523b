"""CalicoNodeStatus requests: the resource's spec, validated, and their separation from confgen's view.

Stage: between the datastore syncer and the confgen loop. ``StatusSplitter`` wraps the syncer: every
snapshot's CalicoNodeStatus resources go to the node-status reporter (``bgp.nodestatus_writer``) as
validated specs, and the rest of the snapshot goes on to confgen only when that rest changed.

Owns: ``NodeStatusSpec`` (node, classes, updatePeriodSeconds) and its parser, which ``calico-bgp apply``
uses too; which requests name this node; the last valid spec of each request.

Complicating factors:
- The daemon writes the ``status`` of these resources itself, and the syncer watches them, so every status
  write comes back as a snapshot. The BGP configuration must not depend on them at all: confgen receives
  snapshots without the kind, and a snapshot whose remainder equals the previous one is not passed on (no
  recompute, no render). The reporter sees only specs, so its own status writes never restart a writer.
- Calico's spec (v3.22+): ``node`` (required), ``classes`` (each of Agent, BGP, Routes, no repeats),
  ``updatePeriodSeconds`` (required, 0-86400; 0 = the status is written once per spec change and never
  refreshed). Calico's reporter ignores a resource without a period, as this does.
- A request that turns invalid keeps its last valid spec in force (the daemon's rule for every resource);
  one this process never saw valid is ignored. Each problem is logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from confgen.datastore import keys
from confgen.datastore.base import Datastore, OnSnapshot, Snapshot
from confgen.validate import Reader, ValidationError, show

log = logging.getLogger(__name__)

KIND = "CalicoNodeStatus"
CLASSES = ("Agent", "BGP", "Routes")
MAX_UPDATE_PERIOD = 86400  # one day, Calico's bound


@dataclass(frozen=True)
class NodeStatusSpec:
    name: str
    node: str
    classes: tuple[str, ...]
    update_period: int  # seconds; 0 = write once per spec change, no refresh


def parse_node_status(name: str, raw: Any) -> NodeStatusSpec:
    """Validate one CalicoNodeStatus object (its spec; ``status`` is ours and never read)."""
    r = Reader(KIND, name, raw)
    node = r.get("spec.node", "")
    if not isinstance(node, str) or not node:
        raise r.error("spec.node", "is required (the name of the node that reports)")
    if len(node) > 253 or not node.isprintable() or "/" in node:
        raise r.error("spec.node", f"{show(node)} is not a node name")
    classes = r.get("spec.classes", None)
    if classes is None:
        raise r.error("spec.classes", f"is required (a list of {', '.join(CLASSES)})")
    if not isinstance(classes, list):
        raise r.error("spec.classes", f"{show(classes)} is not a list")
    for index, item in enumerate(classes):
        if item not in CLASSES:
            raise r.error(f"spec.classes[{index}]", f"{show(item)} is not one of {', '.join(CLASSES)}")
    if len(set(classes)) != len(classes):
        raise r.error("spec.classes", "names a class more than once")
    period = r.integer("spec.updatePeriodSeconds", 0, MAX_UPDATE_PERIOD)
    if period is None:
        raise r.error("spec.updatePeriodSeconds", f"is required (0-{MAX_UPDATE_PERIOD} seconds)")
    return NodeStatusSpec(name=name, node=node, classes=tuple(classes), update_period=period)


class NodeStatusRequests:
    """The valid requests naming one node, kept across snapshots (last valid version of each)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._valid: dict[str, NodeStatusSpec] = {}  # every request's last valid spec, whichever node
        self._logged: set[str] = set()

    def update(self, raw: Mapping[str, Any], broken: tuple[str, ...] = ()) -> dict[str, NodeStatusSpec]:
        """The requests for this node in ``raw`` ({name: stored object}); ``broken`` names the ones
        whose stored value could not even be decoded."""
        valid: dict[str, NodeStatusSpec] = {}
        problems: set[str] = set()
        for name in sorted(raw):
            try:
                valid[name] = parse_node_status(name, raw[name])
            except (ValidationError, ValueError, TypeError) as exc:
                problems.add(self._kept(name, str(exc), valid))
        for name in broken:
            problems.add(self._kept(name, f"{KIND} {show(name)}: its stored value cannot be decoded", valid))
        for problem in sorted(problems - self._logged):
            log.warning("%s", problem)
        self._logged = problems
        self._valid = valid
        return {name: spec for name, spec in valid.items() if spec.node == self.node}

    def _kept(self, name: str, message: str, valid: dict[str, NodeStatusSpec]) -> str:
        if name in self._valid:
            valid[name] = self._valid[name]
            return f"{message}; keeping its last valid version"
        return f"{message}; ignored"


def split_snapshot(snapshot: Snapshot) -> tuple[Snapshot, dict[str, Any], tuple[str, ...]]:
    """(the snapshot without CalicoNodeStatus, its CalicoNodeStatus objects, names of undecodable ones)."""
    resources = {kind: items for kind, items in snapshot.resources.items() if kind != KIND}
    prefix = keys.resource_prefix(KIND)
    errors = tuple(e for e in snapshot.errors if not e.startswith(prefix))
    broken = tuple(b for b in snapshot.broken if b[0] != KIND)
    rest = replace(snapshot, resources=resources, errors=errors, broken=broken)
    requested = dict(snapshot.resources.get(KIND, {}))
    undecodable = tuple(name for kind, name in snapshot.broken if kind == KIND)
    return rest, requested, undecodable


def _same_view(a: Snapshot, b: Snapshot) -> bool:
    # The revision always moves; only the content matters. Values the syncer did not touch are the same
    # objects, so this comparison is mostly identity checks.
    return (a.resources, a.affinities, a.errors, a.broken) == (b.resources, b.affinities, b.errors, b.broken)


class StatusSplitter:
    """A ``Datastore`` for confgen that takes CalicoNodeStatus out of the inner datastore's snapshots."""

    def __init__(
        self, inner: Datastore, node: str, on_requests: Callable[[dict[str, NodeStatusSpec]], None]
    ) -> None:
        self._inner = inner
        self._requests = NodeStatusRequests(node)
        self._on_requests = on_requests
        self._last: Snapshot | None = None
        self._last_specs: dict[str, NodeStatusSpec] | None = None
        self.skipped = 0  # snapshots not passed on because only CalicoNodeStatus objects changed

    async def run(self, on_snapshot: OnSnapshot) -> None:
        def deliver(snapshot: Snapshot) -> None:
            rest, requested, undecodable = split_snapshot(snapshot)
            specs = self._requests.update(requested, undecodable)
            if specs != self._last_specs:
                self._last_specs = specs
                self._on_requests(specs)
            if self._last is not None and _same_view(rest, self._last):
                self.skipped += 1
                return
            self._last = rest
            on_snapshot(rest)

        await self._inner.run(deliver)
