"""The route decoder on the notification path: generated kernel messages (any attribute order, attributes it
skips, unknown devices) read the same as pyroute2's independent decoder reads them; single next hops are
shared, bounded; the watch splits datagrams of one and of several messages alike."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from routes import rtnetlink as rt
from routes.model import ADD, DEL, UNICAST, Nexthop, Route
from routes.netlink_watch import KernelRouteWatch
from routes.nlsocket import LinkNames

NAMES = {2: "eth0", 7: "calia1b2c3", 9: "tunl0"}
RTA_PREFSRC = 7
RTA_CACHEINFO = 12
RTA_PREF = 20


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


@st.composite
def messages(draw):
    """(raw RTM_NEWROUTE/RTM_DELROUTE bytes, is a delete): the attributes a kernel sends, in any order."""
    v6 = draw(st.booleans())
    family, width = (socket.AF_INET6, 16) if v6 else (socket.AF_INET, 4)
    length = draw(st.integers(0, width * 8))
    raw = draw(st.integers(0, (1 << (width * 8)) - 1))
    raw &= ~((1 << (width * 8 - length)) - 1) if length else 0
    table = draw(st.sampled_from([254, 255, 100, 1000, 70000]))
    proto = draw(st.sampled_from([2, 3, 4, 12, 186]))
    rtype = draw(st.sampled_from([rt.RTN_UNICAST, rt.RTN_UNICAST, rt.RTN_BLACKHOLE, 7]))
    flags = draw(st.sampled_from([0, rt.RTNH_F_ONLINK]))
    scope = draw(st.sampled_from([rt.RT_SCOPE_UNIVERSE, rt.RT_SCOPE_LINK]))
    attrs = [struct.pack("=HHI", 8, rt.RTA_TABLE, table)]
    if length:
        attrs.append(_attr(rt.RTA_DST, raw.to_bytes(width, "big")))
    if draw(st.booleans()):
        attrs.append(struct.pack("=HHI", 8, rt.RTA_PRIORITY, draw(st.integers(1, 2**32 - 1))))
    if draw(st.booleans()):
        attrs.append(_attr(rt.RTA_GATEWAY, draw(st.binary(min_size=width, max_size=width))))
    if draw(st.booleans()):
        attrs.append(struct.pack("=HHI", 8, rt.RTA_OIF, draw(st.sampled_from([2, 7, 9, 33]))))
    if draw(st.booleans()):
        attrs.append(_attr(RTA_PREFSRC, draw(st.binary(min_size=width, max_size=width))))
    if draw(st.booleans()):
        attrs.append(_attr(RTA_CACHEINFO, bytes(32)))
    if v6 and draw(st.booleans()):
        attrs.append(_attr(RTA_PREF, b"\0"))
    body = b"".join(draw(st.permutations(attrs)))
    kind = draw(st.sampled_from([rt.RTM_NEWROUTE, rt.RTM_DELROUTE]))
    size = rt.HDR_LEN + rt.RTMSG_LEN + len(body)
    header = rt.NLMSGHDR.pack(size, kind, 0, 0, 0)
    rtm = rt.RTMSG.pack(family, length, 0, 0, min(table, rt.RT_TABLE_COMPAT), proto, scope, rtype, flags)
    return header + rtm + body, kind == rt.RTM_DELROUTE


def _reference(data: bytes) -> tuple[Route, set[int]]:
    """The route as pyroute2 decodes the message, in our model's terms."""
    msg = rtmsg(data)
    msg.decode()
    family = msg["family"]
    zero = "0.0.0.0" if family == socket.AF_INET else "::"
    dst = ipaddress.ip_network(f"{msg.get_attr('RTA_DST') or zero}/{msg['dst_len']}").with_prefixlen
    kind = rt.RTN_NAMES.get(msg["type"], str(msg["type"]))
    missing: set[int] = set()
    hops: tuple[Nexthop, ...] = ()
    if kind == UNICAST:
        gateway = msg.get_attr("RTA_GATEWAY")
        oif = msg.get_attr("RTA_OIF") or 0
        if oif and oif not in NAMES:
            missing.add(oif)
        hops = (Nexthop(str(ipaddress.ip_address(gateway)) if gateway else "", NAMES.get(oif, ""),
                        bool(msg["flags"] & rt.RTNH_F_ONLINK)),)  # fmt: skip
    route = Route(dst, kind, hops, msg.get_attr("RTA_TABLE"), msg["proto"], msg.get_attr("RTA_PRIORITY") or 0)
    return route, missing


@settings(max_examples=400, deadline=None)
@given(messages())
def test_a_notification_decodes_as_pyroute2_reads_it(message):
    data, _ = message
    missing: set[int] = set()
    assert (rt.decode_route(data, 0, NAMES, missing), missing) == _reference(data)


@settings(max_examples=100, deadline=None)
@given(messages())
def test_a_message_inside_a_larger_buffer_decodes_the_same(message):
    data, _ = message
    padded = b"\xff" * 12 + data + b"\xee" * 40
    assert rt.decode_route(padded, 12, NAMES) == rt.decode_route(data, 0, NAMES)


def _felix(dst: str, ifindex: int = 7) -> bytes:
    route = Route(dst, nexthops=(Nexthop("", NAMES[ifindex]),), proto=3)
    return rt.encode_route(rt.RTM_NEWROUTE, 0, 0, route, {n: i for i, n in NAMES.items()}.get)


def test_routes_through_the_same_next_hop_share_one_tuple():
    first = rt.decode_route(_felix("10.0.0.1/32"), 0, NAMES)
    second = rt.decode_route(_felix("10.0.0.2/32"), 0, NAMES)
    other = rt.decode_route(_felix("10.0.0.3/32", ifindex=2), 0, NAMES)
    assert first.nexthops is second.nexthops
    assert other.nexthops == (Nexthop("", "eth0"),) and other.nexthops is not first.nexthops


def test_a_renamed_device_is_not_read_from_the_shared_tuples():
    before = rt.decode_route(_felix("10.0.0.1/32"), 0, NAMES)
    after = rt.decode_route(_felix("10.0.0.1/32"), 0, {**NAMES, 7: "calinew"})
    assert before.nexthops[0].ifname == "calia1b2c3" and after.nexthops[0].ifname == "calinew"


def test_the_shared_next_hops_are_bounded():
    names = {i: f"cali{i}" for i in range(1, rt.ONE_HOP_LIMIT + 50)}
    indices = {n: i for i, n in names.items()}
    for index in names:
        route = Route("10.0.0.1/32", nexthops=(Nexthop("", names[index]),))
        message = rt.encode_route(rt.RTM_NEWROUTE, 0, 0, route, indices.get)
        assert rt.decode_route(message, 0, names).nexthops == (Nexthop("", names[index]),)
        assert len(rt._one_hops) <= rt.ONE_HOP_LIMIT


@settings(max_examples=50, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=6), st.integers(1, 6))
def test_the_watch_reads_datagrams_of_one_or_several_messages_alike(batch, per_datagram):
    """Each message becomes the event pyroute2's reading says, whether the kernel packed it alone or with
    others (notifications come one per datagram; dumps several)."""

    async def read() -> list:
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        watch = KernelRouteWatch(ours, _KnownLinks())
        with kernel:
            for start in range(0, len(batch), per_datagram):
                kernel.send(b"".join(data for data, _ in batch[start : start + per_datagram]))
        events = []
        try:
            async with asyncio.timeout(5):
                while len(events) < len(batch):
                    events.append(await anext(watch))
        finally:
            watch.close()
        return events

    expected = []
    for data, deleted in batch:
        route = _reference(data)[0]
        expected.append((DEL if deleted else ADD, route, route.nexthops[0].ifname if route.nexthops else ""))
    assert [(e.action, e.route, e.ifname) for e in asyncio.run(read())] == expected


class _KnownLinks(LinkNames):
    """The test's devices; an unknown one stays unknown (there is no kernel to ask)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.names = dict(NAMES)

    async def refresh(self) -> None:
        return None
