"""bgp.kernel_upkeep: the hold released once, retries every pass, read-backs at the interval, errors kept."""

from __future__ import annotations

import pytest
from speaker_rig import Clock

from bgp.kernel_upkeep import KernelUpkeep
from routes.table import ApplyResult


class Table:
    """The route table's upkeep surface, recording what was asked of it."""

    def __init__(self, *, holding=False, fail_with: Exception | None = None):
        self.holding_deletes = holding
        self.calls: list[str] = []
        self.fail_with = fail_with

    def hold_deletes(self, hold):
        self.holding_deletes = hold
        self.calls.append(f"hold={hold}")

    async def retry_due(self):
        self.calls.append("retry")
        if self.fail_with is not None:
            raise self.fail_with

    async def resync(self):
        self.calls.append("resync")
        return ApplyResult(repaired=2)


def upkeep(table, clock, *, ready=lambda: False, reapplied=None):
    return KernelUpkeep(
        table,
        ready_to_sweep=ready,
        opened_by=lambda: "every session sent End-of-RIB",
        reapply=lambda: reapplied.append(1) if reapplied is not None else None,
        interval=90.0,
        clock=clock,
    )


async def test_the_hold_is_released_once_the_gate_opens_and_the_table_applied_again():
    table, clock, reapplied = Table(holding=True), Clock(0.0), []
    gate = {"open": False}
    keeper = upkeep(table, clock, ready=lambda: gate["open"], reapplied=reapplied)
    await keeper.once()
    assert table.holding_deletes and not reapplied
    gate["open"] = True
    await keeper.once()
    await keeper.once()
    assert table.calls.count("hold=False") == 1
    assert reapplied == [1]


@pytest.mark.parametrize(
    ("times", "resyncs"),
    [
        ((0.0, 1.0, 89.0), 0),
        ((0.0, 90.0), 1),
        ((0.0, 90.0, 91.0, 179.0), 1),
        ((0.0, 90.0, 180.0), 2),
    ],
)
async def test_read_backs_come_at_the_interval_and_retries_every_pass(times, resyncs):
    table, clock = Table(), Clock(0.0)
    keeper = upkeep(table, clock)
    for t in times:
        clock.now = t
        await keeper.once()
    assert table.calls.count("resync") == resyncs
    assert table.calls.count("retry") == len(times)


async def test_a_kernel_error_costs_the_pass_not_the_task(caplog):
    table, clock = Table(fail_with=OSError(105, "No buffer space available")), Clock(0.0)
    keeper = upkeep(table, clock)
    await keeper.once()
    assert "kernel route resync failed" in caplog.text


async def test_anything_else_is_a_bug_and_ends_the_task():
    table, clock = Table(fail_with=KeyError("bug")), Clock(0.0)
    with pytest.raises(KeyError):
        await upkeep(table, clock).once()


async def test_run_sleeps_a_second_between_passes_and_counts_the_interval_from_its_start():
    table, clock = Table(), Clock(0.0)
    clock.now = 500.0
    slept: list[float] = []

    async def sleep(seconds):
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 91:
            raise RuntimeError("enough")

    keeper = KernelUpkeep(
        table,
        ready_to_sweep=lambda: False,
        opened_by=str,
        reapply=lambda: None,
        interval=90.0,
        clock=clock,
        sleep=sleep,
    )
    with pytest.raises(RuntimeError):
        await keeper.run()
    assert set(slept) == {1.0}
    assert table.calls.count("retry") == 90
    assert table.calls.count("resync") == 1  # at 590 s: 90 s after the task started, not after t=0
