"""ExaBGP config rendering: content, determinism, refusal of unsafe values, and ExaBGP's own verdict."""

from __future__ import annotations

import base64
import dataclasses
import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confgen.apply import find_executable
from confgen.intent import MESH, NodeIntent, PeerIntent
from confgen.render import RenderError, render, render_config

# The shape of the line the daemon renders (bgp.daemon.api_run_line), with the node image's paths.
API_RUN = (
    "/usr/bin/python3 -I -S /opt/calico-bgp/lib/python3.11/site-packages/bgp/exabgp/bridge.py"
    " /var/run/calico-bgp/api.sock"
)


def peer(address, *, local="10.0.0.11", family="ipv4", **changes):
    name = "Mesh_" + address.replace(".", "_").replace(":", "_")
    base = PeerIntent(name, address, family, 64512, 64512, local, MESH, calico_node="n")
    return dataclasses.replace(base, **changes)


def intent(*peers, router_id="10.0.0.11", node="node1"):
    return NodeIntent(node=node, router_id=router_id, local_as=64512, peers=tuple(peers))


def neighbor_block(text, address):
    start = text.index(f"neighbor {address} {{")
    return text[start : text.index("\n}\n", start) + 3]


def test_neighbour_block_has_every_setting():
    text = render(intent(peer("10.0.0.12", passive=True)), api_run=API_RUN)
    assert neighbor_block(text, "10.0.0.12") == (
        "neighbor 10.0.0.12 {\n"
        '    description "Mesh_10_0_0_12";\n'
        "    router-id 10.0.0.11;\n"
        "    local-address 10.0.0.11;\n"
        "    local-as 64512;\n"
        "    peer-as 64512;\n"
        "    hold-time 90;\n"
        "    passive true;\n"
        "    manual-eor true;\n"
        "    adj-rib-in false;\n"
        "    family {\n"
        "        ipv4 unicast;\n"
        "    }\n"
        "    capability {\n"
        "        route-refresh;\n"
        "        graceful-restart 120;\n"
        "    }\n"
        "    api {\n"
        "        processes [ calico-bgp-api ];\n"
        "        neighbor-changes;\n"
        "        receive {\n"
        "            parsed;\n"
        "            update;\n"
        "            notification;\n"
        "            open;\n"
        "        }\n"
        "    }\n"
        "}\n"
    )
    assert f"process calico-bgp-api {{\n    run {API_RUN};\n    encoder json;\n}}\n" in text


@pytest.mark.parametrize(
    ("changes", "present", "absent"),
    [
        ({}, ["passive false;", "local-address 10.0.0.11;"], ["connect", "md5", "ttl"]),
        ({"port": 1790}, ["connect 1790;"], []),
        ({"peer_as": 65001, "local_as": 65000}, ["local-as 65000;", "peer-as 65001;"], []),
        ({"hold_time": 30}, ["hold-time 30;"], []),
        ({"password": "s3cret"}, ['md5-password "czNjcmV0";', "md5-base64 true;"], []),
        ({"restart_time": 300}, ["    graceful-restart 300;"], []),
        ({"restart_time": 0}, [], ["graceful-restart"]),
        ({"ttl_security": 1}, ["outgoing-ttl 255;"], ["incoming-ttl"]),
        # ExaBGP 5.0.15 cannot accept connections for "local-address auto" neighbours: always pinned
        ({"source_address": "None"}, ["local-address 10.0.0.11;"], ["auto"]),
        # policy settings belong to the speaker/RIB: never in the config, so they never reset a session
        (
            {"filters": ("f",), "next_hop_mode": "Self", "rr_client": True, "rr_cluster_id": "224.0.0.1"},
            [],
            ["filter", "next-hop", "cluster", "reflector"],
        ),
    ],
    ids=[
        "defaults",
        "port",
        "ebgp",
        "hold-time",
        "password",
        "restart-time",
        "no-graceful-restart",
        "ttl-security",
        "source-address-none",
        "policy-not-rendered",
    ],
)
def test_optional_settings(changes, present, absent):
    block = neighbor_block(render(intent(peer("10.0.0.12", **changes)), api_run=API_RUN), "10.0.0.12")
    for line in present:
        assert f"    {line}\n" in block
    for word in absent:
        assert word not in block


def test_ipv6_neighbour_carries_only_its_family():
    text = render(intent(peer("fd00::12", local="fd00::11", family="ipv6")), api_run=API_RUN)
    block = neighbor_block(text, "fd00::12")
    assert "        ipv6 unicast;\n" in block and "ipv4 unicast" not in block
    assert "    router-id 10.0.0.11;\n" in block and "    local-address fd00::11;\n" in block


def test_output_is_sorted_and_deterministic():
    peers = [
        peer("fd00::2", local="fd00::1", family="ipv6"),
        peer("10.0.0.100"),
        peer("10.0.0.9", port=1790, name="Node_10_0_0_9_port_1790"),
    ]
    text = render(intent(*peers), api_run=API_RUN)
    assert render(intent(*reversed(peers)), api_run=API_RUN) == text
    order = [line.split()[1] for line in text.splitlines() if line.startswith("neighbor ")]
    assert order == ["10.0.0.9", "10.0.0.100", "fd00::2"]  # numeric within a family
    assert text.index("connect 1790") > text.index("neighbor 10.0.0.9 {")


def test_no_neighbours_is_still_a_config():
    text = render(intent(), api_run=API_RUN, api_process="api")
    assert "neighbor" not in text
    assert f"process api {{\n    run {API_RUN};\n    encoder json;\n}}\n" in text


HOSTILE = ['x"', "x'", "x{", "x}", "x;", "x#", "x\\", "x[", "x]", "x,", "x\ny", "x\rz", "x\x00", "x\x7f"]


@pytest.mark.parametrize("bad", HOSTILE, ids=[repr(b) for b in HOSTILE])
@pytest.mark.parametrize(
    "build",
    [
        lambda bad: render(intent(), api_run="/bin/true " + bad),
        lambda bad: render(intent(node=bad), api_run=API_RUN),
        lambda bad: render(intent(peer("10.0.0.12")), api_run=API_RUN, api_process=bad),
    ],
    ids=["api-run", "node-name-comment", "process-name"],
)
def test_unsafe_strings_in_the_whole_file_are_refused_not_escaped(build, bad):
    with pytest.raises(RenderError):
        build(bad)


GOOD_PEERS = (
    peer("10.0.0.12", passive=True),
    peer("10.0.0.13", password="s3cret", ttl_security=1),
    peer("fd00::12", local="fd00::11", family="ipv6"),
)
SCOPE_ID_ATTACK = "fd00::99%x\nshutdown\n"

BAD_PEERS = [
    (peer("10.0.0.99", name="Mesh_x\ny"), "session name"),
    (peer("10.0.0.99", name='x"'), "session name"),
    (peer("10.0.0.300"), "peer address '10.0.0.300' is not an IP address"),
    (peer("10.0.0.99; neighbor 6.6.6.6"), "whitespace"),
    (peer(SCOPE_ID_ATTACK, local="fd00::11", family="ipv6"), "scope id"),
    (peer("fe80::1%eth0", local="fd00::11", family="ipv6"), "scope id"),
    (peer("::ffff:10.0.0.99", local="fd00::11", family="ipv6"), "IPv4-mapped"),
    (peer("fd00:0::99", local="fd00::11", family="ipv6"), "canonical form (fd00::99)"),
    (peer("FD00::99", local="fd00::11", family="ipv6"), "canonical form (fd00::99)"),
    (peer("010.0.0.99"), "is not an IP address"),
    (peer("10.0.0.99", local="fd00::1"), "local address"),
    (peer("10.0.0.99", local="10.0.0.11%1"), "local address '10.0.0.11%1' carries a scope id"),
    (peer("fd00::99", local="fd00::1"), "not an IPv4 address"),  # ipv4 family with v6 addresses
    (peer("10.0.0.99", family="l2vpn"), "family"),
    (peer("10.0.0.99", peer_as=0), "peer AS 0 is out of range"),
    (peer("10.0.0.99", local_as=2**32), "local AS"),
    (peer("10.0.0.99", peer_as="65000; passive true"), "not an integer"),
    (peer("10.0.0.99", port=0), "port 0"),
    (peer("10.0.0.99", port="179;"), "port"),
    (peer("10.0.0.99", port=True), "not an integer"),
    (peer("10.0.0.99", hold_time=2), "hold time 2"),
    (peer("10.0.0.99", hold_time=-1), "hold time"),
    (peer("10.0.0.99", password="p" * 81), "password"),
    (peer("10.0.0.99", password="line\nbreak"), "password"),
    (peer("10.0.0.99", password=None), "password is not text"),
    (peer("10.0.0.99", source_address="Auto"), "source address mode"),
    (peer("10.0.0.99", restart_time=4096), "graceful-restart time"),
    (peer("10.0.0.99", ttl_security=256), "TTL security"),
    (peer("10.0.0.99", ttl_security=1.5), "TTL security"),
    (peer("10.0.0.99", next_hop_mode="Maybe"), "next-hop mode"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_PEERS, ids=[f"{i}-{r}" for i, (_, r) in enumerate(BAD_PEERS)])
def test_a_bad_session_is_left_out_and_reported_not_the_config(bad, reason):
    bad = dataclasses.replace(bad, resource="evil")
    rendered = render_config(intent(*GOOD_PEERS, bad), api_run=API_RUN)
    assert rendered.text == render(intent(*GOOD_PEERS), api_run=API_RUN)  # byte-identical without it
    (message,) = rendered.refused
    assert message.startswith(f"BGPPeer 'evil' session {bad.name!r}: left out of the ExaBGP config: ")
    assert reason in message and "\n" not in message
    if bad.password:
        assert str(bad.password) not in message  # a secret is never shown


def test_a_mesh_session_is_named_without_a_resource():
    bad = peer("10.0.0.99", port=0)
    (message,) = render_config(intent(bad), api_run=API_RUN).refused
    assert message == (
        "session 'Mesh_10_0_0_99': left out of the ExaBGP config: port 0 is out of range (1-65535)"
    )


# Every line the template can produce, with each interpolated value in its token's grammar.
CONFIG_LINE = re.compile(
    r"#[ -~]*|process calico-bgp-api \{|    run [ -~]+;|    encoder json;|neighbor [0-9a-f.:]+ \{"
    r'|    description "[A-Za-z][A-Za-z0-9_]*";|    (?:router-id|local-address) [0-9a-f.:]+;'
    r"|    (?:local-as|peer-as|hold-time|connect|outgoing-ttl) [0-9]+;"
    r'|    (?:passive|manual-eor|md5-base64|adj-rib-in) (?:true|false);|    md5-password "[A-Za-z0-9+/=]+";'
    r"|    (?:family|capability|api) \{|        ipv[46] unicast;|        route-refresh;"
    r"|        graceful-restart [0-9]+;|        processes \[ calico-bgp-api \];|        neighbor-changes;"
    r"|        receive \{|            (?:parsed|update|notification|open);|        \}|    \}|\}|"
)
TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["10.0.0.99", "fd00::99", "fd00::11", SCOPE_ID_ATTACK, "::ffff:10.0.0.99", "ipv4", "ipv6", "Self"]
    ),
)
VALUE = st.one_of(st.integers(min_value=-(2**33), max_value=2**33), st.booleans(), st.none(), TEXT)


@settings(max_examples=300, deadline=None)
@given(
    strings=st.fixed_dictionaries(
        {},
        optional={
            field: TEXT
            for field in ("address", "local_address", "family", "name", "password", "source_address")
            + ("next_hop_mode", "resource")
        },
    ),
    numbers=st.fixed_dictionaries(
        {},
        optional={
            field: VALUE
            for field in ("peer_as", "local_as", "port", "hold_time", "restart_time", "ttl_security")
        },
    ),
)
def test_arbitrary_session_values_never_escape_and_never_break_the_grammar(strings, numbers):
    candidate = dataclasses.replace(peer("10.0.0.99"), **strings, **numbers)
    rendered = render_config(intent(*GOOD_PEERS, candidate), api_run=API_RUN)
    for line in rendered.text.splitlines():
        assert CONFIG_LINE.fullmatch(line), line
    without = _blocks(render(intent(*GOOD_PEERS), api_run=API_RUN))
    blocks = _blocks(rendered.text)
    if rendered.refused:
        (message,) = rendered.refused
        assert "left out of the ExaBGP config" in message and "\n" not in message
        assert blocks == without
    else:  # accepted: its block is the only addition, every other block byte-identical
        assert blocks.keys() - without.keys() == {candidate.address}
        assert {a: b for a, b in blocks.items() if a in without} == without


def test_router_id_must_be_ipv4_when_there_are_peers():
    for router_id in ("", "fd00::1", "10.0.0.11%x", "010.0.0.11"):
        with pytest.raises(RenderError, match="router id"):
            render(intent(peer("10.0.0.12"), router_id=router_id), api_run=API_RUN)
    assert render(intent(router_id=""), api_run=API_RUN)  # nothing to identify: fine
    # nor when every session was left out
    assert render(intent(peer("10.0.0.12", port=0), router_id=""), api_run=API_RUN)


@pytest.mark.exabgp
@pytest.mark.parametrize(
    "peers",
    [
        (),
        (peer("10.0.0.12", passive=True), peer("10.0.0.13")),
        (peer("10.0.0.12", port=1790, hold_time=0), peer("fd00::12", local="fd00::11", family="ipv6")),
        (peer("10.0.0.12", peer_as=65001, local_as=4200000000, password="s3cret-1.ok"),),
    ],
    ids=["empty", "mesh", "dual-stack-port", "ebgp-4byte-md5"],
)
def test_exabgp_accepts_what_we_render(tmp_path, peers):
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render(intent(*peers), api_run=API_RUN))
    result = subprocess.run(
        [find_executable("exabgp"), "validate", "-n", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for p in peers:
        assert f"neighbor  {p.address}" in result.stdout + result.stderr


def test_two_sessions_with_one_address_keep_the_first_in_sort_order():
    first = peer("10.0.0.12", resource="")
    second = peer("10.0.0.12", port=1790, name="Node_10_0_0_12_port_1790", resource="rack")
    for order in ((first, second), (second, first)):
        rendered = render_config(intent(*order, peer("10.0.0.13")), api_run=API_RUN)
        assert rendered.text == render(intent(first, peer("10.0.0.13")), api_run=API_RUN)
        assert rendered.refused == (
            "BGPPeer 'rack' session 'Node_10_0_0_12_port_1790': left out of the ExaBGP config: peer address "
            "10.0.0.12 is taken by session 'Mesh_10_0_0_12' (ExaBGP holds one neighbour per address)",
        )


# TCP-MD5 keys may hold any printable character; in base64 none of them is config syntax.
PRINTABLE_HOSTILE_PASSWORDS = [
    '"',
    "'",
    "{",
    "}",
    ";",
    "#",
    "\\",
    "[",
    "]",
    ",",
    '"; } neighbor 6.6.6.6 {',
    "x" * 80,
]


@pytest.mark.parametrize("password", PRINTABLE_HOSTILE_PASSWORDS)
def test_passwords_with_syntax_characters_are_rendered_inert(password):
    reference = render(intent(peer("10.0.0.12", password="plain")), api_run=API_RUN)
    text = render(intent(peer("10.0.0.12", password=password)), api_run=API_RUN)
    (line,) = [line for line in text.splitlines() if "md5-password" in line]
    encoded = line.split('"')[1]
    assert base64.b64decode(encoded).decode() == password
    # Nothing but the encoded value differs from a harmless password's config.
    assert text.replace(encoded, "X") == reference.replace(base64.b64encode(b"plain").decode(), "X")


def _blocks(text):
    """{address: neighbour block} of a rendered config."""
    parts = text.split("\nneighbor ")[1:]
    return {part.split(" ", 1)[0]: part for part in parts}


CHANGES = [
    {"peer_as": 65001},
    {"local_as": 65002},
    {"passive": True},
    {"port": 1790},
    {"hold_time": 30},
    {"password": "s3cret"},
    {"restart_time": 300},
    {"ttl_security": 1},
    {"source_address": "None"},
    {"keepalive_time": 10, "hold_time": 30},
    {"filters": ("f",), "next_hop_mode": "Keep", "num_allow_local_as": 1},
]


@pytest.mark.parametrize("change", CHANGES, ids=[",".join(c) for c in CHANGES])
def test_changing_one_session_changes_only_its_block(change):
    peers = [peer(f"10.0.0.{i}") for i in range(10, 16)] + [peer("fd00::12", local="fd00::11", family="ipv6")]
    before = _blocks(render(intent(*peers), api_run=API_RUN))
    for index, victim in enumerate(peers):
        edited = list(peers)
        edited[index] = dataclasses.replace(victim, **change)
        after = _blocks(render(intent(*edited), api_run=API_RUN))
        assert after.keys() == before.keys()
        assert {a for a in before if before[a] != after[a]} <= {victim.address}


def test_adding_or_removing_a_session_leaves_the_others_alone():
    peers = [peer(f"10.0.0.{i}") for i in range(10, 16)]
    full = _blocks(render(intent(*peers), api_run=API_RUN))
    for index in range(len(peers)):
        fewer = _blocks(render(intent(*(peers[:index] + peers[index + 1 :])), api_run=API_RUN))
        assert all(full[address] == block for address, block in fewer.items())


@pytest.mark.exabgp
def test_exabgp_accepts_every_session_feature(tmp_path):
    peers = (
        peer(
            "10.0.0.12", password='q"uo{te};#[]\\', restart_time=300, ttl_security=1, port=1790, passive=True
        ),
        peer("10.0.0.13", source_address="None", restart_time=0, hold_time=3, keepalive_time=1),
        peer("fd00::12", local="fd00::11", family="ipv6", password="x" * 80, ttl_security=2),
        peer("10.0.0.14", peer_as=4200000000, local_as=65546),
    )
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render(intent(*peers), api_run=API_RUN))
    result = subprocess.run(
        [find_executable("exabgp"), "validate", "-n", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for p in peers:
        assert f"neighbor  {p.address}" in result.stdout + result.stderr
