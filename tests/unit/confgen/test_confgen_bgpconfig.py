"""BGPConfiguration: every field, community resolution, and which node.<name> overrides are honoured."""

from __future__ import annotations

import pytest

from confgen.bgpconfig import BGPConfiguration, parse_bgp_configuration
from confgen.datastore.base import Snapshot
from confgen.intent import PrefixAdvertisement
from confgen.model import parse_snapshot
from confgen.validate import SecretRef, ValidationError


def config(**spec):
    return {"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": spec}


def test_every_field():
    parsed = parse_bgp_configuration(
        "default",
        config(
            asNumber=64512,
            nodeToNodeMeshEnabled=False,
            listenPort=1790,
            logSeverityScreen="warning",
            bindMode="NodeIP",
            nodeMeshPassword={"secretKeyRef": {"name": "mesh", "key": "password"}},
            nodeMeshMaxRestartTime="2m",
            communities=[{"name": "pods", "value": "64512:100"}, {"name": "big", "value": "64512:1:2"}],
            prefixAdvertisements=[
                {"cidr": "192.168.0.0/16", "communities": ["pods", "65000:1:2", "big", "64512:100", "1:1"]},
                {"cidr": "fd00:10::/48", "communities": []},
                {"cidr": "10.1.2.3"},
            ],
            serviceClusterIPs=[{"cidr": "10.96.0.0/12"}, {"cidr": "fd00:96::/112"}],
            serviceExternalIPs=[{"cidr": "192.0.2.1/24"}, {"cidr": "10.0.0.0/8"}],
            serviceLoadBalancerIPs=[{"cidr": "198.51.100.0/24"}],
        ),
    )
    assert parsed == BGPConfiguration(
        name="default",
        as_number=64512,
        node_to_node_mesh_enabled=False,
        listen_port=1790,
        log_severity_screen="Warning",
        bind_mode="NodeIP",
        node_mesh_password=SecretRef("mesh", "password"),
        node_mesh_max_restart_time=120,
        prefix_advertisements=(
            # names resolved, standard and large split, sorted numerically, duplicates dropped
            PrefixAdvertisement("192.168.0.0/16", ("1:1", "64512:100"), ("64512:1:2", "65000:1:2")),
            PrefixAdvertisement("fd00:10::/48"),
            PrefixAdvertisement("10.1.2.3/32"),
        ),
        service_cluster_ips=("10.96.0.0/12", "fd00:96::/112"),
        service_external_ips=("10.0.0.0/8", "192.0.2.0/24"),
        service_loadbalancer_ips=("198.51.100.0/24",),
    )


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("global", {}, "metadata.name must be 'default' or 'node.<nodename>'"),
        ("default", {"bindMode": "All"}, "spec.bindMode 'All' is not one of None, NodeIP"),
        (
            "default",
            {"nodeMeshMaxRestartTime": "1 minute"},
            "spec.nodeMeshMaxRestartTime '1 minute' is not a duration (like '90s' or '2m')",
        ),
        (
            "default",
            {"nodeMeshPassword": {"secretKeyRef": {"name": "m"}}},
            "spec.nodeMeshPassword.secretKeyRef.key '' is not a valid secret key",
        ),
        (
            "default",
            {"communities": [{"name": "a", "value": "65536:1"}], "prefixAdvertisements": []},
            "spec.communities[0].value '65536:1' is not a community (aa:nn or aa:nn:mm)",
        ),
        (
            "default",
            {"communities": [{"name": "a", "value": "1:1"}]},
            "spec.communities are defined but not used in spec.prefixAdvertisements",
        ),
        (
            "default",
            {"communities": [{"name": "a b", "value": "1:1"}], "prefixAdvertisements": []},
            "spec.communities[0].name 'a b' is not a valid community name",
        ),
        (
            "default",
            {"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["undefined"]}]},
            "spec.prefixAdvertisements[0].communities[0] 'undefined' "
            "is not a community (aa:nn, aa:nn:mm) or a defined name",
        ),
        (
            "default",
            {"prefixAdvertisements": [{"cidr": "10.0.0.0/33"}]},
            "spec.prefixAdvertisements[0].cidr '10.0.0.0/33' is not an IP network",
        ),
        (
            "default",
            {"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["1:2:4294967296"]}]},
            "spec.prefixAdvertisements[0].communities[0] '1:2:4294967296' "
            "is not a community (aa:nn, aa:nn:mm) or a defined name",
        ),
        (
            "default",
            {"serviceClusterIPs": ["10.96.0.0/12"]},
            "spec.serviceClusterIPs[0] '10.96.0.0/12' is not an object",
        ),
        (
            "default",
            {"serviceLoadBalancerIPs": [{"cidr": "x"}]},
            "spec.serviceLoadBalancerIPs[0].cidr 'x' is not an IP network",
        ),
    ],
)
def test_refusals(name, spec, message):
    with pytest.raises(ValidationError) as info:
        parse_bgp_configuration(name, config(**spec))
    assert str(info.value) == f"BGPConfiguration {name}: {message}"


def _model(**configs):
    resources = {"BGPConfiguration": {name: {"spec": spec} for name, spec in configs.items()}}
    model, warnings = parse_snapshot(Snapshot(revision=1, resources=resources))
    assert warnings == []
    return model


def test_per_node_overrides_are_the_ones_calico_honours():
    model = _model(
        default={
            "asNumber": 65000,
            "listenPort": 1790,
            "logSeverityScreen": "Debug",
            "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["1:1"]}],
            "bindMode": "NodeIP",
        },
        **{
            "node.n1": {
                # honoured
                "listenPort": 1791,
                "logSeverityScreen": "Error",
                "communities": [{"name": "mine", "value": "2:2"}],
                "prefixAdvertisements": [{"cidr": "10.1.0.0/16", "communities": ["mine"]}],
                # ignored on a per-node configuration, as in confd
                "asNumber": 65099,
                "nodeToNodeMeshEnabled": False,
                "bindMode": "None",
            }
        },
    )
    assert (model.listen_port_of("n1"), model.listen_port_of("n2")) == (1791, 1790)
    assert (model.log_severity_of("n1"), model.log_severity_of("n2")) == ("Error", "Debug")
    assert model.prefix_advertisements_of("n1") == (PrefixAdvertisement("10.1.0.0/16", ("2:2",)),)
    assert model.prefix_advertisements_of("n2") == (PrefixAdvertisement("10.0.0.0/8", ("1:1",)),)
    assert (model.as_number, model.mesh_enabled, model.bind_mode) == (65000, True, "NodeIP")


def test_defaults_without_any_configuration():
    model = _model()
    assert (model.as_number, model.mesh_enabled, model.listen_port, model.bind_mode) == (
        64512,
        True,
        179,
        "None",
    )
    assert (model.log_severity_of("n1"), model.prefix_advertisements_of("n1")) == (None, ())  # the flag rules
    assert model.configured_listen_port("n1") == 0
    assert model.node_mesh_password is None and model.node_mesh_restart_time is None
    assert model.service_ranges == ((), (), ())


def test_an_empty_node_list_of_advertisements_replaces_the_global_one():
    model = _model(
        default={"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["1:1"]}]},
        **{"node.n1": {"prefixAdvertisements": []}},
    )
    assert model.prefix_advertisements_of("n1") == ()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({}, "Enabled"),
        ({"programClusterRoutes": "Disabled"}, "Disabled"),
        ({"programClusterRoutes": "EnabledIPIPOnly"}, "EnabledIPIPOnly"),
    ],
)
def test_program_cluster_routes(spec, expected):
    raw = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "BGPConfiguration",
        "metadata": {"name": "default"},
        "spec": spec,
    }
    snapshot = Snapshot(revision=1, resources={"BGPConfiguration": {"default": raw}})
    model, warnings = parse_snapshot(snapshot)
    assert not warnings and model.program_cluster_routes == expected


def test_program_cluster_routes_refuses_unknown_values():
    with pytest.raises(ValidationError, match="spec.programClusterRoutes 'Sometimes' is not one of"):
        parse_bgp_configuration("default", {"spec": {"programClusterRoutes": "Sometimes"}})
