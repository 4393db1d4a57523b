"""ExaBGP config rendering: content, determinism, refusal of unsafe values, and ExaBGP's own verdict."""

from __future__ import annotations

import base64
import dataclasses
import subprocess

import pytest

from confgen.apply import find_executable
from confgen.intent import MESH, NodeIntent, PeerIntent
from confgen.render import RenderError, render

API_RUN = "/usr/bin/env calico-bgp api"


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
    assert "process calico-bgp-api {\n    run /usr/bin/env calico-bgp api;\n    encoder json;\n}\n" in text


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
    assert "process api {\n    run /usr/bin/env calico-bgp api;\n    encoder json;\n}\n" in text


HOSTILE = ['x"', "x'", "x{", "x}", "x;", "x#", "x\\", "x[", "x]", "x,", "x\ny", "x\rz", "x\x00", "x\x7f"]


@pytest.mark.parametrize("bad", HOSTILE, ids=[repr(b) for b in HOSTILE])
@pytest.mark.parametrize(
    "build",
    [
        lambda bad: render(intent(), api_run="/bin/true " + bad),
        lambda bad: render(intent(peer("10.0.0.12", name=bad)), api_run=API_RUN),
        lambda bad: render(intent(node=bad), api_run=API_RUN),
        lambda bad: render(intent(peer("10.0.0.12")), api_run=API_RUN, api_process=bad),
    ],
    ids=["api-run", "description", "node-name-comment", "process-name"],
)
def test_unsafe_strings_are_refused_not_escaped(build, bad):
    with pytest.raises(RenderError):
        build(bad)


@pytest.mark.parametrize(
    "bad",
    [
        peer("10.0.0.300"),
        peer("10.0.0.12; neighbor 6.6.6.6"),
        peer("10.0.0.12", local="fd00::1"),
        peer("fd00::2", local="fd00::1"),  # ipv4 family with v6 addresses
        peer("10.0.0.12", family="l2vpn"),
        peer("10.0.0.12", peer_as=0),
        peer("10.0.0.12", local_as=2**32),
        peer("10.0.0.12", port=0),
        peer("10.0.0.12", hold_time=2),
        peer("10.0.0.12", password="p" * 81),
        peer("10.0.0.12", password="line\nbreak"),
        peer("10.0.0.12", name="Mesh 10"),
        peer("10.0.0.12", source_address="Auto"),
        peer("10.0.0.12", restart_time=4096),
        peer("10.0.0.12", ttl_security=256),
        peer("10.0.0.12", next_hop_mode="Maybe"),
    ],
    ids=[
        "bad-ip",
        "injection",
        "local-family",
        "family-mismatch",
        "family",
        "as-0",
        "as-big",
        "port",
        "hold",
        "md5-len",
        "md5-newline",
        "name",
        "source-address",
        "restart-time",
        "ttl",
        "next-hop-mode",
    ],
)
def test_invalid_peers_are_refused(bad):
    with pytest.raises(RenderError):
        render(intent(bad), api_run=API_RUN)


def test_router_id_must_be_ipv4_when_there_are_peers():
    with pytest.raises(RenderError):
        render(intent(peer("10.0.0.12"), router_id=""), api_run=API_RUN)
    with pytest.raises(RenderError):
        render(intent(peer("10.0.0.12"), router_id="fd00::1"), api_run=API_RUN)
    assert render(intent(router_id=""), api_run=API_RUN)  # nothing to identify: fine


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


def test_two_sessions_with_one_address_are_refused():
    with pytest.raises(RenderError, match="one neighbour per address"):
        render(
            intent(peer("10.0.0.12"), peer("10.0.0.12", port=1790, name="Node_10_0_0_12_port_1790")),
            api_run=API_RUN,
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
