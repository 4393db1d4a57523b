"""The resource CLI (apply/get/delete, confgen render) against an in-memory stand-in for EtcdClient.

The stand-in implements the client calls the commands use with etcd's semantics (a global revision,
per-key mod_revision, transactions that compare mod revisions), so these tests check the commands'
logic; tests/etcd/test_resources_cli.py runs the same commands against a real etcd.
"""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from bgp.resources_cli import apply, confgen, delete, get
from confgen.datastore import keys


class FakeEtcd:
    def __init__(self) -> None:
        self.revision = 1
        self.data: dict[str, tuple[bytes, int]] = {}
        self.connected = 0
        self.endpoints: list[str] = []
        self.race = 0  # how many of the next transactions lose to "another writer"

    async def connect(self) -> None:
        self.connected += 1

    async def close(self) -> None:
        self.connected -= 1

    def put_raw(self, key: str, value: bytes) -> None:
        self.revision += 1
        self.data[key] = (value, self.revision)

    async def get_with_revisions(self, prefixes=(), keys=()):
        found = {k: v for k, v in self.data.items() if k in keys or any(k.startswith(p) for p in prefixes)}
        return self.revision, found

    async def get_prefixes(self, prefixes):
        return self.revision, {
            k: v for k, (v, _) in self.data.items() if any(k.startswith(p) for p in prefixes)
        }

    async def put_if_unchanged(self, items, revisions):
        if self.race:
            self.race -= 1
            for key in items:  # someone else writes first
                self.put_raw(key, self.data.get(key, (b"{}", 0))[0])
            return False
        if any(self.data.get(key, (b"", 0))[1] != revisions.get(key, 0) for key in items):
            return False
        self.revision += 1
        for key, value in items.items():
            self.data[key] = (value, self.revision)
        return True

    async def delete(self, key):
        if key not in self.data:
            return False
        self.revision += 1
        del self.data[key]
        return True


@pytest.fixture
def etcd():
    return FakeEtcd()


def invoke(etcd, command, args, stdin=None):
    def factory(endpoints):
        etcd.endpoints = endpoints
        return etcd

    result = CliRunner().invoke(command, args, input=stdin, obj={"etcd_client_factory": factory})
    assert etcd.connected == 0  # every command closes its client
    return result


PEERS_YAML = """
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
  labels: {rack: r1}
  resourceVersion: "999"
spec:
  nodeSelector: rack == 'r1'
  peerIP: 10.0.1.1
  asNumber: 65001
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: rack2-tor}
spec: {peerIP: "10.0.2.1:1790", asNumber: 65002}
"""


def stored(etcd, kind, name):
    return json.loads(etcd.data[keys.resource_key(kind, name)][0])


def test_apply_writes_calicos_key_layout_and_shape(etcd):
    result = invoke(etcd, apply, ["-f", "-"], PEERS_YAML)
    assert result.exit_code == 0, result.output
    assert "Successfully applied 2 resource(s): BGPPeer" in result.output
    first = stored(etcd, "BGPPeer", "rack1-tor")
    assert list(first) == ["kind", "apiVersion", "metadata", "spec"]
    assert first["kind"] == "BGPPeer" and first["apiVersion"] == "projectcalico.org/v3"
    assert set(first["metadata"]) == {"name", "uid", "creationTimestamp", "labels"}  # no resourceVersion
    assert first["metadata"]["labels"] == {"rack": "r1"}
    assert first["spec"] == {"nodeSelector": "rack == 'r1'", "peerIP": "10.0.1.1", "asNumber": 65001}
    assert len(first["metadata"]["uid"]) == 36
    assert first["metadata"]["creationTimestamp"].endswith("Z")
    # both documents went in one transaction
    assert (
        etcd.data[keys.resource_key("BGPPeer", "rack1-tor")][1]
        == etcd.data[keys.resource_key("BGPPeer", "rack2-tor")][1]
    )


def test_update_keeps_uid_and_creation_time(etcd):
    invoke(etcd, apply, ["-f", "-"], PEERS_YAML)
    before = stored(etcd, "BGPPeer", "rack2-tor")
    result = invoke(etcd, apply, ["-f", "-"], PEERS_YAML.replace("65002", "65012"))
    assert result.exit_code == 0, result.output
    after = stored(etcd, "BGPPeer", "rack2-tor")
    assert after["spec"]["asNumber"] == 65012
    assert after["metadata"] == before["metadata"]


def test_json_input_and_lists(etcd):
    document = {
        "kind": "BGPPeerList",
        "apiVersion": "projectcalico.org/v3",
        "items": [
            {
                "kind": "BGPPeer",
                "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": "a"},
                "spec": {"peerSelector": "all()"},
            },
            {
                "kind": "IPPool",
                "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": "p"},
                "spec": {"cidr": "10.65.0.0/16"},
            },
        ],
    }
    result = invoke(etcd, apply, ["-f", "-"], json.dumps(document))
    assert result.exit_code == 0, result.output
    assert "Successfully applied 2 resource(s): BGPPeer, IPPool" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            PEERS_YAML.replace("10.0.2.1:1790", "10.0.0.300"),
            "BGPPeer rack2-tor: spec.peerIP '10.0.0.300' is not an IP address (or ip:port, [ipv6]:port)",
        ),
        (
            "kind: BGPPeer\nmetadata: {name: x}\nspec: {}\n",
            "BGPPeer x: apiVersion None is not projectcalico.org/v3",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: x}\n",
            "kind 'NetworkPolicy' is not one of",
        ),
        ("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nspec: {}\n", "a BGPPeer needs metadata.name"),
        ("{unbalanced", "the input is not valid YAML or JSON"),
        ("- a\n- b\n", "document 1 is not an object"),
        ("", "the input holds no resources"),
        (
            "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n"
            "spec: {nodeToNodeMeshEnabled: 'no'}\n",
            "BGPConfiguration default: spec.nodeToNodeMeshEnabled 'no' is not a boolean",
        ),
    ],
)
def test_invalid_input_is_refused_and_nothing_is_written(etcd, text, message):
    result = invoke(etcd, apply, ["-f", "-"], text)
    assert result.exit_code == 1
    assert "nothing applied: " in result.output and message in result.output
    assert etcd.data == {}


def test_unknown_fields_are_warned_about(etcd):
    text = (
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: x}\n"
        "spec: {peerSelector: all(), peerIp: 1.2.3.4}\n"
    )
    result = CliRunner().invoke(apply, ["-f", "-"], input=text, obj={"etcd_client_factory": lambda e: etcd})
    assert result.exit_code == 0
    assert "warning: BGPPeer x: spec.peerIp is not a BGPPeer field; it is ignored" in result.stderr


def test_a_concurrent_writer_makes_apply_retry(etcd):
    etcd.race = 2
    result = invoke(etcd, apply, ["-f", "-"], PEERS_YAML)
    assert result.exit_code == 0, result.output
    assert stored(etcd, "BGPPeer", "rack1-tor")["spec"]["asNumber"] == 65001


def test_apply_gives_up_when_the_race_never_ends(etcd):
    etcd.race = 100
    result = invoke(etcd, apply, ["-f", "-"], PEERS_YAML)
    assert result.exit_code == 1 and "kept changing" in result.output


@pytest.mark.parametrize("alias", ["bgppeer", "BGPPeers", "bgpp", "bps", "BgpPeer"])
def test_get_accepts_calicoctl_kind_names(etcd, alias):
    invoke(etcd, apply, ["-f", "-"], PEERS_YAML)
    result = invoke(etcd, get, [alias])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "NAME        PEERIP          NODE           ASN",
        "rack1-tor   10.0.1.1        rack == 'r1'   65001",
        "rack2-tor   10.0.2.1:1790   (global)       65002",
    ]


def test_get_one_as_yaml_and_json_round_trips(etcd):
    invoke(etcd, apply, ["-f", "-"], PEERS_YAML)
    as_yaml = yaml.safe_load(invoke(etcd, get, ["bgppeer", "rack1-tor", "-o", "yaml"]).output)
    as_json = json.loads(invoke(etcd, get, ["bgppeer", "rack1-tor", "-o", "json"]).output)
    assert as_yaml == as_json
    assert as_json["metadata"]["resourceVersion"] == str(
        etcd.data[keys.resource_key("BGPPeer", "rack1-tor")][1]
    )
    # What get prints can be applied again unchanged (resourceVersion is dropped on the way in).
    before = stored(etcd, "BGPPeer", "rack1-tor")
    assert invoke(etcd, apply, ["-f", "-"], yaml.safe_dump(as_yaml)).exit_code == 0
    assert stored(etcd, "BGPPeer", "rack1-tor") == before


def test_get_list_shape(etcd):
    invoke(etcd, apply, ["-f", "-"], PEERS_YAML)
    listed = json.loads(invoke(etcd, get, ["bgppeers", "-o", "json"]).output)
    assert listed["kind"] == "BGPPeerList" and listed["apiVersion"] == "projectcalico.org/v3"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["rack1-tor", "rack2-tor"]
    assert listed["metadata"]["resourceVersion"] == str(etcd.revision)


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        (get, ["bgppeer", "nope"], "resource does not exist: BGPPeer(nope)"),
        (delete, ["bgppeer", "nope"], "resource does not exist: BGPPeer(nope)"),
        (get, ["networkpolicy"], "unknown resource kind 'networkpolicy'"),
        (delete, ["pools", "a/b"], "invalid resource name 'a/b'"),
    ],
)
def test_errors(etcd, command, args, message):
    result = invoke(etcd, command, args)
    assert result.exit_code in (1, 2) and message in result.output


def test_delete(etcd):
    invoke(etcd, apply, ["-f", "-"], PEERS_YAML)
    result = invoke(etcd, delete, ["BGPPeer", "rack1-tor"])
    assert result.exit_code == 0 and "Successfully deleted 1 'BGPPeer' resource(s)" in result.output
    assert keys.resource_key("BGPPeer", "rack1-tor") not in etcd.data


def test_endpoints_option_and_environment(etcd, monkeypatch):
    invoke(etcd, get, ["nodes", "--etcd-endpoints", "http://10.0.0.1:2379, http://10.0.0.2:2379"])
    assert etcd.endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    monkeypatch.setenv("ETCD_ENDPOINTS", "http://192.0.2.1:2379")
    invoke(etcd, get, ["nodes"])
    assert etcd.endpoints == ["http://192.0.2.1:2379"]
    monkeypatch.delenv("ETCD_ENDPOINTS")
    invoke(etcd, get, ["nodes"])
    assert etcd.endpoints == ["http://127.0.0.1:2379"]


CLUSTER_YAML = """
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node1}
spec: {bgp: {ipv4Address: 10.0.0.11/24}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node2}
spec: {bgp: {ipv4Address: 10.0.0.12/24}}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 10.0.0.254, asNumber: 65000, password: {secretKeyRef: {name: bgp, key: tor}}}
"""


def test_confgen_render_prints_what_the_daemon_would_run(etcd, tmp_path, monkeypatch):
    from bgp.daemon import api_run_line

    invoke(etcd, apply, ["-f", "-"], CLUSTER_YAML)
    (tmp_path / "secrets" / "bgp").mkdir(parents=True)
    (tmp_path / "secrets" / "bgp" / "tor").write_text("s3cret")
    monkeypatch.setenv("CALICO_BGP_RUN_DIR", str(tmp_path / "run"))
    result = invoke(etcd, confgen, ["render", "--node", "node1", "--secrets-dir", str(tmp_path / "secrets")])
    assert result.exit_code == 0, result.output
    assert f"    run {api_run_line(tmp_path / 'run' / 'api.sock')};\n" in result.output
    assert "neighbor 10.0.0.12 {" in result.output and "neighbor 10.0.0.254 {" in result.output
    assert '    md5-password "<redacted>";\n' in result.output  # a key is masked unless asked for
    assert "czNjcmV0" not in result.output and "s3cret" not in result.output
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    args = ["render", "--node", "node1", "--secrets-dir", str(tmp_path / "secrets")]
    shown = invoke(etcd, confgen, [*args, "--show-secrets"])
    assert '    md5-password "czNjcmV0";\n' in shown.output  # base64 of s3cret, as the file holds it
    assert shown.output.replace("czNjcmV0", "<redacted>") == result.output

    # --diff masks both sides, and still says (exit 1) that a key differs
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "exabgp.conf").write_text(shown.output.replace("czNjcmV0", "b2xk"))
    changed = invoke(etcd, confgen, [*args, "--diff"])
    assert changed.exit_code == 1 and changed.stdout == ""
    assert "only MD5 keys differ" in changed.stderr and "b2xk" not in changed.stderr
    old = shown.output.replace("czNjcmV0", "b2xk").replace("hold-time 90", "hold-time 30")
    (tmp_path / "run" / "exabgp.conf").write_text(old)
    changed = invoke(etcd, confgen, [*args, "--diff"])
    assert changed.exit_code == 1 and "czNjcmV0" not in changed.stdout and "b2xk" not in changed.stdout
    diff = invoke(etcd, confgen, [*args, "--diff", "--show-secrets"])
    assert '-    md5-password "b2xk";\n' in diff.stdout and '+    md5-password "czNjcmV0";\n' in diff.stdout


def test_confgen_render_without_the_secret_warns_and_skips_that_peering(etcd, tmp_path):
    invoke(etcd, apply, ["-f", "-"], CLUSTER_YAML)
    runner = CliRunner()
    result = runner.invoke(
        confgen,
        ["render", "--node", "node1", "--run-dir", str(tmp_path)],
        obj={"etcd_client_factory": lambda e: etcd},
    )
    assert result.exit_code == 0
    assert "neighbor 10.0.0.254" not in result.stdout
    assert (
        "warning: BGPPeer tor: password secret bgp/tor: no secrets directory is configured" in result.stderr
    )


def test_confgen_render_diff(etcd, tmp_path):
    invoke(etcd, apply, ["-f", "-"], CLUSTER_YAML)
    args = ["render", "--node", "node1", "--run-dir", str(tmp_path)]
    rendered = invoke(etcd, confgen, args).stdout  # the BGPPeer without its secret warns on stderr
    (tmp_path / "exabgp.conf").write_text(rendered)
    same = invoke(etcd, confgen, [*args, "--diff"])
    assert same.exit_code == 0 and same.stdout == ""
    (tmp_path / "exabgp.conf").write_text(rendered.replace("hold-time 90", "hold-time 30", 1))
    changed = invoke(etcd, confgen, [*args, "--diff"])
    assert changed.exit_code == 1
    assert "-    hold-time 30;\n+    hold-time 90;\n" in changed.stdout
    assert changed.stdout.startswith(f"--- {tmp_path / 'exabgp.conf'}\n+++ rendered for node1\n")


def test_confgen_render_intent(etcd, tmp_path):
    invoke(etcd, apply, ["-f", "-"], CLUSTER_YAML)
    result = invoke(etcd, confgen, ["render", "--node", "node1", "--run-dir", str(tmp_path), "--intent"])
    document = json.loads(
        result.output.split("\n", 1)[1] if result.output.startswith("warning") else result.output
    )
    assert document["node"] == "node1" and [p["address"] for p in document["peers"]] == ["10.0.0.12"]
