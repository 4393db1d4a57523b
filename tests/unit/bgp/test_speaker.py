import json
import random
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry
from speaker_rig import Clock, mesh_intent

from bgp.speaker import Speaker
from confgen.intent import PeerIntent, PoolIntent
from confgen.refusals import SinkRefusals
from routes.model import BLACKHOLE, Nexthop
from routes.testing import FakeRouteTable

ME = "10.0.0.11"
PEERS = ("10.0.0.12", "10.0.0.13")


def intent(blocks=("192.168.1.0/26",), ipip="Never", peers=PEERS):
    return mesh_intent(peers, pools=(PoolIntent("192.168.0.0/16", ipip_mode=ipip),), blocks=blocks)


def state(peer, st):
    return json.dumps(
        {
            "type": "state",
            "neighbor": {
                "address": {"local": ME, "peer": peer},
                "asn": {"local": 64512, "peer": 64512},
                "state": st,
            },
        }
    )


def update(peer, nexthop, announce=(), withdraw=()):
    body = {}
    if announce:
        body["attribute"] = {"origin": "igp", "local-preference": 100}
        body["announce"] = {"ipv4 unicast": {nexthop: [{"nlri": p} for p in announce]}}
    if withdraw:
        body["withdraw"] = {"ipv4 unicast": [{"nlri": p} for p in withdraw]}
    return json.dumps(
        {"type": "update", "neighbor": {"address": {"local": ME, "peer": peer}, "message": {"update": body}}}
    )


def up(speaker, peers=PEERS):
    for peer in peers:
        speaker.handle_line(state(peer, "up"))


@pytest.fixture
def rig():
    sent: list[str] = []

    async def send(lines):
        sent.extend(lines)

    table = FakeRouteTable()
    return Speaker(send=send, route_table=table, clock=lambda: 1000.0), sent, table


def nlri_of(lines, verb):
    chosen = [line for line in lines if f" {verb} attributes " in line]
    return sorted({p for line in chosen for p in line.split(" nlri ")[1].split()})


async def test_exports_blocks_and_borrowed_ips_only(rig):
    speaker, sent, _ = rig
    speaker.set_intent(intent())
    up(speaker)
    speaker.set_workload_routes({"192.168.1.5/32", "192.168.2.9/32", "10.99.0.1/32"})
    await speaker.flush()
    # Block announced, its /32 not; the borrowed /32 announced; outside every pool not.
    for peer in PEERS:
        lines = [line for line in sent if line.startswith(f"neighbor {peer} ")]
        assert nlri_of(lines, "announce") == ["192.168.1.0/26", "192.168.2.9/32"]
        assert all(f"next-hop {ME}" in line for line in lines if " eor " not in line)
        assert lines[-1] == f"neighbor {peer} announce eor ipv4 unicast"


async def test_withdraw_when_borrowed_ip_goes_and_burst_is_one_command_per_prefix(rig):
    speaker, sent, _ = rig
    speaker.set_intent(intent())
    up(speaker)
    speaker.set_workload_routes({"192.168.2.9/32"})
    await speaker.flush()
    sent.clear()
    # A flap inside one batch: only the final state goes out.
    speaker.set_workload_routes(set())
    speaker.set_workload_routes({"192.168.2.9/32"})
    speaker.set_workload_routes(set())
    await speaker.flush()
    assert len(sent) == 2
    assert nlri_of(sent, "withdraw") == ["192.168.2.9/32"] and nlri_of(sent, "announce") == []
    sent.clear()
    await speaker.flush()
    assert sent == []  # nothing changed, nothing sent


async def test_learned_routes_reach_the_kernel_and_leave_with_the_session(rig):
    speaker, _, table = rig
    speaker.set_intent(intent())
    speaker.handle_line(state("10.0.0.12", "up"))
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26", "192.168.1.0/26"]))
    await speaker.flush()
    routes = table.by_dst()
    assert routes["192.168.1.0/26"].type == BLACKHOLE  # our own block: never via a peer
    assert routes["192.168.2.0/26"].nexthops == (Nexthop("10.0.0.12"),)
    speaker.handle_line(state("10.0.0.12", "down"))
    await speaker.flush()
    assert set(table.by_dst()) == {"192.168.1.0/26"}


async def test_ipip_always_uses_tunl0_onlink(rig):
    speaker, _, table = rig
    speaker.set_intent(intent(ipip="Always"))
    speaker.handle_line(update("10.0.0.13", "10.0.0.13", announce=["192.168.3.0/26"]))
    await speaker.flush()
    assert table.by_dst()["192.168.3.0/26"].nexthops == (Nexthop("10.0.0.13", "tunl0", onlink=True),)


async def test_equal_paths_become_one_multipath_route(rig):
    speaker, _, table = rig
    speaker.set_intent(intent())
    for peer in PEERS:
        speaker.handle_line(update(peer, peer, announce=["192.168.50.0/26"]))
    await speaker.flush()
    assert table.by_dst()["192.168.50.0/26"].nexthops == (Nexthop("10.0.0.12"), Nexthop("10.0.0.13"))
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", withdraw=["192.168.50.0/26"]))
    await speaker.flush()
    assert table.by_dst()["192.168.50.0/26"].nexthops == (Nexthop("10.0.0.13"),)


async def test_only_established_peers_get_commands_and_session_up_resends_everything(rig):
    speaker, sent, _ = rig
    speaker.set_intent(intent())
    speaker.set_workload_routes({"192.168.2.9/32"})
    await speaker.flush()
    assert sent == []  # nobody is up: nothing is queued in ExaBGP (it would block reloads)
    speaker.handle_line(state("10.0.0.12", "up"))
    await speaker.flush()
    assert nlri_of(sent, "announce") == ["192.168.1.0/26", "192.168.2.9/32"]
    assert all(line.startswith("neighbor 10.0.0.12 ") for line in sent)
    sent.clear()
    # Down, the borrowed IP leaves meanwhile, up again: the stale /32 ExaBGP still holds is withdrawn.
    speaker.handle_line(state("10.0.0.12", "down"))
    speaker.set_workload_routes(set())
    await speaker.flush()
    assert sent == []
    speaker.handle_line(state("10.0.0.12", "up"))
    await speaker.flush()
    assert nlri_of(sent, "withdraw") == ["192.168.2.9/32"]
    assert nlri_of(sent, "announce") == ["192.168.1.0/26"]
    sent.clear()
    up(speaker, ["10.0.0.13"])
    speaker.exabgp_restarted()
    await speaker.flush()
    assert sent == []  # every session dropped with ExaBGP
    up(speaker)
    await speaker.flush()
    assert sorted({line.split()[1] for line in sent}) == list(PEERS)


async def test_removed_peer_is_forgotten_and_garbage_is_counted(rig):
    speaker, _, table = rig
    speaker.set_intent(intent())
    speaker.handle_line(update("10.0.0.13", "10.0.0.13", announce=["192.168.3.0/26"]))
    speaker.handle_line("{garbage")
    assert speaker.unparsed_lines == 1
    speaker.set_intent(intent(peers=("10.0.0.12",)))
    await speaker.flush()
    assert "192.168.3.0/26" not in table.by_dst()
    assert [p.address for p in speaker.peer_statuses()] == ["10.0.0.12"]
    # Events from a neighbour we no longer configure are ignored.
    speaker.handle_line(update("10.0.0.13", "10.0.0.13", announce=["192.168.4.0/26"]))
    await speaker.flush()
    assert "192.168.4.0/26" not in table.by_dst()


def open_msg(peer, restart_time=120):
    caps = {"64": {"name": "graceful restart", "time": restart_time}} if restart_time else {}
    return json.dumps(
        {
            "exabgp": "5.0.0",
            "type": "open",
            "neighbor": {
                "address": {"local": ME, "peer": peer},
                "direction": "receive",
                "open": {"asn": 64512, "hold_time": 90, "router_id": peer, "capabilities": caps},
            },
        }
    )


def eor(peer):
    return json.dumps(
        {
            "exabgp": "5.0.0",
            "type": "update",
            "neighbor": {
                "address": {"local": ME, "peer": peer},
                "message": {"eor": {"afi": "ipv4", "safi": "unicast"}},
            },
        }
    )


@pytest.fixture
def gr_rig():
    sent: list[str] = []

    async def send(lines):
        sent.extend(lines)

    clock = Clock(0.0)
    table = FakeRouteTable()
    speaker = Speaker(send=send, route_table=table, clock=clock, wallclock=lambda: 1000.0)
    speaker.set_intent(intent())
    return speaker, sent, table, clock


async def test_graceful_restart_keeps_stale_routes_until_end_of_rib(gr_rig):
    speaker, _, table, _ = gr_rig
    speaker.handle_line(open_msg("10.0.0.12"))
    speaker.handle_line(state("10.0.0.12", "up"))
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26", "192.168.22.0/26"]))
    await speaker.flush()
    speaker.handle_line(state("10.0.0.12", "down"))
    await speaker.flush()
    assert {"192.168.2.0/26", "192.168.22.0/26"} <= set(table.by_dst())  # still forwarding
    speaker.handle_line(state("10.0.0.12", "up"))
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26"]))
    await speaker.flush()
    assert "192.168.22.0/26" in table.by_dst()  # not swept before End-of-RIB
    speaker.handle_line(eor("10.0.0.12"))
    await speaker.flush()
    assert "192.168.22.0/26" not in table.by_dst() and "192.168.2.0/26" in table.by_dst()


async def test_graceful_restart_time_runs_out(gr_rig):
    speaker, _, table, clock = gr_rig
    speaker.handle_line(open_msg("10.0.0.12", restart_time=30))
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26"]))
    speaker.handle_line(state("10.0.0.12", "down"))
    await speaker.flush()
    clock.now = 29.0
    speaker.tick()
    await speaker.flush()
    assert "192.168.2.0/26" in table.by_dst()
    clock.now = 30.0
    speaker.tick()
    await speaker.flush()
    assert "192.168.2.0/26" not in table.by_dst()


async def test_without_graceful_restart_routes_go_at_once(gr_rig):
    speaker, _, table, _ = gr_rig
    speaker.handle_line(open_msg("10.0.0.12", restart_time=0))
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26"]))
    speaker.handle_line(state("10.0.0.12", "down"))
    await speaker.flush()
    assert "192.168.2.0/26" not in table.by_dst()


async def test_end_of_rib_follows_the_full_table_once_workloads_are_known(gr_rig):
    speaker, sent, _, _ = gr_rig
    speaker.handle_line(state("10.0.0.12", "up"))
    await speaker.flush()
    assert not any("eor" in line for line in sent)  # the kernel view is not in yet: our table is incomplete
    speaker.set_workload_routes({"192.168.2.9/32"})
    await speaker.flush()
    mine = [line for line in sent if line.startswith("neighbor 10.0.0.12 ")]
    assert mine[-1] == "neighbor 10.0.0.12 announce eor ipv4 unicast"
    assert "192.168.2.9/32" in " ".join(mine[:-1])


async def test_routes_report(gr_rig):
    speaker, _, _, _ = gr_rig
    up(speaker)
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26"]))
    await speaker.flush()
    rows = {r["prefix"]: r for r in speaker.routes_report()}
    assert rows["192.168.1.0/26"]["origin"] == "local"
    assert rows["192.168.1.0/26"]["announced_to"] == list(PEERS)
    learned_row = rows["192.168.2.0/26"]
    assert learned_row["best"]["learned_from"] == "10.0.0.12"
    assert learned_row["kernel"] == {"installed": True, "why": ""}


async def test_initial_sync_needs_every_peers_end_of_rib(gr_rig):
    speaker, _, _, _ = gr_rig
    assert not speaker.initial_sync_done()
    speaker.handle_line(eor("10.0.0.12"))
    assert not speaker.initial_sync_done()
    speaker.handle_line(eor("10.0.0.13"))
    assert speaker.initial_sync_done()


async def test_failed_reconnects_do_not_extend_the_restart_time(gr_rig):
    speaker, _, table, clock = gr_rig
    speaker.handle_line(open_msg("10.0.0.12", restart_time=30))
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26"]))
    speaker.handle_line(state("10.0.0.12", "down"))
    clock.now = 20.0
    speaker.handle_line(state("10.0.0.12", "connected"))
    speaker.handle_line(state("10.0.0.12", "down"))  # the reconnect failed
    clock.now = 30.0
    speaker.tick()
    await speaker.flush()
    assert "192.168.2.0/26" not in table.by_dst()


async def test_metrics_follow_the_speaker_and_forget_removed_peers():
    from bgp.metrics import SpeakerMetrics, build_registry

    registry = build_registry()

    async def send(lines):
        pass

    speaker = Speaker(send=send, route_table=FakeRouteTable(), metrics=SpeakerMetrics(registry))
    speaker.set_intent(intent())
    speaker.handle_line(state("10.0.0.12", "up"))
    speaker.handle_line(update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26"]))
    speaker.handle_line("{broken")
    await speaker.flush()
    labels = {"peer": "10.0.0.12", "family": "ipv4", "type": "node-to-node mesh"}
    assert registry.get_sample_value("calico_bgp_session_up", labels) == 1
    assert registry.get_sample_value("calico_bgp_prefixes_received", labels) == 1
    assert registry.get_sample_value("calico_bgp_prefixes_announced", labels) == 1
    assert registry.get_sample_value("calico_bgp_exabgp_unparsed_lines_total") == 1
    speaker.set_intent(intent(peers=("10.0.0.13",)))
    await speaker.flush()
    assert registry.get_sample_value("calico_bgp_session_up", labels) is None


# ---------------------------------------------------------------- workload deltas (routes.monitor's contract)

NOEXPORT = PoolIntent("10.99.0.0/16", disable_bgp_export=True)


def delta_intent(**kwargs):
    return replace(intent(**kwargs), pools=(*intent().pools, NOEXPORT))


async def announcements_after(change, held, *, delta):
    """The commands one change sends when 192.168.1.0/26 is our block and ``held`` the workloads so far."""
    sent: list[str] = []

    async def send(lines):
        sent.extend(lines)

    speaker = Speaker(send=send, route_table=FakeRouteTable(), clock=lambda: 1000.0)
    speaker.set_intent(delta_intent())
    up(speaker)
    speaker.set_workload_routes(held.keys(), held)
    await speaker.flush()
    sent.clear()
    if delta:
        speaker.update_workload_routes(change)
    else:
        after = {**held, **change}
        after = {p: d for p, d in after.items() if d is not None}
        speaker.set_workload_routes(after.keys(), after)
    await speaker.flush()
    return sent, speaker.exports()


DELTA_CASES = [
    ("borrowed /32 inside an exportable pool", {}, {"192.168.2.9/32": "cali1"}, ["192.168.2.9/32"], []),
    ("/32 inside a local block is suppressed", {}, {"192.168.1.5/32": "cali1"}, [], []),
    ("/32 in a disable_bgp_export pool", {}, {"10.99.0.5/32": "cali1"}, [], []),
    ("/32 outside every pool", {}, {"172.16.0.5/32": "cali1"}, [], []),
    ("removal", {"192.168.2.9/32": "cali1"}, {"192.168.2.9/32": None}, [], ["192.168.2.9/32"]),
    (
        "a borrowed /32 moving to a Felix-programmed device (not to iBGP peers)",
        {"192.168.2.9/32": "cali1"},
        {"192.168.2.9/32": "vxlan.calico"},
        [],
        ["192.168.2.9/32"],
    ),
    (
        "one change among several held",
        {"192.168.2.9/32": "cali1", "192.168.1.5/32": "cali2", "192.168.3.1/32": "cali3"},
        {"192.168.3.1/32": None, "192.168.4.4/32": "cali4", "192.168.1.6/32": "cali5"},
        ["192.168.4.4/32"],
        ["192.168.3.1/32"],
    ),
]


@pytest.mark.parametrize(
    ("held", "change", "announced", "withdrawn"),
    [c[1:] for c in DELTA_CASES],
    ids=[c[0] for c in DELTA_CASES],
)
async def test_update_workload_routes_announces_as_set_workload_routes(held, change, announced, withdrawn):
    sent, exports = await announcements_after(change, held, delta=True)
    full_sent, full_exports = await announcements_after(change, held, delta=False)
    assert sent == full_sent and set(exports) == set(full_exports)
    assert nlri_of(sent, "announce") == announced and nlri_of(sent, "withdraw") == withdrawn
    assert {line.split()[1] for line in sent} == (set(PEERS) if announced or withdrawn else set())


async def test_an_unchanged_re_report_sends_nothing(rig):
    speaker, sent, table = rig
    speaker.set_intent(delta_intent())
    up(speaker)
    speaker.update_workload_routes({"192.168.2.9/32": "cali1", "192.168.1.5/32": "cali2"})
    await speaker.flush()
    assert nlri_of(sent, "announce") == ["192.168.1.0/26", "192.168.2.9/32"]
    sent.clear()
    applies = table.applies
    # What we hold already, and a prefix we never held reported gone: both no-ops.
    speaker.update_workload_routes(
        {"192.168.2.9/32": "cali1", "192.168.1.5/32": "cali2", "192.168.7.7/32": None}
    )
    await speaker.flush()
    assert sent == [] and table.applies == applies


async def test_workload_deltas_before_the_intent_count_once_it_arrives(rig):
    speaker, sent, _ = rig
    speaker.update_workload_routes({"192.168.2.9/32": "cali1", "192.168.2.10/32": "cali1"})
    speaker.update_workload_routes({"192.168.2.10/32": None})
    speaker.set_intent(delta_intent())
    up(speaker)
    await speaker.flush()
    assert nlri_of(sent, "announce") == ["192.168.1.0/26", "192.168.2.9/32"]


def test_random_deltas_leave_the_same_local_routes_as_a_full_recompute():
    rng = random.Random(7)
    # Blocks (one a /32, equal to a workload prefix), a service range touched as if it were a workload,
    # borrowed IPs, IPs in the no-export pool and outside every pool.
    the_intent = replace(
        delta_intent(blocks=("192.168.1.0/26", "192.168.5.5/32")), service_cluster_ips=("10.96.0.0/12",)
    )
    universe = [
        *(f"192.168.{rng.choice((1, 2, 3))}.{rng.randrange(256)}/32" for _ in range(30)),
        *(f"10.99.0.{i}/32" for i in range(5)),
        *(f"172.16.0.{i}/32" for i in range(5)),
        "192.168.5.5/32",
        "192.168.1.0/26",
        "10.96.0.0/12",
    ]

    async def send(lines):
        pass

    speaker = Speaker(send=send, route_table=FakeRouteTable())
    speaker.set_intent(the_intent)
    for _ in range(300):
        changes = {p: rng.choice(("cali1", "cali2", None)) for p in rng.sample(universe, rng.randrange(1, 6))}
        speaker.update_workload_routes(changes)
        reference = Speaker(send=send, route_table=FakeRouteTable())
        reference.set_workload_routes(speaker._originated.workloads.keys(), speaker._originated.workloads)
        reference.set_intent(the_intent)  # the full path: the export rules over every workload
        assert speaker._originated.candidates == reference._originated.candidates


async def test_a_hostile_prefix_is_refused_at_the_api_and_counted_not_the_batch():
    # A block whose text parses (ipaddress keeps an IPv6 scope id in str()) but holds a command on its own
    # line: the sink refuses that prefix alone, counts it, and every other line goes out as it would.
    attack = "fd00:96::%x\nshutdown\n/122"
    peer = PeerIntent("Mesh_fd00__12", "fd00::12", "ipv6", 64512, 64512, "fd00::11")
    base = replace(
        intent(peers=()),
        ipv6_address="fd00::11",
        ipv6_network="fd00::/64",
        peers=(peer,),
        pools=(PoolIntent("fd00:96::/64"),),
    )
    batches = {}
    for blocks in (("fd00:96::/122",), ("fd00:96::/122", attack)):
        sent: list[str] = []

        async def send(lines, sent=sent):
            sent.extend(lines)

        registry = CollectorRegistry()
        speaker = Speaker(
            send=send, route_table=FakeRouteTable(), clock=lambda: 1000.0, refusals=SinkRefusals(registry)
        )
        speaker.set_intent(replace(base, local_blocks=blocks))
        speaker.set_workload_routes([])
        up_line = json.loads(state("fd00::12", "up"))
        up_line["neighbor"]["address"]["local"] = "fd00::11"
        speaker.handle_line(json.dumps(up_line))
        await speaker.flush()
        batches[blocks] = sent
        refused = registry.get_sample_value("calico_bgp_refused_sink_values_total", {"sink": "exabgp_api"})
        assert refused == (1 if attack in blocks else 0)
    clean, attacked = batches.values()
    assert attacked == clean and any("nlri fd00:96::/122" in line for line in clean)
    assert not any("shutdown" in line or "\n" in line for line in attacked)
