"""RouteTable retries: only the refused destinations are written again, and the retry map never outlives
the desire that filled it (FakeNetlink, injected clock)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from routes.model import Nexthop, Route
from routes.table import RETRY_MAX, RouteTable
from routes.testing import FakeNetlink

REFUSED = "ENETUNREACH: Network is unreachable"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def block(n: int, gw: str = "192.0.2.7") -> Route:
    return Route(f"10.244.{n}.0/26", nexthops=(Nexthop(gw),))


def written(kernel: FakeNetlink) -> list[str]:
    return [route.dst for op, route in kernel.calls if op != "delete"]


def ours(kernel: FakeNetlink) -> set[str]:
    return {r.dst for r in kernel.routes.values() if r.proto == 12}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kernel() -> FakeNetlink:
    return FakeNetlink()


@pytest.fixture
def table(kernel, clock) -> RouteTable:
    return RouteTable(kernel, clock=clock, hold_deletes=False)


async def test_a_retry_writes_only_the_refused_destinations(table, kernel, clock):
    kernel.failures[block(7).dst] = REFUSED
    table.set_desired([block(n) for n in range(200)])
    await table.apply()
    assert len(ours(kernel)) == 199
    kernel.calls.clear()
    assert await table.retry_due() is None  # back-off not over: nothing is written
    assert kernel.calls == []
    clock.now += 1.0
    result = await table.retry_due()
    assert result is not None and [r.dst for r, _ in result.errors] == [block(7).dst]
    assert written(kernel) == [block(7).dst]
    del kernel.failures[block(7).dst]
    clock.now += 2.0
    await table.retry_due()
    assert written(kernel) == [block(7).dst] * 2 and len(ours(kernel)) == 200
    assert table.next_retry() is None and table.failures == {}


async def test_a_persistent_refusal_costs_one_write_per_back_off(table, kernel, clock):
    kernel.failures[block(7).dst] = REFUSED
    table.set_desired([block(n) for n in range(50)])
    await table.apply()
    kernel.calls.clear()
    for _ in range(3600):  # an hour, checked every second as the daemon does
        clock.now += 1.0
        await table.retry_due()
    # 1, 2, 4, 8, 16 s, then every RETRY_MAX: about 3600 / 30 writes, all of them for the refused route.
    assert set(written(kernel)) == {block(7).dst}
    assert len(written(kernel)) <= 5 + 3600 / RETRY_MAX


@pytest.mark.parametrize("how", ["update", "set_desired"])
async def test_a_withdrawn_destination_forgets_its_retry_and_refusal(table, kernel, clock, how):
    kernel.failures[block(7).dst] = REFUSED
    table.set_desired([block(1), block(7)])
    await table.apply()
    assert table.next_retry() is not None
    if how == "update":
        table.update(removes=[block(7).dst])
    else:
        table.set_desired([block(1)])
    await table.apply()
    assert table.next_retry() is None and table._retry == {} and table._failures == {}
    clock.now += 3600.0
    kernel.calls.clear()
    assert await table.retry_due() is None and kernel.calls == []


async def test_a_withdrawn_route_still_in_the_kernel_is_deleted_at_once_not_after_the_back_off(
    table, kernel, clock
):
    table.set_desired([block(7)])
    await table.apply()
    kernel.failures[block(7).dst] = REFUSED
    table.set_desired([block(7, gw="192.0.2.8")])  # the replace is refused: the old route stays
    await table.apply()
    assert table.next_retry() == clock.now + 1.0
    table.update(removes=[block(7).dst])
    result = await table.apply()  # the same instant: the withdrawal does not wait for the back-off
    assert result.deleted == 1 and ours(kernel) == set() and table.next_retry() is None


async def test_a_change_reverted_to_what_the_kernel_holds_settles_the_refusal(table, kernel, clock):
    table.set_desired([block(7)])
    await table.apply()
    kernel.failures[block(7).dst] = REFUSED
    table.set_desired([block(7, gw="192.0.2.8")])
    await table.apply()
    assert table.failures == {block(7).dst: REFUSED}
    table.set_desired([block(7)])  # back to the route the kernel still holds: nothing to write
    kernel.calls.clear()
    await table.apply()
    assert kernel.calls == []
    assert table.failures == {} and table.next_retry() is None and table._failures == {}


async def test_a_refusal_is_forgotten_once_the_route_goes_in_after_a_resync(table, kernel, clock):
    kernel.failures[block(7).dst] = REFUSED
    table.set_desired([block(7)])
    await table.apply()
    await table.resync()  # clears the back-off; the route is refused again
    del kernel.failures[block(7).dst]
    table.invalidate()
    await table.resync()
    assert ours(kernel) == {block(7).dst}
    assert table.failures == {} and table._failures == {} and table.next_retry() is None


async def test_a_changed_route_is_a_new_attempt(table, kernel, clock):
    kernel.failures[block(7).dst] = REFUSED
    table.set_desired([block(7)])
    await table.apply()
    clock.now += 1.0
    await table.apply()
    assert table.next_retry() == clock.now + 2.0  # doubled
    del kernel.failures[block(7).dst]
    table.set_desired([block(7, gw="192.0.2.8")])  # e.g. a new BGP next hop: tried now, not in 2 s
    await table.apply()
    assert ours(kernel) == {block(7).dst} and table.next_retry() is None


STEPS = st.lists(
    st.tuples(
        st.sampled_from(("desire", "withdraw", "refuse", "accept", "someone_deletes", "resync", "hold")),
        st.integers(0, 3),  # few destinations, so that steps keep meeting on one
        st.sampled_from((0.0, 1.0, 5.0, 60.0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
@example(steps=[("refuse", 0, 0.0), ("desire", 0, 0.0), ("withdraw", 0, 0.0)])
async def test_retry_map_only_holds_destinations_desired_or_still_ours(steps):
    """Random desire, withdrawals, refusals, foreign deletions, read-backs and delete holds: at every step
    the retry map and the refusals name only destinations that are desired, still ours in the kernel, or
    about to be looked at; once the kernel accepts everything, both are empty."""
    clock, kernel = Clock(), FakeNetlink()
    table = RouteTable(kernel, clock=clock, hold_deletes=False)
    watch = kernel.watch(exclude_proto=12)
    for step, n, wait in steps:
        dst = block(n).dst
        if step == "desire":
            table.update([block(n, gw=f"192.0.2.{7 + int(wait) % 3}")])
        elif step == "withdraw":
            table.update(removes=[dst])
        elif step == "refuse":
            kernel.failures[dst] = REFUSED
        elif step == "accept":
            kernel.failures.pop(dst, None)
        elif step == "someone_deletes":
            held = [r for r in kernel.routes.values() if r.dst == dst]
            if held:
                kernel.remove(held[0])
        elif step == "resync":
            await table.resync()
        elif step == "hold":
            table.hold_deletes(not table.holding_deletes)
        while not watch.queue.empty():
            event = watch.queue.get_nowait()
            if event is not None:
                table.observe(event)
        clock.now += wait
        await table.apply()
        bounded = set(table.desired) | set(table._view.programmed) | table._dirty
        assert set(table._retry) <= bounded
        assert set(table._failures) <= bounded
    kernel.failures.clear()
    table.hold_deletes(False)
    clock.now += RETRY_MAX
    await table.apply()
    assert table._retry == {} and table._failures == {}
    assert ours(kernel) == set(table.desired)
