"""Adj-RIB-In per peer and the decision process that picks the paths we install.

Stage: the receive side of the route distributor, between ExaBGP's events and the kernel dataplane.
ExaBGP keeps no usable RIB for us (docs/exabgp-notes.md), so every path a peer sent lives here until the peer
withdraws it or its session ends.

Owns: received paths, keyed by (peer, prefix); the best path and the multipath set of each prefix. Pure.

Complicating factors:
- RFC 4271 §9.1.2.2 ordering; multipath (ECMP) takes every path equal to the best up to, but not including,
  the router-id / peer-address tie-breaks, as BIRD's ``merge paths`` does for the kernel.
- A session that ends without graceful restart takes all its paths with it at once (``drop_peer``). With
  graceful restart (RFC 4724) its paths are only marked stale (``mark_stale``): they keep forwarding until the
  peer's End-of-RIB sweeps what it did not re-announce (``sweep_stale``) or its restart time runs out.
- Long-lived graceful restart (RFC 9494, ``bgp.llgr``): stale paths can then become LLGR-stale
  (``make_llgr_stale``: the LLGR_STALE community added, those carrying NO_LLGR removed). An LLGR-stale path
  loses to every other path before any other comparison, and still forwards when it is the only one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from ipaddress import ip_address

from bgp.exabgp.events import PathAttributes
from bgp.llgr import NO_LLGR, is_llgr_stale, stamped

ORIGIN_RANK = {"igp": 0, "egp": 1, "incomplete": 2}
DEFAULT_LOCAL_PREF = 100
# Distinct attribute sets remembered for sharing (a mesh has a handful); past this many, sharing starts over:
# what is stored stays valid, only new copies go unshared until they repeat.
INTERNED = 4096


@dataclass(frozen=True, slots=True)
class Path:
    prefix: str
    peer: str  # address of the peer that sent it
    nexthop: str
    attributes: PathAttributes
    ebgp: bool = False
    peer_router_id: str = ""

    def multipath_key(self) -> tuple:
        """Everything the decision process compares before the final tie-breaks."""
        a = self.attributes
        return (
            is_llgr_stale(a.communities),  # RFC 9494: least preferred, ahead of every other rule
            -(a.local_pref if a.local_pref is not None else DEFAULT_LOCAL_PREF),
            len(a.as_path),
            ORIGIN_RANK.get(a.origin, 3),
            a.med or 0,  # compared across all neighbours: Calico's peers share one AS per rack
            0 if self.ebgp else 1,
        )

    def sort_key(self) -> tuple:
        a = self.attributes
        router_id = a.originator_id or self.peer_router_id or self.peer
        return (
            *self.multipath_key(),
            ip_address(router_id) if ":" not in router_id else ip_address("255.255.255.255"),
            len(a.cluster_list),
            ip_address(self.peer),
        )


def _each(held: Path | tuple[Path, ...]) -> tuple[Path, ...]:
    return (held,) if isinstance(held, Path) else held


class AdjRibIn:
    """All paths received from all peers."""

    def __init__(self) -> None:
        # prefix -> its one path (nearly always: one peer announces each prefix), or a tuple of them, one
        # per peer: a dict per prefix would cost about 230 bytes each, 23 MB at 100k routes.
        self._by_prefix: dict[str, Path | tuple[Path, ...]] = {}
        self._by_peer: dict[str, set[str]] = defaultdict(set)
        self._stale: dict[str, set[str]] = {}
        self._interned: dict[PathAttributes, PathAttributes] = {}

    def shared(self, attributes: PathAttributes) -> PathAttributes:
        """The one stored object equal to ``attributes``: each UPDATE decodes its own, and a peer that sends
        one route per UPDATE would otherwise leave a copy (about 200 bytes with its tuples) per path."""
        interned = self._interned.get(attributes)
        if interned is None:
            if len(self._interned) >= INTERNED:
                self._interned.clear()
            interned = self._interned[attributes] = attributes
        return interned

    def add(self, path: Path) -> bool:
        """Store ``path``; returns True when it changed anything. A re-announced path is no longer stale."""
        stale = self._stale.get(path.peer)
        if stale:
            stale.discard(path.prefix)
        return self._store(path)

    def _store(self, path: Path) -> bool:
        held = self._by_prefix.get(path.prefix)
        if held is None:
            self._by_prefix[path.prefix] = path
        else:
            paths = _each(held)
            for i, current in enumerate(paths):
                if current.peer == path.peer:
                    if current == path:
                        return False
                    paths = (*paths[:i], path, *paths[i + 1 :])
                    break
            else:
                paths = (*paths, path)
            self._by_prefix[path.prefix] = paths[0] if len(paths) == 1 else paths
        self._by_peer[path.peer].add(path.prefix)
        return True

    def remove(self, peer: str, prefix: str) -> bool:
        stale = self._stale.get(peer)
        if stale:
            stale.discard(prefix)
        if not self._discard(peer, prefix):
            return False
        self._by_peer[peer].discard(prefix)
        return True

    def _discard(self, peer: str, prefix: str) -> bool:
        held = self._by_prefix.get(prefix)
        if held is None:
            return False
        paths = _each(held)
        rest = tuple(p for p in paths if p.peer != peer)
        if len(rest) == len(paths):
            return False
        if not rest:
            del self._by_prefix[prefix]
        else:
            self._by_prefix[prefix] = rest[0] if len(rest) == 1 else rest
        return True

    def drop_peer(self, peer: str) -> set[str]:
        """Forget every path from ``peer``; returns the affected prefixes."""
        prefixes = self._by_peer.pop(peer, set())
        self._stale.pop(peer, None)
        for prefix in prefixes:
            self._discard(peer, prefix)
        return prefixes

    def mark_stale(self, peer: str) -> int:
        """Graceful restart: keep ``peer``'s paths but remember they await re-announcement."""
        self._stale[peer] = set(self._by_peer.get(peer, ()))
        return len(self._stale[peer])

    def make_llgr_stale(self, peer: str) -> tuple[set[str], int]:
        """Long-lived graceful restart: ``peer``'s stale paths carry LLGR_STALE from now on, and those with
        NO_LLGR go. Returns the prefixes changed and how many paths went."""
        stale = self._stale.get(peer)
        if not stale:
            return set(), 0
        changed, dropped = set(stale), 0
        for prefix in list(stale):
            path = next((p for p in self.paths(prefix) if p.peer == peer), None)
            if path is None:
                continue
            a = path.attributes
            if NO_LLGR in a.communities:
                self.remove(peer, prefix)
                dropped += 1
            elif not is_llgr_stale(a.communities):
                attributes = self.shared(replace(a, communities=stamped(a.communities)))
                self._store(replace(path, attributes=attributes))
        if not self._stale.get(peer):
            self._stale.pop(peer, None)
        return changed, dropped

    def is_stale(self, peer: str, prefix: str) -> bool:
        return prefix in self._stale.get(peer, ())

    def stale_count(self, peer: str) -> int:
        return len(self._stale.get(peer, ()))

    def sweep_stale(self, peer: str, ipv6: bool | None = None) -> set[str]:
        """Remove ``peer``'s paths still stale (of one family when ``ipv6`` is given)."""
        stale = self._stale.get(peer)
        if not stale:
            return set()
        doomed = {p for p in stale if ipv6 is None or (":" in p) == ipv6}
        for prefix in doomed:
            self.remove(peer, prefix)
        if not self._stale.get(peer):
            self._stale.pop(peer, None)
        return doomed

    def peer_prefixes(self, peer: str) -> set[str]:
        return set(self._by_peer.get(peer, ()))

    def prefixes(self) -> list[str]:
        return list(self._by_prefix)

    def count(self, peer: str | None = None) -> int:
        if peer is None:
            return sum(1 if isinstance(held, Path) else len(held) for held in self._by_prefix.values())
        return len(self._by_peer.get(peer, ()))

    def paths(self, prefix: str) -> list[Path]:
        held = self._by_prefix.get(prefix)
        return [] if held is None else list(_each(held))


# A Loc-RIB entry: the best path alone when it is the whole multipath set (one peer per prefix, the common
# case), else the multipath set, best first. A lone path then costs no tuple of its own: about 10 MiB less
# per 100k learned routes.
Selected = Path | tuple[Path, ...]


def selected_entry(best: Path, multipath: tuple[Path, ...]) -> Selected:
    """The Loc-RIB entry for ``select``'s answer (its multipath set starts with the best path)."""
    return best if len(multipath) == 1 else multipath


def best_of(entry: Selected) -> Path:
    return entry if isinstance(entry, Path) else entry[0]


def multipath_of(entry: Selected) -> tuple[Path, ...]:
    return (entry,) if isinstance(entry, Path) else entry


def select(paths: list[Path]) -> tuple[Path | None, tuple[Path, ...]]:
    """Best path and the multipath set (best first) among ``paths``."""
    if not paths:
        return None, ()
    if len(paths) == 1:  # the common case (one peer per prefix), and the hot one of a 100k-route burst
        return paths[0], (paths[0],)
    ordered = sorted(paths, key=Path.sort_key)
    best = ordered[0]
    key = best.multipath_key()
    return best, tuple(p for p in ordered if p.multipath_key() == key)
