"""What the node daemon says about itself: `calico-bgp status` and `health`, `health --ready/--live` (and the
/readyz, /livez probes), the datastore's health check and what each CalicoNodeStatus is written from.

Stage: observability of the wiring. ``bgp.daemon`` builds one over its components and hands these methods to
the control socket, the HTTP endpoints, the health registry and the node-status writer.

Owns: the few facts the daemon keeps only to report them: its own start, ExaBGP's last start and reload (wall
clock, for CalicoNodeStatus), since when ExaBGP should run but has no API connection, and the last intent.
The rules live elsewhere (``bgp.readiness``, ``bgp.status``, ``bgp.nodestatus``, ``bgp.watchdog``); this
gathers their inputs from the components.

Complicating factors:
- Every method runs on the event loop (the control socket's handlers, the HTTP probes through
  ``bgp.http_endpoints.LoopCall``), so it reads the components' state as it stands, without locks; a blocked
  loop leaves the probe unanswered, and that silence is the verdict.
- Readiness is strict for the daemon's first 30 s (``bgp.readiness``), so the start is taken when this object
  is built, with the daemon, not when ExaBGP starts.
- The Loc-RIB is copied into a node status only when a CalicoNodeStatus asks for ``Routes``: at 100k routes
  the copy is the whole cost of a write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bgp import readiness
from bgp.nodestatus import AgentState, StatusInputs, agent_version
from bgp.status import status_report
from confgen.intent import NodeIntent

if TYPE_CHECKING:
    from bgp.exabgp.channel import ApiChannel
    from bgp.speaker import Speaker
    from bgp.watchdog import Health, LoopWatchdog
    from confgen.datastore.etcd import EtcdSyncer
    from confgen.loop import Confgen
    from routes.table import RouteTable


def datastore_problem(syncer: EtcdSyncer) -> str | None:
    """The datastore component's health check: why the view is not current, None while it is."""
    if syncer.in_sync:
        return None
    cause = f": {syncer.last_error}" if syncer.last_error else ""
    return f"not in sync with etcd (the last good view is kept){cause}"


class DaemonReports:
    def __init__(
        self,
        node: str,
        *,
        syncer: EtcdSyncer,
        confgen: Confgen,
        channel: ApiChannel,
        speaker: Speaker,
        table: RouteTable,
        health: Health,
        watchdog: LoopWatchdog,
        clock: Callable[[], float] = time.monotonic,  # the channel's clock: probe waits are compared to it
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.syncer = syncer
        self.confgen = confgen
        self.channel = channel
        self.speaker = speaker
        self.table = table
        self.health = health
        self.watchdog = watchdog
        self._clock = clock
        self._wall = wall
        self._started = clock()
        self.intent: NodeIntent | None = None  # the last one the daemon acted on
        self._api_down_since: float | None = None  # ExaBGP should run but has no API connection
        self._agent_times: tuple[float | None, float | None] = (None, None)  # ExaBGP's start, last reload

    # -------------------------------------------------------------- facts, from the daemon's callbacks

    def exabgp_started(self) -> None:
        self._agent_times = (self._wall(), None)
        if self._api_down_since is None:
            self._api_down_since = self._clock()

    def api_connected(self) -> None:
        self._api_down_since = None

    def api_lost(self) -> None:
        if self._api_down_since is None:  # lost again before it came back: the outage started earlier
            self._api_down_since = self._clock()

    def reloaded(self) -> None:
        self._agent_times = (self._agent_times[0], self._wall())

    def exabgp_disconnected_for(self) -> float:
        """Seconds ExaBGP has been started, or lost, without an API connection (0 while it has one)."""
        return 0.0 if self._api_down_since is None else self._clock() - self._api_down_since

    # -------------------------------------------------------------- answers

    def ready(self) -> readiness.Verdict:
        """`calico-bgp health --ready` and /readyz (bgp.readiness has the rules)."""
        facts = readiness.ReadyFacts(
            uptime=self._clock() - self._started,
            datastore_synced=self.syncer.revision > 0,
            config_rendered=self.confgen.config is not None,
            exabgp_connected=self.channel.connected.is_set(),
            peers=tuple(
                readiness.PeerState(s.address, s.family, s.established) for s in self.speaker.peer_statuses()
            ),
            end_of_rib_pending=not self.speaker.initial_sync_done(),
        )
        return readiness.readiness(facts)

    def live(self) -> readiness.Verdict:
        """`calico-bgp health --live` and /livez; answered on the event loop, so a blocked one cannot."""
        facts = readiness.LiveFacts(
            components=tuple(
                readiness.ComponentState(c.name, c.state, c.detail) for c in self.health.components()
            ),
            exabgp_wanted=self.confgen.config is not None,
            exabgp_connected=self.channel.connected.is_set(),
            exabgp_disconnected_for=self.exabgp_disconnected_for(),
            probe_waiting=self.channel.liveness.waiting(self._clock()),
        )
        return readiness.liveness(facts)

    def health_report(self) -> dict:
        """`calico-bgp health`: answered from the event loop, so no answer at all means the daemon is hung."""
        report = self.health.report()
        report["node"] = self.node
        report["event_loop"] = {"lag_seconds": self.watchdog.lag, "max_lag_seconds": self.watchdog.max_lag}
        return report

    def status(self) -> dict:
        """`calico-bgp status`: the peers, with the intent's warnings and the datastore's state."""
        warnings = list(self.intent.warnings) if self.intent else ["no configuration rendered yet"]
        if not self.syncer.in_sync:
            warnings.append("datastore unreachable: running on the last good configuration")
        propagation = self.speaker.propagation.report()  # p50/p99 of the last minute (bgp.latency)
        bfd = self.speaker.bfd.report  # each peer's BFD session, when it asked for one (bgp.bfd.gate)
        return status_report(self.node, self.speaker.peer_statuses(), warnings, propagation, bfd)

    def routes(self) -> dict:
        """`calico-bgp routes`: the Loc-RIB report."""
        return {"node": self.node, "routes": self.speaker.routes_report()}

    def node_status_inputs(self, classes: frozenset[str]) -> StatusInputs:
        """The daemon's state for a CalicoNodeStatus (bgp.nodestatus); the Loc-RIB only when asked for."""
        boot, reloaded = self._agent_times
        agent = AgentState(self.channel.connected.is_set(), agent_version(), boot, reloaded)
        routes: tuple = ()
        interfaces: dict[str, str] = {}
        if "Routes" in classes:
            routes = tuple(self.speaker.routes_report())
            for dst, route in getattr(self.table, "desired", {}).items():
                if route.nexthops and route.nexthops[0].ifname:
                    interfaces[dst] = route.nexthops[0].ifname
        peers = tuple(self.speaker.peer_statuses()) if "BGP" in classes else ()
        return StatusInputs(agent, self.intent, peers, routes, interfaces)
