"""Import and export policy: which paths we accept, which routes each peer gets, with which attributes.

Stage: between the Loc-RIB and each peer's Adj-RIB-Out (export), and between ExaBGP's updates and the
Adj-RIB-In (import). Pure.

Owns, in evaluation order for export (docs/calico-model.md):
1. BGP propagation rules: never back to the peer a path came from; no LLGR-stale path (``bgp.llgr``) to
   anyone; iBGP-learned paths go to iBGP peers only from a route reflector (RFC 4456: client paths to every
   peer, non-client paths to clients only); no path to an eBGP peer whose AS is already in it.
2. BGPFilter export rules (BGPPeer sessions only, never the mesh): the first matching rule decides; an
   Accept bypasses Calico's policy entirely, a Reject overrides it; no match falls through.
3. Calico's default policy (``calico_export_to_bgp_peers``): disableBGPExport pools rejected; the /32s
   inside a local block rejected and the block itself accepted; service ranges accepted; reflectors also
   re-export LoadBalancer and external IPs; anything inside an exportable pool accepted; everything else
   (host subnets, a ToR's default route) rejected.
4. Attributes: next hop per nextHopMode (self for our own routes and towards eBGP, unchanged when
   reflecting), our AS prepended towards eBGP (ExaBGP 5.0.15 does not do it), ORIGINATOR_ID and
   CLUSTER_LIST when reflecting, communities from prefixAdvertisements and filter operations.

Complicating factors: with 100k routes the work per (peer, prefix) decision must be cheap. Pools, blocks and
service ranges are integer spans prepared once per intent; a prefix is parsed once per decision into the
span that both the default policy and the communities read; and the advertisement of a route of our own
(the same for every workload /32 towards one peer, given its communities and filter operations) is built
once and handed out shared (``_originated``, bounded), so 100k exports cost 100k dictionary lookups rather
than 100k new objects, each hashed again downstream.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from bgp.exabgp.commands import Advertisement
from bgp.llgr import is_llgr_stale
from bgp.rib import Path
from confgen.bgpfilter import BGPFilter, FilterRule
from confgen.intent import MESH, NEXT_HOP_KEEP, NEXT_HOP_SELF, NodeIntent, PeerIntent
from routes.pools import Span, network, prefix_span, span, within_any

ACCEPT = "accept"
REJECT = "reject"
NORMAL_PRIORITY = 1024  # Calico's ipv4/ipv6NormalRoutePriority (Felix's workload route metric)
# v3.32's export prologue: local-pref = 2^31-1 - metric, so a receiver installs our routes at metric 1024.
ORIGINATED_LOCAL_PREF = 2**31 - 1 - NORMAL_PRIORITY

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Advertisements of our own routes kept for sharing (a few per peer); past this, sharing starts over.
OWN_ADVERTISEMENTS = 1024


@lru_cache(maxsize=4096)  # one flush asks about the same prefixes once per peer; bounded: ~1 MB at most
def net(prefix: str) -> Network:
    return network(prefix)


def within(inner: Network, outer: Network) -> bool:
    if isinstance(inner, ipaddress.IPv4Network):
        return isinstance(outer, ipaddress.IPv4Network) and inner.subnet_of(outer)
    return isinstance(outer, ipaddress.IPv6Network) and inner.subnet_of(outer)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A route we could export: originated here (``path`` None) or the best path of the Loc-RIB."""

    prefix: str
    path: Path | None = None
    ifname: str = ""  # the interface the route points at (workload /32s: cali*), for filters


class NodePolicy:
    """The node-wide part of the policy, built once per intent."""

    def __init__(self, intent: NodeIntent, filters: Mapping[str, BGPFilter] | None = None) -> None:
        self.intent = intent
        self.filters = dict(filters or {})
        # Integer spans (routes.pools.Span): the export policy runs per prefix and per peer, 100k times
        # in a burst, and two integer comparisons are far cheaper than ipaddress's subnet_of.
        pools = [(span(net(p.cidr)), p.disable_bgp_export) for p in intent.pools]
        self._suppressed = [n for n, off in pools if off]
        self._exportable = [n for n, off in pools if not off]
        self._blocks = [span(net(b)) for b in intent.local_blocks]
        self._services = [span(net(c)) for c in self.service_ranges()]
        self._reflected_services = [
            span(net(c)) for c in (*intent.service_loadbalancer_ips, *intent.service_external_ips)
        ]
        self._advertisements = [
            (span(net(a.cidr)), a.communities, a.large_communities) for a in intent.prefix_advertisements
        ]
        # (id(peer), communities, filter operations) -> (peer, advertisement) for our own routes (_originated)
        self._own: dict[tuple, tuple[PeerIntent, Advertisement]] = {}

    def service_ranges(self) -> tuple[str, ...]:
        """Service CIDRs we originate (as BIRD's static blackholes): ranges, not single addresses."""
        i = self.intent
        out = []
        for cidr in (*i.service_cluster_ips, *i.service_external_ips, *i.service_loadbalancer_ips):
            n = net(cidr)
            if n.prefixlen < n.max_prefixlen:
                out.append(n.with_prefixlen)
        return tuple(sorted(set(out)))

    # ------------------------------------------------------------------ Calico's default export policy

    def calico_export(self, candidate: Candidate, to_ibgp: bool) -> bool:
        return self._calico_export(prefix_span(candidate.prefix), candidate, to_ibgp)

    def _calico_export(self, n: Span, candidate: Candidate, to_ibgp: bool) -> bool:
        if within_any(n, self._suppressed):
            return False
        if to_ibgp and (candidate.ifname.endswith(".cali") or candidate.ifname.endswith(".calico")):
            return False  # VXLAN / WireGuard devices: Felix programs those routes on every node
        version, first, last = n
        for block in self._blocks:
            v, lo, hi = block
            if v == version and lo <= first and last <= hi:
                return n == block
        if within_any(n, self._services):
            return True
        if self.intent.rr_cluster_id and within_any(n, self._reflected_services):
            return True
        return within_any(n, self._exportable)

    def communities(
        self, prefix: str
    ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int, int], ...]]:
        return self._communities(prefix_span(prefix))

    def _communities(self, n: Span) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int, int], ...]]:
        if not self._advertisements:
            return (), ()
        std: set[tuple[int, int]] = set()
        large: set[tuple[int, int, int]] = set()
        for cidr, communities, large_communities in self._advertisements:
            if within_any(n, (cidr,)):
                std.update(_standard(c) for c in communities)
                large.update(_large(c) for c in large_communities)
        return tuple(sorted(std)), tuple(sorted(large))

    # ------------------------------------------------------------------ per peer

    def export(
        self, peer: PeerIntent, candidate: Candidate, source: PeerIntent | None = None
    ) -> Advertisement | None:
        """What ``peer`` should get for ``candidate``, or None. ``source`` is the session the path came
        from (None for our own routes)."""
        if (":" in candidate.prefix) != (peer.family == "ipv6"):
            return None
        path = candidate.path
        to_ibgp = peer.ibgp
        if path is not None:
            if path.peer == peer.address:
                return None
            if is_llgr_stale(path.attributes.communities):
                return None  # RFC 9494: only to peers that negotiated LLGR, which none can with ExaBGP 5.0
            if source is not None and source.ibgp and to_ibgp:
                if not self.intent.rr_cluster_id:
                    return None
                if not (source.rr_client or peer.rr_client):
                    return None
            if not to_ibgp and peer.peer_as in path.attributes.as_path:
                return None
        verdict, operations = self._filter(peer, candidate, export=True)
        if verdict == REJECT:
            return None
        n = prefix_span(candidate.prefix)  # once per decision: both the policy and the communities use it
        if verdict != ACCEPT and not self._calico_export(n, candidate, to_ibgp):
            return None
        if path is None:
            return self._originated(peer, self._communities(n), operations)
        return self._attributes(peer, candidate, source, operations, self._communities(n))

    def _originated(
        self,
        peer: PeerIntent,
        communities: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int, int], ...]],
        operations: tuple[tuple[str, str], ...],
    ) -> Advertisement:
        """The advertisement of a route of our own: the same few for every prefix (per peer, communities and
        filter operations), so one shared object each instead of a new one per prefix per peer."""
        key = (id(peer), communities, operations)
        held = self._own.get(key)
        if held is not None and held[0] is peer:  # the peer itself is kept, so its id is not reused
            return held[1]
        adv = self._attributes(peer, Candidate(""), None, operations, communities)
        if len(self._own) >= OWN_ADVERTISEMENTS:
            self._own.clear()
        self._own[key] = (peer, adv)
        return adv

    def accept_import(self, peer: PeerIntent, path: Path) -> bool:
        """Loop prevention and BGPFilter import rules for a received path."""
        a = path.attributes
        intent = self.intent
        if intent.rr_cluster_id and intent.rr_cluster_id in a.cluster_list:
            return False
        if a.originator_id and a.originator_id == intent.router_id:
            return False
        if a.as_path.count(peer.local_as) > peer.num_allow_local_as and not peer.ibgp:
            return False
        verdict, _ = self._filter(peer, Candidate(path.prefix, path), export=False)
        return verdict != REJECT

    # ------------------------------------------------------------------ helpers

    def _filter(
        self, peer: PeerIntent, candidate: Candidate, *, export: bool
    ) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        if peer.kind == MESH or not peer.filters:
            return None, ()
        v6 = ":" in candidate.prefix
        for name in peer.filters:
            flt = self.filters.get(name)
            if flt is None:
                continue
            if export:
                rules = flt.export_v6 if v6 else flt.export_v4
            else:
                rules = flt.import_v6 if v6 else flt.import_v4
            for rule in rules:
                if _matches(rule, peer, candidate):
                    return (ACCEPT if rule.action == "Accept" else REJECT), rule.operations
        return None, ()

    def _attributes(
        self,
        peer: PeerIntent,
        candidate: Candidate,
        source: PeerIntent | None,
        operations: tuple[tuple[str, str], ...],
        communities: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int, int], ...]],
    ) -> Advertisement:
        path = candidate.path
        std, large = communities
        local_as_path: tuple[int, ...] = ()
        as_path: tuple[int, ...] = ()
        local_pref = med = None
        originator = ""
        cluster: tuple[str, ...] = ()
        origin = "igp"
        nexthop = peer.local_address
        if path is None and peer.ibgp:
            local_pref = ORIGINATED_LOCAL_PREF
        if path is not None:
            a = path.attributes
            as_path = a.as_path
            origin = a.origin
            std = tuple(sorted(set(std) | {c for c in a.communities if len(c) == 2}))
            large = tuple(sorted(set(large) | {c for c in a.large_communities if len(c) == 3}))
            if peer.ibgp:
                local_pref, med = a.local_pref, a.med
            reflecting = peer.ibgp and source is not None and source.ibgp
            if reflecting:
                originator = a.originator_id or path.peer_router_id or path.peer
                cluster = (self.intent.rr_cluster_id, *a.cluster_list)
            keep = (reflecting or peer.ibgp) and peer.next_hop_mode != NEXT_HOP_SELF
            keep = keep or peer.next_hop_mode == NEXT_HOP_KEEP
            if keep and (":" in path.nexthop) == (peer.family == "ipv6"):
                nexthop = path.nexthop
        for op, value in operations:
            if op == "addCommunity":
                # confgen.bgpfilter has parsed the value: aa:nn (standard) or aa:nn:mm (large).
                if value.count(":") == 1:
                    std = tuple(sorted(set(std) | {_standard(value)}))
                else:
                    large = tuple(sorted(set(large) | {_large(value)}))
            elif op == "prependASPath":
                local_as_path = tuple(int(x) for x in value.split()) + local_as_path
            elif op == "setPriority" and peer.ibgp:
                local_pref = 2**31 - 1 - int(value)
        # Our AS leads the path towards eBGP peers (ExaBGP 5.0.15 does not prepend it); filter prepends
        # follow it, as BIRD's bgp_path.prepend() inside the export filter does.
        own = (peer.local_as,) if not peer.ibgp else ()
        as_path = (*own, *local_as_path, *as_path)
        return Advertisement(
            nexthop=nexthop,
            origin=origin,
            as_path=as_path,
            local_pref=local_pref,
            med=med,
            communities=std,
            large_communities=large,
            originator_id=originator,
            cluster_list=cluster,
        )


def _standard(text: str) -> tuple[int, int]:
    """An aa:nn community (already validated) as numbers."""
    high, low = text.split(":")
    return int(high), int(low)


def _large(text: str) -> tuple[int, int, int]:
    """An aa:nn:mm large community (already validated) as numbers."""
    admin, first, second = text.split(":")
    return int(admin), int(first), int(second)


def _matches(rule: FilterRule, peer: PeerIntent, candidate: Candidate) -> bool:
    if rule.peer_type and (rule.peer_type == "iBGP") != peer.ibgp:
        return False
    if rule.cidr:
        n, cidr = net(candidate.prefix), net(rule.cidr)
        if rule.prefix_length is not None:
            low, high = rule.prefix_length
            inside = within(n, cidr) and low <= n.prefixlen <= high
        else:
            inside = within(n, cidr)
        op = rule.match_operator
        hit = {
            "Equal": n == cidr,
            "NotEqual": n != cidr,
            "In": inside,
            "NotIn": not inside,
        }.get(op, False)
        if not hit:
            return False
    if rule.source == "RemotePeers" and candidate.path is None:
        return False
    if rule.interface and not fnmatch.fnmatchcase(candidate.ifname, rule.interface):
        return False
    path = candidate.path
    if rule.communities:
        have = {":".join(map(str, c)) for c in (path.attributes.communities if path else ())}
        have |= {":".join(map(str, c)) for c in (path.attributes.large_communities if path else ())}
        if not set(rule.communities) <= have:
            return False
    if rule.as_path_prefix:
        as_path = path.attributes.as_path if path else ()
        if as_path[: len(rule.as_path_prefix)] != rule.as_path_prefix:
            return False
    if rule.priority is not None:
        lp = path.attributes.local_pref if path and path.attributes.local_pref is not None else 100
        if 2**31 - 1 - lp != rule.priority:
            return False
    return True
