"""The daemon's supervision: exit status, SIGHUP, and when adopted kernel routes may be swept.

The daemon is built as in production, then its I/O components (confgen over etcd, the netlink watchers,
ExaBGP's supervisor, the nftables rules) are swapped for fakes before it runs.
"""

import asyncio
import os
import signal

import pytest
from speaker_rig import Clock

from bgp.daemon import NodeDaemon
from bgp.node_config import NodeConfig
from bgp.sweep_gate import SweepGate
from confgen.intent import NodeIntent


class Forever:
    """A component that runs until it is cancelled."""

    def __init__(self, fail: BaseException | None = None, after: asyncio.Event | None = None):
        self.fail = fail
        self.after = after

    async def run(self):
        if self.after is not None:
            await self.after.wait()
        if self.fail is not None:
            raise self.fail
        await asyncio.Event().wait()


class FakeConfgen(Forever):
    def __init__(self, fail=None):
        super().__init__(fail)
        self.rendered = asyncio.Event()
        self.triggers = 0

    async def first_render(self):
        await self.rendered.wait()

    def trigger(self):
        self.triggers += 1


class FakeSupervisor(Forever):
    def __init__(self):
        super().__init__()
        self.started = asyncio.Event()
        self.stops = 0

    async def run(self):
        self.started.set()
        await super().run()

    async def stop(self):
        self.stops += 1


class FakeGtsm:
    removed = False

    async def remove(self):
        self.removed = True

    async def watch(self):
        await asyncio.Event().wait()


def build(tmp_path, confgen=None, watcher=None, sweep_hold=120.0):
    daemon = NodeDaemon(
        NodeConfig(
            node="node1",
            etcd_endpoints=("http://127.0.0.1:9",),
            run_dir=tmp_path / "run",
            metrics_port=0,
            sweep_hold=sweep_hold,
        )
    )
    daemon.confgen = confgen or FakeConfgen()
    daemon.watcher = watcher or Forever()
    daemon.addresses = Forever()
    daemon.supervisor = FakeSupervisor()
    daemon.gtsm = FakeGtsm()
    return daemon


async def test_a_failing_component_ends_the_daemon_non_zero_after_a_clean_stop(tmp_path):
    daemon = build(tmp_path, confgen=FakeConfgen(fail=RuntimeError("the datastore stopped")))
    assert await asyncio.wait_for(daemon.run(), 10) == 1
    assert daemon.supervisor.stops == 1 and daemon.gtsm.removed
    assert not (tmp_path / "run" / "ctl.sock").exists()


async def test_a_component_failing_after_exabgp_started_also_ends_non_zero(tmp_path):
    confgen = FakeConfgen()
    confgen.rendered.set()
    broken = asyncio.Event()
    watcher = Forever(fail=OSError("netlink socket closed"), after=broken)
    daemon = build(tmp_path, confgen=confgen, watcher=watcher)
    run = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.supervisor.started.wait(), 10)
    broken.set()
    assert await asyncio.wait_for(run, 10) == 1
    assert daemon.supervisor.stops == 1


async def test_a_component_that_returns_is_a_failure_too(tmp_path):
    class Returns:
        async def run(self):
            return None

    daemon = build(tmp_path, watcher=Returns())
    assert await asyncio.wait_for(daemon.run(), 10) == 1


async def _handler_installed(sig, before):
    for _ in range(500):
        if signal.getsignal(sig) is not before:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"no handler for {sig!r}: sending it would kill the test process")


async def test_sighup_recomputes_and_keeps_running_and_sigterm_exits_zero(tmp_path):
    daemon = build(tmp_path)
    before = signal.getsignal(signal.SIGHUP)
    run = asyncio.create_task(daemon.run())
    await _handler_installed(signal.SIGHUP, before)
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(100):
        if daemon.confgen.triggers:
            break
        await asyncio.sleep(0.01)
    assert daemon.confgen.triggers == 1
    assert not run.done()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(run, 10) == 0
    assert daemon.supervisor.stops == 1
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # the handlers went with the daemon


def no_peers():
    return NodeIntent(node="node1", router_id="10.0.0.11", local_as=64512, ipv4_address="10.0.0.11")


def test_adopted_routes_are_never_swept_before_exabgp_started(tmp_path):
    daemon = build(tmp_path, sweep_hold=0.0)
    daemon.speaker.set_intent(no_peers())  # nothing left to wait for, once BGP runs
    assert not daemon._ready_to_sweep()  # the etcd outage: ExaBGP not started, however long it lasts
    daemon._exabgp_started()
    assert daemon._ready_to_sweep()


def test_the_sweep_hold_counts_from_exabgp_start(tmp_path):
    clock = Clock(0.0)
    daemon = build(tmp_path)
    daemon.sweep_gate = SweepGate(daemon.config.sweep_hold, clock=clock)
    clock.now = 150.0  # the daemon waited 150 s for etcd
    assert not daemon._ready_to_sweep()
    daemon._exabgp_started()
    clock.now = 269.0
    assert not daemon._ready_to_sweep()
    clock.now = 270.0
    assert daemon._ready_to_sweep()


@pytest.mark.skipif(os.geteuid() != 0, reason="`node run` refuses to start without root")
@pytest.mark.parametrize("status", [0, 1])
def test_node_run_exits_with_the_daemons_status(tmp_path, monkeypatch, status):
    from click.testing import CliRunner

    import bgp.daemon
    from bgp.cli import cli

    runs = []

    def run_node(config):
        runs.append(config)
        return status

    monkeypatch.setattr(bgp.daemon, "run_node", run_node)
    result = CliRunner().invoke(cli, ["node", "run", "--node", "node1", "--run-dir", str(tmp_path)])
    assert [c.node for c in runs] == ["node1"]
    assert result.exit_code == status
