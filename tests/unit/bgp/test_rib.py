import pytest

from bgp.exabgp.events import PathAttributes
from bgp.rib import AdjRibIn, Path, best_of, multipath_of, select, selected_entry

P = "192.168.2.0/26"


def path(
    peer, *, lp=None, as_path=(), origin="igp", med=None, ebgp=False, nexthop=None, originator="", cluster=()
):
    attrs = PathAttributes(
        origin=origin, as_path=as_path, med=med, local_pref=lp, originator_id=originator, cluster_list=cluster
    )
    return Path(prefix=P, peer=peer, nexthop=nexthop or peer, attributes=attrs, ebgp=ebgp)


@pytest.mark.parametrize(
    "paths, best, multipath",
    [
        ([path("10.0.0.12", lp=200), path("10.0.0.13", lp=100)], "10.0.0.12", ["10.0.0.12"]),
        ([path("10.0.0.12", as_path=(1, 2)), path("10.0.0.13", as_path=(1,))], "10.0.0.13", ["10.0.0.13"]),
        ([path("10.0.0.12", origin="incomplete"), path("10.0.0.13")], "10.0.0.13", ["10.0.0.13"]),
        ([path("10.0.0.12", med=10), path("10.0.0.13", med=5)], "10.0.0.13", ["10.0.0.13"]),
        ([path("10.0.0.12"), path("10.0.0.13", ebgp=True)], "10.0.0.13", ["10.0.0.13"]),
        # Equal up to the router-id step: ECMP over both, lowest router id first.
        ([path("10.0.0.13"), path("10.0.0.12")], "10.0.0.12", ["10.0.0.12", "10.0.0.13"]),
        (
            [path("10.0.0.12", originator="10.0.0.99"), path("10.0.0.13")],
            "10.0.0.13",
            ["10.0.0.13", "10.0.0.12"],
        ),
        (
            [
                path("10.0.0.12", originator="10.0.0.5", cluster=("1.1.1.1", "2.2.2.2")),
                path("10.0.0.13", originator="10.0.0.5", cluster=("1.1.1.1",)),
            ],
            "10.0.0.13",
            ["10.0.0.13", "10.0.0.12"],
        ),
        ([], None, []),
    ],
    ids=[
        "local-pref",
        "as-path",
        "origin",
        "med",
        "ebgp-over-ibgp",
        "ecmp",
        "originator-id",
        "cluster-len",
        "empty",
    ],
)
def test_decision_process(paths, best, multipath):
    chosen, mp = select(paths)
    assert (chosen.peer if chosen else None) == best
    assert [p.peer for p in mp] == multipath


def test_adj_rib_in_add_remove_drop():
    rib = AdjRibIn()
    assert rib.add(path("10.0.0.12"))
    assert not rib.add(path("10.0.0.12"))  # same path twice changes nothing
    assert rib.add(path("10.0.0.13"))
    assert rib.count() == 2 and rib.count("10.0.0.12") == 1
    assert rib.remove("10.0.0.12", P)
    assert not rib.remove("10.0.0.12", P)
    assert rib.drop_peer("10.0.0.13") == {P}
    assert rib.prefixes() == [] and rib.count() == 0


def test_graceful_restart_stale_and_sweep():
    rib = AdjRibIn()
    rib.add(path("10.0.0.12"))
    other = Path(prefix="192.168.9.0/26", peer="10.0.0.12", nexthop="10.0.0.12", attributes=PathAttributes())
    v6 = Path(prefix="fd00:10::/122", peer="10.0.0.12", nexthop="fd00::12", attributes=PathAttributes())
    rib.add(other)
    rib.add(v6)
    assert rib.mark_stale("10.0.0.12") == 3
    assert rib.count() == 3  # stale paths keep forwarding
    rib.add(path("10.0.0.12"))  # re-announced after the restart: fresh again
    assert not rib.is_stale("10.0.0.12", P)
    assert rib.sweep_stale("10.0.0.12", ipv6=False) == {"192.168.9.0/26"}  # End-of-RIB for IPv4
    assert rib.stale_count("10.0.0.12") == 1
    assert rib.sweep_stale("10.0.0.12") == {"fd00:10::/122"}
    assert rib.peer_prefixes("10.0.0.12") == {P}


@pytest.mark.parametrize(
    "paths",
    [
        [path("10.0.0.12")],
        [path("10.0.0.12", lp=200), path("10.0.0.13", lp=100)],
        [path("10.0.0.13"), path("10.0.0.12")],
        [path("10.0.0.14"), path("10.0.0.13"), path("10.0.0.12", med=3)],
    ],
)
def test_a_loc_rib_entry_gives_back_selects_answer_and_a_lone_path_is_kept_bare(paths):
    best, multipath = select(paths)
    entry = selected_entry(best, multipath)
    assert best_of(entry) is best
    assert multipath_of(entry) == multipath
    # The common case holds the path itself: no tuple per learned route.
    assert (entry is best) == (len(multipath) == 1)
