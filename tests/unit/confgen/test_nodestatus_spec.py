"""CalicoNodeStatus specs: validation with messages naming the field, the last valid version kept, and the
splitter that keeps the kind (and our own status writes) away from confgen."""

from __future__ import annotations

import asyncio
import json

import pytest

from confgen.datastore import keys
from confgen.datastore.base import build_snapshot, decode_value
from confgen.nodestatus import NodeStatusRequests, NodeStatusSpec, StatusSplitter, parse_node_status
from confgen.resources import kind_of, prepare
from confgen.validate import ValidationError


def cns(name="s1", node="node1", classes=("Agent", "BGP", "Routes"), period=10, status=None, **spec):
    if isinstance(classes, tuple):
        classes = list(classes)
    spec = {"node": node, "classes": classes, "updatePeriodSeconds": period, **spec}
    document = {"kind": "CalicoNodeStatus", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name}}
    document["spec"] = {k: v for k, v in spec.items() if v is not None}
    if status is not None:
        document["status"] = status
    return document


def test_valid_spec():
    expected = NodeStatusSpec("s1", "node1", ("BGP",), 0)
    assert parse_node_status("s1", cns(classes=("BGP",), period=0)) == expected


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (cns(node=None), "CalicoNodeStatus s1: spec.node is required"),
        (cns(node=7), "CalicoNodeStatus s1: spec.node is required"),
        (cns(classes=None), "CalicoNodeStatus s1: spec.classes is required"),
        (cns(classes="BGP"), "CalicoNodeStatus s1: spec.classes 'BGP' is not a list"),
        (
            cns(classes=("BGP", "Bgp")),
            "CalicoNodeStatus s1: spec.classes[1] 'Bgp' is not one of Agent, BGP, Routes",
        ),
        (cns(classes=("BGP", "BGP")), "CalicoNodeStatus s1: spec.classes names a class more than once"),
        (cns(period=None), "CalicoNodeStatus s1: spec.updatePeriodSeconds is required"),
        (cns(period=86401), "CalicoNodeStatus s1: spec.updatePeriodSeconds 86401 is out of range 0-86400"),
        (cns(period=-1), "CalicoNodeStatus s1: spec.updatePeriodSeconds -1 is out of range 0-86400"),
        (cns(period=True), "CalicoNodeStatus s1: spec.updatePeriodSeconds True is not an integer"),
        (cns(period="10"), "CalicoNodeStatus s1: spec.updatePeriodSeconds '10' is not an integer"),
    ],
)
def test_invalid_spec_names_the_field(document, message):
    with pytest.raises(ValidationError) as info:
        parse_node_status("s1", document)
    assert str(info.value).startswith(message)


def test_apply_validates_and_keeps_the_stored_status():
    assert kind_of("caliconodestatuses") == "CalicoNodeStatus"
    with pytest.raises(ValidationError):
        prepare(cns(period=99999), None)
    stored = json.loads(prepare(cns(status={"lastUpdated": "x"}), None).value)
    assert "status" not in stored  # a user's document does not write the status
    updated = json.loads(prepare(cns(period=5), {**stored, "status": {"lastUpdated": "y"}}).value)
    assert updated["spec"]["updatePeriodSeconds"] == 5
    assert updated["status"] == {"lastUpdated": "y"}


def test_requests_keep_the_last_valid_spec_and_filter_by_node(caplog):
    requests = NodeStatusRequests("node1")
    good = {"s1": cns(), "s2": cns(name="s2", node="node2")}
    assert set(requests.update(good)) == {"s1"}
    bad = {"s1": cns(period=-5), "s3": cns(name="s3", classes=("Nope",))}
    assert requests.update(bad) == {"s1": parse_node_status("s1", cns())}
    assert "keeping its last valid version" in caplog.text and "s3" in caplog.text
    caplog.clear()
    requests.update(bad)
    assert caplog.text == ""  # each problem is logged once
    assert requests.update({}, broken=("s1",)) == {"s1": parse_node_status("s1", cns())}


class ListDatastore:
    """Delivers the given snapshots in order."""

    def __init__(self, snapshots):
        self.snapshots = snapshots

    async def run(self, on_snapshot):
        for snapshot in self.snapshots:
            on_snapshot(snapshot)


def snapshot(revision, objects):
    decoded = {key: decode_value(key, json.dumps(value).encode()) for key, value in objects.items()}
    return build_snapshot(revision, decoded, "node1")


def test_splitter_passes_only_changes_confgen_reads():
    cns_key = keys.resource_key("CalicoNodeStatus", "s1")
    pool_key = keys.resource_key("IPPool", "p1")
    pool = {"kind": "IPPool", "spec": {"cidr": "10.65.0.0/16"}}
    first = {pool_key: pool, cns_key: cns()}
    with_status = {pool_key: pool, cns_key: cns(status={"lastUpdated": "2026-12-02T00:00:00Z"})}
    new_period = {pool_key: pool, cns_key: cns(period=1, status={"lastUpdated": "2026-12-02T00:00:00Z"})}
    pool_changed = {**new_period, pool_key: {"kind": "IPPool", "spec": {"cidr": "10.66.0.0/16"}}}
    views = (first, with_status, new_period, pool_changed)
    snapshots = [snapshot(revision, objects) for revision, objects in enumerate(views)]
    delivered, requests = [], []
    splitter = StatusSplitter(ListDatastore(snapshots), "node1", requests.append)
    asyncio.run(splitter.run(delivered.append))

    assert [s.revision for s in delivered] == [0, 3]  # our status write and the spec change are not confgen's
    assert all("CalicoNodeStatus" not in s.resources for s in delivered)
    assert [r["s1"].update_period for r in requests] == [10, 1]  # the status write did not restart the writer
    assert splitter.skipped == 2


def test_get_table_row():
    from confgen.resources import SUMMARY_COLUMNS, summary_row

    document = cns(status={"lastUpdated": "2026-12-02T13:22:03Z"})
    row = summary_row(document)
    assert len(row) == len(SUMMARY_COLUMNS["CalicoNodeStatus"])
    assert row == ("s1", "node1", "Agent,BGP,Routes", "10s", "2026-12-02T13:22:03Z")
