"""The route distributor: Adj-RIB-In -> Loc-RIB -> per-peer Adj-RIB-Out, and the kernel's desired routes.

Stage: the heart of the announcements and kernel dataplanes. Inputs: the node intent (from confgen), the
workload routes Felix wrote (from ``routes.monitor``), and ExaBGP's events (through the bridge). Outputs:
API commands (through an injected ``send``) and the desired kernel routes (through an injected route table).

Owns: every path received (``AdjRibIn``), the selected paths (``_loc``), what we told ExaBGP per peer
(``_sent``, our Adj-RIB-Out), session state, and graceful-restart bookkeeping.

Complicating factors:
- Everything is batched and incremental: inputs only record which prefixes changed; ``flush`` recomputes
  just those, so a burst becomes one command per prefix (the ExaBGP 5.0.15 ordering bug, docs/exabgp-notes.md)
  and one kernel apply, and 100k routes do not mean 100k recomputations per change.
- Commands go only to established neighbours: ExaBGP 5.0.15 ignores a reload while any neighbour has updates
  queued, and a neighbour that is down would keep them queued. On session up the whole table goes out
  (ExaBGP drops what it already holds, re-sent from before the drop), withdraws for anything it may still
  hold, then End-of-RIB: the config sets ``manual-eor`` so that a peer that kept our routes through our
  restart sweeps them only once our table is complete.
- Graceful restart (RFC 4724), receive side: a peer that offered it keeps its paths (stale) for its restart
  time when the session drops; its End-of-RIB sweeps what it did not re-announce. Without it, the paths go
  at once. The restart bookkeeping, repeated flaps included, is ``bgp.graceful``'s; its timers are driven
  by ``tick(now)`` with an injectable clock.
- What ExaBGP holds is rebuilt, never audited or replayed: whenever it is in doubt (ExaBGP restarted, hung,
  its API connection lost or respawned; ``exabgp_down``) every session counts as down (received paths kept
  stale where graceful restart allows), nothing we sent is assumed held, and each peer gets our whole
  Adj-RIB-Out and then End-of-RIB once it is Established again, from a fresh ExaBGP (the supervisor
  restarts it on any such doubt). This replaces an audit against ``show adj-rib out``: ExaBGP 5.0.15 answers
  that one route per line and quadratically in the table (json v1 rewrites the growing list per route; the
  chunking slices the list per line), it answers asynchronously with no end marker when acks are off, and the
  one thing it could catch beyond lost commands, the announce/withdraw reordering bug, is avoided by sending
  one command per prefix per batch.
- A peer is not trusted with our memory or our forwarding: ``bgp.limits`` caps its prefixes (crossing the
  cap tears the session down and holds the peer idle; its paths go, not stale) and its AS_PATH length
  (treat-as-withdraw); ``bgp.import_guard`` keeps link-local, loopback, multicast and on-link prefixes out
  of selection, while their paths stay in the Adj-RIB-In to be re-screened when the node's addresses change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from ipaddress import ip_address

from bgp.exabgp import events as ev
from bgp.exabgp.commands import Advertisement, eor_command, peer_commands
from bgp.graceful import GracefulRestarts
from bgp.import_guard import ImportScreen
from bgp.limits import LogBudget, PeerLimits, teardown_command
from bgp.policy import Candidate, NodePolicy
from bgp.rib import AdjRibIn, Path, select
from bgp.routes_view import loc_rib_report
from bgp.status import PeerStatus
from confgen.intent import NodeIntent, PeerIntent
from confgen.refusals import EXABGP_API, SinkRefusals
from routes.export import ExportRules
from routes.model import Route
from routes.resolve import KernelPool, Learned, Resolve, kernel_routes

log = logging.getLogger(__name__)

# A placeholder advertisement that differs from every real one (the routes view never lists it as sent).
UNKNOWN = Advertisement(nexthop="0.0.0.0", origin="incomplete")


def kernel_pools(intent: NodeIntent) -> tuple[KernelPool, ...]:
    return tuple(
        KernelPool(
            cidr=p.cidr,
            ipip_mode=p.ipip_mode,
            vxlan_mode=p.vxlan_mode,
            disable_bgp_export=p.disable_bgp_export,
        )
        for p in intent.pools
    )


class Speaker:
    def __init__(
        self,
        *,
        send: Callable[[list[str]], Awaitable[None]],
        route_table,
        metrics=None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        resolve: Resolve | None = None,  # routes.recursive.NexthopResolver.resolve: BIRD's gateway recursive
        limits: PeerLimits | None = None,  # per-peer prefix limit and AS_PATH length limit (bgp.limits)
        refusals: SinkRefusals | None = None,  # counts and logs values the API command builder refuses
    ) -> None:
        self._send = send
        self._table = route_table
        self._resolve = resolve
        self._metrics = metrics
        self._clock = clock
        self._wallclock = wallclock
        self._refused = (refusals if refusals is not None else SinkRefusals()).reporter(EXABGP_API)
        self._intent: NodeIntent | None = None
        self._policy: NodePolicy | None = None
        self._peers: dict[str, PeerIntent] = {}
        self._workloads: dict[str, str] = {}  # prefix -> device
        self._workloads_seen = False
        self._local: dict[str, Candidate] = {}
        # Prepared with each intent by _recompute_local, so that a workload change is evaluated alone.
        self._export_rules: ExportRules | None = None
        self._service_ranges: frozenset[str] = frozenset()
        self._rib = AdjRibIn()
        self._loc: dict[str, tuple[Path, tuple[Path, ...]]] = {}
        self._sent: dict[str, dict[str, Advertisement]] = {}
        self._status: dict[str, PeerStatus] = {}
        self._offers: dict[str, ev.Open] = {}  # the peer's last OPEN
        self._graceful = GracefulRestarts(self._rib)  # receive-side restart timers over self._rib
        self._resend: set[str] = set()
        self._eor_due: set[str] = set()
        self._synced: set[str] = set()  # peers whose End-of-RIB we have seen since we started
        self._changed: set[str] = set()
        self._full = True
        self._wake = asyncio.Event()
        self._exabgp_down: str | None = None  # why ExaBGP cannot be used, while it cannot
        self.unparsed_lines = 0
        # The receive-side guards (bgp.import_guard, bgp.limits); teardowns wait here for the next flush.
        self.limits = limits or PeerLimits(clock=clock)
        self.screen = ImportScreen(clock=clock)
        self._teardowns: dict[str, None] = {}
        self.malformed_withdraws: dict[str, int] = {}  # peer -> prefixes treated as withdrawn (RFC 7606)
        self._malformed_log = LogBudget(log, clock=clock)

    # ------------------------------------------------------------------ inputs

    def set_intent(self, intent: NodeIntent) -> None:
        self._intent = intent
        self._policy = NodePolicy(intent, {f.name: f for f in intent.bgp_filters})
        wanted = {p.address: p for p in intent.peers}
        for address in list(self._status):
            if address not in wanted:
                del self._status[address]
                self._synced.discard(address)
                self._sent.pop(address, None)
                self._offers.pop(address, None)
                self._graceful.forget(address)
                for prefix in self._rib.drop_peer(address):
                    if not self._rib.paths(prefix):
                        self.screen.forget(prefix)  # a refused prefix is in no Loc-RIB to be revisited
                self.limits.forget(address)
                self.malformed_withdraws.pop(address, None)
                self._teardowns.pop(address, None)
                self._eor_due.discard(address)  # due while we waited for the workloads, then removed
                self._resend.discard(address)
        self.screen.set_node((intent.ipv4_network, intent.ipv6_network), intent.local_blocks)
        for address, peer in wanted.items():
            status = self._status.get(address)
            now = self._wallclock()
            self._status[address] = (
                PeerStatus.configured(peer, now) if status is None else status.reconfigured(peer)
            )
        self._peers = wanted
        self._recompute_local()
        self._full = True  # policy, pools or peers may have changed: everything is re-evaluated
        self._wake.set()

    def set_workload_routes(self, prefixes: Iterable[str], devices: Mapping[str, str] | None = None) -> None:
        """The whole set of workload prefixes (and their devices): applied as its difference from ours."""
        devices = devices or {}
        workloads = {p: devices.get(p, "") for p in prefixes}
        changes: dict[str, str | None] = {p: None for p in self._workloads if p not in workloads}
        changes.update((p, d) for p, d in workloads.items() if self._workloads.get(p) != d)
        self.update_workload_routes(changes)

    def update_workload_routes(self, changes: Mapping[str, str | None]) -> None:
        """Workload prefixes that changed (``routes.monitor``'s contract): prefix -> device, or None when
        gone. Costs in proportion to ``changes``, not to the workloads held; an entry we hold is a no-op."""
        touched = []
        for prefix, device in changes.items():
            if device is None:
                if self._workloads.pop(prefix, None) is not None:
                    touched.append(prefix)
            elif self._workloads.get(prefix) != device:
                self._workloads[prefix] = device
                touched.append(prefix)
        self._workloads_seen = True
        if touched:
            self._update_local(touched)
        self._wake.set()

    def _recompute_local(self) -> None:
        intent = self._intent
        if intent is None or self._policy is None:
            return
        # Blocks, pools and service ranges come with the intent: everything is evaluated again.
        rules = self._export_rules = ExportRules(intent.local_blocks, kernel_pools(intent))
        services = self._policy.service_ranges()
        self._service_ranges = frozenset(services)
        prefixes = rules.select(self._workloads)
        local = {p: Candidate(p, None, self._workloads.get(p, "")) for p in prefixes}
        for cidr in services:
            local.setdefault(cidr, Candidate(cidr))
        changed = set(local.keys() ^ self._local.keys())
        changed |= {p for p in local.keys() & self._local.keys() if local[p] != self._local[p]}
        self._local = local
        self._changed |= changed

    def _update_local(self, prefixes: Iterable[str]) -> None:
        """_recompute_local for these prefixes only: what each would be in its output, were it run now."""
        rules = self._export_rules
        if rules is None:
            return  # no intent yet: set_intent recomputes everything
        # Prefixes are canonical (as the kernel and the datastore write them), so a string is its own key.
        for prefix in prefixes:
            # A touched prefix may also be a block (workload devices label it) or, in principle, a service
            # range; the order follows _recompute_local's: exports first, service ranges where none.
            if prefix in rules.blocks or (prefix in self._workloads and rules.announces(prefix)):
                candidate: Candidate | None = Candidate(prefix, None, self._workloads.get(prefix, ""))
            elif prefix in self._service_ranges:
                candidate = Candidate(prefix)
            else:
                candidate = None
            if candidate == self._local.get(prefix):
                continue
            if candidate is None:
                del self._local[prefix]
            else:
                self._local[prefix] = candidate
            self._changed.add(prefix)

    def set_interface_addresses(self, addresses: Iterable[str]) -> None:
        """The kernel's interface addresses (``routes.addresses``): the import guard's connected subnets."""
        if self.screen.set_interface_addresses(addresses):
            self._full = True  # refused routes may be accepted now, accepted ones refused
            self._wake.set()

    def kernel_changed(self) -> None:
        """Someone changed or removed a route of ours, or a device came back: program the table again."""
        self._full = True
        self._wake.set()

    def exabgp_restarted(self) -> None:
        """A new ExaBGP holds nothing we sent: everything is re-sent and every session starts over."""
        self.exabgp_down("ExaBGP starting")

    def exabgp_down(self, reason: str) -> None:
        """ExaBGP is gone, hung or in doubt: its sessions and what it holds no longer count. Each session is
        down (graceful restart decides what its paths become), nothing we sent is assumed held, and status
        says Idle with the first reason given until ExaBGP answers again (``exabgp_up``)."""
        reason = self._exabgp_down = self._exabgp_down or reason
        self._sent.clear()
        self._resend.clear()
        now = self._wallclock()
        for address, status in list(self._status.items()):
            if status.state != "start" or status.bgp_state == "OpenSent":
                self._peer_down(address, reason)
            status = self._status[address]
            since = status.since if status.bgp_state == "Idle" else now
            self._status[address] = replace(
                status, state="start", bgp_state="Idle", since=since, last_error=reason
            )
        self._full = True
        self._wake.set()

    def exabgp_up(self) -> None:
        """ExaBGP answers on its API again: sessions wait for their peers (why they went down stays)."""
        reason, self._exabgp_down = self._exabgp_down, None
        now = self._wallclock()
        for address, status in list(self._status.items()):
            if status.bgp_state == "Idle" and status.last_error == reason:
                waiting = "Passive" if status.passive else "Active"
                self._status[address] = replace(status, bgp_state=waiting, since=now)
        self._wake.set()

    def handle_line(self, line: str) -> None:
        for event in ev.parse_line(line):
            self.handle_event(event)

    def handle_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.Unparsed):
            self.unparsed_lines += 1
            log.warning("ignoring ExaBGP line (%s): %s", event.reason, event.line[:120])
            return
        peer = getattr(event, "peer", "")
        if peer not in self._status:
            return  # a neighbour we no longer configure (reload in flight), or ExaBGP's own notices
        if isinstance(event, ev.PeerState):
            self._peer_state(event)
        elif isinstance(event, ev.RoutesLearned):
            self._learned(event)
        elif isinstance(event, ev.RoutesWithdrawn):
            if event.malformed:
                self.malformed_withdraws[peer] = self.malformed_withdraws.get(peer, 0) + len(event.prefixes)
                self._malformed_log.warning(
                    "peer %s: %d prefixes treated as withdrawn (RFC 7606): %s",
                    peer, len(event.prefixes), event.malformed,
                )
            for prefix in event.prefixes:
                if self._rib.remove(peer, prefix):
                    self._changed.add(prefix)
        elif isinstance(event, ev.EndOfRib):
            self._synced.add(peer)
            self._changed |= self._graceful.end_of_rib(peer, ipv6=event.family.startswith("ipv6"))
        elif isinstance(event, ev.Open) and event.direction == "receive":
            self._offers[peer] = event
        elif isinstance(event, ev.Notification):
            self._status[peer] = self._status[peer].with_error(event, self._wallclock())
        self._wake.set()

    def _peer_state(self, event: ev.PeerState) -> None:
        status = self._status[event.peer]
        now = self._wallclock()
        if event.state == ev.STATE_UP and self.limits.held(event.peer):
            self._teardowns[event.peer] = None  # back too soon after crossing its prefix limit
            self._wake.set()
            return
        if event.state == ev.STATE_UP:
            self._status[event.peer] = status.up(now)
            # The OPEN of this session came just before: it says whether the peer kept its forwarding state.
            restart_time = self._graceful_restart_time(event.peer)
            self._changed |= self._graceful.session_up(event.peer, restart_time, self._clock())
            self._resend.add(event.peer)
            self._eor_due.add(event.peer)
        elif event.state == ev.STATE_DOWN:
            self._peer_down(event.peer, event.reason)
        elif event.state == ev.STATE_CONNECTED:
            self._status[event.peer] = status.connected(now)

    def _graceful_restart_time(self, peer: str) -> int:
        """The restart time both sides agreed on, 0 when graceful restart was not negotiated."""
        offer = self._offers.get(peer)
        intent = self._peers.get(peer)
        if offer is None or offer.restart_time is None or intent is None or not intent.restart_time:
            return 0
        return offer.restart_time

    def _peer_down(self, peer: str, reason: str) -> None:
        self._status[peer] = self._status[peer].down(reason, self._wallclock())
        self._eor_due.discard(peer)
        # The last OPEN is the ending session's: a new one arrives only with the next attempt.
        restart_time = self._graceful_restart_time(peer)
        self._changed |= self._graceful.session_down(peer, restart_time, self._clock())

    def _learned(self, event: ev.RoutesLearned) -> None:
        if self.limits.held(event.peer):
            return  # torn down for crossing its prefix limit: nothing it sends counts until the hold ends
        if self.limits.as_path_too_long(event.peer, len(event.attributes.as_path), len(event.prefixes)):
            for prefix in event.prefixes:  # treat-as-withdraw (RFC 7606)
                if self._rib.remove(event.peer, prefix):
                    self._changed.add(prefix)
            return
        offer = self._offers.get(event.peer)
        router_id = offer.router_id if offer else ""
        ebgp = not self._peers[event.peer].ibgp
        for prefix in event.prefixes:
            path = Path(
                prefix=prefix,
                peer=event.peer,
                nexthop=event.nexthop,
                attributes=event.attributes,
                ebgp=ebgp,
                peer_router_id=router_id,
            )
            if self._rib.add(path):
                self._changed.add(prefix)
        count = self._rib.count(event.peer)
        if self.limits.exceeded(count):
            self._prefix_limit_crossed(event.peer, count)

    def _prefix_limit_crossed(self, peer: str, count: int) -> None:
        """Tear the session down and forget the peer's paths: not kept stale, this is no restart."""
        self.limits.trip(peer, count)
        self._teardowns[peer] = None
        self._changed |= self._rib.drop_peer(peer)
        self._graceful.forget(peer)
        self._eor_due.discard(peer)
        # Not Established for us from now on: nothing more is queued for it in ExaBGP (see flush).
        note = f"Prefix limit: {self.limits.settings.max_prefixes} exceeded ({count} prefixes)"
        self._status[peer] = replace(
            self._status[peer], state="start", bgp_state="Idle", since=self._wallclock(), last_error=note
        )

    def tick(self, now: float | None = None) -> None:
        """Run the timers: prefix-limit holds and graceful-restart expiry."""
        now = self._clock() if now is None else now
        if self.limits.tick(now):
            self._wake.set()  # the held peers' status and metrics change
        swept = self._graceful.expire(now)
        if swept:
            self._changed |= swept
            self._wake.set()

    # ------------------------------------------------------------------ the RIB

    def _select(self, prefix: str) -> None:
        policy = self._policy
        paths = [
            p
            for p in self._rib.paths(prefix)
            if p.peer in self._peers and policy.accept_import(self._peers[p.peer], p)
        ]
        if self.screen.refuses(prefix, paths):
            paths = []
        best, multipath = select(paths)
        if best is None:
            self._loc.pop(prefix, None)
        else:
            self._loc[prefix] = (best, multipath)

    def _export(self, peer: PeerIntent, prefix: str) -> Advertisement | None:
        candidate = self._local.get(prefix)
        source = None
        if candidate is None:
            selected = self._loc.get(prefix)
            if selected is None:
                return None
            best = selected[0]
            candidate = Candidate(prefix, best)
            source = self._peers.get(best.peer)
        return self._policy.export(peer, candidate, source)

    def _kernel_learned(self, prefixes: Iterable[str]) -> dict[str, Learned]:
        out = {}
        for prefix in prefixes:
            selected = self._loc.get(prefix)
            if selected is not None:
                nexthops = tuple(sorted({p.nexthop for p in selected[1]}))
                out[prefix] = Learned(nexthops, selected[0].attributes.local_pref)  # local-pref -> metric
        return out

    def _kernel_routes(self, learned: Mapping[str, Learned]) -> list[Route]:
        intent = self._intent
        return kernel_routes(
            learned,
            intent.local_blocks,
            kernel_pools(intent),
            intent.ipv4_network or "",
            reject_cidrs=self._policy.service_ranges(),
            program_cluster_routes=intent.program_cluster_routes,
            resolve=self._resolve,
        )

    # ------------------------------------------------------------------ output

    async def flush(self) -> None:
        """Push every pending change out: API commands first, then the kernel."""
        self._wake.clear()
        intent = self._intent
        if intent is None:
            return
        full = self._full
        changed = self._changed
        self._full, self._changed = False, set()
        if full:
            changed = set(self._rib.prefixes()) | set(self._loc) | set(self._local)
            for sent in self._sent.values():
                changed |= sent.keys()
        for prefix in changed:
            self._select(prefix)
        lines = [*filter(None, map(teardown_command, self._teardowns)), *self._adj_rib_out_lines(changed)]
        self._teardowns.clear()
        if lines:
            await self._send(lines)
        if full:
            self._table.set_desired(self._kernel_routes(self._kernel_learned(self._loc)))
        elif changed:
            routes = {r.dst: r for r in self._kernel_routes(self._kernel_learned(changed))}
            self._table.update(routes, (p for p in changed if p not in routes))
        if full or changed:
            await self._table.apply()
        if self._metrics is not None:
            self._metrics.observe_speaker(self)

    def _adj_rib_out_lines(self, changed: set[str]) -> list[str]:
        lines: list[str] = []
        everything = None
        for address, peer in self._peers.items():
            status = self._status.get(address)
            if status is None or not status.established:
                # Nothing queued for a neighbour that is down: ExaBGP 5.0.15 ignores a reload while any
                # neighbour has updates pending. It gets the full table when it comes up.
                continue
            sent = self._sent.setdefault(address, {})
            prefixes, compare = changed, sent
            if address in self._resend:
                # Re-announce all we want (ExaBGP drops what it already holds) and withdraw what ExaBGP may
                # still hold from before (a neighbour recreated by a reload holds nothing; harmless then).
                if everything is None:
                    everything = set(self._loc) | set(self._local)
                prefixes, compare = everything | sent.keys(), {}
            changes: dict[str, Advertisement | None] = {}
            for prefix in prefixes:
                adv = self._export(peer, prefix)
                if adv is None:
                    if prefix in sent:
                        changes[prefix] = None
                        del sent[prefix]
                elif compare.get(prefix) != adv:
                    changes[prefix] = adv
                    sent[prefix] = adv
            if changes:
                lines.extend(peer_commands(address, changes, refused=self._refused))
            if address in self._eor_due and self._workloads_seen:
                self._eor_due.discard(address)
                afi = "ipv6" if peer.family == "ipv6" else "ipv4"
                eor = eor_command(address, afi, refused=self._refused)
                if eor is not None:
                    lines.append(eor)
        self._resend.clear()
        return lines

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self.tick()
            if not self._wake.is_set():
                continue
            try:
                await self.flush()
            except Exception:
                log.exception("speaker flush failed; retrying")
                self._full = True
                await asyncio.sleep(1.0)
                self._wake.set()

    # ------------------------------------------------------------------ views

    def initial_sync_done(self) -> bool:
        """Every configured peer has sent its table (End-of-RIB) since we started: routes adopted from a
        previous run that nobody re-announced can now be swept."""
        return self._intent is not None and self._synced >= self._status.keys()

    def peer_statuses(self) -> list[PeerStatus]:
        statuses = (self._held_view(s) for s in self._status.values())
        return sorted(statuses, key=lambda s: (s.family, ip_address(s.address)))

    def _held_view(self, status: PeerStatus) -> PeerStatus:
        note = self.limits.hold_note(status.address)
        if note is None:
            return status
        return replace(status, state="start", bgp_state="Idle", last_error=note)

    def announced_count(self, peer: str) -> int:
        return len(self._sent.get(peer, {}))

    def received_count(self, peer: str | None = None) -> int:
        return self._rib.count(peer)

    def stale_count(self, peer: str) -> int:
        return self._rib.stale_count(peer)

    def refused_counts(self) -> dict[tuple[str, str], int]:
        """(peer, reason) -> paths the import guard refused at their last selection."""
        counts: dict[tuple[str, str], int] = {}
        for prefix, refusal in self.screen.refused.items():
            for path in self._rib.paths(prefix):
                key = (path.peer, refusal.reason)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def exports(self) -> tuple[str, ...]:
        return tuple(self._local)

    def routes_report(self) -> list[dict]:
        """The Loc-RIB for `calico-bgp routes`: every prefix we originate or selected, and its fate."""
        return loc_rib_report(
            loc=self._loc,
            local=self._local,
            sent=self._sent,
            rib=self._rib,
            table=self._table,
            intent=self._intent,
            policy=self._policy,
            unknown=UNKNOWN,
            guard_refused=self.screen.refused,
        )
