"""Interface addresses from the real kernel, inside a throwaway network namespace: the dump and the watch
that feed the import guard's connected subnets (``routes.addresses``), checked against ``ip addr``."""

from __future__ import annotations

import asyncio
import secrets
import subprocess

import pytest

from bgp.import_guard import connected_subnets
from routes.addresses import InterfaceAddressWatcher
from routes.netlink import KernelNetlink

pytestmark = pytest.mark.netns


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


@pytest.fixture
def ns():
    name = f"ad-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            "link add v0 type veth peer name v1",
            "link add tunl0 type veth peer name tunl0p",
            "addr add 10.9.0.1/24 dev v0",
            "-6 addr add fd00:9::1/64 dev v0 nodad",
            "addr add 192.168.1.0/32 dev tunl0",
            "link set v0 up",
            "link set v1 up",
        ):
            ip(name, *cmd.split())
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_dump_and_watch_follow_the_kernels_addresses(ns):
    netlink = KernelNetlink(netns=ns)
    reports: list[frozenset[str]] = []
    watcher = InterfaceAddressWatcher(netlink, reports.append)
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(watcher.ready.wait(), 10)
        first = reports[-1]
        assert {"127.0.0.1/8", "::1/128", "10.9.0.1/24", "fd00:9::1/64", "192.168.1.0/32"} <= first
        assert connected_subnets(first) == ("10.9.0.0/24", "fd00:9::/64")

        ip(ns, "addr", "add", "172.16.5.1/20", "dev", "v1")
        await _until(lambda: "172.16.5.1/20" in reports[-1])
        ip(ns, "addr", "del", "10.9.0.1/24", "dev", "v0")
        await _until(lambda: "10.9.0.1/24" not in reports[-1])
        assert "10.9.0.0/24" not in connected_subnets(reports[-1])
        assert "172.16.0.0/20" in connected_subnets(reports[-1])
        ip(ns, "link", "del", "v0")  # takes v1 and its address with it
        await _until(lambda: "172.16.5.1/20" not in reports[-1])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        netlink.close()


async def _until(check, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "no address notification in time"
        await asyncio.sleep(0.02)
