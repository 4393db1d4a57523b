"""rtnetlink codec: byte layouts round-trip, and pyroute2's independent decoder reads our requests."""

from __future__ import annotations

import errno
import ipaddress
import struct
from dataclasses import replace

import pytest
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from routes import rtnetlink as rt
from routes.model import BLACKHOLE, Nexthop, Route, kernel_form

INDEX = {"eth0": 2, "tunl0": 3, "v0": 4}
NAMES = {i: n for n, i in INDEX.items()}

ROUTES = [
    ("v4 via gateway", Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.7"),))),
    ("v4 via gateway dev", Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.7", "eth0"),), priority=1024)),
    ("v4 tunl0 onlink", Route("10.1.0.0/26", nexthops=(Nexthop("198.51.100.7", "tunl0", True),))),
    (
        "v4 multipath",
        Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.7", "eth0"), Nexthop("192.0.2.9", "tunl0", True))),
    ),
    ("v4 blackhole", Route("10.1.0.0/26", BLACKHOLE)),
    ("v4 device only", Route("10.1.0.5/32", nexthops=(Nexthop("", "v0"),), proto=3)),
    ("v4 default route", Route("0.0.0.0/0", nexthops=(Nexthop("192.0.2.1"),))),
    ("table above 255", Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.7"),), table=1000)),
    ("v6 via gateway", Route("fd00:1::/64", nexthops=(Nexthop("fd00::7", "eth0"),), priority=1024)),
    ("v6 multipath", Route("fd00:1::/64", nexthops=(Nexthop("fd00::7", "eth0"), Nexthop("fd00::9", "eth0")))),
    ("v6 blackhole", Route("fd00:1::/64", BLACKHOLE, priority=1024)),
]


def encode(route: Route, kind: int = rt.RTM_NEWROUTE, seq: int = 7) -> bytes:
    flags = rt.NLM_F_REQUEST | rt.NLM_F_ACK | rt.NLM_F_CREATE | rt.NLM_F_REPLACE
    return rt.encode_route(kind, flags, seq, route, INDEX.get)


@pytest.mark.parametrize("route", [r for _, r in ROUTES], ids=[n for n, _ in ROUTES])
def test_request_decodes_back_to_the_same_route(route):
    assert rt.decode_route(encode(route), 0, NAMES) == route


@pytest.mark.parametrize("route", [r for _, r in ROUTES], ids=[n for n, _ in ROUTES])
def test_pyroute2_reads_our_request(route):
    msg = rtmsg(encode(route, seq=42))
    msg.decode()
    net = ipaddress.ip_network(route.dst)
    assert msg["header"]["sequence_number"] == 42
    assert msg["header"]["type"] == rt.RTM_NEWROUTE
    assert (msg["family"], msg["dst_len"], msg["proto"]) == (route.family, net.prefixlen, route.proto)
    assert msg.get_attr("RTA_TABLE") == route.table
    assert msg["table"] == (route.table if route.table < 256 else rt.RT_TABLE_COMPAT)
    assert msg.get_attr("RTA_DST") == (str(net.network_address) if net.prefixlen else None)
    assert (msg.get_attr("RTA_PRIORITY") or 0) == route.priority
    assert msg["type"] == rt.RTN_CODES[route.type]
    if len(route.nexthops) > 1:
        hops = [
            Nexthop(h.get_attr("RTA_GATEWAY") or "", NAMES.get(h["oif"], ""), bool(h["flags"] & 4))
            for h in msg.get_attr("RTA_MULTIPATH")
        ]
        assert tuple(hops) == route.nexthops
    elif route.nexthops:
        hop = route.nexthops[0]
        assert (msg.get_attr("RTA_GATEWAY") or "") == hop.gateway
        assert NAMES.get(msg.get_attr("RTA_OIF"), "") == hop.ifname
        assert bool(msg["flags"] & rt.RTNH_F_ONLINK) == hop.onlink
        assert msg["scope"] == (rt.RT_SCOPE_UNIVERSE if hop.gateway else rt.RT_SCOPE_LINK)
    else:
        assert msg.get_attr("RTA_GATEWAY") is None and msg.get_attr("RTA_MULTIPATH") is None


def test_delete_matches_by_key_protocol_and_type_only():
    hops = (Nexthop("192.0.2.7", "eth0"), Nexthop("192.0.2.9", "eth0"))
    route = Route("10.1.0.0/26", nexthops=hops, priority=5)
    msg = rtmsg(encode(route, kind=rt.RTM_DELROUTE))
    msg.decode()
    assert msg["scope"] == rt.RT_SCOPE_NOWHERE
    assert (msg["proto"], msg["type"], msg.get_attr("RTA_PRIORITY")) == (12, rt.RTN_UNICAST, 5)
    assert msg.get_attr("RTA_MULTIPATH") is None and msg.get_attr("RTA_GATEWAY") is None


@pytest.mark.parametrize(
    ("route", "code"),
    [
        (Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.7", "nosuch"),)), errno.ENODEV),
        (Route("10.1.0.0/26", nexthops=(Nexthop("fd00::7"),)), errno.EINVAL),
        (Route("10.1.0.0/26"), errno.EINVAL),
        (Route("10.1.0.0/26", "weird"), errno.EINVAL),
    ],
    ids=["unknown device", "gateway of the other family", "unicast without next hop", "unknown type"],
)
def test_unencodable_routes_raise_with_an_errno(route, code):
    with pytest.raises(rt.EncodeError) as info:
        encode(route)
    assert info.value.code == code
    assert str(info.value).startswith(errno.errorcode[code])


SHAPE_PEERS = ["10.1.0.64/26", "0.0.0.0/0", "fd00:2::/64", "::/0"]


@pytest.mark.parametrize("kind", [rt.RTM_NEWROUTE, rt.RTM_DELROUTE])
@pytest.mark.parametrize("route", [r for _, r in ROUTES], ids=[n for n, _ in ROUTES])
def test_the_batch_encoder_writes_what_encode_route_writes(route, kind):
    """Each request shape encoded once, then reused for other destinations of the same family and length
    (and for the same route again): byte for byte what ``encode_route`` gives each route alone."""
    flags = rt.NLM_F_REQUEST | rt.NLM_F_CREATE
    encoder = rt.RouteEncoder(INDEX.get)
    same_length = [d for d in SHAPE_PEERS if (":" in d) == (":" in route.dst)]
    others = [replace(route, dst=d) for d in same_length] + [route]
    for seq, each in enumerate([route, *others], start=11):
        assert encoder.encode(kind, flags, seq, each) == rt.encode_route(kind, flags, seq, each, INDEX.get)


@pytest.mark.parametrize("dst", ["10.1.0.0", "10.1.0.300/26", "10.1.0.0/x"])
def test_the_batch_encoder_refuses_a_bad_destination_after_a_good_one(dst):
    encoder = rt.RouteEncoder(INDEX.get)
    good = Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.7"),))
    encoder.encode(rt.RTM_NEWROUTE, rt.NLM_F_REQUEST, 1, good)
    with pytest.raises(rt.EncodeError) as info:
        encoder.encode(rt.RTM_NEWROUTE, rt.NLM_F_REQUEST, 2, replace(good, dst=dst))
    assert info.value.code == errno.EINVAL


def test_dump_request_carries_the_filters():
    msg = rtmsg(rt.encode_route_dump(rt.AF_INET6, 3, 254, 12))
    msg.decode()
    assert msg["header"]["flags"] == rt.NLM_F_REQUEST | rt.NLM_F_DUMP
    fields = (msg["family"], msg["table"], msg["proto"], msg.get_attr("RTA_TABLE"))
    assert fields == (rt.AF_INET6, 254, 12, 254)


def _error_message(seq: int, code: int, text: str = "") -> bytes:
    tlv = b""
    flags = 0
    if text:
        payload = text.encode() + b"\0"
        tlv = struct.pack("=HH", 4 + len(payload), rt.NLMSGERR_ATTR_MSG) + payload
        tlv += b"\0" * ((-len(tlv)) % 4)
        flags = rt.NLM_F_ACK_TLVS
    echoed = rt.NLMSGHDR.pack(60, rt.RTM_NEWROUTE, 0, seq, 0)
    body = struct.pack("=i", -code) + echoed + tlv
    return rt.NLMSGHDR.pack(16 + len(body), rt.NLMSG_ERROR, flags, seq, 0) + body


def test_acks_and_errors_are_split_and_mapped_by_sequence():
    data = _error_message(5, 0) + _error_message(6, errno.ENETUNREACH, "Nexthop has invalid gateway")
    found = [(seq, rt.decode_error(data, off)) for kind, _, seq, off in rt.iter_messages(data)]
    assert found == [(5, (0, "")), (6, (errno.ENETUNREACH, "Nexthop has invalid gateway"))]
    assert rt.errno_text(errno.ENETUNREACH, "x") == "ENETUNREACH: Network is unreachable (x)"


def test_cloned_routes_are_not_routes():
    raw = bytearray(encode(ROUTES[0][1]))
    struct.pack_into("=I", raw, 16 + 8, rt.RTM_F_CLONED)
    assert rt.decode_route(bytes(raw), 0, NAMES) is None


def test_unknown_devices_are_reported_missing():
    missing: set[int] = set()
    route = rt.decode_route(encode(ROUTES[1][1]), 0, {}, missing)
    assert missing == {2} and route.nexthops[0].ifname == ""


def test_link_dump_request_is_read_by_pyroute2():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg(rt.encode_link_dump(7))
    msg.decode()
    header = msg["header"]
    request = (rt.RTM_GETLINK, rt.NLM_F_REQUEST | rt.NLM_F_DUMP, 7)
    assert (header["type"], header["flags"], header["sequence_number"]) == request
    # NETLINK_GET_STRICT_CHK refuses a dump whose header fields are set: all of them zero, no attributes.
    assert (msg["family"], msg["index"], msg["flags"], msg["change"], msg["attrs"]) == (0, 0, 0, 0, [])


def test_link_message():
    name = b"cali12345\0"
    attr = struct.pack("=HH", 4 + len(name), rt.IFLA_IFNAME) + name + b"\0" * ((-len(name)) % 4)
    body = rt.IFINFOMSG.pack(0, 1, 17, rt.IFF_UP, 0) + attr
    data = rt.NLMSGHDR.pack(16 + len(body), rt.RTM_NEWLINK, 0, 0, 0) + body
    assert rt.decode_link(data, 0) == (17, "cali12345", True)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (Route("fd00:1::/64", BLACKHOLE), Route("fd00:1::/64", BLACKHOLE, priority=1024)),
        (Route("fd00:1::/64", BLACKHOLE, priority=5), Route("fd00:1::/64", BLACKHOLE, priority=5)),
        (Route("10.1.0.0/26", BLACKHOLE), Route("10.1.0.0/26", BLACKHOLE)),
        (
            Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.9"), Nexthop("192.0.2.7"), Nexthop("192.0.2.9"))),
            Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.7"), Nexthop("192.0.2.9"))),
        ),
    ],
    ids=["v6 metric 0 reads back as 1024", "v6 explicit metric kept", "v4 metric 0 kept", "next hops sorted"],
)
def test_kernel_form(route, expected):
    assert kernel_form(route) == expected


@pytest.mark.parametrize("port", [0, -1])
def test_the_echo_filter_refuses_a_port_id_that_would_hide_the_kernels_own_deletions(port):
    """Port id 0 stamps the kernel's own notifications (a device gone takes its routes): a filter keyed on
    it would drop those deletions, which the route table must hear."""
    with pytest.raises(ValueError, match="port id"):
        rt.exclude_proto_filter(12, port)
