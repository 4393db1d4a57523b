"""The route distributor: Adj-RIB-In -> Loc-RIB -> per-peer Adj-RIB-Out, and the kernel's desired routes.

Stage: the heart of the announcements and kernel dataplanes. Inputs: the node intent (from confgen), the
workload routes Felix wrote (from ``routes.monitor``), ExaBGP's events (through the bridge) and the kernel's
events (through the daemon). Outputs: API commands (through an injected ``send``) and the desired kernel
routes (through an injected route table).

This module is the façade the daemon drives and the batching between four parts, each in its own module:
- ``bgp.originated``: what this node announces of its own (blocks, borrowed workload IPs, service ranges);
- ``bgp.sessions``: per-peer sessions, graceful restart and the receive-side guards, over the Adj-RIB-In;
- ``bgp.adj_rib_out``: what we told ExaBGP per peer (sent, resend, End-of-RIB) and the commands that follow;
- ``bgp.kernel_feed``: the Loc-RIB as desired kernel routes, handed to the route table.

Owns: the intent and its policy, every path received (``AdjRibIn``, shared with the sessions), the selected
paths (``_loc``, the Loc-RIB), and the prefixes waiting to be selected again.

Complicating factors:
- Everything is batched and incremental: inputs only record which prefixes changed; ``flush`` recomputes
  just those, so a burst becomes one command per prefix (the ExaBGP 5.0.15 ordering bug, docs/exabgp-notes.md)
  and one kernel apply, and 100k routes do not mean 100k recomputations per change. A change that can touch
  any prefix (a new intent, the node's addresses, ExaBGP restarting) re-evaluates everything once.
- Kernel-side events take a kernel-only path (``kernel_changed``, ``nexthops_changed``): they reach the
  route table without best-path selection or any peer's Adj-RIB-Out diff, which their cause cannot change.
- What ExaBGP holds is rebuilt, never audited or replayed: whenever it is in doubt (ExaBGP restarted, hung,
  its API connection lost or respawned; ``exabgp_down``) every session counts as down, nothing we sent is
  assumed held, and each peer gets our whole Adj-RIB-Out and then End-of-RIB once it is Established again,
  from a fresh ExaBGP (the supervisor restarts it on any such doubt). This replaces an audit against ``show
  adj-rib out``: ExaBGP 5.0.15 answers that one route per line and quadratically in the table, it answers
  asynchronously with no end marker when acks are off, and the one thing it could catch beyond lost
  commands, the announce/withdraw reordering bug, is avoided by sending one command per prefix per batch.
- The import guard (``bgp.import_guard``) keeps link-local, loopback, multicast and on-link prefixes out of
  selection, while their paths stay in the Adj-RIB-In to be re-screened when the node's addresses change.
- Propagation timing (``bgp.latency``) rides on the batching: a workload burst and an ExaBGP line each carry
  one read time; a flush takes what was read before it and observes, per batch, the routes its write to
  ExaBGP (export) or its kernel apply (import) carried. Nothing is timed per route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from bgp.adj_rib_out import AdjRibOut
from bgp.bfd.api import BfdStatus
from bgp.bfd.gate import BfdGate, Wanted
from bgp.exabgp import events as ev
from bgp.exabgp.commands import Advertisement
from bgp.heap import HeapTrimmer
from bgp.import_guard import ImportScreen
from bgp.kernel_feed import IDLE, KernelFeed, kernel_pools
from bgp.latency import Propagation, tracked
from bgp.limits import PeerLimits
from bgp.originated import Originated
from bgp.policy import Candidate, NodePolicy
from bgp.rib import AdjRibIn, Selected, best_of, select, selected_entry
from bgp.routes_view import loc_rib_report
from bgp.sessions import Sessions
from bgp.status import PeerStatus
from confgen.intent import NodeIntent, PeerIntent
from confgen.refusals import EXABGP_API, SinkRefusals
from routes.resolve import Resolve

log = logging.getLogger(__name__)

# A placeholder advertisement that differs from every real one (the routes view never lists it as sent).
UNKNOWN = Advertisement(nexthop="0.0.0.0", origin="incomplete")


@dataclass(frozen=True)
class FlushWork:
    """What one flush cost: prefixes through best-path selection, (peer, prefix) export decisions in the
    Adj-RIB-Out diff, command lines sent, and what the route table was asked for (``bgp.kernel_feed``)."""

    selected: int = 0
    compared: int = 0
    commands: int = 0
    kernel: str = IDLE


class Speaker:
    def __init__(
        self,
        *,
        send: Callable[[list[str]], Awaitable[object]],  # False: the lines were dropped, not written
        route_table,
        metrics=None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        resolve: Resolve | None = None,  # routes.recursive.NexthopResolver.resolve: BIRD's gateway recursive
        limits: PeerLimits | None = None,  # per-peer prefix limit and AS_PATH length limit (bgp.limits)
        refusals: SinkRefusals | None = None,  # counts and logs values the API command builder refuses
        propagation: Propagation | None = None,  # times workload and learned routes through (bgp.latency)
    ) -> None:
        self._send = send
        self._metrics = metrics
        self._clock = clock
        self._intent: NodeIntent | None = None
        self._policy: NodePolicy | None = None
        self._originated = Originated()
        self._rib = AdjRibIn()
        self._loc: dict[str, Selected] = {}
        self.screen = ImportScreen(clock=clock)
        refused = (refusals if refusals is not None else SinkRefusals()).reporter(EXABGP_API)
        self._out = AdjRibOut(refused=refused)
        self._sessions = Sessions(
            rib=self._rib,
            out=self._out,
            screen=self.screen,
            limits=limits or PeerLimits(clock=clock),
            clock=clock,
            wallclock=wallclock,
        )
        self._kernel = KernelFeed(route_table, resolve)
        self.propagation = propagation if propagation is not None else Propagation(clock)
        self._changed: set[str] = set()
        self._full = True
        self._wake = asyncio.Event()
        self.unparsed_lines = 0
        self.last_flush = FlushWork()
        self.heap = HeapTrimmer.for_this_process()  # what a burst freed goes back once it is over

    @property
    def limits(self) -> PeerLimits:
        return self._sessions.limits

    @property
    def malformed_withdraws(self) -> dict[str, int]:
        """Peer -> prefixes treated as withdrawn (RFC 7606)."""
        return self._sessions.malformed_withdraws

    # ------------------------------------------------------------------ inputs

    def set_intent(self, intent: NodeIntent) -> None:
        self._intent = intent
        policy = self._policy = NodePolicy(intent, {f.name: f for f in intent.bgp_filters})
        self._sessions.configure({p.address: p for p in intent.peers})
        self.screen.set_node((intent.ipv4_network, intent.ipv6_network), intent.local_blocks)
        # Worked out once per intent, for both the export rules and the kernel feed.
        pools = kernel_pools(intent)
        services = policy.service_ranges()
        self._kernel.set_intent(intent, pools, services)
        self._changed |= self._originated.configure(intent.local_blocks, pools, services)
        self._full = True  # policy, pools or peers may have changed: everything is re-evaluated
        self._wake.set()

    def set_workload_routes(self, prefixes: Iterable[str], devices: Mapping[str, str] | None = None) -> None:
        """The whole set of workload prefixes (and their devices): applied as its difference from ours."""
        self._changed.update(self._originated.replace(prefixes, devices))
        self._wake.set()

    def update_workload_routes(self, changes: Mapping[str, str | None], read_at: float | None = None) -> None:
        """Workload prefixes that changed (``routes.monitor``'s contract): prefix -> device, or None when
        gone. Costs in proportion to ``changes``, not to the workloads held; an entry we hold is a no-op.
        ``read_at``: when the kernel notifications were read (the clock's time), to time their export."""
        exported = self._originated.update(changes)
        if exported:
            self._changed.update(exported)
            if read_at is not None:
                self.propagation.export.read(read_at, exported)
        self._wake.set()

    def set_interface_addresses(self, addresses: Iterable[str]) -> None:
        """The kernel's interface addresses (``routes.addresses``): the import guard's connected subnets."""
        if self.screen.set_interface_addresses(addresses):
            self._full = True  # refused routes may be accepted now, accepted ones refused
            self._wake.set()

    def set_bfd(self, wanted: Wanted, statuses: list[BfdStatus]) -> None:
        """The BFD sessions configured for the peers (``bgp.bfd.gate``) and their status: who is held."""
        self._sessions.bfd_configured(wanted, statuses)
        self._wake.set()  # status and the metrics show the holds

    def bfd_changed(self, status: BfdStatus) -> None:
        """A BFD session changed state: its BGP session may be torn down, its paths dropped at once."""
        self._changed |= self._sessions.bfd_changed(status)
        self._wake.set()

    def kernel_changed(self) -> None:
        """Someone changed or removed a route of ours, a device came back, or held deletes were released:
        the route table already holds what it should write, so it is applied again; nothing is selected."""
        self._kernel.repair()
        self._wake.set()

    def nexthops_changed(self) -> None:
        """How BGP next hops resolve may have changed (``routes.recursive``: a dump of the kernel table, or a
        change to a route a next hop resolves through): every kernel route is worked out again from the
        Loc-RIB as it stands; nothing is selected or announced again."""
        self._kernel.rebuild()
        self._wake.set()

    def exabgp_restarted(self) -> None:
        """A new ExaBGP holds nothing we sent: everything is re-sent and every session starts over."""
        self.exabgp_down("ExaBGP starting")

    def exabgp_down(self, reason: str) -> None:
        """ExaBGP is gone, hung or in doubt: its sessions and what it holds no longer count. Each session is
        down (graceful restart decides what its paths become), nothing we sent is assumed held, and status
        says Idle with the first reason given until ExaBGP answers again (``exabgp_up``)."""
        self._changed |= self._sessions.exabgp_down(reason)
        self._full = True
        self._wake.set()

    def exabgp_up(self) -> None:
        """ExaBGP answers on its API again: sessions wait for their peers (why they went down stays)."""
        self._sessions.exabgp_up()
        self._wake.set()

    def handle_line(self, line: str) -> None:
        read_at = self._clock()  # one reading per line, before decoding: the import latency starts here
        for event in ev.parse_line(line):
            self.handle_event(event, read_at)

    def handle_event(self, event: ev.Event, read_at: float | None = None) -> None:
        if isinstance(event, ev.Unparsed):
            self.unparsed_lines += 1
            log.warning("ignoring ExaBGP line (%s): %s", event.reason, event.line[:120])
            return
        changed = self._sessions.handle(event)
        if changed is None:
            return
        self._changed |= changed
        if read_at is not None:
            self.propagation.imported.read(read_at, changed)
        self._wake.set()

    def tick(self, now: float | None = None) -> None:
        """Run the timers: prefix-limit holds and graceful-restart expiry."""
        now = self._clock() if now is None else now
        if self.limits.tick(now):
            self._wake.set()  # the held peers' status and metrics change
        swept = self._sessions.expire(now)
        if swept:
            self._changed |= swept
            self._wake.set()

    # ------------------------------------------------------------------ the RIB

    def _select(self, prefix: str, policy: NodePolicy, peers: Mapping[str, PeerIntent]) -> None:
        paths = [
            p for p in self._rib.paths(prefix) if p.peer in peers and policy.accept_import(peers[p.peer], p)
        ]
        if self.screen.refuses(prefix, paths):
            paths = []
        best, multipath = select(paths)
        if best is None:
            self._loc.pop(prefix, None)
        else:
            self._loc[prefix] = selected_entry(best, multipath)

    def _export(self, peer: PeerIntent, prefix: str) -> Advertisement | None:
        policy = self._policy
        assert policy is not None  # flush runs only with an intent
        candidate = self._originated.candidates.get(prefix)
        source = None
        if candidate is None:
            selected = self._loc.get(prefix)
            if selected is None:
                return None
            best = best_of(selected)
            candidate = Candidate(prefix, best)
            source = self._sessions.peers.get(best.peer)
        return policy.export(peer, candidate, source)

    def _everything(self) -> set[str]:
        """Every prefix we want announced: the Loc-RIB and the local exports."""
        return set(self._loc) | set(self._originated.candidates)

    # ------------------------------------------------------------------ output

    async def flush(self) -> None:
        """Push every pending change out: API commands first, then the kernel."""
        self._wake.clear()
        policy = self._policy
        if self._intent is None or policy is None:
            return
        full = self._full
        changed = self._changed
        self._full, self._changed = False, set()
        # The changes read so far are carried by this flush; those read while it awaits, by the next.
        exports, imports = self.propagation.export.take(), self.propagation.imported.take()
        if full:
            changed = set(self._rib.prefixes()) | self._everything() | self._out.prefixes()
            self._kernel.rebuild()
        peers = self._sessions.peers
        for prefix in changed:
            self._select(prefix, policy, peers)
        compared = self._out.compared
        lines = self._sessions.take_teardowns()
        out, track = self._out, tracked(exports) if exports else ()
        established, seen = self._sessions.established, self._originated.seen
        lines += out.lines(changed, peers, established, self._export, self._everything, seen, track)
        # A send that returns False dropped the lines (no working connection to ExaBGP): nothing was carried.
        if lines and await self._send(lines) is not False:
            self.propagation.export.delivered(exports, self._out.carried)
        kernel = await self._kernel.flush(self._loc, changed)
        if imports:
            self.propagation.imported.delivered(imports, self._kernel.acked_prefixes())
        self.last_flush = FlushWork(len(changed), self._out.compared - compared, len(lines), kernel)
        self.heap.handled(self.last_flush.selected + self.last_flush.compared)
        if self._metrics is not None:
            self._metrics.observe_speaker(self)

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: no task around the wait, one loop turn less between a change
            # arriving and its flush (a single route's latency is counted in loop turns).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self.tick()
            if not self._wake.is_set():
                self.heap.quiet()
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
        return self._intent is not None and self._sessions.all_synced()

    def peer_statuses(self) -> list[PeerStatus]:
        return self._sessions.statuses()  # kept in display order

    @property
    def bfd(self) -> BfdGate:
        """BFD as the sessions see it: holds, and each peer's ``bfd`` object in status."""
        return self._sessions.bfd

    def announced_count(self, peer: str) -> int:
        return self._out.announced_count(peer)

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
        return tuple(self._originated.candidates)

    def routes_report(self) -> list[dict]:
        """The Loc-RIB for `calico-bgp routes`: every prefix we originate or selected, and its fate."""
        return loc_rib_report(
            loc=self._loc,
            local=self._originated.candidates,
            sent=self._out.sent,
            rib=self._rib,
            table=self._kernel.table,
            intent=self._intent,
            policy=self._policy,
            unknown=UNKNOWN,
            guard_refused=self.screen.refused,
        )
