"""Lab naming, state round trip, cali interface names (pure or tmp_path only)."""

from __future__ import annotations

import pytest

from labs import pods, state
from labs.state import LabState, NodeState, PodState


@pytest.mark.parametrize("name", ["mesh", "a", "mesh2", "t_1a2b", "x" * 32])
def test_lab_names_accepted(name):
    assert state.check_name(name) == name
    assert state.netns_name(name, "node1") == f"cbgp-{name}-node1"


@pytest.mark.parametrize("name", ["", "mesh-2", "Mesh", "_x", "a b", "a/b", "x" * 33])
def test_lab_names_rejected(name):
    with pytest.raises(ValueError, match="lab name"):
        state.check_name(name)


def test_prefixes_and_markers_do_not_overlap_between_labs():
    # No "-" in lab names: lab "a"'s prefix can never match lab "ab"'s or another lab's namespaces.
    assert not state.netns_name("ab", "node1").startswith(state.netns_prefix("a"))
    assert state.marker("a") not in f"{state.lab_dir('ab')}/run/node1"
    assert state.marker("a") in f"{state.lab_dir('a')}/run/node1"


def test_state_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    assert LabState.load("t") is None
    lab = LabState(name="t", topology="mesh", etcd_endpoints=["http://127.0.0.1:1234"], etcd_pid=42)
    lab.namespaces += ["cbgp-t-lan", "cbgp-t-node1"]
    lab.nodes.append(NodeState("node1", "cbgp-t-node1", "10.0.0.11/24", 64512, "/r", "/l", pid=7))
    lab.pods.append(PodState("node1-pod1", "node1", "cbgp-t-node1-pod1", "192.168.1.2", "cali0123456789a"))
    lab.save()
    assert (tmp_path / "t" / "state.json").exists()
    assert LabState.load("t") == lab
    assert LabState.load("t").node("node1").pid == 7
    with pytest.raises(KeyError, match="node9"):
        lab.node("node9")


@pytest.mark.parametrize("pod", ["node1-pod1", "node2-pod1", "borrowed", "x" * 200])
def test_cali_ifname_fits_ifnamsiz(pod):
    name = pods.cali_ifname(pod)
    assert len(name) == 15 and name.startswith("cali")
    int(name[4:], 16)
    assert pods.cali_ifname(pod) == name


def test_cali_ifnames_differ_per_pod():
    names = {pods.cali_ifname(f"node{i}-pod{j}") for i in range(50) for j in (1, 2)}
    assert len(names) == 100
