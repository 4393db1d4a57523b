"""bgp.originated: the incremental path leaves what the full path would, and reports exactly what changed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.export import local_exports
from bgp.originated import Originated
from bgp.policy import Candidate
from routes.pools import KernelPool

BLOCKS = ("192.168.1.0/26", "192.168.5.5/32")
POOLS = (
    KernelPool("192.168.0.0/16"),
    KernelPool("10.99.0.0/24", disable_bgp_export=True),
)
SERVICES = ("10.96.0.0/12",)
# Inside a block, borrowed from another block, in the no-export pool, outside every pool, the /32 block
# itself and a service range, as a workload device might label them.
UNIVERSE = (
    *(f"192.168.1.{i}/32" for i in range(0, 64, 9)),
    *(f"192.168.3.{i}/32" for i in range(0, 256, 37)),
    *(f"10.99.0.{i}/32" for i in range(3)),
    *(f"172.16.0.{i}/32" for i in range(3)),
    "192.168.5.5/32",
    "192.168.1.0/26",
    "10.96.0.0/12",
)


def expected(workloads: dict[str, str]) -> dict[str, Candidate]:
    """The full answer, from the export policy's whole-set function."""
    out = {p: Candidate(p, None, workloads.get(p, "")) for p in local_exports(workloads, BLOCKS, POOLS)}
    for cidr in SERVICES:
        out.setdefault(cidr, Candidate(cidr))
    return out


changes = st.dictionaries(st.sampled_from(UNIVERSE), st.sampled_from(("cali1", "cali2", None)), max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(changes, max_size=25))
def test_updates_leave_the_full_answer_and_report_each_change(batches):
    originated = Originated()
    originated.configure(BLOCKS, POOLS, SERVICES)
    for batch in batches:
        before = dict(originated.candidates)
        reported = originated.update(batch)
        after = originated.candidates
        assert after == expected(originated.workloads)
        really = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        assert set(reported) == really
        assert len(reported) == len(set(reported))


@pytest.mark.parametrize(
    ("workloads", "announced"),
    [
        ({}, {"192.168.1.0/26", "192.168.5.5/32", "10.96.0.0/12"}),
        ({"192.168.1.9/32": "cali1"}, {"192.168.1.0/26", "192.168.5.5/32", "10.96.0.0/12"}),
        ({"192.168.3.7/32": "cali1"}, {"192.168.1.0/26", "192.168.5.5/32", "10.96.0.0/12", "192.168.3.7/32"}),
        (
            {"10.99.0.1/32": "cali1", "172.16.0.1/32": "cali2"},
            {"192.168.1.0/26", "192.168.5.5/32", "10.96.0.0/12"},
        ),
    ],
)
def test_configure_announces_blocks_services_and_borrowed_ips(workloads, announced):
    originated = Originated()
    originated.replace(workloads.keys(), workloads)
    assert originated.configure(BLOCKS, POOLS, SERVICES) == announced
    assert set(originated.candidates) == announced


def test_a_workload_before_any_intent_is_held_and_announced_once_configured():
    originated = Originated()
    assert not originated.seen
    assert originated.update({"192.168.3.7/32": "cali1"}) == []  # no rules yet: nothing can be decided
    assert originated.seen
    assert "192.168.3.7/32" in originated.configure(BLOCKS, POOLS, SERVICES)
    assert originated.candidates["192.168.3.7/32"].ifname == "cali1"


def test_replace_reports_what_went_and_what_moved_device():
    originated = Originated()
    originated.configure(BLOCKS, POOLS, SERVICES)
    originated.replace(
        ["192.168.3.7/32", "192.168.3.8/32"], {"192.168.3.7/32": "cali1", "192.168.3.8/32": "a"}
    )
    changed = originated.replace(["192.168.3.7/32"], {"192.168.3.7/32": "cali9"})
    assert sorted(changed) == ["192.168.3.7/32", "192.168.3.8/32"]
    assert originated.candidates["192.168.3.7/32"].ifname == "cali9"
    assert "192.168.3.8/32" not in originated.candidates
