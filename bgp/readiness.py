"""Readiness and liveness verdicts, shaped like calico-node's ``-bird-ready`` and ``-bird-live``. Pure.

Stage: supervision, across the pipeline. The daemon gathers the facts (``ReadyFacts``, ``LiveFacts``) on its
event loop; ``calico-bgp health --ready/--live`` and ``GET /readyz`` / ``/livez`` on the metrics port show
the verdict: ok or not, and one line saying why.

Owns: the rules, exactly:

Ready, checked in this order (the first that fails is the reason):
1. The datastore has been listed at least once since the daemon started. A later etcd outage does not
   make the node unready: it keeps running on its last good view, as BIRD does on its last config.
2. A configuration has been rendered, and ExaBGP runs it (its API process is connected, which ExaBGP
   starts only after it loaded the file).
3. BGP, as calico-node's ``-bird-ready`` decides it:
   - no configured peer: ready;
   - within ``threshold`` (30 s, calico-node's ``-threshold-time`` default) of the daemon's start, every
     configured peer must be Established and our own graceful restart must be over (every peer has sent
     End-of-RIB; BIRD's "graceful restart recovery in progress"), so a rolling update does not move on
     to the next node before this one's sessions and routes are back;
   - after that, one Established peer per address family that has peers is enough (calico-node's
     ``-bird-ready`` and ``-bird6-ready`` together), so a cluster whose nodes each require every mesh peer
     does not go unready everywhere when one node goes down. Passive peers and unreachable ones count
     like any other: calico-node does not tell them apart either.

Live, checked in this order:
1. The event loop answers: the verdict is computed on it, so a blocked loop gives no answer at all (the
   CLI's timeout, the HTTP handler's ``LOOP_DEADLINE``), which is itself the verdict "not live".
2. Every component registered with ``bgp.watchdog.Health`` is ``up`` or still ``starting``, except the
   datastore: its signs of life come from etcd, so its silence measures etcd, not us, and a restart would
   not bring etcd back but would start us without a configuration, taking the BGP sessions down.
3. ExaBGP answers: when it should be running (a configuration was rendered), it has an API connection,
   or has been without one for less than ``EXABGP_START_ALLOWANCE`` (the supervisor is starting it), and
   no probe answer has been owed for ``PROBE_LIVE_DEADLINE`` without any progress. That deadline is half
   the one after which the daemon kills and restarts a hung ExaBGP (``bgp.exabgp.liveness``), so a
   stopped ExaBGP is reported not live from at most ``interval + check_every + PROBE_LIVE_DEADLINE``
   (11 s) after it stopped until the daemon has replaced it.

Complicating factors: liveness is what a supervisor restarts on, readiness what gates a rolling update; a
missing peer or datastore must never cost liveness, or a cluster-wide outage would restart every node.
All times are inputs (ages in seconds), so the rules are tested as a table without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

READY_THRESHOLD = 30.0  # calico-node's -threshold-time default
PROBE_LIVE_DEADLINE = 5.0  # half of LivenessSettings.deadline: reported before the daemon acts on it
EXABGP_START_ALLOWANCE = 60.0  # no-API restart after 20 s plus the supervisor's longest crash backoff, 30 s
EXTERNAL_COMPONENTS = frozenset({"datastore"})  # silence measures something outside the daemon
JUDGED_HERE = frozenset({"exabgp"})  # liveness has its own, finer rule for it (rule 3)
LIVE_STATES = frozenset({"up", "starting"})


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str

    def line(self, what: str) -> str:
        """``ready: ...`` / ``not ready: ...`` (``what`` is "ready" or "live")."""
        return f"{what if self.ok else 'not ' + what}: {self.reason}"

    def as_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason}


@dataclass(frozen=True)
class PeerState:
    address: str
    family: str  # "ipv4" | "ipv6"
    established: bool


@dataclass(frozen=True)
class ReadyFacts:
    uptime: float  # seconds since the daemon started
    datastore_synced: bool  # listed at least once
    config_rendered: bool
    exabgp_connected: bool  # ExaBGP runs the rendered config (its API process is connected)
    peers: tuple[PeerState, ...] = ()
    end_of_rib_pending: bool = False  # our graceful restart: not every peer has sent its table yet


@dataclass(frozen=True)
class ComponentState:
    name: str
    state: str  # as bgp.watchdog.ComponentHealth: up | starting | down | stale
    detail: str = ""


@dataclass(frozen=True)
class LiveFacts:
    components: tuple[ComponentState, ...]
    exabgp_wanted: bool  # a configuration was rendered, so ExaBGP should be running
    exabgp_connected: bool
    exabgp_disconnected_for: float = 0.0  # seconds without an API connection while wanted
    probe_waiting: float = 0.0  # seconds a probe answer has been owed with no progress (0: none owed)


_FAMILY_NAMES = {"ipv4": "IPv4", "ipv6": "IPv6"}


def readiness(facts: ReadyFacts, threshold: float = READY_THRESHOLD) -> Verdict:
    if not facts.datastore_synced:
        return Verdict(False, "the datastore has not been read yet")
    if not facts.config_rendered:
        return Verdict(False, "no BGP configuration rendered yet")
    if not facts.exabgp_connected:
        return Verdict(False, "ExaBGP is not running the configuration (no API connection)")
    peers = facts.peers
    if not peers:
        return Verdict(True, "no BGP peers configured")
    down = [p.address for p in peers if not p.established]
    established = len(peers) - len(down)
    if facts.uptime < threshold:
        if down:
            return Verdict(
                False,
                f"BGP not established with {','.join(down)} "
                f"(every peer must be, within {threshold:g}s of start)",
            )
        if facts.end_of_rib_pending:
            return Verdict(False, "graceful restart in progress: not every peer has sent End-of-RIB yet")
        return Verdict(True, f"{established} of {len(peers)} BGP peers established")
    for family in sorted({p.family for p in peers}):
        if not any(p.established for p in peers if p.family == family):
            waiting = ",".join(p.address for p in peers if p.family == family)
            name = _FAMILY_NAMES.get(family, family)
            return Verdict(False, f"no {name} BGP peer established: BGP not established with {waiting}")
    return Verdict(True, f"{established} of {len(peers)} BGP peers established")


def liveness(
    facts: LiveFacts,
    probe_deadline: float = PROBE_LIVE_DEADLINE,
    start_allowance: float = EXABGP_START_ALLOWANCE,
) -> Verdict:
    judged = [c for c in facts.components if c.name not in EXTERNAL_COMPONENTS | JUDGED_HERE]
    for item in judged:
        if item.state not in LIVE_STATES:
            detail = f": {item.detail}" if item.detail else ""
            return Verdict(False, f"component {item.name} is {item.state}{detail}")
    if facts.exabgp_wanted:
        if not facts.exabgp_connected and facts.exabgp_disconnected_for >= start_allowance:
            return Verdict(
                False, f"ExaBGP has had no API connection for {facts.exabgp_disconnected_for:.0f}s"
            )
        if facts.exabgp_connected and facts.probe_waiting >= probe_deadline:
            return Verdict(
                False,
                f"ExaBGP has not answered its API probe for {facts.probe_waiting:.1f}s "
                f"(at most {probe_deadline:g}s)",
            )
    names = ", ".join(sorted([c.name for c in judged] + (["exabgp"] if facts.exabgp_wanted else [])))
    return Verdict(True, f"event loop and components answering ({names})")
