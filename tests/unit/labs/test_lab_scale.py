"""What a large lab needs before any namespace exists (pure): fixed node MACs, the neighbour pins built
from them, and the open-files limit its helpers inherit."""

from __future__ import annotations

import importlib.util
import os
import resource

import pytest

from labs import lab, process, topology
from labs.state import LabState


@pytest.mark.parametrize("nodes", [1, 100, 244])
def test_node_macs_are_distinct_unicast_and_locally_administered(nodes):
    macs = [lab.node_mac(i) for i in range(nodes)]
    assert len(set(macs)) == nodes
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0b10 and not first & 0b1, mac  # locally administered, not multicast


@pytest.mark.parametrize(
    ("nodes", "pinned_per_node"),
    [(3, 0), (16, 0), (17, 16), (50, 49), (100, 99)],  # pinned above 256 node-to-node entries
)
def test_large_meshes_pin_every_other_node_with_its_fixed_mac(nodes, pinned_per_node):
    topo = topology.build_mesh(nodes)
    pins = lab._pin_node_neighbours(LabState(name="scale", topology="mesh"), topo)
    if not pinned_per_node:
        assert pins == {}
        return
    assert set(pins) == {n.name for n in topo.nodes}
    for node in topo.nodes:
        lines = pins[node.name]
        assert len(lines) == pinned_per_node
        assert not any(f" {node.address} " in line for line in lines)  # never itself
    last = topo.nodes[-1]
    line = f"neighbour replace {last.address} lladdr {lab.node_mac(nodes - 1)} dev eth0 nud permanent"
    assert line in pins["node1"]


def test_the_switch_port_gives_the_nodes_end_its_fixed_mac_in_the_nodes_namespace():
    node = topology.build_mesh(3).nodes[2]
    lines = lab._switch_port(LabState(name="scale", topology="mesh"), node, 2)
    assert lines[0] == (
        f"link add node3 type veth peer name eth0 address {lab.node_mac(2)} netns cbgp-scale-node3"
    )
    assert lines[1:] == ["link set node3 master br0", "link set node3 up"]


@pytest.fixture
def nofile():
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield saved
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_the_open_files_limit_is_raised_within_the_hard_limit_and_never_lowered(nofile):
    soft, hard = nofile
    if hard != resource.RLIM_INFINITY and hard < 64:
        pytest.skip(f"hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
    assert process.raise_fd_limit(48) == 48
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 48
    assert process.raise_fd_limit(40) == 48  # never lowered
    if hard != resource.RLIM_INFINITY:
        assert process.raise_fd_limit(hard + 1000) == hard


def test_node_code_is_compiled_once_and_left_alone_when_up_to_date(tmp_path, monkeypatch):
    package = tmp_path / "labscalepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    process.ensure_bytecode(["labscalepkg", "no_such_package_here"])
    compiled = importlib.util.cache_from_source(str(package / "mod.py"))
    first = os.stat(compiled).st_mtime_ns
    process.ensure_bytecode(["labscalepkg"])
    assert os.stat(compiled).st_mtime_ns == first
    (package / "mod.py").write_text("VALUE = 2\n")
    later = os.stat(package / "mod.py").st_mtime + 10  # an edit seconds later, however fast this test runs
    os.utime(package / "mod.py", (later, later))
    process.ensure_bytecode(["labscalepkg"])
    assert os.stat(compiled).st_mtime_ns != first


def test_the_lab_compiles_what_its_daemons_and_proxy_import():
    assert {"bgp", "confgen", "routes", "calico_bgp", "labs"} <= set(lab.NODE_PACKAGES)
