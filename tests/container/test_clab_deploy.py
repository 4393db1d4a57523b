"""The containerlab stand-in's own logic, without podman: topology parsing and clean-up after a failure."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from clab_deploy import DeployError, Deployment, TopologyError, load

from labs import containerlab as labs_clab

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, topology: dict, name: str = "t") -> Path:
    (tmp_path / "cfg").mkdir(exist_ok=True)
    path = tmp_path / f"{name}.clab.yml"
    mgmt = {"ipv4-subnet": "172.20.9.0/24"}
    path.write_text(yaml.safe_dump({"name": name, "mgmt": mgmt, "topology": topology}))
    return path


def test_the_generated_mesh_file_loads_as_containerlab_would_read_it():
    topo = load(ROOT / "containerlab" / "mesh.clab.yml")
    by_name = {n.name: n for n in topo.nodes}
    assert list(by_name) == ["etcd", "lan", "node1", "node2", "node3"]
    assert topo.gateway == "172.20.30.1"
    assert by_name["etcd"].mgmt_ipv4 == "172.20.30.10"  # fixed in the file; the rest take free addresses
    assert [by_name[n].mgmt_ipv4 for n in ("lan", "node1", "node2", "node3")] == [
        "172.20.30.2", "172.20.30.3", "172.20.30.4", "172.20.30.5"]
    assert dict(by_name["node2"].env)["NODENAME"] == "node2"
    assert by_name["node1"].cmd == ("sh", "/config/start.sh")
    assert by_name["etcd"].exec == (("sh", "/config/seed.sh"),)
    assert by_name["lan"].binds == (f"{ROOT}/containerlab/configs/mesh/lan:/config:ro",)
    assert [(link.a, link.b) for link in topo.links][0] == (("node1", "eth1"), ("lan", "node1"))


def test_settings_are_inherited_defaults_kind_group_node(tmp_path):
    path = _write(tmp_path, {
        "defaults": {"kind": "linux", "env": {"A": "defaults", "B": "defaults"}, "cmd": "from defaults"},
        "kinds": {"linux": {"image": "img:kind", "env": {"B": "kind", "C": "kind"}}},
        "groups": {"g": {"image": "img:group", "env": {"C": "group"}, "binds": ["cfg:/x"]}},
        "nodes": {"n1": {"group": "g", "env": {"D": "node"}, "cmd": "sh -c 'echo two words'"},
                  "n2": {"mgmt-ipv4": "172.20.9.2"}},
    })
    n1, n2 = load(path).nodes
    assert n1.image == "img:group" and n2.image == "img:kind"
    assert dict(n1.env) == {"A": "defaults", "B": "kind", "C": "group", "D": "node"}
    assert n1.cmd == ("sh", "-c", "echo two words") and n2.cmd == ("from", "defaults")
    assert n1.binds == (f"{tmp_path / 'cfg'}:/x",) and n2.binds == ()
    assert (n1.mgmt_ipv4, n2.mgmt_ipv4) == ("172.20.9.3", "172.20.9.2")  # .2 is n2's, so n1 gets the next


@pytest.mark.parametrize(
    ("nodes", "links", "message"),
    [
        ({"r": {"kind": "nokia_srlinux", "image": "x"}}, [], "node r: kind 'nokia_srlinux' is not handled"),
        ({"a": {"image": "x", "ports": ["80:80"]}}, [], "node a: keys ['ports'] are not handled"),
        ({"a": {"kind": "linux"}}, [], "node a: no image"),
        ({"a": {"image": "x", "binds": ["missing:/y"]}}, [], "bind source"),
        ({"a": {"image": "x", "mgmt-ipv4": "172.20.9.1"}}, [], "not a free address"),
        ({"a": {"image": "x"}}, [{"endpoints": ["a:eth1", "b:eth1"]}], "link endpoint 'b:eth1'"),
        ({"a": {"image": "x"}, "b": {"image": "x"}}, [{"endpoints": ["a:eth1", "b:eth1"]},
                                                      {"endpoints": ["a:eth1", "b:eth2"]}], "cabled twice"),
        ({"a": {"image": "x"}, "b": {"image": "x"}}, [{"endpoints": ["a:eth0", "b:eth1"]}], "eth0"),
    ],
)
def test_what_the_stand_in_cannot_do_is_refused_by_name(tmp_path, nodes, links, message):
    with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(_write(tmp_path, {"nodes": nodes, "links": links}))


class FailingRunner:
    """Records every command; the first one containing ``fail_on`` exits 1."""

    def __init__(self, fail_on: str) -> None:
        self.fail_on = fail_on
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        failed = self.fail_on in " ".join(argv) and not any(self.fail_on in " ".join(c) for c in self.calls)
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 1 if failed else 0, "", "boom" if failed else "")


@pytest.mark.parametrize("fail_on", ["ip netns add p-lan", "run --detach --name p-node2", "peer name node3",
                                     "/config/seed.sh"])
def test_a_failed_deployment_removes_everything_it_made(tmp_path, fail_on):
    runner = FailingRunner(fail_on)
    with pytest.raises(DeployError, match="boom"), Deployment(load(ROOT / "containerlab/mesh.clab.yml"), "p",
                                                                runner):
        pytest.fail("deploy should have failed")
    # a container whose `run` failed may exist half-made and is removed; a namespace whose `add` failed is
    # not ours (the name may be taken by someone else) and is left alone
    made = {c[c.index("--name") + 1] for c in runner.calls if "--name" in c}
    made |= {c[3] for c in runner.calls if c[:3] == ["ip", "netns", "add"] and fail_on not in " ".join(c)}
    container_rms = [i for i, c in enumerate(runner.calls) if c[-3:-1] == ["--time", "0"]]
    netns_deletes = [i for i, c in enumerate(runner.calls) if c[:3] == ["ip", "netns", "delete"]]
    removed = {runner.calls[i][-1] for i in container_rms + netns_deletes}
    assert made and made == removed
    assert max(container_rms, default=-1) < min(netns_deletes)  # containers go before their namespaces


def test_the_topologies_name_the_tag_make_image_builds():
    """`make image` tags the image with pyproject's version; the generated topologies must ask for it."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    name, _, tag = labs_clab.NODE_IMAGE.partition(":")
    assert (name, tag) == ("calico-bgp-node", version)
