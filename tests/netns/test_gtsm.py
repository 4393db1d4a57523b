"""TTL security enforced by nftables (bgp.gtsm) against the real kernel, in throwaway namespaces.

Topology (every namespace name carries a random suffix; all are deleted in every outcome)::

    far (B) 10.91.2.2 --- 10.91.2.254 router (R) 10.91.1.254 --- 10.91.1.1 speaker (A)
                                                    speaker (A) 10.91.3.1 --- 10.91.3.2 near (C)
                                                                fd91:3::1 --- fd91:3::2

A is the node whose ``Gtsm`` owns the nftables table. C is a directly connected peer (one hop), B is a
peer one router further away. Plain TCP connects with a chosen IP_TTL / IP_MINTTL stand in for BGP (the
rules match TCP ports, not BGP): a connect either completes (the listener answers "ok") or times out
because a SYN or SYN-ACK was dropped. Only processes started here are ever killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from bgp.gtsm import TABLE, Gtsm, GtsmError
from confgen.intent import NodeIntent, PeerIntent

pytestmark = pytest.mark.netns

PORT = 179  # our listen port (intent.listen_port)
PEER_PORT = 1790  # the port C listens on for sessions we open (peer.port)
# The scripts below use IP_MINTTL = 21 (linux/in.h) and IPV6_MINHOPCOUNT = 73 (linux/in6.h): CPython
# exports neither.

LISTENER = r"""
import socket, sys, threading
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
if int(sys.argv[3]):  # a GTSM speaker (BIRD-like): refuse lower TTLs, answer with TTL 255
    s.setsockopt(socket.IPPROTO_IP, 21, int(sys.argv[3]))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(b"ok")
    conn.close()
"""

CLIENT = r"""
import socket, sys
host, port, ttl, minttl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
v6 = ":" in host
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
level, ttl_option, minttl_option = (
    (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 73) if v6 else (socket.IPPROTO_IP, socket.IP_TTL, 21)
)
if ttl:
    s.setsockopt(level, ttl_option, ttl)
if minttl:  # what a GTSM speaker sets before connecting: the SYN-ACK must arrive with this TTL
    s.setsockopt(level, minttl_option, minttl)
s.settimeout(float(sys.argv[5]))
try:
    s.connect((host, port))
    print(s.recv(2).decode() or "closed")
except (TimeoutError, OSError) as exc:
    print(type(exc).__name__)
"""


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


class Lab:
    def __init__(self) -> None:
        suffix = secrets.token_hex(3)
        self.a, self.r, self.b, self.c = (f"gtsm-{role}-{suffix}" for role in ("a", "r", "b", "c"))
        self.procs: list[subprocess.Popen] = []

    def build(self) -> None:
        for ns in (self.a, self.r, self.b, self.c):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            ip(ns, "link", "set", "lo", "up")
        # Veth pairs are created directly inside their namespaces: no name is ever used in the host.
        ip(self.a, "link", "add", "a0", "type", "veth", "peer", "name", "r0", "netns", self.r)
        ip(self.r, "link", "add", "r1", "type", "veth", "peer", "name", "b0", "netns", self.b)
        ip(self.a, "link", "add", "a1", "type", "veth", "peer", "name", "c0", "netns", self.c)
        for ns, dev, addr in (
            (self.a, "a0", "10.91.1.1/24"),
            (self.r, "r0", "10.91.1.254/24"),
            (self.r, "r1", "10.91.2.254/24"),
            (self.b, "b0", "10.91.2.2/24"),
            (self.a, "a1", "10.91.3.1/24"),
            (self.c, "c0", "10.91.3.2/24"),
        ):
            ip(ns, "addr", "add", addr, "dev", dev)
            ip(ns, "link", "set", dev, "up")
        ip(self.a, "-6", "addr", "add", "fd91:3::1/64", "dev", "a1", "nodad")
        ip(self.c, "-6", "addr", "add", "fd91:3::2/64", "dev", "c0", "nodad")
        ip(self.a, "route", "add", "10.91.2.0/24", "via", "10.91.1.254")
        ip(self.b, "route", "add", "default", "via", "10.91.2.254")
        subprocess.run(["ip", "netns", "exec", self.r, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)

    def listen(self, ns: str, address: str, port: int, minttl: int = 0) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, address, str(port), str(minttl)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def connect(
        self, ns: str, host: str, port: int, *, ttl: int = 0, minttl: int = 0, timeout: float = 1.0
    ) -> str:
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-c",
                CLIENT,
                host,
                str(port),
                str(ttl),
                str(minttl),
                str(timeout),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout.strip() or result.stderr.strip()

    def tables(self) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.a, "nft", "list", "tables"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def teardown(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)
        for ns in (self.a, self.r, self.b, self.c):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture
def lab():
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


def intent(*peers: tuple[str, int]) -> NodeIntent:
    sessions = tuple(
        PeerIntent(
            f"Node_{address}".replace(".", "_").replace(":", "_"),
            address,
            "ipv6" if ":" in address else "ipv4",
            65000,
            64512,
            "fd91:3::1" if ":" in address else "10.91.3.1",
            port=PEER_PORT,
            ttl_security=hops,
        )
        for address, hops in peers
    )
    return NodeIntent(node="a", router_id="10.91.3.1", local_as=64512, listen_port=PORT, peers=sessions)


def test_a_peer_one_hop_further_away_gets_no_session(lab):
    gtsm = Gtsm(nft=("ip", "netns", "exec", lab.a, "nft"))
    lab.listen(lab.a, "0.0.0.0", PORT)
    # Without TTL security both peers connect, whatever their TTL.
    assert lab.connect(lab.b, "10.91.1.1", PORT, ttl=64) == "ok"  # B reaches A through R
    assert lab.connect(lab.c, "10.91.3.1", PORT, ttl=64) == "ok"

    assert asyncio.run(gtsm.apply(intent(("10.91.2.2", 1), ("10.91.3.2", 1)))) is True
    assert TABLE in lab.tables()
    assert lab.connect(lab.c, "10.91.3.1", PORT, ttl=255) == "ok"  # direct neighbour: arrives with 255
    assert lab.connect(lab.c, "10.91.3.1", PORT, ttl=64) == "TimeoutError"  # not speaking GTSM
    assert lab.connect(lab.b, "10.91.1.1", PORT, ttl=255) == "TimeoutError"  # one hop away: arrives with 254

    # ttlSecurity 2 admits exactly one router in between, and nothing that started lower.
    asyncio.run(gtsm.apply(intent(("10.91.2.2", 2), ("10.91.3.2", 1))))
    assert lab.connect(lab.b, "10.91.1.1", PORT, ttl=255) == "ok"
    assert lab.connect(lab.b, "10.91.1.1", PORT, ttl=254) == "TimeoutError"

    asyncio.run(gtsm.remove())
    assert TABLE not in lab.tables()
    assert lab.connect(lab.b, "10.91.1.1", PORT, ttl=64) == "ok"
    asyncio.run(gtsm.remove())  # idempotent


def test_our_packets_leave_with_ttl_255_in_both_directions(lab):
    """The half ExaBGP gets wrong: a GTSM peer drops a SYN-ACK (or SYN) sent with the default TTL 64."""
    gtsm = Gtsm(nft=("ip", "netns", "exec", lab.a, "nft"))
    lab.listen(lab.a, "0.0.0.0", PORT)
    lab.listen(lab.c, "10.91.3.2", PEER_PORT, minttl=255)  # C's own listener enforces GTSM
    # Without our rules: C's GTSM connect never sees our SYN-ACK, and our connect to C is refused.
    assert lab.connect(lab.c, "10.91.3.1", PORT, ttl=255, minttl=255) == "TimeoutError"
    assert lab.connect(lab.a, "10.91.3.2", PEER_PORT) == "TimeoutError"

    asyncio.run(gtsm.apply(intent(("10.91.3.2", 1))))
    assert lab.connect(lab.c, "10.91.3.1", PORT, ttl=255, minttl=255) == "ok"  # our listener's SYN-ACK
    assert lab.connect(lab.a, "10.91.3.2", PEER_PORT) == "ok"  # our SYN to the peer's port


def test_ipv6_uses_the_hop_limit(lab):
    gtsm = Gtsm(nft=("ip", "netns", "exec", lab.a, "nft"))
    lab.listen(lab.a, "::", PORT)
    asyncio.run(gtsm.apply(intent(("fd91:3::2", 1))))
    assert lab.connect(lab.c, "fd91:3::1", PORT, ttl=255, minttl=255) == "ok"
    assert lab.connect(lab.c, "fd91:3::1", PORT, ttl=64) == "TimeoutError"


def test_reapplying_is_a_no_op_and_a_failure_keeps_the_old_rules(lab):
    gtsm = Gtsm(nft=("ip", "netns", "exec", lab.a, "nft"))
    wanted = intent(("10.91.3.2", 1))
    assert asyncio.run(gtsm.apply(wanted)) is True
    started = time.monotonic()
    assert asyncio.run(gtsm.apply(wanted)) is False  # unchanged: nft does not even run
    assert time.monotonic() - started < 0.5
    assert asyncio.run(gtsm.apply(wanted, force=True)) is True

    def rules() -> str:
        return subprocess.run(
            ["ip", "netns", "exec", lab.a, "nft", "list", "table", "inet", TABLE],
            capture_output=True,
            text=True,
        ).stdout

    before = rules()
    assert "ip saddr 10.91.3.2 tcp dport 179 ip ttl < 255 drop" in before
    broken = Gtsm(nft=("ip", "netns", "exec", lab.a, "false"))
    with pytest.raises(GtsmError, match="rc 1"):
        asyncio.run(broken.apply(intent(("10.91.3.2", 2))))
    assert rules() == before  # all or nothing: the old rules stay in force


def test_a_flushed_ruleset_is_put_back_by_the_watch_and_enforced_again(lab):
    """Someone runs ``nft flush ruleset`` in the node: the watch notices and restores our table (counted),
    and a peer that is not speaking GTSM is refused again."""
    lab.listen(lab.a, "0.0.0.0", PORT)

    def listing() -> str:
        argv = ["ip", "netns", "exec", lab.a, "nft", "list", "table", "inet", TABLE]
        return subprocess.run(argv, capture_output=True, text=True).stdout

    async def scenario() -> float:
        gtsm = Gtsm(nft=("ip", "netns", "exec", lab.a, "nft"), check_interval=0.2)
        await gtsm.apply(intent(("10.91.3.2", 1)))
        ours = listing()
        watch = asyncio.create_task(gtsm.watch())
        try:
            await asyncio.sleep(0.5)
            assert gtsm.restores == 0  # an untouched table is left alone
            argv = ("ip", "netns", "exec", lab.a, "nft", "flush", "ruleset")
            flush = await asyncio.create_subprocess_exec(*argv)
            assert await flush.wait() == 0
            flushed = time.monotonic()
            while gtsm.restores == 0:
                assert time.monotonic() - flushed < 5, "the table was not restored"
                await asyncio.sleep(0.05)
            took = time.monotonic() - flushed
            assert listing() == ours
            await asyncio.sleep(0.5)
            assert gtsm.restores == 1  # restored once, then left alone again
            return took
        finally:
            watch.cancel()

    took = asyncio.run(scenario())
    print(f"restored {took:.2f}s after the flush with a 0.2s check interval")
    assert lab.connect(lab.c, "10.91.3.1", PORT, ttl=64) == "TimeoutError"  # enforced again
    assert lab.connect(lab.c, "10.91.3.1", PORT, ttl=255) == "ok"


# ------------------------------------------------------------------ a real ExaBGP pair

DRAIN = """import sys
with open(sys.argv[1], "a") as out:
    for line in sys.stdin:
        out.write(line)
        out.flush()
"""


class Speaker:
    """ExaBGP in a namespace with a config rendered by confgen; its API process logs every event line."""

    def __init__(self, lab: Lab, ns: str, intent: NodeIntent, workdir, bind: list[str]) -> None:
        from bgp.exabgp.environment import exabgp_environment
        from confgen.apply import find_executable
        from confgen.render import render

        self.events = workdir / f"{ns}.events"
        drain = workdir / "drain.py"
        drain.write_text(DRAIN)
        conf = workdir / f"{ns}.conf"
        conf.write_text(render(intent, api_run=f"{sys.executable} {drain} {self.events}"))
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("exabgp")}
        env.update(exabgp_environment(bind, PORT))
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, find_executable("exabgp"), "server", str(conf)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lab.procs.append(proc)

    def states(self) -> set[tuple[str, str]]:
        """(peer, state) of every state event so far."""
        seen = set()
        if self.events.exists():
            for line in self.events.read_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # acks and other plain-text lines
                if event.get("type") == "state":
                    seen.add((event["neighbor"]["address"]["peer"], event["neighbor"]["state"]))
        return seen

    def up(self, peer: str, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (peer, "up") in self.states():
                return True
            time.sleep(0.2)
        return False


def session_intent(me: str, peer: str, *, hops: int, password: str) -> NodeIntent:
    session = PeerIntent(
        f"Node_{peer}".replace(".", "_"),
        peer,
        "ipv4",
        64512,
        64512,
        me,
        passive=peer > me,  # Calico's lexical rule: exactly one side connects
        password=password,
        ttl_security=hops,
        hold_time=9,
    )
    return NodeIntent(node=me, router_id=me, local_as=64512, listen_port=PORT, peers=(session,))


@pytest.mark.exabgp
def test_exabgp_sessions_with_ttl_security_and_a_punctuated_md5_password(lab, tmp_path):
    password = 'p"a{s};s#'  # rendered base64-encoded; ExaBGP must decode it on both ends
    a_to_c = session_intent("10.91.3.1", "10.91.3.2", hops=1, password=password)
    c_to_a = session_intent("10.91.3.2", "10.91.3.1", hops=1, password=password)
    a_to_b = session_intent("10.91.1.1", "10.91.2.2", hops=1, password="")
    b_to_a = session_intent("10.91.2.2", "10.91.1.1", hops=1, password="")
    a_intent = dataclasses.replace(a_to_c, peers=a_to_c.peers + a_to_b.peers)
    for ns, node_intent in ((lab.a, a_intent), (lab.b, b_to_a), (lab.c, c_to_a)):
        asyncio.run(Gtsm(nft=("ip", "netns", "exec", ns, "nft")).apply(node_intent))
    a = Speaker(lab, lab.a, a_intent, tmp_path, ["10.91.3.1", "10.91.1.1"])
    Speaker(lab, lab.b, b_to_a, tmp_path, ["10.91.2.2"])
    Speaker(lab, lab.c, c_to_a, tmp_path, ["10.91.3.2"])
    # The direct neighbour comes up with GTSM enforced on both ends (the SYN-ACK ExaBGP's own listener
    # would send with TTL 64 leaves with 255) and the punctuated password on both sockets ...
    assert a.up("10.91.3.2", within=20)
    # ... and the one a router further away never does ...
    assert not a.up("10.91.2.2", within=6)
    # ... until TTL security is lifted on both ends: it was GTSM, not the lab, that kept it down.
    for ns in (lab.a, lab.b):
        asyncio.run(Gtsm(nft=("ip", "netns", "exec", ns, "nft")).remove())
    assert a.up("10.91.2.2", within=30)


@pytest.mark.exabgp
def test_a_source_address_none_session_accepts_the_peers_connection(lab, tmp_path):
    """Regression: rendered as ``local-address auto``, ExaBGP 5.0.15 refused every incoming connection of
    such a neighbour ('NoneType' object has no attribute 'address'); confgen pins the node address."""
    passive = session_intent("10.91.3.1", "10.91.3.2", hops=0, password="")
    passive = dataclasses.replace(
        passive, peers=(dataclasses.replace(passive.peers[0], source_address="None"),)
    )
    assert passive.peers[0].passive  # the peer connects to us
    a = Speaker(lab, lab.a, passive, tmp_path, ["10.91.3.1"])
    Speaker(
        lab, lab.c, session_intent("10.91.3.2", "10.91.3.1", hops=0, password=""), tmp_path, ["10.91.3.2"]
    )
    assert a.up("10.91.3.2", within=20)
