"""bgp.gtsm without a kernel: the nft script for an intent, and the apply/remove contract with a stand-in
nft that records what it is given (tests/netns/test_gtsm.py runs the real thing)."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from prometheus_client import CollectorRegistry

from bgp.gtsm import Gtsm, GtsmError, ruleset
from confgen.intent import NodeIntent, PeerIntent


def session(address, hops, port=179, family=None):
    family = family or ("ipv6" if ":" in address else "ipv4")
    local = "fd00::1" if family == "ipv6" else "10.0.0.1"
    name = f"Node_{address}".replace(".", "_").replace(":", "_")
    return PeerIntent(name, address, family, 65000, 64512, local, port=port, ttl_security=hops)


def intent(*peers, listen_port=179):
    return NodeIntent(node="n1", router_id="10.0.0.1", local_as=64512, listen_port=listen_port, peers=peers)


def test_rules_per_session_and_family():
    script = ruleset(
        intent(session("10.0.0.2", 1), session("fd00::2", 3, port=1790), session("10.0.0.3", 0)), "t"
    )
    assert script == (
        "add table inet t\n"
        "delete table inet t\n"
        "table inet t {\n"
        "    chain input {\n"
        "        type filter hook input priority -150; policy accept;\n"
        "        ip saddr 10.0.0.2 tcp dport 179 ip ttl < 255 drop\n"
        "        ip saddr 10.0.0.2 tcp sport 179 ip ttl < 255 drop\n"
        "        ip6 saddr fd00::2 tcp dport 179 ip6 hoplimit < 253 drop\n"
        "        ip6 saddr fd00::2 tcp sport 1790 ip6 hoplimit < 253 drop\n"
        "    }\n"
        "    chain output {\n"
        "        type filter hook output priority -150; policy accept;\n"
        "        ip daddr 10.0.0.2 tcp dport 179 ip ttl set 255\n"
        "        ip daddr 10.0.0.2 tcp sport 179 ip ttl set 255\n"
        "        ip6 daddr fd00::2 tcp dport 1790 ip6 hoplimit set 255\n"
        "        ip6 daddr fd00::2 tcp sport 179 ip6 hoplimit set 255\n"
        "    }\n"
        "}\n"
    )


@pytest.mark.parametrize(("hops", "minimum"), [(1, 255), (2, 254), (10, 246), (254, 2)])
def test_minimum_ttl_is_256_minus_hops(hops, minimum):
    assert f"ip ttl < {minimum} drop" in ruleset(intent(session("10.0.0.2", hops)))


def test_255_hops_checks_nothing_but_still_sends_255():
    script = ruleset(intent(session("10.0.0.2", 255)))
    assert "drop" not in script and "ip ttl set 255" in script


def test_the_listen_port_is_ours_and_the_peer_port_theirs():
    script = ruleset(intent(session("10.0.0.2", 1, port=1790), listen_port=1791))
    assert "ip saddr 10.0.0.2 tcp dport 1791 ip ttl < 255 drop" in script
    assert "ip saddr 10.0.0.2 tcp sport 1790 ip ttl < 255 drop" in script
    assert "ip daddr 10.0.0.2 tcp dport 1790 ip ttl set 255" in script
    assert "ip daddr 10.0.0.2 tcp sport 1791 ip ttl set 255" in script


def test_no_ttl_security_means_no_table():
    assert (
        ruleset(intent(session("10.0.0.2", 0)))
        == "add table inet calico_bgp_gtsm\ndelete table inet calico_bgp_gtsm\n"
    )


@pytest.mark.parametrize(
    "bad",
    [
        dataclasses.replace(session("10.0.0.2", 1), address="10.0.0.2; flush ruleset"),
        dataclasses.replace(session("10.0.0.2", 1), address="10.0.0.2\ntable ip x {}"),
        dataclasses.replace(session("10.0.0.2", 1), ttl_security=256),
        dataclasses.replace(session("10.0.0.2", 1), port=0),
    ],
    ids=["semicolon", "newline", "hops", "port"],
)
def test_values_are_validated_before_they_reach_nft(bad):
    with pytest.raises(ValueError):
        ruleset(intent(bad))


RECORDER = "import pathlib, sys; pathlib.Path(sys.argv[1]).open('a').write(sys.stdin.read() + '=====\\n')"


async def test_apply_runs_nft_once_per_change_and_remove_deletes(tmp_path):
    log = tmp_path / "nft.log"
    registry = CollectorRegistry()
    gtsm = Gtsm(nft=(sys.executable, "-c", RECORDER, str(log)), table="t", registry=registry)
    wanted = intent(session("10.0.0.2", 1))
    assert await gtsm.apply(wanted) is True
    assert await gtsm.apply(wanted) is False
    assert registry.get_sample_value("calico_bgp_gtsm_sessions") == 1
    await gtsm.apply(intent(session("10.0.0.2", 1), session("10.0.0.3", 2)))
    await gtsm.remove()
    runs = log.read_text().split("=====\n")[:-1]
    assert len(runs) == 3
    assert runs[0] == ruleset(wanted, "t")
    assert runs[2] == "add table inet t\ndelete table inet t\n"
    assert registry.get_sample_value("calico_bgp_gtsm_sessions") == 0
    assert await gtsm.apply(wanted) is True  # after a removal the rules go in again


async def test_failures_raise_and_are_counted(tmp_path):
    registry = CollectorRegistry()
    failing = Gtsm(
        nft=(sys.executable, "-c", "import sys; print('Error: no'); sys.exit(1)"), registry=registry
    )
    with pytest.raises(GtsmError, match=r"nft rejected the TTL-security rules \(rc 1\): Error: no"):
        await failing.apply(intent(session("10.0.0.2", 1)))
    missing = Gtsm(nft=(str(tmp_path / "no-such-nft"),), registry=CollectorRegistry())
    with pytest.raises(GtsmError, match="cannot run"):
        await missing.apply(intent(session("10.0.0.2", 1)))
    assert registry.get_sample_value("calico_bgp_gtsm_errors_total") == 1
    # a failed apply is not remembered: the next one tries again
    with pytest.raises(GtsmError):
        await failing.apply(intent(session("10.0.0.2", 1)))
