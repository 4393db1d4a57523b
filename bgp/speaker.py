"""The route distributor: what we announce to each peer, what we learned, and what the kernel should hold.

Stage: the heart of the announcements and kernel dataplanes. Inputs: the node intent (from confgen), the
workload routes Felix wrote (from ``routes.monitor``), and ExaBGP's events (through the bridge). Outputs:
API commands (through an injected ``send``) and the desired kernel routes (through an injected route table).

Owns: per-peer Adj-RIB-Out as we told it to ExaBGP (``_sent``), the Adj-RIB-In, and peer session state.

Complicating factors:
- Everything is batched: inputs only mark state dirty; ``run`` flushes in one pass, so a burst becomes one
  command per prefix (the ExaBGP 5.0.15 ordering bug, exabgp.md §2.4) and one kernel apply.
- ExaBGP keeps the routes we gave a neighbour and re-sends them when the session comes back, so commands go
  out whatever the session state. On session up we re-send the whole desired set anyway: ExaBGP drops what it
  already holds, and this repairs a neighbour that ExaBGP (re)created since (reload, restart).
- A session that goes down without graceful restart takes its routes out of the kernel at once.
- Nodes that are not route reflectors never pass iBGP-learned routes to iBGP peers (RFC 4271 §9.2), so with a
  full mesh each node announces only its own routes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from bgp.exabgp import events as ev
from bgp.exabgp.commands import Advertisement, peer_commands
from bgp.rib import AdjRibIn, Path, select
from bgp.status import PeerStatus
from confgen.intent import NodeIntent, PeerIntent
from routes.export import local_exports
from routes.model import Route
from routes.resolve import KernelPool, kernel_routes

log = logging.getLogger(__name__)


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._send = send
        self._table = route_table
        self._metrics = metrics
        self._clock = clock
        self._intent: NodeIntent | None = None
        self._workloads: frozenset[str] = frozenset()
        self._rib = AdjRibIn()
        self._sent: dict[str, dict[str, Advertisement]] = {}
        self._resend: set[str] = set()
        self._status: dict[str, PeerStatus] = {}
        self._dirty = asyncio.Event()
        self._kernel_dirty = True
        self.unparsed_lines = 0

    # ----------------------------------------------------------------- inputs

    def set_intent(self, intent: NodeIntent) -> None:
        old = self._intent
        self._intent = intent
        wanted = {p.address: p for p in intent.peers}
        for address in list(self._status):
            if address not in wanted:
                del self._status[address]
                self._sent.pop(address, None)
                if self._rib.drop_peer(address):
                    self._kernel_dirty = True
        for address, peer in wanted.items():
            status = self._status.get(address)
            if status is None:
                self._status[address] = PeerStatus.configured(peer, self._clock())
            else:
                self._status[address] = status.reconfigured(peer)
        if old is None or (old.pools, old.local_blocks, old.ipv4_network) != (
            intent.pools,
            intent.local_blocks,
            intent.ipv4_network,
        ):
            self._kernel_dirty = True
        self._dirty.set()

    def set_workload_routes(self, prefixes: Iterable[str]) -> None:
        prefixes = frozenset(prefixes)
        if prefixes != self._workloads:
            self._workloads = prefixes
            self._dirty.set()

    def kernel_changed(self) -> None:
        """Someone changed or removed a route of ours, or a device came back: program the table again."""
        self._kernel_dirty = True
        self._dirty.set()

    def exabgp_restarted(self) -> None:
        """A new ExaBGP holds nothing we sent: everything is re-sent and every session starts over."""
        self._sent.clear()
        for address, status in self._status.items():
            if status.established:
                self._peer_down(address, "ExaBGP restarted")
        self._dirty.set()

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
            return  # a neighbour we no longer configure (reload in flight)
        if isinstance(event, ev.PeerState):
            self._peer_state(event)
        elif isinstance(event, ev.RoutesLearned):
            self._learned(event)
        elif isinstance(event, ev.RoutesWithdrawn):
            for prefix in event.prefixes:
                if self._rib.remove(peer, prefix):
                    self._kernel_dirty = True
        elif isinstance(event, ev.Notification):
            self._status[peer] = self._status[peer].with_error(event, self._clock())
        self._dirty.set()

    def _peer_state(self, event: ev.PeerState) -> None:
        status = self._status[event.peer]
        if event.state == ev.STATE_UP:
            self._status[event.peer] = status.up(self._clock())
            self._resend.add(event.peer)
        elif event.state == ev.STATE_DOWN:
            self._peer_down(event.peer, event.reason)
        elif event.state == ev.STATE_CONNECTED:
            self._status[event.peer] = status.connected(self._clock())

    def _peer_down(self, peer: str, reason: str) -> None:
        self._status[peer] = self._status[peer].down(reason, self._clock())
        if self._rib.drop_peer(peer):
            self._kernel_dirty = True

    def _learned(self, event: ev.RoutesLearned) -> None:
        peer = self._status[event.peer]
        for prefix in event.prefixes:
            path = Path(
                prefix=prefix,
                peer=event.peer,
                nexthop=event.nexthop,
                attributes=event.attributes,
                ebgp=not peer.ibgp,
            )
            if self._rib.add(path):
                self._kernel_dirty = True

    # ----------------------------------------------------------------- outputs

    def exports(self) -> tuple[str, ...]:
        intent = self._intent
        if intent is None:
            return ()
        return local_exports(self._workloads, intent.local_blocks, kernel_pools(intent))

    def desired_out(self, peer: PeerIntent, exports: tuple[str, ...]) -> dict[str, Advertisement]:
        """Adj-RIB-Out for one peer: our own routes, next hop self."""
        family_v6 = peer.family == "ipv6"
        return {
            prefix: Advertisement(nexthop=peer.local_address)
            for prefix in exports
            if (":" in prefix) == family_v6
        }

    def learned_best(self) -> dict[str, tuple[str, ...]]:
        """prefix -> next hops of the multipath set."""
        out: dict[str, tuple[str, ...]] = {}
        for prefix in self._rib.prefixes():
            _, multipath = select(self._rib.paths(prefix))
            if multipath:
                out[prefix] = tuple(sorted({p.nexthop for p in multipath}))
        return out

    def desired_kernel(self) -> list[Route]:
        intent = self._intent
        if intent is None:
            return []
        return kernel_routes(
            self.learned_best(), intent.local_blocks, kernel_pools(intent), intent.ipv4_network or None
        )

    async def flush(self) -> None:
        """Push every pending change out: API commands first, then the kernel."""
        self._dirty.clear()
        intent = self._intent
        if intent is None:
            return
        exports = self.exports()
        lines: list[str] = []
        for peer in intent.peers:
            desired = self.desired_out(peer, exports)
            sent = self._sent.setdefault(peer.address, {})
            if peer.address in self._resend:
                sent.clear()
            changes: dict[str, Advertisement | None] = {
                prefix: adv for prefix, adv in desired.items() if sent.get(prefix) != adv
            }
            changes.update({prefix: None for prefix in sent if prefix not in desired})
            if changes:
                lines.extend(peer_commands(peer.address, changes))
                self._sent[peer.address] = desired
        self._resend.clear()
        if lines:
            await self._send(lines)
        if self._kernel_dirty:
            self._kernel_dirty = False
            self._table.set_desired(self.desired_kernel())
            await self._table.apply()
        if self._metrics is not None:
            self._metrics.observe_speaker(self)

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                await self.flush()
            except Exception:
                log.exception("speaker flush failed; retrying on the next change")
                self._kernel_dirty = True
                await asyncio.sleep(1.0)
                self._dirty.set()

    # ----------------------------------------------------------------- views

    def peer_statuses(self) -> list[PeerStatus]:
        return sorted(self._status.values(), key=lambda s: (s.family, s.address))

    def announced_count(self, peer: str) -> int:
        return len(self._sent.get(peer, {}))

    def received_count(self, peer: str | None = None) -> int:
        return self._rib.count(peer)
