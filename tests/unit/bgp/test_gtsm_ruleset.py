"""bgp.gtsm without a kernel: the nft script for an intent, and the apply/remove contract with a stand-in
nft that records what it is given (tests/netns/test_gtsm.py runs the real thing)."""

from __future__ import annotations

import dataclasses
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from bgp.gtsm import Gtsm, GtsmError, ruleset
from confgen.intent import NodeIntent, PeerIntent
from confgen.refusals import SinkRefusals


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


GOOD = (session("10.0.0.2", 1), session("fd00::2", 3, port=1790))
BAD_SESSIONS = [
    ({"address": "10.0.0.3; flush ruleset"}, "whitespace"),
    ({"address": "10.0.0.3\ntable ip x {}"}, "whitespace or a control character"),
    ({"address": "fe80::3%eth0\nflush ruleset", "family": "ipv6"}, "scope id"),
    ({"address": "::ffff:10.0.0.3", "family": "ipv6"}, "IPv4-mapped"),
    ({"address": "fd00:0::3", "family": "ipv6"}, "canonical form (fd00::3)"),
    ({"address": "010.0.0.3"}, "not an IP address"),
    ({"address": "fd00::3"}, "not an IPv4 address"),  # the family says ipv4
    ({"family": "ip"}, "family"),
    ({"ttl_security": 256}, "ttlSecurity 256 is out of range"),
    ({"ttl_security": -1}, "ttlSecurity"),
    ({"ttl_security": "1; flush ruleset"}, "not an integer"),
    ({"port": 0}, "port 0 is out of range"),
    ({"port": 2**70}, "port"),
    ({"port": True}, "not an integer"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_SESSIONS, ids=[str(c) for c, _ in BAD_SESSIONS])
def test_a_bad_session_is_left_out_and_reported_not_the_ruleset(change, reason):
    bad = dataclasses.replace(session("10.0.0.3", 2), name="Node_evil", resource="evil", **change)
    refused = []
    script = ruleset(intent(*GOOD, bad), "t", refused=refused.append)
    assert script == ruleset(intent(*GOOD), "t")  # byte-identical to the ruleset without it
    assert len(refused) == 1
    assert reason in refused[0] and "BGPPeer 'evil' session 'Node_evil'" in refused[0]
    assert "\n" not in refused[0]


@pytest.mark.parametrize("listen_port", [0, 65536, "179", None])
def test_a_bad_listen_port_or_table_refuses_the_whole_ruleset(listen_port):
    with pytest.raises(GtsmError, match="listen port"):
        ruleset(intent(*GOOD, listen_port=listen_port))
    for table in ("t; flush ruleset", "t\n", "", "1t", None):
        with pytest.raises(GtsmError, match="table name"):
            ruleset(intent(*GOOD), table)
    with pytest.raises(ValueError, match="table name"):
        Gtsm(table="t x")


TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["10.0.0.9", "fd00::9", "fe80::1%eth0", "::ffff:10.0.0.9", "ipv4", "ipv6"]),
)
VALUE = st.one_of(st.integers(min_value=-300, max_value=70000), st.booleans(), st.none(), TEXT)
SCRIPT_LINE = re.compile(
    r"(?:add|delete) table inet t|table inet t \{|    chain (?:input|output) \{|    \}|\}"
    r"|        type filter hook (?:input|output) priority -150; policy accept;"
    r"|        ip6? saddr [0-9a-f.:]+ tcp [ds]port [0-9]+ (?:ip ttl|ip6 hoplimit) < [0-9]+ drop"
    r"|        ip6? daddr [0-9a-f.:]+ tcp [ds]port [0-9]+ (?:ip ttl|ip6 hoplimit) set 255"
)


@settings(max_examples=300, deadline=None)
@given(address=TEXT, family=TEXT, hops=VALUE, port=VALUE, name=TEXT)
def test_arbitrary_session_values_never_escape_and_never_break_the_grammar(address, family, hops, port, name):
    bad = dataclasses.replace(
        session("10.0.0.3", 2), address=address, family=family, ttl_security=hops, port=port, name=name
    )
    refused = []
    script = ruleset(intent(*GOOD, bad), "t", refused=refused.append)
    lines = script.splitlines()
    assert script.endswith("\n") and all(SCRIPT_LINE.fullmatch(line) for line in lines), script
    if refused or not hops:
        assert script == ruleset(intent(*GOOD), "t")
    else:  # accepted: only if every value is in the grammar, and then the good sessions are untouched
        assert any(f" {address} " in line for line in lines)
        assert set(ruleset(intent(*GOOD), "t").splitlines()) <= set(lines)


async def test_apply_reports_and_counts_left_out_sessions(tmp_path):
    log = tmp_path / "nft.log"
    registry = CollectorRegistry()
    gtsm = Gtsm(
        nft=(sys.executable, "-c", RECORDER, str(log)),
        table="t",
        registry=registry,
        refusals=SinkRefusals(registry),
    )
    bad = dataclasses.replace(session("10.0.0.3", 1), address="10.0.0.3\nflush ruleset")
    assert await gtsm.apply(intent(*GOOD, bad)) is True
    assert log.read_text() == ruleset(intent(*GOOD), "t") + "=====\n"
    assert registry.get_sample_value("calico_bgp_refused_sink_values_total", {"sink": "nft"}) == 1
    assert registry.get_sample_value("calico_bgp_gtsm_sessions") == 2


# A stand-in nft: records each script it is given; `list` (the table check after each apply) prints the
# scripts so far, so a listing changes only when a script ran.
RECORDER = (
    "import pathlib, sys; log = pathlib.Path(sys.argv[1])\n"
    "if 'list' in sys.argv: print(log.read_text() if log.exists() else '')\n"
    "else: log.open('a').write(sys.stdin.read() + '=====\\n')"
)


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
