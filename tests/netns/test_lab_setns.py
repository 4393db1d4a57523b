"""labs.proxy.in_netns, the one namespace switch of the lab forwarders: sockets made inside belong to the
namespace, and the thread is back in its own namespace afterwards, also when the block raises."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess

import pytest

from labs.metrics_proxy import socket_in_netns
from labs.proxy import in_netns, listen_in_netns

pytestmark = pytest.mark.netns


def here() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def ns():
    name = f"sn-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_thread_returns_to_its_namespace_also_after_an_error(ns):
    before = here()
    target = os.stat(f"/run/netns/{ns}").st_ino
    with in_netns(ns):
        assert here() == target
    assert here() == before
    with pytest.raises(ZeroDivisionError), in_netns(ns):
        1 / 0  # noqa: B018
    assert here() == before


def test_an_unknown_namespace_leaves_the_thread_where_it_was():
    before = here()
    with pytest.raises(FileNotFoundError), in_netns(f"absent-{secrets.token_hex(4)}"):
        pass
    assert here() == before


def test_sockets_made_inside_live_in_the_namespace(ns):
    listener = listen_in_netns(ns, "127.0.0.1", 0)
    port = listener.getsockname()[1]
    try:
        client = socket_in_netns(ns)
        client.setblocking(True)
        client.settimeout(5)
        try:
            client.connect(("127.0.0.1", port))  # reachable only inside the namespace
        finally:
            client.close()
        outside = socket.socket()
        outside.settimeout(2)
        try:
            with pytest.raises(OSError):
                outside.connect(("127.0.0.1", port))
        finally:
            outside.close()
    finally:
        listener.close()
