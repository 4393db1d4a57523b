"""Prometheus metrics of the node daemon.

Stage: observability across the pipeline.

Owns: the metric definitions for the BGP side and the one ``CollectorRegistry`` the daemon builds and passes
to every component (the routes and confgen packages register theirs on the same registry). No global
registry: tests build their own and nothing leaks between them.

Complicating factors:
- Peers come and go with the intent, so per-peer series are read from the speaker's view after every flush
  instead of being incremented, and removed peers disappear from the output.
- A node's start is a flush or more per peer event, each visiting every peer: rewriting every series each
  time is O(peers^2) per start (about 1 s of CPU with 99 peers coming up). So each peer's values are
  compared with the ones last written and only a changed one is written, through the series objects kept
  per peer (``labels()`` is a locked dictionary lookup each time).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from bgp.bfd.api import BfdStatus
from bgp.latency import BUCKETS, Propagation


def build_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class SpeakerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["peer", "family", "type"]
        self.session_up = Gauge(
            "calico_bgp_session_up", "1 when the BGP session is Established", labels, registry=registry
        )
        self.prefixes_announced = Gauge(
            "calico_bgp_prefixes_announced", "Prefixes we announce to the peer", labels, registry=registry
        )
        self.prefixes_received = Gauge(
            "calico_bgp_prefixes_received", "Prefixes the peer sent us", labels, registry=registry
        )
        self.local_exports = Gauge(
            "calico_bgp_local_exports",
            "Local prefixes (blocks, borrowed IPs) selected for export",
            registry=registry,
        )
        self.unparsed_lines = Counter(
            "calico_bgp_exabgp_unparsed_lines", "ExaBGP API lines that could not be used", registry=registry
        )
        self.stale_paths = Gauge(
            "calico_bgp_stale_paths",
            "Paths kept through the peer's graceful restart",
            labels,
            registry=registry,
        )
        self._unparsed_seen = 0
        self._series: dict[tuple[str, str, str], _PeerSeries] = {}
        self.guards = GuardMetrics(registry)

    def observe_speaker(self, speaker) -> None:
        statuses = speaker.peer_statuses()
        current: set[tuple[str, str, str]] = set()
        for status in statuses:
            key = (status.address, status.family, status.type)
            current.add(key)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _PeerSeries(
                    tuple(m.labels(*key) for m in self._per_peer())
                )
            address = status.address
            series.write((
                1 if status.established else 0,
                speaker.announced_count(address),
                speaker.received_count(address),
                speaker.stale_count(address),
            ))
        if len(current) != len(self._series):
            for gone in self._series.keys() - current:
                for metric in self._per_peer():
                    metric.remove(*gone)
                del self._series[gone]
        self.local_exports.set(len(speaker.exports()))
        if speaker.unparsed_lines > self._unparsed_seen:
            self.unparsed_lines.inc(speaker.unparsed_lines - self._unparsed_seen)
            self._unparsed_seen = speaker.unparsed_lines
        self.guards.observe(speaker, statuses)

    def _per_peer(self) -> tuple[Gauge, ...]:
        return (self.session_up, self.prefixes_announced, self.prefixes_received, self.stale_paths)


class _PeerSeries:
    """One peer's gauges and the values last written to them."""

    __slots__ = ("gauges", "values")

    def __init__(self, gauges: tuple) -> None:
        self.gauges = gauges
        self.values: tuple[int, ...] | None = None

    def write(self, values: tuple[int, ...]) -> None:
        if values == self.values:
            return
        for gauge, value, old in zip(self.gauges, values, self.values or (None,) * len(values), strict=True):
            if value != old:
                gauge.set(value)
        self.values = values


class GuardMetrics:
    """The receive-side guards (``bgp.import_guard``, ``bgp.limits``), per peer. The speaker keeps the
    counts per configured peer; the counters here advance by the difference, and a peer's series go when
    the peer leaves the intent."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.routes_refused = Gauge(
            "calico_bgp_routes_refused",
            "Learned routes the import guard keeps out of the Loc-RIB and the kernel",
            ["peer", "reason"],
            registry=registry,
        )
        self.prefix_limit_exceeded = Counter(
            "calico_bgp_prefix_limit_exceeded",
            "Times the peer crossed its prefix limit (session torn down, peer held idle)",
            ["peer"],
            registry=registry,
        )
        self.as_path_too_long = Counter(
            "calico_bgp_as_path_too_long",
            "Prefixes treated as withdrawn because their AS_PATH was longer than the limit",
            ["peer"],
            registry=registry,
        )
        self.malformed_withdrawn = Counter(
            "calico_bgp_malformed_prefixes_withdrawn",
            "Announced prefixes treated as withdrawn because their UPDATE was malformed (RFC 7606)",
            ["peer"],
            registry=registry,
        )
        self.peer_held = Gauge(
            "calico_bgp_peer_held",
            "1 while the peer is held idle after crossing its prefix limit",
            ["peer"],
            registry=registry,
        )
        self._refused: set[tuple[str, str]] = set()
        self._seen: dict[tuple[str, str], int] = {}  # (counter, peer) -> the speaker's count last seen
        self._held: dict[str, bool] = {}  # peer -> the peer_held value last written

    def observe(self, speaker, statuses=None) -> None:
        refused = speaker.refused_counts()
        for key, count in refused.items():
            self.routes_refused.labels(*key).set(count)
        for gone in self._refused - refused.keys():
            self.routes_refused.remove(*gone)
        self._refused = set(refused)
        limits = speaker.limits
        statuses = speaker.peer_statuses() if statuses is None else statuses
        peers = {s.address for s in statuses}
        for name, counter, counts in (
            ("prefix-limit", self.prefix_limit_exceeded, limits.prefix_limit_trips),
            ("as-path", self.as_path_too_long, limits.as_path_withdraws),
            ("malformed", self.malformed_withdrawn, speaker.malformed_withdraws),
        ):
            for peer in peers:
                count = counts.get(peer, 0)
                seen = self._seen.get((name, peer))
                if seen is None or count > seen:  # a new peer's series is exported from zero
                    counter.labels(peer).inc(count - (seen or 0))
                    self._seen[(name, peer)] = count
                elif count < seen:  # the speaker forgot and counts again: the counter only goes up
                    self._seen[(name, peer)] = count
        for peer in peers:
            held = limits.held(peer)
            if self._held.get(peer) is not held:
                self.peer_held.labels(peer).set(1 if held else 0)
                self._held[peer] = held
        if len(peers) != len(self._held):
            for peer in self._held.keys() - peers:
                for metric in (self.prefix_limit_exceeded, self.as_path_too_long, self.malformed_withdrawn):
                    metric.remove(peer)
                self.peer_held.remove(peer)
                for name in ("prefix-limit", "as-path", "malformed"):
                    self._seen.pop((name, peer), None)
                del self._held[peer]


class BfdMetrics:
    """BFD sessions, per BGP peer they serve (``bgp.bfd.api.BfdStatus``): written from the engine's status
    on every change and every configuration; a session that leaves takes its series with it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.session_up = Gauge(
            "calico_bgp_bfd_session_up", "1 when the peer's BFD session is Up", ["peer"], registry=registry
        )
        self.downs = Counter(
            "calico_bgp_bfd_downs",
            "Times the peer's BFD session left Up (each tears an Established BGP session down)",
            ["peer"],
            registry=registry,
        )
        self._seen: dict[str, tuple[bool, int]] = {}  # peer -> (up, the engine's downs) last written

    def observe(self, statuses: Iterable[BfdStatus]) -> None:
        current: set[str] = set()
        for status in statuses:
            peer = status.peer
            current.add(peer)
            seen = self._seen.get(peer)
            if seen is not None and seen == (status.up, status.downs):
                continue
            self.session_up.labels(peer).set(1 if status.up else 0)
            before = 0 if seen is None else seen[1]
            if seen is None or status.downs > before:  # a new session's series is exported from zero
                self.downs.labels(peer).inc(max(0, status.downs - before))
            self._seen[peer] = (status.up, status.downs)  # fewer downs: reconfigured, counts again from 0
        for gone in self._seen.keys() - current:
            self.session_up.remove(gone)
            self.downs.remove(gone)
            del self._seen[gone]


class PropagationCollector:
    """``calico_bgp_propagation_{export,import}_seconds``: served from ``bgp.latency``'s own bucket counts,
    which take a whole batch in one addition (a Prometheus ``Histogram`` would take one call per route)."""

    FAMILIES = (
        ("export", "calico_bgp_propagation_export_seconds",
         "Workload routes: from reading the kernel's notification to writing the API command to ExaBGP "
         "(per batch, weighted by its routes)"),
        ("import", "calico_bgp_propagation_import_seconds",
         "Learned routes: from reading ExaBGP's event to the kernel's acknowledgement of the route "
         "(per batch, weighted by its routes)"),
    )  # fmt: skip

    def __init__(self, propagation: Propagation, registry: CollectorRegistry) -> None:
        self._directions = {"export": propagation.export, "import": propagation.imported}
        registry.register(self)

    def collect(self):
        for key, name, documentation in self.FAMILIES:
            buckets = self._directions[key].buckets
            cumulative, rows = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), buckets.counts, strict=True):
                cumulative += count
                rows.append((floatToGoString(bound), cumulative))
            yield HistogramMetricFamily(name, documentation, buckets=rows, sum_value=buckets.sum)
