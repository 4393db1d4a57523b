"""Interface addresses: the rtnetlink codec (checked with pyroute2) and the watcher (with FakeNetlink)."""

from __future__ import annotations

import asyncio

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from routes import rtnetlink as rt
from routes.addresses import InterfaceAddressWatcher
from routes.model import ADD, DEL, AddressEvent, InterfaceAddress, NetlinkError
from routes.testing import FakeNetlink


def pyroute2_address(kind: int, family: int, prefixlen: int, index: int, attrs: list) -> bytes:
    msg = ifaddrmsg()
    msg["header"]["type"] = kind
    msg["family"], msg["prefixlen"], msg["index"] = family, prefixlen, index
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


ADDRESSES = [
    ("v4", rt.AF_INET, 24, [("IFA_ADDRESS", "10.0.0.11"), ("IFA_LOCAL", "10.0.0.11"), ("IFA_LABEL", "eth0")],
     "10.0.0.11/24"),
    ("v4 host", rt.AF_INET, 32, [("IFA_ADDRESS", "192.168.1.0"), ("IFA_LOCAL", "192.168.1.0")],
     "192.168.1.0/32"),
    ("v4 point-to-point: the peer's prefix", rt.AF_INET, 32,
     [("IFA_ADDRESS", "10.9.0.2"), ("IFA_LOCAL", "10.9.0.1")], "10.9.0.2/32"),
    ("local only", rt.AF_INET, 24, [("IFA_LOCAL", "10.0.0.11")], "10.0.0.11/24"),
    ("v6", rt.AF_INET6, 64, [("IFA_ADDRESS", "fd00::11")], "fd00::11/64"),
    ("v6 link-local", rt.AF_INET6, 64, [("IFA_ADDRESS", "fe80::1")], "fe80::1/64"),
]


@pytest.mark.parametrize(
    ("family", "prefixlen", "attrs", "expected"), [a[1:] for a in ADDRESSES], ids=[a[0] for a in ADDRESSES]
)
def test_decode_address_reads_pyroute2s_messages(family, prefixlen, attrs, expected):
    for kind in (rt.RTM_NEWADDR, rt.RTM_DELADDR):
        assert rt.decode_address(pyroute2_address(kind, family, prefixlen, 7, attrs), 0) == (7, expected)


def test_decode_address_skips_other_families_and_messages_without_an_address():
    assert rt.decode_address(pyroute2_address(rt.RTM_NEWADDR, 17, 0, 1, []), 0) is None
    label_only = pyroute2_address(rt.RTM_NEWADDR, rt.AF_INET, 24, 1, [("IFA_LABEL", "x")])
    assert rt.decode_address(label_only, 0) is None


def test_address_dump_request():
    msg = ifaddrmsg(rt.encode_address_dump(rt.AF_INET6, 9))
    msg.decode()
    assert msg["header"]["type"] == rt.RTM_GETADDR and msg["header"]["sequence_number"] == 9
    assert msg["header"]["flags"] == rt.NLM_F_REQUEST | rt.NLM_F_DUMP
    assert (msg["family"], msg["index"]) == (rt.AF_INET6, 0)


# ---------------------------------------------------------------------------------------- the watcher


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
async def rig():
    nl = FakeNetlink(links=("lo", "eth0", "eth1", "tunl0"))
    nl.add_address("lo", "127.0.0.1/8")
    nl.add_address("eth0", "10.0.0.11/24")
    reports: list[frozenset[str]] = []
    watcher = InterfaceAddressWatcher(nl, reports.append)
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.ready.wait(), 1)
    try:
        yield nl, watcher, reports
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_first_report_is_the_dump_then_only_changes(rig):
    nl, watcher, reports = rig
    assert reports == [frozenset({"127.0.0.1/8", "10.0.0.11/24"})]
    nl.add_address("eth1", "172.16.0.1/24")
    await settle()
    assert reports[-1] == {"127.0.0.1/8", "10.0.0.11/24", "172.16.0.1/24"}
    nl.add_address("eth1", "172.16.0.1/24")  # the kernel re-notifies on a flags change: nothing new
    await settle()
    assert len(reports) == 2
    nl.remove_address("eth1", "172.16.0.1/24")
    await settle()
    assert reports[-1] == {"127.0.0.1/8", "10.0.0.11/24"}


async def test_a_deleted_link_takes_its_addresses(rig):
    nl, _, reports = rig
    nl.add_address("eth1", "172.16.0.1/24")
    nl.delete_link("eth1")
    await settle()
    assert reports[-1] == {"127.0.0.1/8", "10.0.0.11/24"}


async def test_lost_notifications_are_recovered_by_a_fresh_dump(rig):
    nl, _, reports = rig
    nl.addresses[InterfaceAddress(nl.links["eth1"], "172.16.0.1/24")] = None  # changed unseen
    nl.overflow()
    await settle()
    assert "172.16.0.1/24" in reports[-1]


async def test_a_failing_consumer_does_not_stop_the_watch():
    nl = FakeNetlink()
    calls = []

    def consumer(addresses):
        calls.append(addresses)
        if len(calls) == 1:
            raise RuntimeError("consumer bug")

    watcher = InterfaceAddressWatcher(nl, consumer)
    task = asyncio.create_task(watcher.run())
    await settle()
    nl.add_address("eth0", "10.0.0.11/24")
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls[-1] == {"10.0.0.11/24"}


async def test_a_failing_dump_is_retried_not_raised():
    class Flaky(FakeNetlink):
        failures_left = 2

        async def dump_addresses(self):
            if self.failures_left:
                self.failures_left -= 1
                raise NetlinkError(1, "EPERM: address dump refused")
            return await super().dump_addresses()

    nl = Flaky()
    nl.add_address("eth0", "10.0.0.11/24")
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)

    reports = []
    watcher = InterfaceAddressWatcher(nl, reports.append, retry=5.0, sleep=sleep)
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.ready.wait(), 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sleeps == [5.0, 5.0] and reports == [frozenset({"10.0.0.11/24"})]


def test_feed_applies_events():
    reports = []
    watcher = InterfaceAddressWatcher(FakeNetlink(), reports.append)
    watcher.feed(AddressEvent(ADD, InterfaceAddress(2, "10.0.0.11/24")))
    watcher.feed(AddressEvent(DEL, InterfaceAddress(2, "10.0.0.11/24")))
    assert reports == [frozenset({"10.0.0.11/24"}), frozenset()]


async def test_an_ended_watch_is_subscribed_again_not_the_end_of_the_task():
    nl = FakeNetlink()
    nl.add_address("eth0", "10.0.0.11/24")
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)

    reports = []
    watcher = InterfaceAddressWatcher(nl, reports.append, retry=5.0, sleep=sleep)
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.ready.wait(), 1)
    nl._address_watches[0].close()  # the socket went away under the watcher
    await settle()
    nl.add_address("eth0", "10.0.0.12/24")  # heard on the fresh subscription
    await settle()
    assert not task.done() and sleeps == [5.0]
    assert reports[-1] == frozenset({"10.0.0.11/24", "10.0.0.12/24"})
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
