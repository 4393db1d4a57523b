"""Lab mechanics that need root but no BGP daemon: etcd, the etcd forwarder, pods, and `down`."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import pytest

from labs import etcd, netns, pods, process, state, topology
from labs import lab as labs_lab

pytestmark = [pytest.mark.lab, pytest.mark.netns]


def _wait_for(path, pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.alive(pid), f"process {pid} died before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.fixture
def etcd_server(tmp_path):
    server = etcd.start(tmp_path, tmp_path / "etcd.log")
    try:
        yield server
    finally:
        etcd.stop(server.pid, server.data_dir)
        assert not process.alive(server.pid)


@pytest.fixture
def namespaces(lab_name):
    """Creates namespaces under the test lab's prefix; removed in every outcome (also by lab_name's down)."""
    created = []

    def make(member):
        ns = state.netns_name(lab_name, member)
        created.append(ns)
        netns.add_netns(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(created):
            for pid in netns.pids(ns):
                process.kill(pid)
            netns.delete_netns(ns)


@pytest.mark.etcd
def test_two_etcds_coexist(tmp_path, etcd_server):
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = etcd.start(other_dir, other_dir / "etcd.log")
    try:
        assert other.client_url != etcd_server.client_url
        etcd.put_all([etcd_server.client_url], [("/calico/k", "one")])
        etcd.put_all([other.client_url], [("/calico/k", "two")])
        assert etcd.get_prefix([etcd_server.client_url], "/calico/") == {"/calico/k": b"one"}
        assert etcd.get_prefix([other.client_url], "/calico/") == {"/calico/k": b"two"}
    finally:
        etcd.stop(other.pid, other.data_dir)


def test_unreachable_etcd_fails_with_the_endpoint_in_the_message():
    with pytest.raises(etcd.EtcdUnavailable, match=r"127\.0\.0\.1:1"):
        etcd.wait_healthy(["http://127.0.0.1:1"], timeout=2)


@pytest.mark.etcd
def test_proxy_serves_etcd_on_each_namespace_loopback(tmp_path, etcd_server, namespaces):
    ns1, ns2 = namespaces("node1"), namespaces("node2")
    ready = tmp_path / "proxy.ready"
    argv = [sys.executable, "-m", "labs.proxy", "--netns", ns1, "--netns", ns2]
    argv += ["--target", etcd_server.client_url, "--ready-file", str(ready)]
    pid = process.spawn(argv, tmp_path / "proxy.log")
    try:
        _wait_for(ready, pid)
        ctl = ["etcdctl", "--endpoints", "http://127.0.0.1:2379", "--dial-timeout", "3s"]
        put = netns.run_in(ns1, [*ctl, "put", "/calico/from-node1", "hello"], timeout=15)
        assert put.returncode == 0, put.stderr
        # Written through node1's loopback, visible in the host's etcd ...
        assert etcd.get_prefix([etcd_server.client_url], "/calico/from-node1") == {
            "/calico/from-node1": b"hello"
        }
        # ... and through node2's own listener.
        get = netns.run_in(ns2, [*ctl, "get", "/calico/from-node1", "--print-value-only"], timeout=15)
        assert get.stdout.strip() == "hello", get.stderr
        # The listeners live inside the namespaces; the proxy listens on nothing in the host namespace.
        for ns in (ns1, ns2):
            assert "127.0.0.1:2379" in netns.run_in(ns, ["ss", "-Hltn"]).stdout
        host = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
        assert f"pid={pid}," not in host
    finally:
        assert not process.stop(pid, str(ready)), "proxy ignored SIGTERM"
    assert not process.alive(pid)


def test_pods_on_one_node_reach_each_other_through_the_node(namespaces):
    node = namespaces("node1")
    netns.set_sysctl(node, "net.ipv4.ip_forward", 1)
    pod_a, pod_b = (
        state.netns_name(node.split("-")[1], "node1-a"),
        state.netns_name(node.split("-")[1], "node1-b"),
    )
    try:
        cali_a = pods.create_pod(node, pod_a, "node1-a", "192.168.1.2")
        cali_b = pods.create_pod(node, pod_b, "node1-b", "192.168.1.3")
        assert netns.run_in(pod_a, ["ping", "-c1", "-W1", "192.168.1.3"]).returncode == 0
        assert netns.run_in(pod_b, ["ping", "-c1", "-W1", "192.168.1.2"]).returncode == 0

        # What Felix would have written on the node, and what the CNI wrote in the pod.
        boot = {(r["dst"], r["dev"], r.get("scope")) for r in netns.routes(node, "proto", "boot")}
        assert boot == {("192.168.1.2", cali_a, "link"), ("192.168.1.3", cali_b, "link")}
        neigh = json.loads(netns.ip(node, "-j", "neigh", "show", "dev", cali_a).stdout)
        assert [(n["dst"], n["state"]) for n in neigh] == [("192.168.1.2", ["PERMANENT"])]
        assert netns.run_in(node, ["sysctl", "-n", f"net.ipv4.conf.{cali_a}.proxy_arp"]).stdout.strip() == "1"
        assert netns.routes(pod_a) == [
            {"dst": "default", "gateway": "169.254.1.1", "dev": "eth0", "flags": ["onlink"]}
        ]
        gw = json.loads(netns.ip(pod_a, "-j", "neigh", "show", "169.254.1.1").stdout)
        assert gw[0]["lladdr"] == netns.link_mac(node, cali_a) and gw[0]["state"] == ["PERMANENT"]

        pods.delete_pod(node, pod_b, "node1-b")
        assert not netns.exists(pod_b)
        assert not netns.link_exists(node, cali_b)
        assert [r["dst"] for r in netns.routes(node, "proto", "boot")] == ["192.168.1.2"]
        assert netns.run_in(pod_a, ["ping", "-c1", "-W1", "192.168.1.3"]).returncode != 0
    finally:
        for pod, name in ((pod_a, "node1-a"), (pod_b, "node1-b")):
            pods.delete_pod(node, pod, name)


def test_failed_up_is_cleaned_up_by_down(lab_name):
    with pytest.raises(labs_lab.LabError, match=r"127\.0\.0\.1:1.*unreachable") as failure:
        labs_lab.up("mesh", 2, name=lab_name, etcd_endpoints=["http://127.0.0.1:1"], etcd_timeout=1)
    assert f"lab down {lab_name}" in str(failure.value)

    # The failure came after the namespaces: exactly what the state file recorded exists.
    recorded = state.LabState.load(lab_name)
    prefix = state.netns_prefix(lab_name)
    assert (
        sorted(recorded.namespaces)
        == netns.list_netns(prefix)
        == [f"{prefix}lan", f"{prefix}node1", f"{prefix}node2"]
    )
    info = labs_lab.show(lab_name)
    assert [(n["name"], n["ipv4"], n["asn"]) for n in info["nodes"]] == [
        ("node1", "10.0.0.11/24", 64512),
        ("node2", "10.0.0.12/24", 64512),
    ]
    # The switch works: the two nodes reach each other over the bridge.
    assert netns.run_in(f"{prefix}node1", ["ping", "-c1", "-W2", "10.0.0.12"]).returncode == 0

    labs_lab.down(lab_name)
    assert netns.list_netns(prefix) == []
    assert process.find(state.marker(lab_name)) == []
    assert not state.lab_dir(lab_name).exists()
    labs_lab.down(lab_name)  # idempotent


def test_down_without_state_file_finds_namespaces_and_processes_by_prefix(lab_name, namespaces):
    ns = namespaces("node1")
    pod = namespaces("node1-pod1")
    neighbour_lab = state.netns_name(lab_name + "x", "node1")  # shares the text prefix, not the lab prefix
    netns.add_netns(neighbour_lab)
    sleeper = subprocess.Popen(netns.exec_argv(ns, ["sleep", "300"]))
    try:
        deadline = time.monotonic() + 5
        while sleeper.pid not in netns.pids(ns):  # `ip netns exec` enters the namespace, then execs sleep
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert state.LabState.load(lab_name) is None
        labs_lab.down(lab_name)
        sleeper.wait(timeout=5)  # killed (and already reaped by down, so no exit status is left to read)
        assert not process.alive(sleeper.pid)
        assert not netns.exists(ns) and not netns.exists(pod)
        assert netns.exists(neighbour_lab)
    finally:
        sleeper.kill()
        sleeper.wait()
        netns.delete_netns(neighbour_lab)


def test_exec_runs_in_the_node_with_its_run_dir(lab_name):
    with pytest.raises(labs_lab.LabError):
        labs_lab.up("mesh", 1, name=lab_name, etcd_endpoints=["http://127.0.0.1:1"], etcd_timeout=1)
    run_dir = state.LabState.load(lab_name).node("node1").run_dir
    check = f'test "$CALICO_BGP_RUN_DIR" = "{run_dir}" && ip -4 -o addr show dev eth0 | grep -q 10.0.0.11/24'
    assert labs_lab.exec(lab_name, "node1", ["sh", "-c", check]) == 0
    assert labs_lab.exec(lab_name, "node1", ["sh", "-c", "command -v calico-bgp"]) == 0
    assert labs_lab.exec(lab_name, "node1", ["false"]) == 1
    with pytest.raises(labs_lab.LabError, match="node9"):
        labs_lab.exec(lab_name, "node9", ["true"])


def test_down_stops_unrecorded_helpers_but_spares_bystanders(lab_name, namespaces):
    """An up interrupted between spawning a helper and recording its PID: down finds it by its arguments."""
    ns = namespaces("node1")
    lab_dir = state.lab_dir(lab_name)
    (lab_dir / "logs").mkdir(parents=True)
    ready = lab_dir / "proxy.ready"
    argv = [sys.executable, "-m", "labs.proxy", "--netns", ns, "--target", "http://127.0.0.1:1"]
    proxy = process.spawn([*argv, "--ready-file", str(ready)], lab_dir / "logs" / "proxy.log")
    _wait_for(ready, proxy)
    watched = lab_dir / "logs" / "proxy.log"
    bystander = subprocess.Popen(["tail", "-f", str(watched)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5  # until tail has exec'd: before that /proc shows the forked parent
        while "tail" not in process.cmdline(bystander.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.owned(bystander.pid, state.marker(lab_name))  # it does name a file of the lab
        labs_lab.down(lab_name)
        assert not process.alive(proxy)
        assert bystander.poll() is None, "down killed a process that only reads a lab file"
        assert not netns.exists(ns) and not lab_dir.exists()
    finally:
        bystander.kill()
        bystander.wait()
        process.stop(proxy, str(ready))


@pytest.fixture
def second_lab_name():
    name = f"t{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        labs_lab.down(name)


@pytest.mark.etcd
def test_two_labs_coexist_and_go_down_independently(lab_name, second_lab_name):
    """Whether or not the daemons reach Established, two labs share nothing and each holds its resources."""
    topo = topology.build_mesh(2)
    for name in (lab_name, second_lab_name):
        labs_lab.up(topo, name=name, timeout=5)
    first, second = labs_lab.show(lab_name), labs_lab.show(second_lab_name)
    assert first["etcd_endpoints"] != second["etcd_endpoints"]
    expected = {key: value.encode() for key, value in topology.calico_resources(topo)}
    for info in (first, second):
        assert etcd.get_prefix(info["etcd_endpoints"], "/calico/") == expected
        # Each node reaches its own lab's etcd at 127.0.0.1:2379, through the lab's proxy.
        key = "/calico/resources/v3/projectcalico.org/nodes/node2"
        ctl = ["etcdctl", "--endpoints", "http://127.0.0.1:2379", "get", key, "--print-value-only"]
        got = netns.run_in(info["nodes"][0]["netns"], ctl, timeout=15)
        assert json.loads(got.stdout)["spec"]["bgp"]["ipv4Address"] == "10.0.0.12/24", got.stderr
        # Same pod addresses in both labs, each pair only sees its own lab.
        assert labs_lab.ping(info["name"], "node1-pod1", "192.168.1.3")

    labs_lab.down(lab_name)
    assert netns.list_netns(state.netns_prefix(lab_name)) == []
    prefix = state.netns_prefix(second_lab_name)
    assert netns.list_netns(prefix) == sorted(
        f"{prefix}{m}"
        for m in ("lan", "node1", "node2", "node1-pod1", "node1-pod2", "node2-pod1", "node2-pod2")
    )
    assert etcd.get_prefix(second["etcd_endpoints"], "/calico/") == expected
    assert labs_lab.ping(second_lab_name, "node2-pod2", "192.168.2.2")


@pytest.mark.etcd
def test_lab_on_the_users_etcd_leaves_it_running_and_clean(lab_name, etcd_server):
    etcd.put_all([etcd_server.client_url], [("/calico/users-own", "keep")])
    labs_lab.up("mesh", 2, name=lab_name, etcd_endpoints=[etcd_server.client_url], timeout=5)
    info = labs_lab.show(lab_name)
    assert info["etcd_endpoints"] == [etcd_server.client_url]
    got = netns.run_in(
        info["nodes"][1]["netns"],
        ["etcdctl", "--endpoints", "http://127.0.0.1:2379", "get", "/calico/users-own", "--print-value-only"],
        timeout=15,
    )
    assert got.stdout.strip() == "keep", got.stderr
    labs_lab.set_affinity(lab_name, "node2", "192.168.2.64/26")
    written = len(topology.calico_resources(topology.build_mesh(2)))
    assert len(etcd.get_prefix([etcd_server.client_url], "/calico/")) == 1 + written + 1

    labs_lab.down(lab_name)
    assert process.alive(etcd_server.pid)
    assert etcd.get_prefix([etcd_server.client_url], "/calico/") == {"/calico/users-own": b"keep"}


@pytest.mark.parametrize(("threshold", "pinned"), [(0, True), (10_000, False)])
def test_large_labs_pin_node_neighbours_small_ones_use_arp(lab_name, monkeypatch, threshold, pinned):
    """The host's ARP table is shared by every namespace (gc_thresh3 = 1024 dynamic entries): above the
    threshold node-to-node neighbours are permanent entries, below it ARP works as on real nodes."""
    monkeypatch.setattr(labs_lab, "PIN_NEIGHBOURS_ABOVE", threshold)
    try:
        with pytest.raises(labs_lab.LabError):  # stops after the nodes are wired: no etcd to reach
            labs_lab.up("mesh", 3, name=lab_name, etcd_endpoints=["http://127.0.0.1:1"], etcd_timeout=1)
        prefix = state.netns_prefix(lab_name)
        for me, others in (("node1", ("10.0.0.12", "10.0.0.13")), ("node3", ("10.0.0.11", "10.0.0.12"))):
            shown = netns.ip(f"{prefix}{me}", "neighbour", "show", "nud", "permanent").stdout
            entries = {line.split()[0]: line for line in shown.splitlines()}
            if pinned:
                assert set(entries) == set(others)
                for address in others:  # the MAC pinned is the other node's eth0
                    owner = f"{prefix}node{address[-1]}"
                    assert netns.link_mac(owner, "eth0") in entries[address]
            else:
                assert entries == {}
        assert netns.run_in(f"{prefix}node1", ["ping", "-c1", "-W2", "10.0.0.13"]).returncode == 0
    finally:
        labs_lab.down(lab_name)
