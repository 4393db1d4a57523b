"""containerlab/*.clab.yml, offline: containerlab's own schema, the checks no schema can express, and drift
from the lab definitions they are generated from (``labs.containerlab``).

The schema is the repository's own, ``docs/containerlab.schema.json`` (docs/containerlab.md says why not
containerlab's published one): the subset of containerlab's topology format our files use, spelled as
containerlab expects, in plain draft-07 that ``jsonschema`` applies as written.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from labs import catalog, containerlab, topology

REPO = Path(__file__).resolve().parents[2]
CLAB_DIR = REPO / "containerlab"
SCHEMA = REPO / "docs" / "containerlab.schema.json"
FILES = sorted(CLAB_DIR.glob("*.clab.yml"))


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _schema_error(validator, document: dict) -> str:
    error = best_match(validator.iter_errors(document))
    return "" if error is None else f"{'/'.join(map(str, error.absolute_path))}: {error.message}"


def test_the_three_topologies_are_there():
    assert [f.name for f in FILES] == [f"{n}.clab.yml" for n in sorted(containerlab.CONTAINERLAB_TOPOLOGIES)]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_topology_passes_containerlab_schema(validator, path):
    assert _schema_error(validator, _load(path)) == ""


BAD = {
    "endpoint without a colon": lambda d: d["topology"]["links"][0].update(
        endpoints=["node1-eth1", "lan:node1"]
    ),
    "legacy kind alias": lambda d: d["topology"]["nodes"]["node1"].update(kind="srl"),
    "underscore mgmt_ipv4": lambda d: d["topology"]["nodes"]["etcd"].update(mgmt_ipv4="172.20.30.10"),
    "malformed mgmt-ipv4": lambda d: d["topology"]["nodes"]["etcd"].update({"mgmt-ipv4": "172.20.30"}),
    "unknown top-level key": lambda d: d.update(nodes={}),
    "unknown node key": lambda d: d["topology"]["nodes"]["node1"].update(mounts=["a:b"]),
}


@pytest.mark.parametrize("mutate", BAD.values(), ids=BAD.keys())
def test_schema_validator_rejects_what_containerlab_rejects(validator, mutate):
    """Each mistake containerlab refuses is refused here too, with the shipped file as the base."""
    document = _load(CLAB_DIR / "mesh.clab.yml")
    mutate(document)
    assert _schema_error(validator, document) != ""


# ------------------------------------------------------------------------------ checks no schema can do


def semantic_problems(document: dict, base: Path, stem: str) -> list[str]:
    problems = []
    nodes = document["topology"]["nodes"]
    if document.get("name") != stem:
        problems.append(f"lab name {document.get('name')!r} differs from the file stem {stem!r}")
    used: set[tuple[str, str]] = set()
    for link in document["topology"]["links"]:
        for endpoint in link["endpoints"]:
            node, sep, iface = endpoint.partition(":")
            if not sep or not node or not iface:
                problems.append(f"endpoint {endpoint!r} is not node:interface")
                continue
            if node not in nodes:
                problems.append(f"endpoint {endpoint!r} names no node")
            if len(iface) > topology.IFNAMSIZ:
                problems.append(f"endpoint {endpoint!r}: interface name longer than {topology.IFNAMSIZ}")
            if (node, iface) in used:
                problems.append(f"interface {endpoint!r} used twice")
            used.add((node, iface))
    groups = document["topology"].get("groups", {})
    for name, node in nodes.items():
        merged = {**groups.get(node.get("group", ""), {}), **node}
        image = merged.get("image", "")
        if not image or image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
            problems.append(f"node {name}: image {image!r} is not pinned to a tag")
        for bind in merged.get("binds", []):
            source = bind.split(":", 1)[0]
            if not (base / source).exists():
                problems.append(f"node {name}: bind source {source} does not exist")
    return problems


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_links_binds_and_images_are_consistent(path):
    assert semantic_problems(_load(path), path.parent, path.name.removesuffix(".clab.yml")) == []


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (
            lambda d: d["topology"]["links"].append({"endpoints": ["ghost:eth1", "lan:ghost"]}),
            "names no node",
        ),
        (lambda d: d["topology"]["links"].append({"endpoints": ["node1:eth1", "lan:x"]}), "used twice"),
        (
            lambda d: d["topology"]["nodes"]["node1"].update(binds=["configs/nowhere:/config"]),
            "does not exist",
        ),
        (lambda d: d["topology"]["nodes"]["node1"].update(image="debian:latest"), "not pinned"),
        (lambda d: d.update(name="other"), "differs from the file stem"),
    ],
    ids=["unknown-node", "interface-twice", "missing-bind", "latest-tag", "name-stem"],
)
def test_semantic_checks_catch_broken_topologies(mutate, problem):
    document = _load(CLAB_DIR / "mesh.clab.yml")
    mutate(document)
    assert any(problem in p for p in semantic_problems(document, CLAB_DIR, "mesh"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_lab_member_is_cabled_like_the_netns_lab(path):
    """Each node's eth1 and each router port meet the switch on the port name the netns lab uses, and
    every port the switch script bridges is cabled."""
    lab = path.name.removesuffix(".clab.yml")
    topo = catalog.TOPOLOGIES[lab]()
    links = {tuple(link["endpoints"]) for link in _load(path)["topology"]["links"]}
    expected = {(f"{n.name}:eth1", f"lan:{n.name}") for n in topo.nodes}
    expected |= {
        (f"{r.name}:eth{i + 1}", f"lan:{r.port_ifname(i)}") for r in topo.routers for i in range(len(r.ports))
    }
    assert links == expected
    bridged = re.findall(
        r"^ip link set (\S+) master", (CLAB_DIR / f"configs/{lab}/lan/setup.sh").read_text(), re.M
    )
    assert {f"lan:{port}" for port in bridged} == {b for _, b in links}


# ------------------------------------------------------------------------------ drift and scripts


def test_files_match_the_lab_definitions_byte_for_byte():
    stale = containerlab.drift(CLAB_DIR, containerlab.render_all())
    assert stale == [], f"regenerate with `python -m labs.containerlab --write`: {stale}"


def test_no_stale_generated_files_are_left_behind():
    generated = {f.path for f in containerlab.render_all()}
    on_disk = {str(p.relative_to(CLAB_DIR)) for p in (CLAB_DIR / "configs").rglob("*") if p.is_file()}
    on_disk |= {p.name for p in FILES}
    assert on_disk == generated


@pytest.mark.parametrize(
    "script", sorted((CLAB_DIR / "configs").rglob("*.sh")), ids=lambda p: str(p.parent.name)
)
def test_generated_scripts_parse(script):
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.etcd
@pytest.mark.parametrize("lab", containerlab.CONTAINERLAB_TOPOLOGIES)
def test_seed_script_leaves_exactly_the_lab_resources_in_etcd(tmp_path, lab):
    """Run the etcd container's seed script against a real etcd: it must write, byte for byte, what
    the netns lab writes for the same topology."""
    from labs import etcd

    if not shutil.which("etcdctl"):
        pytest.skip("needs etcdctl (Debian's etcd-client; make interop-deps)")
    server = etcd.start(tmp_path, tmp_path / "etcd.log")
    try:
        env = {"PATH": "/usr/bin:/bin", "ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": server.client_url}
        script = CLAB_DIR / f"configs/{lab}/etcd/seed.sh"
        proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        got = {k: v.decode() for k, v in etcd.get_prefix([server.client_url], "/calico/").items()}
        assert got == dict(topology.calico_resources(catalog.TOPOLOGIES[lab]()))
    finally:
        etcd.stop(server.pid, server.data_dir)
