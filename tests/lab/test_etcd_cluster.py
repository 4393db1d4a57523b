"""A 3-node mesh on a 3-member etcd cluster over TLS: the mesh checks, then members killed under writes.

Every node's ETCD_ENDPOINTS lists the three members (through the lab's proxy, one listener per member),
so when the member a node reads from dies, the node's own client must move to another one. While a writer
adds a new IPAM block affinity every 0.3 s, the test SIGKILLs the etcd leader, starts it again, then
SIGKILLs another member (the one the nodes' clients try first), and starts it again. Then:

- every write was applied on every node (the block in its kernel: a blackhole on the owner, a route via
  the owner elsewhere) within APPLY_BOUND of the moment the writer first tried it, kills included;
- no BGP session was reset (each session's established-since is unchanged);
- every node's datastore client did move to another member (its reconnect counter went up);
- every daemon is in sync with etcd again, and its Loc-RIB and kernel hold exactly the blocks etcd holds.

The lab runs with ``--etcd-tls`` (members serve https, require client certificates, and authenticate each
other); a client without a certificate is refused. A separate test checks the proxy's per-member
listeners on their own: each reaches its member only, so a dead member looks dead to the nodes.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bgp.status import query
from confgen.datastore import keys
from labs import etcd, etcd_cluster, netns, ops, process, state, topology
from labs import lab as labs_lab

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
WRITE_INTERVAL = 0.3
# From a write's first attempt to the block being in all three kernels, kills included. A node whose
# member died notices at once (the connection closes) and relists from another member after its 0.25 s
# backoff; a new leader is elected within etcd's 1 s election timeout; a write caught by the election
# fails after WRITE_TIMEOUT and is retried. Measured on a 2-core machine: at most 3.4 s from the first
# try (3 s of it the writer's timeout), at most 0.5 s from etcd's acknowledgement.
APPLY_BOUND = 10.0
WRITE_TIMEOUT = 3.0
DOWN_FOR = 5.0  # how long each killed member stays down while the writer goes on
AFFINITY_PREFIX = "/calico/ipam/v2/host/"
METRICS_PORT = 9094  # the daemons' default


@pytest.fixture(scope="module")
def cluster():
    name = f"k{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up("mesh", 3, name=name, etcd_members=3, etcd_tls=True, echo=lines.append)
        yield name, ok, "\n".join(lines)
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _daemon_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _sessions(lab: str) -> dict[tuple[str, str], dict]:
    """Every node's sessions, from the daemons' control sockets (their reports carry the exact
    established-since time, which ``status -o json`` rounds to the second)."""
    loaded = ops.load(lab)
    out = {}
    for node in NODES:
        report = query(Path(loaded.node(node).run_dir) / "ctl.sock")
        for peer in report["peers"]:
            out[(node, peer["address"])] = peer
    return out


def _reconnects(lab: str) -> dict[str, float]:
    """Each daemon's calico_bgp_datastore_reconnects: relists on a fresh connection after losing one."""
    code = (
        "import sys, urllib.request\n"
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5)"
        ".read().decode())"
    )
    loaded = ops.load(lab)
    out = {}
    for node in NODES:
        result = netns.run_in(loaded.node(node).netns, ["python3", "-I", "-c", code], timeout=10)
        assert result.returncode == 0, f"{node}: metrics not served: {result.stderr[-300:]}"
        prefix = "calico_bgp_datastore_reconnects_total "
        samples = [line for line in result.stdout.splitlines() if line.startswith(prefix)]
        assert len(samples) == 1, f"{node}: {samples}"
        out[node] = float(samples[0].split()[1])
    return out


def _bird_dsts(lab: str, node: str) -> set[str]:
    return {r["dst"] for r in netns.routes(state.netns_name(lab, node), "proto", "bird")}


def _block(i: int) -> str:
    return str(ipaddress.ip_network("192.168.100.0/26").network_address + 64 * i) + "/26"


@dataclass
class Write:
    block: str
    node: str
    attempted: float  # monotonic time of the first try
    acked: float = 0.0  # when etcd confirmed it
    tries: int = 0
    seen: dict[str, float] = field(default_factory=dict)  # node -> first time its kernel had the block


class Writer(threading.Thread):
    """Adds one block affinity per WRITE_INTERVAL (round robin over the nodes), retrying each until etcd
    takes it, as an operator's tooling would."""

    def __init__(self, lab: str) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.stop = threading.Event()
        self.writes: list[Write] = []
        self.errors: list[str] = []

    def run(self) -> None:
        loaded = ops.load(self.lab)
        security = etcd_cluster.security(loaded)
        nodes = sorted(NODES)
        i = 0
        while not self.stop.is_set():
            write = Write(_block(i), nodes[i % len(nodes)], time.monotonic())
            self.writes.append(write)
            key, value = topology.affinity(write.node, write.block)
            while not write.acked:
                write.tries += 1
                try:
                    etcd.put_all(
                        loaded.etcd_endpoints, [(key, value)], timeout=WRITE_TIMEOUT, security=security
                    )
                    write.acked = time.monotonic()
                except etcd.EtcdUnavailable as exc:
                    self.errors.append(f"{write.block}: {exc}")
                    if time.monotonic() - write.attempted > 60:
                        return
                    time.sleep(0.1)
            i += 1
            self.stop.wait(WRITE_INTERVAL)


class KernelWatcher(threading.Thread):
    """Records when each written block first shows up in each node's kernel (proto bird)."""

    def __init__(self, lab: str, writer: Writer) -> None:
        super().__init__(daemon=True)
        self.lab, self.writer = lab, writer
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for node in NODES:
                dsts = _bird_dsts(self.lab, node)
                now = time.monotonic()
                for write in list(self.writer.writes):
                    if node not in write.seen and write.block in dsts:
                        write.seen[node] = now
            self.stop.wait(0.1)


def test_up_lists_every_member_and_passes_the_mesh_checks(cluster):
    name, ok, output = cluster
    assert ok, output
    assert "30/30 pod pairs reached" in output
    info = labs_lab.show(name)
    assert len(info["etcd_endpoints"]) == 3
    assert all(e.startswith("https://127.0.0.1:") for e in info["etcd_endpoints"])
    assert [m["client_url"] for m in info["etcd_members"]] == info["etcd_endpoints"]
    node_urls = ",".join(m["node_url"] for m in info["etcd_members"])
    loaded = ops.load(name)
    for node in loaded.nodes:
        env = _daemon_env(node.pid)
        assert (
            env["ETCD_ENDPOINTS"]
            == node_urls
            == ("https://127.0.0.1:2379,https://127.0.0.1:12379,https://127.0.0.1:22379")
        )
        for variable in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"):
            assert Path(env[variable]).is_file(), (node.name, variable)


def test_members_refuse_a_client_without_a_certificate(cluster):
    name, _, _ = cluster
    loaded = ops.load(name)
    assert etcd.get_prefix(loaded.etcd_endpoints, "/calico/", security=etcd_cluster.security(loaded))
    with pytest.raises(etcd.EtcdUnavailable):
        etcd.get_prefix(loaded.etcd_endpoints[:1], "/calico/", timeout=3)  # plain http: no TLS at all
    bare = etcd_cluster.security(loaded)
    assert bare is not None
    ca_only = type(bare)(ca_file=bare.ca_file)  # verifies the server, offers no certificate
    with pytest.raises(etcd.EtcdUnavailable):
        etcd.get_prefix(loaded.etcd_endpoints[:1], "/calico/", timeout=3, security=ca_only)


def test_proxy_forwards_each_listener_to_its_own_member_only(tmp_path, lab_name):
    """Two separate etcds behind one proxy: 127.0.0.1:2379 in the namespace reaches the first only,
    127.0.0.1:12379 the second only, and a dead target closes the connection instead of falling back."""
    servers = []
    ns = state.netns_name(lab_name, "node1")
    netns.add_netns(ns)
    pid = 0
    try:
        for index in range(2):
            directory = tmp_path / f"e{index}"
            directory.mkdir()
            servers.append(etcd.start(directory, directory / "etcd.log"))
            etcd.put_all([servers[-1].client_url], [("/calico/who", f"member{index}")])
        ready = tmp_path / "proxy.ready"
        argv = [sys.executable, "-m", "labs.proxy", "--netns", ns, "--ready-file", str(ready)]
        for index, server in enumerate(servers):
            argv += ["--forward", f"{etcd_cluster.node_url(index)}={server.client_url}"]
        pid = process.spawn(argv, tmp_path / "proxy.log")
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert process.alive(pid) and time.monotonic() < deadline, process.tail(tmp_path / "proxy.log")
            time.sleep(0.05)

        def who(index: int) -> subprocess.CompletedProcess:
            ctl = ["etcdctl", "--endpoints", etcd_cluster.node_url(index), "--dial-timeout", "2s"]
            ctl += ["--command-timeout", "3s", "get", "/calico/who", "--print-value-only"]
            return netns.run_in(ns, ctl, timeout=15)

        assert [who(i).stdout.strip() for i in range(2)] == ["member0", "member1"]
        etcd.stop(servers[0].pid, servers[0].data_dir)
        assert who(0).returncode != 0
        assert who(1).stdout.strip() == "member1"
    finally:
        if pid:
            process.stop(pid, str(tmp_path / "proxy.ready"))
        for server in servers:
            etcd.stop(server.pid, server.data_dir)
        for leftover in netns.pids(ns):
            process.kill(leftover)
        netns.delete_netns(ns)


def _kill_for(lab: str, member: str, log: list[str]) -> tuple[float, float]:
    """SIGKILL a member, keep it down for DOWN_FOR, start it again; returns the (start, end) of the gap."""
    loaded = ops.load(lab)
    started = time.monotonic()
    etcd_cluster.kill_member(loaded, member)
    time.sleep(DOWN_FOR)
    back = etcd_cluster.start_member(loaded, member)
    down = time.monotonic() - started - back
    log.append(f"{member}: down {down:.1f} s, serving again {back:.1f} s after its start")
    return started, time.monotonic()


def test_killing_the_leader_then_another_member_under_writes(cluster):
    name, ok, output = cluster
    assert ok, output
    loaded = ops.load(name)
    sessions_before = _sessions(name)
    assert len(sessions_before) == 6 and all(p["info"] == "Established" for p in sessions_before.values())
    reconnects_before = _reconnects(name)

    writer = Writer(name)
    watcher = KernelWatcher(name, writer)
    writer.start()
    watcher.start()
    events: list[str] = []
    windows: list[tuple[float, float]] = []
    try:
        time.sleep(2.0)
        first = etcd_cluster.leader(loaded).name
        events.append(f"leader: {first}")
        windows.append(_kill_for(name, first, events))
        time.sleep(3.0)
        # The member the nodes' clients try first (endpoint order) unless that was the first victim: either
        # way at least one of the two kills takes away the member every node was reading from.
        second = next(m.name for m in ops.load(name).etcd_members if m.name != first)
        windows.append(_kill_for(name, second, events))
        time.sleep(2.0)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    deadline = time.monotonic() + APPLY_BOUND
    while time.monotonic() < deadline and not all(len(w.seen) == len(NODES) for w in writer.writes):
        time.sleep(0.2)
    watcher.stop.set()
    watcher.join(timeout=10)

    writes = writer.writes
    assert writes and all(w.acked for w in writes), writer.errors[-5:]
    missing = {w.block: sorted(set(NODES) - set(w.seen)) for w in writes if len(w.seen) != len(NODES)}
    assert not missing, f"writes never applied on some nodes: {missing}; {events}"
    lags = {w.block: max(w.seen.values()) - w.attempted for w in writes}
    in_window = [w for w in writes if any(a - 1.0 <= w.attempted <= b for a, b in windows)]
    worst = max(writes, key=lambda w: lags[w.block])
    print(
        f"{len(writes)} writes ({len(in_window)} during a kill, {len(writer.errors)} failed tries retried); "
        f"first try -> every kernel: max {lags[worst.block]:.2f} s ({worst.block}), "
        f"max during kills {max(lags[w.block] for w in in_window):.2f} s, "
        f"max outside {max((lags[w.block] for w in writes if w not in in_window), default=0):.2f} s; "
        f"ack -> every kernel max {max(max(w.seen.values()) - w.acked for w in writes):.2f} s; {events}"
    )
    assert in_window, "no write fell into a kill window"
    slow = {b: round(s, 2) for b, s in lags.items() if s > APPLY_BOUND}
    assert not slow, f"applied later than {APPLY_BOUND} s after the first try: {slow}"

    # No session was reset: each one is still Established since the same moment.
    sessions_after = _sessions(name)
    assert set(sessions_after) == set(sessions_before)
    for key, peer in sessions_after.items():
        assert peer["info"] == "Established", (key, peer)
        assert peer["since_ts"] == sessions_before[key]["since_ts"], (key, peer, sessions_before[key])

    # Every node lost the member it read from at least once (the second victim is the one their clients
    # try first, or the first victim was) and listed again from another one.
    reconnects = {n: v - reconnects_before[n] for n, v in _reconnects(name).items()}
    print(f"datastore reconnects per node: {reconnects}")
    assert all(v >= 1 for v in reconnects.values()), reconnects

    _assert_nodes_match_etcd(name)
    for node in loaded.nodes:
        assert process.alive(node.pid), f"daemon {node.name} died:\n{process.tail(node.log)}"


def _assert_nodes_match_etcd(lab: str) -> None:
    """Every daemon in sync; its Loc-RIB and kernel hold exactly the blocks of etcd's affinities."""
    loaded = ops.load(lab)
    values = etcd.get_prefix(loaded.etcd_endpoints, AFFINITY_PREFIX, security=etcd_cluster.security(loaded))
    owner = {}
    for key in values:
        parsed = keys.parse_affinity_key(key)
        assert parsed, key
        node, block = parsed
        owner[block] = node
    assert len(owner) > len(NODES)

    def consistent() -> list[str]:
        problems = []
        for node in NODES:
            status = json.loads(ops.status(loaded, loaded.node(node), "-o", "json").stdout)
            problems += [f"{node}: {w}" for w in status["warnings"] if "datastore" in w]
            kernel, expected = _bird_dsts(lab, node), set(owner)
            if kernel != expected:
                problems.append(f"{node}: kernel: extra {kernel - expected}, missing {expected - kernel}")
            record = loaded.node(node)
            argv = ["calico-bgp", "routes", "-o", "json"]
            result = netns.run_in(record.netns, argv, env=ops.node_env(record))
            rows = {r["prefix"]: r for r in json.loads(result.stdout)["routes"]}
            for block, holder in owner.items():
                row = rows.get(block)
                if row is None:
                    ok = False
                elif holder == node:
                    ok = row["origin"] == "local"
                else:
                    learned = (row.get("best") or {}).get("learned_from")
                    ok = row["origin"] == "bgp" and learned == NODES[holder] and row["kernel"]["installed"]
                if not ok:
                    problems.append(f"{node}: Loc-RIB row for {block} (owner {holder}): {row}")
        return problems

    deadline = time.monotonic() + APPLY_BOUND
    while problems := consistent():
        assert time.monotonic() < deadline, "\n".join(problems[:20])
        time.sleep(0.5)
