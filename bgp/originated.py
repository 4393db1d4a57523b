"""Originated: the routes this node announces of its own, kept incrementally (pure).

Stage: between the inputs of the speaker (the node intent, Felix's workload routes from ``routes.monitor``)
and its Loc-RIB. ``bgp.export`` decides, per prefix, what the export policy announces; this module holds the
result as ``Candidate`` paths with no BGP source (the confirmed local blocks, the borrowed workload IPs
announced on their own, the service ranges) and says which prefixes changed, for the speaker to select and
diff again.

Owns: the workload prefixes and their devices as last reported, whether any report has arrived yet, the
export rules prepared for the current intent and the originated candidates.

Complicating factors:
- A workload change costs in proportion to the change, not to the workloads held (one pod next to 100k):
  ``update`` evaluates only the prefixes touched, and must leave exactly what a full ``configure`` over every
  workload would (a property test holds the two paths to each other).
- A touched prefix may also be a block (the workload devices label it) or a service range; the order of the
  rules follows the full path's: the export policy first, service ranges where it announces nothing.
- Prefixes are canonical strings (as the kernel and the datastore write them), so a string is its own key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bgp.export import ExportRules
from bgp.policy import Candidate
from routes.pools import KernelPool


class Originated:
    """The originated candidates; every method returns the prefixes whose candidate changed."""

    def __init__(self) -> None:
        self.workloads: dict[str, str] = {}  # prefix -> device
        self.seen = False  # a workload report has arrived (until then, nothing is known to be gone)
        self.candidates: dict[str, Candidate] = {}
        self._rules: ExportRules | None = None
        self._services: frozenset[str] = frozenset()

    def configure(
        self, local_blocks: Iterable[str], pools: tuple[KernelPool, ...], services: tuple[str, ...]
    ) -> set[str]:
        """A new intent: blocks, pools and service ranges may all have changed, so everything is evaluated."""
        rules = self._rules = ExportRules(local_blocks, pools)
        self._services = frozenset(services)
        local = {p: Candidate(p, None, self.workloads.get(p, "")) for p in rules.select(self.workloads)}
        for cidr in services:
            local.setdefault(cidr, Candidate(cidr))
        old = self.candidates
        changed = set(local.keys() ^ old.keys())
        changed |= {p for p in local.keys() & old.keys() if local[p] != old[p]}
        self.candidates = local
        return changed

    def replace(self, prefixes: Iterable[str], devices: Mapping[str, str] | None = None) -> list[str]:
        """The whole set of workload prefixes (and their devices), applied as its difference from ours."""
        devices = devices or {}
        workloads = {p: devices.get(p, "") for p in prefixes}
        changes: dict[str, str | None] = {p: None for p in self.workloads if p not in workloads}
        changes.update((p, d) for p, d in workloads.items() if self.workloads.get(p) != d)
        return self.update(changes)

    def update(self, changes: Mapping[str, str | None]) -> list[str]:
        """Workload prefixes that changed (``routes.monitor``'s contract): prefix -> device, or None when
        gone. An entry we hold already is a no-op."""
        touched = []
        for prefix, device in changes.items():
            if device is None:
                if self.workloads.pop(prefix, None) is not None:
                    touched.append(prefix)
            elif self.workloads.get(prefix) != device:
                self.workloads[prefix] = device
                touched.append(prefix)
        self.seen = True
        return self._reevaluate(touched) if touched else []

    def _reevaluate(self, prefixes: list[str]) -> list[str]:
        """``configure``'s answer for these prefixes only."""
        rules = self._rules
        if rules is None:
            return []  # no intent yet: configure evaluates everything
        changed = []
        workloads, blocks, services, held = self.workloads, rules.blocks, self._services, self.candidates
        for prefix in prefixes:
            device = workloads.get(prefix)
            old = held.get(prefix)
            if prefix in blocks or (device is not None and rules.announces(prefix)):
                device = device or ""
            elif prefix in services:
                device = ""
            else:
                if old is not None:
                    del held[prefix]
                    changed.append(prefix)
                continue
            # Compared by field, not as dataclasses: 100k in a burst, and every held one is originated.
            if old is not None and old.path is None and old.ifname == device:
                continue
            held[prefix] = Candidate(prefix, None, device)
            changed.append(prefix)
        return changed
