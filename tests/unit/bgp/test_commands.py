import pytest

from bgp.exabgp.commands import Advertisement, peer_commands

NH = "10.0.0.11"


def test_one_line_per_attribute_set_and_one_command_per_prefix():
    changes = {
        "192.168.1.0/26": Advertisement(NH),
        "192.168.1.64/26": Advertisement(NH),
        "192.168.9.9/32": None,
        "192.168.7.0/26": Advertisement(NH, communities=((64512, 100),)),
    }
    lines = peer_commands("10.0.0.12", changes)
    assert lines == [
        "neighbor 10.0.0.12 withdraw attributes next-hop 10.0.0.11 nlri 192.168.9.9/32",
        "neighbor 10.0.0.12 announce attributes next-hop 10.0.0.11 origin igp "
        "nlri 192.168.1.0/26 192.168.1.64/26",
        "neighbor 10.0.0.12 announce attributes next-hop 10.0.0.11 origin igp community [ 64512:100 ] "
        "nlri 192.168.7.0/26",
    ]
    mentioned = [p for line in lines for p in line.split(" nlri ")[1].split()]
    assert sorted(mentioned) == sorted(changes)


def test_chunking():
    changes = {f"10.1.{i // 256}.{i % 256}/32": Advertisement(NH) for i in range(2500)}
    lines = peer_commands("10.0.0.12", changes, per_line=1000)
    assert [len(line.split(" nlri ")[1].split()) for line in lines] == [1000, 1000, 500]


def test_families_are_not_mixed():
    changes = {
        "2001:db8::/64": Advertisement("fd00::11"),
        "10.0.0.0/24": Advertisement(NH),
        "2001:db8:1::/64": None,
    }
    lines = peer_commands("fd00::12", changes)
    assert lines[0] == "neighbor fd00::12 withdraw attributes next-hop fd00::11 nlri 2001:db8:1::/64"
    assert len(lines) == 3


def test_attributes_rendering():
    adv = Advertisement(
        NH,
        as_path=(65001,),
        local_pref=200,
        med=5,
        large_communities=((1, 2, 3),),
        originator_id="10.0.0.13",
        cluster_list=("1.1.1.1",),
    )
    assert adv.attribute_text() == (
        "next-hop 10.0.0.11 origin igp as-path [ 65001 ] local-preference 200 med 5 "
        "large-community [ 1:2:3 ] originator-id 10.0.0.13 cluster-list [ 1.1.1.1 ]"
    )


@pytest.mark.parametrize(
    "peer, prefix, nexthop",
    [
        ("10.0.0.12; shutdown", "10.0.0.0/24", NH),
        ("10.0.0.12", "10.0.0.0/24\nshutdown", NH),
        ("10.0.0.12", "10.0.0.0/24", "10.0.0.11 nlri 0.0.0.0/0"),
    ],
    ids=["peer", "prefix", "nexthop"],
)
def test_injection_refused(peer, prefix, nexthop):
    with pytest.raises(ValueError):
        peer_commands(peer, {prefix: Advertisement(nexthop)})
