"""The benchmark's instruments measure what they say, outside the timed suite and without absolute times.

The kernel stopwatch (``bench.kernelwatch.RouteWatch``) and the mesh's convergence monitor
(``bench.mesh.ConvergenceMonitor``) run against scratch namespaces (``bw-<random>``, always deleted) in
which this test writes the routes itself, with ``ip -batch`` at a moment it stamps: the instrument must
count exactly those routes, ignore the others, and stamp them inside the window in which they were
written. The process meters (``bench.procs``) read a child that holds a known amount of memory and CPU.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import felix, procs
from bench.kernelwatch import RouteWatch
from bench.mesh import ConvergenceMonitor
from labs import topology
from labs.state import netns_name

POOL = "172.16.0.0/12"
K = 500


def ip_batch(ns: str, lines: list[str], tmp: Path) -> None:
    path = tmp / f"batch-{secrets.token_hex(3)}"
    path.write_text("".join(f"{line}\n" for line in lines))
    felix.run_batch(ns, path)


@pytest.fixture
def scratch_netns():
    made = []

    def make(name: str | None = None) -> str:
        name = name or f"bw-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.netns
def test_route_watch_counts_exactly_the_routes_written_and_stamps_them_inside_the_run(
    scratch_netns, tmp_path
):
    ns = scratch_netns()
    ours = felix.addresses(POOL, K)
    # Not for the stopwatch: another protocol inside the range, proto 12 outside it, a /31 inside it.
    others = (
        [f"route add blackhole {a}/32 proto boot" for a in felix.addresses(POOL, 20, offset=100_000)]
        + [f"route add blackhole 10.77.0.{i}/32 proto 12" for i in range(20)]
        + ["route add blackhole 172.31.0.0/31 proto 12"]
    )
    with RouteWatch(ns, POOL) as watch:
        assert watch.count == 0
        watch.mark()
        before = time.perf_counter()
        ip_batch(ns, others + [f"route add blackhole {a}/32 proto 12" for a in ours], tmp_path)
        done = watch.wait_count(K, timeout=60)
        after = time.perf_counter()
        assert done is not None, f"saw {watch.count} of {K}"
        first = watch.first_change
        assert first is not None and before <= first <= done <= after
        assert all(watch.present(a) for a in ours)
        assert not watch.present(felix.addresses(POOL, 1, offset=100_000)[0])

        watch.mark()
        before = time.perf_counter()
        ip_batch(ns, [f"route del blackhole {a}/32 proto 12" for a in ours], tmp_path)
        gone = watch.wait_count(0, timeout=60)
        after = time.perf_counter()
        assert gone is not None, f"{watch.count} left"
        first = watch.first_change
        assert first is not None and before <= first <= gone <= after
        assert watch.overflows == 0
    assert watch.cpu_seconds > 0


@pytest.mark.netns
def test_the_mesh_monitor_converges_when_the_last_block_arrives_and_not_before(scratch_netns, tmp_path):
    topo = topology.build_mesh(3)
    lab = f"bw{secrets.token_hex(3)}"
    spaces = {n.name: scratch_netns(netns_name(lab, n.name)) for n in topo.nodes}
    blocks = {n.name: n.block for n in topo.nodes}
    monitor = ConvergenceMonitor(lab, topo, interval=0.05)
    monitor.start()
    try:
        # Every block in every other node, except node3's in node1; plus a route of another protocol.
        for node, ns in spaces.items():
            lines = [f"route add blackhole {b} proto 12" for m, b in blocks.items() if m != node]
            if node == "node1":
                lines = [line for line in lines if blocks["node3"] not in line]
                lines.append(f"route add blackhole {blocks['node3']} proto boot")
            ip_batch(ns, lines, tmp_path)
        monitor.join(1.0)  # twenty of its rounds
        assert monitor.converged_at is None and set(monitor.node_converged) == {"node2", "node3"}
        before = time.perf_counter()
        ip_batch(spaces["node1"], [f"route add blackhole {blocks['node3']} proto 12 metric 5"], tmp_path)
        monitor.join(30)
        after = time.perf_counter()
    finally:
        monitor.stop.set()
        monitor.join(5)
    assert monitor.error == ""
    assert monitor.converged_at is not None and before <= monitor.converged_at <= after
    assert monitor.converged_at == monitor.node_converged["node1"]


CHILD = """
import sys, time
held = bytearray(int(sys.argv[1]) * 2**20)
held[::4096] = b"x" * len(held[::4096])  # touch every page so it is resident
start = time.process_time()
while time.process_time() - start < float(sys.argv[2]):
    pass
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(("mib", "cpu"), [(8, 0.0), (96, 0.3)])
def test_process_meters_read_what_a_child_holds_and_used(mib, cpu):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(mib), str(cpu)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        rss = procs.rss_by_root([child.pid])[child.pid]
        used = procs.cpu_by_root([child.pid])[child.pid]
        assert mib <= rss <= mib + 64  # the interpreter itself is a few MiB
        assert cpu <= used + 0.02  # clock ticks: 10 ms granularity
        assert procs.rss_by_root([child.pid]) == {child.pid: pytest.approx(procs.rss_mib([child.pid])[0])}
    finally:
        child.kill()
        child.wait()
    assert procs.rss_by_root([child.pid]) == {}


PARENT = """
import subprocess, sys, time
spin = "import time\\nstart = time.process_time()\\nwhile time.process_time() - start < 0.2: pass"
subprocess.run([sys.executable, "-c", spin], check=True)  # a finished helper, as a config check is
print("ready", flush=True)
time.sleep(60)
"""


def test_cpu_of_finished_children_is_counted_under_their_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
        split = procs.cpu_split([parent.pid])[parent.pid]
        total = procs.cpu_by_root([parent.pid])[parent.pid]
    finally:
        parent.kill()
        parent.wait()
    (own,) = (role for role in split if not role.endswith("finished children"))
    assert split[f"{own}'s finished children"] >= 0.19
    assert total == pytest.approx(sum(split.values()))
