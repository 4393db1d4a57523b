"""Prometheus metrics of the node daemon.

Stage: observability across the pipeline.

Owns: the metric definitions for the BGP side and the one ``CollectorRegistry`` the daemon builds and passes
to every component (the routes and confgen packages register theirs on the same registry). No global
registry: tests build their own and nothing leaks between them.

Complicating factors: peers come and go with the intent, so per-peer series are rebuilt from the speaker's
view on every flush instead of being incremented, and removed peers disappear from the output.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
        self.adj_rib_out_repairs = Counter(
            "calico_bgp_adj_rib_out_repairs",
            "Prefixes whose state in ExaBGP differed from ours at an audit and were re-sent or withdrawn",
            registry=registry,
        )
        self._unparsed_seen = 0
        self._repairs_seen = 0
        self._labels: set[tuple[str, str, str]] = set()

    def observe_speaker(self, speaker) -> None:
        current: set[tuple[str, str, str]] = set()
        for status in speaker.peer_statuses():
            key = (status.address, status.family, status.type)
            current.add(key)
            self.session_up.labels(*key).set(1 if status.established else 0)
            self.prefixes_announced.labels(*key).set(speaker.announced_count(status.address))
            self.prefixes_received.labels(*key).set(speaker.received_count(status.address))
            self.stale_paths.labels(*key).set(speaker.stale_count(status.address))
        for gone in self._labels - current:
            per_peer = (self.session_up, self.prefixes_announced, self.prefixes_received, self.stale_paths)
            for metric in per_peer:
                metric.remove(*gone)
        self._labels = current
        self.local_exports.set(len(speaker.exports()))
        if speaker.audit_repairs > self._repairs_seen:
            self.adj_rib_out_repairs.inc(speaker.audit_repairs - self._repairs_seen)
            self._repairs_seen = speaker.audit_repairs
        if speaker.unparsed_lines > self._unparsed_seen:
            self.unparsed_lines.inc(speaker.unparsed_lines - self._unparsed_seen)
            self._unparsed_seen = speaker.unparsed_lines
