"""The resource CLI against a real etcd: apply/get/delete round trips, Calico's stored shape, and data
written the way calicoctl writes it read back (and rendered) by our side."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from click.testing import CliRunner

from bgp.resources_cli import apply, confgen, delete, get
from confgen.datastore import keys
from confgen.datastore.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd

RESOURCES = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  nodeToNodeMeshEnabled: false
  asNumber: 64512
  communities: [{name: pods, value: "64512:100"}]
  prefixAdvertisements: [{cidr: 10.65.0.0/16, communities: [pods]}]
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node1, labels: {rack: r1}}
spec: {bgp: {ipv4Address: 10.0.0.11/24}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node2, labels: {rack: r1}}
spec: {bgp: {ipv4Address: 10.0.0.12/24, asNumber: 65002}}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 10.65.0.0/16, ipipMode: Always}
---
apiVersion: projectcalico.org/v3
kind: BGPFilter
metadata: {name: only-pods}
spec:
  exportV4: [{action: Accept, cidr: 10.65.0.0/16, matchOperator: In}, {action: Reject}]
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: rack1}
spec: {nodeSelector: "rack == 'r1'", peerSelector: "rack == 'r1'", filters: [only-pods]}
"""


def cli(server, command, *args, stdin=None):
    result = CliRunner().invoke(command, [*args, "--etcd-endpoints", server.endpoint], input=stdin)
    return result


def raw(server) -> dict[str, dict]:
    async def read():
        client = EtcdClient([server.endpoint])
        await client.connect()
        try:
            _, values = await client.get_prefixes([keys.RESOURCE_PREFIX])
        finally:
            await client.close()
        return {key: json.loads(value) for key, value in values.items()}

    return asyncio.run(read())


def test_apply_get_delete_round_trip(etcd_server):
    result = cli(etcd_server, apply, "-f", "-", stdin=RESOURCES)
    assert result.exit_code == 0, result.output
    stored = raw(etcd_server)
    assert sorted(stored) == sorted(
        keys.resource_key(kind, name)
        for kind, name in [
            ("BGPConfiguration", "default"),
            ("Node", "node1"),
            ("Node", "node2"),
            ("IPPool", "default-ipv4-ippool"),
            ("BGPFilter", "only-pods"),
            ("BGPPeer", "rack1"),
        ]
    )
    for value in stored.values():
        assert value["apiVersion"] == "projectcalico.org/v3"
        assert {"name", "uid", "creationTimestamp"} <= set(value["metadata"])
        assert "resourceVersion" not in value["metadata"]

    for document in yaml.safe_load_all(RESOURCES):
        kind, name = document["kind"], document["metadata"]["name"]
        shown = json.loads(cli(etcd_server, get, kind.lower(), name, "-o", "json").output)
        assert shown["spec"] == document["spec"]
        assert shown["metadata"].get("labels") == document["metadata"].get("labels")
        assert int(shown["metadata"]["resourceVersion"]) > 0

    # An update keeps uid and creationTimestamp and bumps the resourceVersion.
    before = json.loads(cli(etcd_server, get, "bgpp", "rack1", "-o", "json").output)
    edited = RESOURCES.replace("filters: [only-pods]", "filters: [only-pods], keepaliveTime: 10s")
    assert cli(etcd_server, apply, "-f", "-", stdin=edited).exit_code == 0
    after = json.loads(cli(etcd_server, get, "bgpp", "rack1", "-o", "json").output)
    assert after["spec"]["keepaliveTime"] == "10s"
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["creationTimestamp"] == before["metadata"]["creationTimestamp"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])

    listed = yaml.safe_load(cli(etcd_server, get, "nodes", "-o", "yaml").output)
    assert listed["kind"] == "NodeList" and [n["metadata"]["name"] for n in listed["items"]] == [
        "node1",
        "node2",
    ]

    assert cli(etcd_server, delete, "bgppeer", "rack1").exit_code == 0
    assert keys.resource_key("BGPPeer", "rack1") not in raw(etcd_server)
    missing = cli(etcd_server, get, "bgppeer", "rack1")
    assert missing.exit_code == 1 and "resource does not exist: BGPPeer(rack1)" in missing.output


def test_invalid_input_writes_nothing(etcd_server):
    broken = RESOURCES.replace("10.0.0.12/24", "10.0.0.300/24")
    result = cli(etcd_server, apply, "-f", "-", stdin=broken)
    assert result.exit_code == 1
    assert (
        "Node node2: spec.bgp.ipv4Address '10.0.0.300/24' is not an IP address or address/prefix"
        in result.output
    )
    assert raw(etcd_server) == {}


def test_calicoctl_written_data_is_read_and_updated_in_place(etcd_server, tmp_path):
    # A value exactly as libcalico-go stores it (uid and creationTimestamp set, no resourceVersion).
    calicoctl_value = {
        "kind": "BGPPeer",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {
            "name": "rack1-tor",
            "uid": "3f1c2a8e-5b7d-4c1e-9a6f-0d2b4e6f8a10",
            "creationTimestamp": "2025-01-10T10:00:00Z",
        },
        "spec": {"nodeSelector": "rack == 'r1'", "peerIP": "10.0.1.1", "asNumber": 65001},
    }

    async def seed():
        client = EtcdClient([etcd_server.endpoint])
        await client.connect()
        try:
            await client.put(keys.resource_key("BGPPeer", "rack1-tor"), json.dumps(calicoctl_value))
        finally:
            await client.close()

    asyncio.run(seed())
    assert cli(etcd_server, apply, "-f", "-", stdin=RESOURCES).exit_code == 0
    shown = json.loads(cli(etcd_server, get, "bgppeer", "rack1-tor", "-o", "json").output)
    assert shown["spec"] == calicoctl_value["spec"]
    # Our update of a calicoctl-created object keeps its identity.
    document = dict(shown, spec=dict(shown["spec"], asNumber=65011))
    assert cli(etcd_server, apply, "-f", "-", stdin=json.dumps(document)).exit_code == 0
    stored = raw(etcd_server)[keys.resource_key("BGPPeer", "rack1-tor")]
    assert stored["metadata"]["uid"] == calicoctl_value["metadata"]["uid"]
    assert stored["metadata"]["creationTimestamp"] == "2025-01-10T10:00:00Z"
    assert "resourceVersion" not in stored["metadata"] and stored["spec"]["asNumber"] == 65011

    # And the node daemon's view of the same data: confgen render reads it like the syncer does.
    rendered = cli(etcd_server, confgen, "render", "--node", "node1", "--run-dir", str(tmp_path))
    assert rendered.exit_code == 0, rendered.output
    assert "neighbor 10.0.1.1 {" in rendered.stdout and "    peer-as 65011;" in rendered.stdout
    assert "neighbor 10.0.0.12 {" in rendered.stdout and "    peer-as 65002;" in rendered.stdout
