"""BGPFilter parsing: typed rules for the RIB, and refusals that point at the rule and field."""

from __future__ import annotations

import pytest

from confgen.bgpfilter import BGPFilter, FilterRule, parse_bgp_filter
from confgen.validate import ValidationError


def bgp_filter(**spec):
    return {"kind": "BGPFilter", "metadata": {"name": "f"}, "spec": spec}


def test_all_rule_fields():
    parsed = parse_bgp_filter(
        "only-pods",
        bgp_filter(
            exportV4=[
                {
                    "action": "Accept",
                    "cidr": "10.65.0.1/16",
                    "matchOperator": "In",
                    "prefixLength": {"max": 26},
                    "source": "RemotePeers",
                    "interface": "eth*",
                    "peerType": "eBGP",
                    "communities": {"values": ["65000:1"]},
                    "asPathPrefix": [65000, "1.10"],
                    "priority": 512,
                    "operations": [
                        {"addCommunity": {"value": "65000:100:1"}},
                        {"prependASPath": {"prefix": [65000, 65000]}},
                        {"setPriority": {"value": 100}},
                    ],
                },
                {"action": "Reject"},
            ],
            importV6=[
                {
                    "action": "Reject",
                    "cidr": "fd00::/8",
                    "matchOperator": "NotIn",
                    "prefixLength": {"min": 64},
                }
            ],
        ),
    )
    assert parsed == BGPFilter(
        name="only-pods",
        export_v4=(
            FilterRule(
                action="Accept",
                cidr="10.65.0.0/16",
                match_operator="In",
                prefix_length=(16, 26),
                source="RemotePeers",
                interface="eth*",
                peer_type="eBGP",
                communities=("65000:1",),
                as_path_prefix=(65000, 65546),
                priority=512,
                operations=(
                    ("addCommunity", "65000:100:1"),
                    ("prependASPath", "65000 65000"),
                    ("setPriority", "100"),
                ),
            ),
            FilterRule(action="Reject"),
        ),
        import_v6=(FilterRule("Reject", "fd00::/8", "NotIn", (64, 128)),),
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"exportV4": [{}]}, "spec.exportV4[0].action is required"),
        ({"exportV4": [{"action": "Drop"}]}, "spec.exportV4[0].action 'Drop' is not one of Accept, Reject"),
        ({"exportV4": "x"}, "spec.exportV4 'x' is not a list"),
        ({"importV4": ["x"]}, "spec.importV4[0] 'x' is not an object"),
        (
            {"importV4": [{"action": "Accept", "cidr": "10.0.0.0/8"}]},
            "spec.importV4[0].matchOperator is required with the other (cidr, matchOperator)",
        ),
        (
            {"importV6": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In"}]},
            "spec.importV6[0].cidr 10.0.0.0/8 is not an IPv6 network",
        ),
        (
            {
                "exportV4": [
                    {
                        "action": "Accept",
                        "cidr": "10.0.0.0/8",
                        "matchOperator": "In",
                        "prefixLength": {"min": 7},
                    }
                ]
            },
            "spec.exportV4[0].prefixLength.min 7 is out of range 8-32",
        ),
        (
            {
                "exportV4": [
                    {
                        "action": "Accept",
                        "cidr": "10.0.0.0/8",
                        "matchOperator": "In",
                        "prefixLength": {"min": 30, "max": 24},
                    }
                ]
            },
            "spec.exportV4[0].prefixLength min 30 is greater than max 24",
        ),
        (
            {"exportV4": [{"action": "Accept", "prefixLength": {"min": 8}}]},
            "spec.exportV4[0].prefixLength needs cidr",
        ),
        (
            {"exportV4": [{"action": "Accept", "interface": "eth0; reject"}]},
            "spec.exportV4[0].interface 'eth0; reject' is not an interface name glob",
        ),
        (
            {"exportV4": [{"action": "Accept", "peerType": "ibgp"}]},
            "spec.exportV4[0].peerType 'ibgp' is not one of eBGP, iBGP",
        ),
        (
            {"exportV4": [{"action": "Accept", "source": "Kernel"}]},
            "spec.exportV4[0].source 'Kernel' is not one of RemotePeers",
        ),
        (
            {"exportV4": [{"action": "Accept", "communities": {"values": ["1:x"]}}]},
            "spec.exportV4[0].communities.values[0] '1:x' is not a community",
        ),
        (
            {"exportV4": [{"action": "Accept", "asPathPrefix": [0]}]},
            "spec.exportV4[0].asPathPrefix[0] 0 is not an AS number",
        ),
        (
            {"exportV4": [{"action": "Reject", "operations": [{"setPriority": {"value": 1}}]}]},
            "spec.exportV4[0].operations are only allowed on Accept rules",
        ),
        (
            {"exportV4": [{"action": "Accept", "operations": [{"setPriority": {"value": "1"}}]}]},
            "spec.exportV4[0].operations[0].setPriority.value '1' is not an integer",
        ),
        (
            {"exportV4": [{"action": "Accept", "operations": [{"dropAll": {}}]}]},
            "spec.exportV4[0].operations[0] 'dropAll' is not one of addCommunity, prependASPath, setPriority",
        ),
        (
            {"exportV4": [{"action": "Accept", "operations": [{}]}]},
            "spec.exportV4[0].operations[0] "
            "must hold exactly one of addCommunity, prependASPath, setPriority",
        ),
        (
            {"exportV4": [{"action": "Accept", "operations": [{"prependASPath": {"prefix": []}}]}]},
            "spec.exportV4[0].operations[0].prependASPath.prefix [] is not a non-empty list of AS numbers",
        ),
    ],
)
def test_refusals(spec, message):
    with pytest.raises(ValidationError) as info:
        parse_bgp_filter("f", bgp_filter(**spec))
    assert str(info.value) == f"BGPFilter f: {message}"
