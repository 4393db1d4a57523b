"""BFD driving BGP through the daemon's wiring (``bgp.bfd_wiring``) and the speaker, with the fake engine
(``bgp.bfd.testing.FakeBfdService``), a fake route table and parsed ExaBGP lines: holds, teardowns, paths
leaving the kernel, the graceful-restart interplay, status and the metrics."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from prometheus_client import generate_latest
from speaker_rig import Clock

from bgp.bfd.api import DIAGNOSTICS, BfdPeerConfig
from bgp.bfd.gate import BfdTimers
from bgp.bfd.testing import FakeBfdService
from bgp.bfd_wiring import BfdWiring
from bgp.metrics import BfdMetrics, build_registry
from bgp.speaker import Speaker
from bgp.status import status_report
from confgen.intent import NodeIntent, PeerIntent, PoolIntent
from routes.testing import FakeRouteTable

ME = "10.0.0.11"
TOR = "10.0.0.1"  # directly connected, asks for BFD
NODE2 = "10.0.0.12"  # directly connected, does not ask
FAR = "172.31.0.1"  # asks, but two hops away
ROUTES = ["192.168.50.0/26", "192.168.51.0/26"]
TOR_SESSION = BfdPeerConfig(TOR, ME)


def peer(address: str, bfd: bool, restart_time: int = 120) -> PeerIntent:
    return PeerIntent(
        name=f"Peer_{address.replace('.', '_')}", address=address, family="ipv4", peer_as=65000,
        local_as=64512, local_address=ME, restart_time=restart_time, bfd=bfd,
    )  # fmt: skip


def intent(restart_time: int = 120) -> NodeIntent:
    peers = (peer(TOR, True, restart_time), peer(NODE2, False), peer(FAR, True))
    return NodeIntent(
        node="node1", router_id=ME, local_as=64512, ipv4_address=ME, ipv4_network="10.0.0.0/24",
        peers=peers, pools=(PoolIntent("192.168.0.0/16"),),
    )  # fmt: skip


def state(address: str, st: str, reason: str = "") -> str:
    neighbor = {
        "address": {"local": ME, "peer": address},
        "asn": {"local": 64512, "peer": 65000},
        "state": st,
    }
    if reason:
        neighbor["reason"] = reason
    return json.dumps({"type": "state", "neighbor": neighbor})


def open_with_graceful_restart(address: str) -> str:
    capabilities = {
        "64": {"name": "graceful restart", "time": 120, "address-family-flags": {}, "restart-flags": []}
    }
    body = {"version": 4, "asn": 65000, "hold_time": 90, "router_id": address, "capabilities": capabilities}
    neighbor = {"address": {"local": ME, "peer": address}, "direction": "receive", "open": body}
    return json.dumps({"type": "open", "neighbor": neighbor})


def update(address: str, prefixes: list[str]) -> str:
    body = {
        "attribute": {"origin": "igp"},
        "announce": {"ipv4 unicast": {address: [{"nlri": p} for p in prefixes]}},
    }
    message = {"update": body}
    return json.dumps(
        {"type": "update", "neighbor": {"address": {"local": ME, "peer": address}, "message": message}}
    )


class Rig:
    def __init__(self, restart_time: int = 120) -> None:
        self.sent: list[str] = []
        self.clock = Clock()
        self.table = FakeRouteTable()
        self.speaker = Speaker(
            send=self._send, route_table=self.table, clock=self.clock, wallclock=self.clock
        )
        self.registry = build_registry()
        self.wiring = BfdWiring(
            self.speaker, BfdTimers(300, 300, 3), factory=lambda cb: FakeBfdService(cb, clock=self.clock),
            metrics=BfdMetrics(self.registry),
        )  # fmt: skip
        self.bfd: FakeBfdService = self.wiring.service  # type: ignore[assignment]
        self.speaker.set_intent(intent(restart_time))
        self.wiring.set_intent(intent(restart_time))
        self.speaker.set_workload_routes(set())
        self.wiring.set_interface_addresses({"10.0.0.11/24"})

    async def _send(self, lines: list[str]) -> None:
        self.sent.extend(lines)

    async def flush(self) -> list[str]:
        self.sent.clear()
        await self.speaker.flush()
        return list(self.sent)

    def status(self, address: str = TOR) -> dict:
        report = status_report("node1", self.speaker.peer_statuses(), [], bfd=self.speaker.bfd.report)
        return next(p for p in report["peers"] if p["address"] == address)

    def metric(self, name: str, peer: str = TOR) -> float | None:
        return self.registry.get_sample_value(name, {"peer": peer})

    async def established_with_routes(self, *, c_bit: bool = False) -> None:
        """BFD Up (the peer's packets with the C bit or not), then the session, graceful restart agreed."""
        self.bfd.set_up(TOR, control_independent=c_bit)
        self.speaker.handle_line(open_with_graceful_restart(TOR))
        self.speaker.handle_line(state(TOR, "up"))
        self.speaker.handle_line(update(TOR, ROUTES))
        await self.flush()
        assert set(ROUTES) <= set(self.table.desired)


def teardowns(lines: list[str]) -> list[str]:
    return [line for line in lines if " teardown " in line]


async def test_only_the_directly_connected_peer_that_asks_gets_a_bfd_session():
    rig = Rig()
    assert list(rig.bfd.configured) == [(TOR, ME)]
    assert rig.status(FAR)["bfd"]["state"] == "Off" and "bfd" not in rig.status(NODE2)
    assert rig.metric("calico_bgp_bfd_session_up") == 0


async def test_a_session_never_comes_up_while_bfd_is_down_and_comes_back_when_it_is_up():
    rig = Rig()
    rig.speaker.handle_line(state(TOR, "up"))
    rig.speaker.handle_line(update(TOR, ROUTES))
    lines = await rig.flush()
    assert teardowns(lines) == [f"neighbor {TOR} teardown 10"]  # Cease, BFD Down (RFC 9384)
    assert not set(ROUTES) & set(rig.table.desired)
    assert not any(line.startswith(f"neighbor {TOR} announce") for line in lines)
    assert rig.status()["info"].startswith("Idle BFD Down") and rig.status()["bfd"]["held"] is True
    rig.speaker.handle_line(state(TOR, "down", "closed"))
    # BFD comes Up: the hold lifts, and ExaBGP's next connection is kept.
    rig.bfd.set_up(TOR)
    assert rig.metric("calico_bgp_bfd_session_up") == 1
    rig.speaker.handle_line(state(TOR, "up"))
    rig.speaker.handle_line(update(TOR, ROUTES))
    lines = await rig.flush()
    assert teardowns(lines) == [] and set(ROUTES) <= set(rig.table.desired)
    assert rig.status()["info"] == "Established" and rig.status()["bfd"]["state"] == "Up"


@pytest.mark.parametrize("c_bit", [False, True], ids=["C=0", "C=1"])
async def test_bfd_down_on_an_established_session_tears_it_down_and_drops_its_paths_at_once(c_bit):
    rig = Rig()
    await rig.established_with_routes(c_bit=c_bit)  # graceful restart agreed: still no stale paths
    rig.bfd.set_down(TOR)
    lines = await rig.flush()
    assert teardowns(lines) == [f"neighbor {TOR} teardown 10"]
    assert not set(ROUTES) & set(rig.table.desired)
    assert rig.speaker.stale_count(TOR) == 0 and rig.speaker.received_count(TOR) == 0
    status = rig.status()
    assert status["info"] == "Idle BFD Down (Control Detection Time Expired): session held until BFD is Up"
    assert status["bfd"]["local_diagnostic"] == "Control Detection Time Expired"
    assert rig.metric("calico_bgp_bfd_session_up") == 0 and rig.metric("calico_bgp_bfd_downs_total") == 1
    # ExaBGP reports the end of the session: nothing comes back as stale.
    rig.speaker.handle_line(state(TOR, "down", "closed"))
    assert await rig.flush() == [] and rig.speaker.received_count(TOR) == 0


@pytest.mark.parametrize(
    "c_bit, kept",
    [pytest.param(False, True, id="C=0: kept stale"), pytest.param(True, False, id="C=1: flushed")],
)
async def test_bfd_down_during_the_peers_graceful_restart_follows_its_c_bit(c_bit, kept):
    rig = Rig()
    await rig.established_with_routes(c_bit=c_bit)
    rig.speaker.handle_line(state(TOR, "down", "peer closed the connection"))  # its restart begins
    await rig.flush()
    assert rig.speaker.stale_count(TOR) == len(ROUTES)
    rig.bfd.set_down(TOR)  # its BFD goes too
    lines = await rig.flush()
    assert teardowns(lines) == []  # nothing to tear down
    assert (set(ROUTES) <= set(rig.table.desired)) is kept
    assert rig.speaker.stale_count(TOR) == (len(ROUTES) if kept else 0)


async def test_a_peer_turning_bfd_off_neither_tears_down_nor_holds():
    rig = Rig()
    await rig.established_with_routes()
    rig.bfd.set_admin_down(TOR)
    lines = await rig.flush()
    assert teardowns(lines) == [] and set(ROUTES) <= set(rig.table.desired)
    assert rig.status()["info"] == "Established" and rig.status()["bfd"]["held"] is False
    assert rig.status()["bfd"]["remote_diagnostic"] == DIAGNOSTICS[7]


async def test_a_peer_that_stops_asking_is_no_longer_held_and_its_session_is_stopped():
    rig = Rig()
    new = replace_bfd(intent(), False)
    rig.speaker.set_intent(new)
    rig.wiring.set_intent(new)
    assert rig.bfd.configured == {} and not rig.speaker.bfd.held(TOR)
    assert rig.metric("calico_bgp_bfd_session_up") is None  # its series went with it
    rig.speaker.handle_line(state(TOR, "up"))
    assert teardowns(await rig.flush()) == []


async def test_an_unchanged_intent_does_not_reconfigure_the_engine():
    rig = Rig()
    calls = rig.bfd.configure_calls
    rig.wiring.set_intent(intent())
    rig.wiring.set_interface_addresses({"10.0.0.11/24", "172.16.0.1/24"})  # no peer of ours on eth1
    assert rig.bfd.configure_calls == calls


# --------------------------------------------------------------------------- metrics, the daemon, the flags


def test_the_metrics_follow_the_engines_status_and_only_count_up():
    registry = build_registry()
    metrics = BfdMetrics(registry)
    bfd = FakeBfdService()
    bfd.configure({(TOR, ME): TOR_SESSION})
    metrics.observe(bfd.status())
    assert registry.get_sample_value("calico_bgp_bfd_downs_total", {"peer": TOR}) == 0
    bfd.set_up(TOR)
    bfd.set_down(TOR)
    bfd.set_up(TOR)
    metrics.observe(bfd.status())
    assert registry.get_sample_value("calico_bgp_bfd_session_up", {"peer": TOR}) == 1
    assert registry.get_sample_value("calico_bgp_bfd_downs_total", {"peer": TOR}) == 1
    bfd.configure({})
    bfd.configure({(TOR, ME): TOR_SESSION})  # a new session counts from 0 again: the counter stays
    bfd.set_up(TOR)
    bfd.set_down(TOR)
    metrics.observe(bfd.status())
    assert registry.get_sample_value("calico_bgp_bfd_downs_total", {"peer": TOR}) == 1
    bfd.set_up(TOR)
    bfd.set_down(TOR)
    metrics.observe(bfd.status())
    assert registry.get_sample_value("calico_bgp_bfd_downs_total", {"peer": TOR}) == 2


async def test_the_daemon_wires_the_engine_to_the_intent_the_addresses_and_the_speaker(tmp_path):
    from bgp.daemon import NodeDaemon
    from bgp.node_config import NodeConfig

    class NoGtsm:
        async def apply(self, intent):
            return None

    config = NodeConfig(
        node="node1", etcd_endpoints=("http://127.0.0.1:9",), run_dir=tmp_path, metrics_port=0,
        bfd=BfdTimers(100, 200, 4),
    )  # fmt: skip
    daemon = NodeDaemon(config, bfd_factory=FakeBfdService)
    daemon.gtsm = NoGtsm()  # type: ignore[assignment]
    fake: FakeBfdService = daemon.bfd.service  # type: ignore[assignment]
    await daemon._on_intent(intent())
    daemon._interface_addresses(frozenset({"10.0.0.11/24"}))
    assert fake.configured[(TOR, ME)].min_rx_us == 200_000 and fake.configured[(TOR, ME)].multiplier == 4
    assert daemon.speaker.bfd.held(TOR)
    fake.set_up(TOR)
    assert not daemon.speaker.bfd.held(TOR)
    peers = {p["address"]: p for p in daemon.reports.status()["peers"]}
    assert peers[TOR]["bfd"]["state"] == "Up" and peers[FAR]["bfd"]["state"] == "Off"
    text = generate_latest(daemon.registry).decode()
    assert f'calico_bgp_bfd_session_up{{peer="{TOR}"}} 1.0' in text


@pytest.mark.skipif(os.geteuid() != 0, reason="`node run` refuses to start without root")
@pytest.mark.parametrize(
    "args, env, timers",
    [
        pytest.param([], {}, BfdTimers(300, 300, 3), id="defaults"),
        pytest.param(["--bfd-min-tx", "100", "--bfd-min-rx", "150", "--bfd-multiplier", "5"], {},
                     BfdTimers(100, 150, 5), id="flags"),
        pytest.param([], {"CALICO_BGP_BFD_MIN_RX": "500", "CALICO_BGP_BFD_MULTIPLIER": "2"},
                     BfdTimers(300, 500, 2), id="environment"),
    ],
)  # fmt: skip
def test_node_run_takes_the_bfd_timers(tmp_path, monkeypatch, args, env, timers):
    from click.testing import CliRunner

    import bgp.daemon
    from bgp.cli import cli

    runs = []
    monkeypatch.setattr(bgp.daemon, "run_node", lambda config: runs.append(config) or 0)
    result = CliRunner().invoke(
        cli, ["node", "run", "--node", "node1", "--run-dir", str(tmp_path), *args], env=env
    )
    assert result.exit_code == 0, result.output
    assert [c.bfd for c in runs] == [timers]


@pytest.mark.parametrize(
    "args", [["--bfd-min-tx", "10"], ["--bfd-multiplier", "0"], ["--bfd-min-rx", "60001"]]
)
def test_node_run_refuses_timers_out_of_range(tmp_path, args):
    from click.testing import CliRunner

    from bgp.cli import cli

    result = CliRunner().invoke(cli, ["node", "run", "--node", "node1", "--run-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and "--bfd-" in result.output


async def test_bfd_asked_for_on_an_established_session_holds_nothing_until_it_has_been_up():
    rig = Rig()
    rig.wiring.set_intent(replace_bfd(intent(), False))
    rig.speaker.set_intent(replace_bfd(intent(), False))
    rig.speaker.handle_line(state(TOR, "up"))
    await rig.flush()
    # The BGPPeer is edited to ask for BFD: the running session is not torn down, its updates still count.
    rig.speaker.set_intent(intent())
    rig.wiring.set_intent(intent())
    rig.speaker.handle_line(update(TOR, ROUTES))
    lines = await rig.flush()
    assert teardowns(lines) == [] and set(ROUTES) <= set(rig.table.desired)
    assert rig.status()["info"] == "Established" and rig.status()["bfd"]["state"] == "Down"
    rig.bfd.set_up(TOR)
    rig.bfd.set_down(TOR)
    assert teardowns(await rig.flush()) == [f"neighbor {TOR} teardown 10"]
    assert not set(ROUTES) & set(rig.table.desired)


def replace_bfd(node: NodeIntent, bfd: bool) -> NodeIntent:
    return dataclasses.replace(node, peers=tuple(dataclasses.replace(p, bfd=bfd) for p in node.peers))
