"""The speaker's receive-side guards with fakes: the import guard, the prefix limit, the AS_PATH limit."""

from __future__ import annotations

import json

import pytest
from speaker_rig import Clock

from bgp.limits import LimitSettings, PeerLimits
from bgp.metrics import SpeakerMetrics, build_registry
from bgp.speaker import Speaker
from confgen.intent import NodeIntent, PeerIntent, PoolIntent
from routes.model import BLACKHOLE, Nexthop
from routes.testing import FakeRouteTable

ME = "10.0.0.11"
TOR = "10.0.0.1"  # an eBGP peer that may send anything
NODE2 = "10.0.0.12"
BLOCK = "192.168.1.0/26"


def peer(address, asn=64512, restart_time=120):
    return PeerIntent(
        name=f"Peer_{address.replace('.', '_')}", address=address, family="ipv4", peer_as=asn,
        local_as=64512, local_address=ME, restart_time=restart_time,
    )


def intent(peers=None):
    peers = (peer(TOR, 65000), peer(NODE2)) if peers is None else peers
    return NodeIntent(
        node="node1", router_id=ME, local_as=64512, ipv4_address=ME, ipv4_network="10.0.0.0/24",
        peers=tuple(peers), pools=(PoolIntent("192.168.0.0/16"),), local_blocks=(BLOCK,),
    )


def state(address, st):
    neighbor = {"address": {"local": ME, "peer": address}, "asn": {"local": 64512, "peer": 1}, "state": st}
    return json.dumps({"type": "state", "neighbor": neighbor})


def open_with_graceful_restart(address):
    return json.dumps({
        "type": "open",
        "neighbor": {
            "address": {"local": ME, "peer": address}, "direction": "receive",
            "message": {"open": {"version": 4, "asn": 65000, "hold_time": 90, "router_id": address,
                                 "capabilities": {"64": {"name": "graceful-restart", "time": 120,
                                                         "address-family-flags": {}, "restart-flags": []}}}},
        },
    })


def update(address, prefixes, as_path=(), withdraw=()):
    body: dict = {}
    if prefixes:
        body["attribute"] = {"origin": "igp"}
        if as_path:
            body["attribute"]["as-path"] = {"0": {"element": "as-sequence", "value": list(as_path)}}
        body["announce"] = {"ipv4 unicast": {address: [{"nlri": p} for p in prefixes]}}
    if withdraw:
        body["withdraw"] = {"ipv4 unicast": [{"nlri": p} for p in withdraw]}
    message = {"update": body}
    return json.dumps({"type": "update", "neighbor": {"address": {"local": ME, "peer": address},
                                                      "message": message}})


@pytest.fixture
def rig():
    sent: list[str] = []

    async def send(lines):
        sent.extend(lines)

    clock = Clock()
    table = FakeRouteTable()
    limits = PeerLimits(LimitSettings(max_prefixes=10, max_as_path_length=3), clock=clock)
    speaker = Speaker(send=send, route_table=table, clock=clock, wallclock=clock, limits=limits)
    speaker.set_intent(intent())
    speaker.set_workload_routes(set())
    return speaker, sent, table, clock


def row(speaker, prefix):
    return next(r for r in speaker.routes_report() if r["prefix"] == prefix)


# ---------------------------------------------------------------------------------------- import guard


async def test_refused_routes_stay_out_of_the_kernel_and_the_exports_and_are_reported(rig):
    speaker, sent, table, _ = rig
    for address in (TOR, NODE2):
        speaker.handle_line(state(address, "up"))
    speaker.handle_line(update(TOR, ["0.0.0.0/0", "169.254.0.0/24", "10.0.0.12/32", "10.0.0.0/24",
                                     "192.168.1.5/32", "192.168.2.0/26", "224.0.0.0/8"]))
    await speaker.flush()
    # Installed: the default route, a remote block, a borrowed IP inside our block; the exact node subnet
    # goes to the table, whose foreign-route rule leaves it to the kernel's connected route.
    assert set(table.desired) == {"0.0.0.0/0", "10.0.0.0/24", "192.168.1.5/32", "192.168.2.0/26", BLOCK}
    assert table.desired[BLOCK].type == BLACKHOLE
    for prefix, reason in (("169.254.0.0/24", "link-local"), ("10.0.0.12/32", "on-link"),
                           ("224.0.0.0/8", "multicast")):
        r = row(speaker, prefix)
        assert r["refused"] == reason and r["kernel"]["installed"] is False
        assert r["kernel"]["why"].startswith("refused by the import guard: ")
        assert r["best"]["learned_from"] == TOR and r["announced_to"] == []
        assert not any(prefix in line for line in sent), "a refused route was re-advertised"
    assert speaker.refused_counts() == {(TOR, "link-local"): 1, (TOR, "on-link"): 1, (TOR, "multicast"): 1}
    # Withdrawn: gone from the report and the counts.
    speaker.handle_line(update(TOR, [], withdraw=["10.0.0.12/32"]))
    await speaker.flush()
    assert all(r["prefix"] != "10.0.0.12/32" for r in speaker.routes_report())
    assert (TOR, "on-link") not in speaker.refused_counts()


async def test_connected_subnets_from_the_kernel_reevaluate_learned_routes(rig):
    speaker, _, table, _ = rig
    speaker.handle_line(update(TOR, ["172.16.0.9/32", "172.16.1.0/24"]))
    await speaker.flush()
    assert {"172.16.0.9/32", "172.16.1.0/24"} <= set(table.desired)
    speaker.set_interface_addresses({"10.0.0.11/24", "172.16.0.1/24", "192.168.1.0/32"})  # eth1 appears
    await speaker.flush()
    assert "172.16.0.9/32" not in table.desired and "172.16.1.0/24" in table.desired
    assert row(speaker, "172.16.0.9/32")["refused"] == "on-link"
    speaker.set_interface_addresses({"10.0.0.11/24"})  # and goes
    await speaker.flush()
    assert "172.16.0.9/32" in table.desired and "refused" not in row(speaker, "172.16.0.9/32")


# ---------------------------------------------------------------------------------------- prefix limit


def teardowns(lines):
    return [line for line in lines if " teardown " in line]


async def test_crossing_the_prefix_limit_tears_down_once_drops_routes_and_holds_the_peer(rig):
    speaker, sent, table, clock = rig
    metrics = SpeakerMetrics(registry := build_registry())
    speaker._metrics = metrics
    speaker.handle_line(open_with_graceful_restart(TOR))
    for address in (TOR, NODE2):
        speaker.handle_line(state(address, "up"))
    speaker.handle_line(update(NODE2, ["192.168.9.0/26"]))
    speaker.handle_line(update(TOR, [f"10.{i}.0.0/16" for i in range(1, 10)]))
    await speaker.flush()
    assert len([p for p in table.desired if p.startswith("10.")]) == 9
    sent.clear()
    speaker.handle_line(update(TOR, ["10.10.0.0/16", "10.11.0.0/16"]))  # 11 > 10
    await speaker.flush()
    assert teardowns(sent) == [f"neighbor {TOR} teardown 1"]
    assert not any(line.startswith(f"neighbor {TOR} ") for line in sent if " teardown " not in line)
    assert not [p for p in table.desired if p.startswith("10.")], "the peer's routes were kept"
    assert "192.168.9.0/26" in table.desired  # the other peer's routes are untouched
    assert speaker.received_count(TOR) == 0 and speaker.stale_count(TOR) == 0
    status = {s.address: s for s in speaker.peer_statuses()}[TOR]
    assert status.info == "Idle Prefix limit: 10 exceeded (11 prefixes), retry in 30s"
    assert registry.get_sample_value("calico_bgp_prefix_limit_exceeded_total", {"peer": TOR}) == 1
    assert registry.get_sample_value("calico_bgp_peer_held", {"peer": TOR}) == 1

    # The session drops (graceful restart was negotiated: nothing is kept stale), comes back during the
    # hold: torn down at once, nothing it sends is accepted.
    speaker.handle_line(state(TOR, "down"))
    clock.now += 10
    sent.clear()
    speaker.handle_line(state(TOR, "up"))
    speaker.handle_line(update(TOR, ["10.1.0.0/16"]))
    await speaker.flush()
    assert teardowns(sent) == [f"neighbor {TOR} teardown 1"]
    assert not any(line.startswith(f"neighbor {TOR} ") and " teardown " not in line for line in sent)
    assert "10.1.0.0/16" not in table.desired and speaker.stale_count(TOR) == 0
    assert {s.address: s for s in speaker.peer_statuses()}[TOR].info.endswith("retry in 20s")

    # After the hold the session is accepted again.
    speaker.handle_line(state(TOR, "down"))
    clock.now += 21
    speaker.tick()
    sent.clear()
    speaker.handle_line(state(TOR, "up"))
    speaker.handle_line(update(TOR, ["10.1.0.0/16"]))
    await speaker.flush()
    assert teardowns(sent) == []
    assert "10.1.0.0/16" in table.desired
    assert {s.address: s for s in speaker.peer_statuses()}[TOR].established
    assert registry.get_sample_value("calico_bgp_peer_held", {"peer": TOR}) == 0


async def test_a_second_crossing_holds_longer(rig):
    speaker, _, _, clock = rig
    speaker.handle_line(state(TOR, "up"))
    speaker.handle_line(update(TOR, [f"10.{i}.0.0/16" for i in range(11)]))
    await speaker.flush()
    clock.now += 31
    speaker.handle_line(state(TOR, "up"))
    speaker.handle_line(update(TOR, [f"10.{i}.0.0/16" for i in range(11)]))
    await speaker.flush()
    assert {s.address: s for s in speaker.peer_statuses()}[TOR].info.endswith("retry in 60s")


async def test_removed_peer_loses_its_hold_and_its_metric_series(rig):
    speaker, _, _, _ = rig
    speaker._metrics = SpeakerMetrics(registry := build_registry())
    speaker.handle_line(state(TOR, "up"))
    speaker.handle_line(update(TOR, [f"10.{i}.0.0/16" for i in range(11)]))
    await speaker.flush()
    assert registry.get_sample_value("calico_bgp_prefix_limit_exceeded_total", {"peer": TOR}) == 1
    speaker.set_intent(intent(peers=(peer(NODE2),)))
    await speaker.flush()
    for name in ("calico_bgp_prefix_limit_exceeded_total", "calico_bgp_as_path_too_long_total",
                 "calico_bgp_peer_held"):
        assert registry.get_sample_value(name, {"peer": TOR}) is None, name
    assert not speaker.limits.held(TOR)


# ---------------------------------------------------------------------------------------- AS_PATH length


async def test_an_over_long_as_path_withdraws_the_earlier_path(rig):
    speaker, _, table, _ = rig
    speaker._metrics = SpeakerMetrics(registry := build_registry())
    speaker.handle_line(state(TOR, "up"))
    speaker.handle_line(update(TOR, ["10.1.0.0/16", "10.2.0.0/16"], as_path=(65000, 65001, 65002)))
    await speaker.flush()
    assert table.desired["10.1.0.0/16"].nexthops == (Nexthop(TOR),)
    speaker.handle_line(update(TOR, ["10.1.0.0/16", "10.3.0.0/16"], as_path=(65000, 65001, 65002, 65003)))
    await speaker.flush()
    assert "10.1.0.0/16" not in table.desired and "10.3.0.0/16" not in table.desired
    assert "10.2.0.0/16" in table.desired  # not in the offending update
    assert speaker.received_count(TOR) == 1
    assert registry.get_sample_value("calico_bgp_as_path_too_long_total", {"peer": TOR}) == 2
    assert {s.address: s for s in speaker.peer_statuses()}[TOR].established  # the session stays


async def test_a_removed_peers_refused_routes_are_forgotten(rig):
    speaker, _, _, _ = rig
    speaker._metrics = SpeakerMetrics(registry := build_registry())
    speaker.handle_line(update(TOR, ["169.254.1.0/24"]))
    await speaker.flush()
    labels = {"peer": TOR, "reason": "link-local"}
    assert registry.get_sample_value("calico_bgp_routes_refused", labels) == 1
    speaker.set_intent(intent(peers=(peer(NODE2),)))
    await speaker.flush()
    assert speaker.screen.refused == {}
    assert [r["prefix"] for r in speaker.routes_report()] == [BLOCK]
    assert registry.get_sample_value("calico_bgp_routes_refused", labels) is None


# ---------------------------------------------------------------------------------------- malformed UPDATEs


async def test_an_update_without_next_hop_withdraws_its_prefixes_and_programming_goes_on(rig):
    """ExaBGP passes an UPDATE with no NEXT_HOP on with next hop "no-nexthop": it must cost that peer's
    prefixes only, and never stop the kernel feed for everyone else."""
    speaker, _, table, _ = rig
    registry = build_registry()
    metrics = SpeakerMetrics(registry)
    speaker.handle_line(update(TOR, ["198.51.100.0/24"]))
    await speaker.flush()
    assert "198.51.100.0/24" in table.desired
    body = {"attribute": {"origin": "igp"}, "announce": {"ipv4 unicast": {"no-nexthop": ["198.51.100.0/24"]}}}
    neighbor = {"address": {"local": ME, "peer": TOR}, "message": {"update": body}}
    speaker.handle_line(json.dumps({"type": "update", "neighbor": neighbor}))
    speaker.handle_line(update(NODE2, ["192.168.7.0/26"]))
    await speaker.flush()
    assert "198.51.100.0/24" not in table.desired  # the earlier path went: treat-as-withdraw
    assert "192.168.7.0/26" in table.desired  # the other peer's route is programmed
    assert all(r["prefix"] != "198.51.100.0/24" for r in speaker.routes_report())
    metrics.observe_speaker(speaker)
    sample = registry.get_sample_value("calico_bgp_malformed_prefixes_withdrawn_total", {"peer": TOR})
    assert sample == 1.0


async def test_metrics_write_only_the_series_whose_values_changed(monkeypatch):
    """A node's start is a flush or more per peer event: rewriting every peer's series at each one made the
    daemon's start-up CPU grow with the square of its peers."""
    from prometheus_client.metrics import Counter, Gauge

    async def send(lines):
        pass

    registry = build_registry()
    speaker = Speaker(send=send, route_table=FakeRouteTable(), metrics=SpeakerMetrics(registry))
    peers = [f"10.0.1.{n}" for n in range(1, 41)]
    speaker.set_intent(intent([peer(p) for p in peers]))
    speaker.set_workload_routes(set())
    await speaker.flush()
    writes: list[str] = []
    for cls, method in ((Gauge, "set"), (Gauge, "inc"), (Counter, "inc")):
        original = getattr(cls, method)

        def recording(self, *args, _original=original, _name=method, **kwargs):
            writes.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, recording)
    speaker.kernel_changed()
    await speaker.flush()
    assert writes == ["set"]  # nothing changed but the local exports gauge, written every time
    writes.clear()
    speaker.handle_line(state(peers[7], "up"))
    await speaker.flush()
    assert sorted(writes) == ["set", "set", "set"]  # that peer's session_up and prefixes announced
    labels = {"peer": peers[7], "family": "ipv4", "type": "node-to-node mesh"}
    assert registry.get_sample_value("calico_bgp_session_up", labels) == 1
    assert registry.get_sample_value("calico_bgp_prefixes_announced", labels) == 1
    assert registry.get_sample_value("calico_bgp_session_up", {**labels, "peer": peers[8]}) == 0
    assert registry.get_sample_value("calico_bgp_peer_held", {"peer": peers[7]}) == 0
    assert registry.get_sample_value("calico_bgp_prefix_limit_exceeded_total", {"peer": peers[7]}) == 0
