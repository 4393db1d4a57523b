"""The halves RouteTable drives: DesiredRoutes (admission), KernelView and plan_writes (the kernel side)."""

from __future__ import annotations

import pytest

from routes.desired import DesiredRoutes
from routes.kernel_view import KernelView, plan_writes
from routes.model import RT_TABLE_MAIN, RTPROT_BIRD, RTPROT_BOOT, Nexthop, Route


def r(dst: str, gw: str = "192.0.2.7", *, prio: int = 0, proto: int = RTPROT_BIRD, dev: str = "") -> Route:
    return Route(dst, nexthops=(Nexthop(gw, dev),), priority=prio, proto=proto)


def ours(route: Route) -> bool:
    return route.proto == RTPROT_BIRD


def view_of(*routes: Route) -> KernelView:
    view = KernelView()
    view.load(routes, RT_TABLE_MAIN, ours, compare=False)
    return view


# -- DesiredRoutes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("route, reason", [
    (Route("10.1.0.0/24", table=100), "table 100 is in Felix"),
    (Route("10.1.0.0/24", table=300), "not 254"),
    (r("10.1.0.0/24", dev="cali12345"), "Felix's device cali12345"),
])
def test_admission_refuses_with_a_reason(route, reason):
    desired = DesiredRoutes(RT_TABLE_MAIN, RTPROT_BIRD)
    assert desired.replace_all([route]) == set()
    assert reason in desired.refused[route.dst] and not desired.routes


def test_admitted_routes_take_our_protocol_and_the_kernel_form():
    desired = DesiredRoutes(RT_TABLE_MAIN, RTPROT_BIRD)
    assert desired.replace_all([r("fd00:1::/64", "fd00::2", proto=RTPROT_BOOT)]) == {"fd00:1::/64"}
    assert desired.routes["fd00:1::/64"] == r("fd00:1::/64", "fd00::2", prio=1024)


@pytest.mark.parametrize("upserts, removes, changed, gone", [
    ([r("10.1.0.0/24")], [], [], []),  # the same route again: nothing changed
    ([r("10.1.0.0/24", "192.0.2.8")], [], ["10.1.0.0/24"], []),
    ([r("10.3.0.0/24")], [], ["10.3.0.0/24"], []),
    ([], ["10.2.0.0/24", "10.9.0.0/24"], [], ["10.2.0.0/24"]),  # an unknown dst is not "gone"
    ([Route("10.2.0.0/24", table=7)], [], [], ["10.2.0.0/24"]),  # refused now: no longer desired
])
def test_update_reports_what_changed_and_what_went(upserts, removes, changed, gone):
    desired = DesiredRoutes(RT_TABLE_MAIN, RTPROT_BIRD)
    desired.replace_all([r("10.1.0.0/24"), r("10.2.0.0/24")])
    assert desired.update(upserts, removes) == (changed, gone)


# -- KernelView --------------------------------------------------------------------------------------


def test_load_splits_ours_from_foreign_and_counts_drift():
    view = view_of(r("10.1.0.0/24"), r("10.2.0.0/24"), r("10.5.0.0/24", proto=RTPROT_BOOT))
    assert (view.installed, set(view.foreign)) == (2, {"10.5.0.0/24"})
    other_table = Route("10.6.0.0/24", table=100)
    drift = view.load([r("10.1.0.0/24"), r("10.2.0.0/24", "192.0.2.9"), r("10.3.0.0/24"), other_table],
                      RT_TABLE_MAIN, ours)
    assert drift == 2  # 10.2 changed, 10.3 appeared; 10.1 the same; table 100 is not ours to see
    assert (view.installed, view.foreign) == (3, {})


def test_a_read_back_that_agrees_keeps_the_views_own_objects():
    kept, moved = r("10.1.0.0/24"), r("10.2.0.0/24")
    view = view_of(kept, moved)
    held = view.programmed["10.1.0.0/24"]
    # The dump's objects are equal but not the same; the device the kernel resolved still agrees.
    drift = view.load([r("10.1.0.0/24", dev="eth0"), r("10.2.0.0/24", "192.0.2.8")], RT_TABLE_MAIN, ours)
    assert drift == 1
    assert view.programmed["10.1.0.0/24"] is held and held[0] is kept
    assert view.programmed["10.2.0.0/24"][0].nexthops[0].gateway == "192.0.2.8"  # changed: the kernel's
    assert view.installed == 2


def test_a_read_back_with_a_second_metric_keeps_both_and_leaves_the_old_entry_alone():
    first = r("10.1.0.0/24")
    view = view_of(first)
    held = view.programmed["10.1.0.0/24"]
    view.load([r("10.1.0.0/24"), r("10.1.0.0/24", prio=5)], RT_TABLE_MAIN, ours)
    assert set(view.programmed["10.1.0.0/24"]) == {0, 5} and view.programmed["10.1.0.0/24"][0] is first
    assert list(held) == [0]  # the entry a caller may still hold is not changed in place
    assert view.installed == 2


def test_record_and_forget_keep_the_count():
    view = KernelView()
    for route in (r("10.1.0.0/24"), r("10.1.0.0/24", prio=5), r("10.1.0.0/24", "192.0.2.8")):
        view.record(route)
    assert view.installed == 2 and set(view.programmed["10.1.0.0/24"]) == {0, 5}
    view.forget(r("10.1.0.0/24", prio=5))
    view.forget(r("10.1.0.0/24", prio=5))  # twice: counted once
    view.forget(r("10.1.0.0/24"))
    assert (view.installed, view.programmed) == (0, {})


def test_conflicts_name_what_holds_a_desired_destination():
    view = view_of(r("10.1.0.0/24", proto=RTPROT_BOOT), r("10.2.0.0/24", proto=80))
    view.add_foreign("10.1.0.0/24", 7, "unknown route (EEXIST)")
    conflicts = view.conflicts({"10.1.0.0/24": r("10.1.0.0/24")})
    assert list(conflicts) == ["10.1.0.0/24"] and conflicts["10.1.0.0/24"].endswith("unknown route (EEXIST)")
    view.remove_foreign("10.1.0.0/24", 0)
    view.remove_foreign("10.1.0.0/24", 7)
    assert view.conflicts({"10.1.0.0/24": r("10.1.0.0/24")}) == {}


# -- plan_writes -----------------------------------------------------------------------------------

A, B = "10.1.0.0/24", "10.2.0.0/24"


@pytest.mark.parametrize("name, kernel, want, expect", [
    ("new: exclusive create", [], {A: r(A)}, ("create", A)),
    ("same route: nothing", [r(A)], {A: r(A)}, None),
    ("next hop changed: replace", [r(A)], {A: r(A, "192.0.2.8")}, ("replace", A)),
    ("undesired: delete", [r(A)], {}, ("delete", A)),
    ("foreign holds it: ours deleted", [r(A), r(A, prio=9, proto=RTPROT_BOOT)], {A: r(A)}, ("delete", A)),
    ("foreign holds it: nothing written", [r(A, proto=RTPROT_BOOT)], {A: r(A)}, None),
])
def test_plan_for_one_destination(name, kernel, want, expect):
    plan = plan_writes([A], 0.0, want, view_of(*kernel), {}, {}, False, set(), set())
    done = [("create", x.dst) for x in plan.creates] + [("replace", x.dst) for x in plan.replaces]
    done += [("delete", x.dst) for x in plan.deletes]
    assert done == ([expect] if expect else [])


def test_a_moved_metric_is_created_and_the_old_one_deleted():
    plan = plan_writes([A], 0.0, {A: r(A, prio=20)}, view_of(r(A, prio=10)), {}, {}, False, set(), set())
    assert [x.priority for x in plan.creates] == [20] and [x.priority for x in plan.deletes] == [10]


def test_held_deletes_wait_for_adopted_routes_only_and_a_desire_releases_them():
    held: set[str] = set()
    adopted = {A, B}
    plan = plan_writes([A, B], 0.0, {B: r(B)}, view_of(r(A), r(B)), {}, {}, True, held, adopted)
    assert (plan.deletes, held, adopted) == ([], {A}, {A})  # B is desired: BGP has spoken about it
    plan = plan_writes([A], 0.0, {}, view_of(r(A)), {}, {}, False, held, adopted)
    assert [x.dst for x in plan.deletes] == [A]


def test_backoff_keeps_a_destination_waiting_and_a_reverted_change_settles_it():
    retries = {A: (50.0, 1), B: (5.0, 1)}
    failures = {A: "ENETUNREACH", B: "ENETUNREACH"}
    plan = plan_writes([A, B], 10.0, {A: r(A, "192.0.2.8"), B: r(B)}, view_of(r(A), r(B)), retries, failures,
                       False, set(), set())
    assert plan.waiting == {A} and plan.settled == [B] and not (plan.creates or plan.replaces)
