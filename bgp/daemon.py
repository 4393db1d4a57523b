"""`calico-bgp node run`: the node daemon (calico/node's confd + BIRD, in one asyncio process plus ExaBGP).

Stage: wiring. This is the one place where the pipeline's stages are built and connected — the etcd syncer
feeds confgen; confgen's intent feeds the speaker and the ExaBGP environment, its rendered file feeds ExaBGP
(reload on change); the bridge feeds ExaBGP's events to the speaker; the kernel watcher feeds workload routes
to the speaker; the speaker drives the API commands and the route table.

Owns: the task group, signal handling and shutdown order. What the daemon reports about itself (status,
health, ready, live, CalicoNodeStatus) is gathered by ``bgp.daemon_reports``, the kernel's periodic upkeep
is ``bgp.kernel_upkeep``, and its settings are ``bgp.node_config``.

Complicating factors:
- ExaBGP must not start before the first config is rendered (it would run with no neighbours and an empty
  listener), so the supervisor waits for confgen's first render. That file is checked by ExaBGP's own start
  (``confgen.apply``: there is no earlier file to keep); a refusal is logged with ExaBGP's reason.
- Shutdown leaves our kernel routes in place (BIRD's ``persist``): pods on other nodes keep their paths while
  this daemon restarts; the next run adopts them and sweeps only what is no longer wanted.
- Routes found in the kernel at start are adopted and their deletion is held until every session has come up
  and sent End-of-RIB, or ExaBGP has run with a full config for the hold time (``bgp.sweep_gate``), so a
  restart does not blackhole anything, however long the datastore keeps ExaBGP from starting.
- Supervision: every component runs until cancelled, so one that raises or returns ends the daemon with exit
  status 1, after the same stop as SIGTERM (which exits 0), and a supervisor with restart-on-failure
  restarts it. SIGHUP re-reads the configuration and the secret files instead of stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from bgp.bfd_wiring import BfdWiring, ServiceFactory, engine_factory
from bgp.build_info import BuildInfo
from bgp.daemon_reports import DaemonReports, datastore_problem
from bgp.exabgp import bridge
from bgp.exabgp import check as exabgp_check
from bgp.exabgp.channel import ApiChannel
from bgp.exabgp.environment import exabgp_environment
from bgp.exabgp.privileges import config_file_access, prepare_run_dir
from bgp.exabgp.supervisor import ExaBGPSupervisor
from bgp.gtsm import Gtsm, GtsmError
from bgp.http_endpoints import EndpointServer, LoopCall
from bgp.kernel_upkeep import KernelUpkeep
from bgp.limits import LimitSettings, PeerLimits
from bgp.loglevel import LogLevel
from bgp.metrics import BfdMetrics, PropagationCollector, SpeakerMetrics, build_registry
from bgp.node_config import NodeConfig
from bgp.nodestatus_writer import NodeStatusReporter
from bgp.speaker import Speaker
from bgp.status import ControlServer
from bgp.sweep_gate import SweepGate
from bgp.watchdog import Health, LoopWatchdog
from confgen.apply import ConfigWriter
from confgen.calc import router_id_setting
from confgen.datastore.etcd import PROBE_INTERVAL, PROBE_TIMEOUT, EtcdSyncer
from confgen.datastore.etcd_client import EtcdClient
from confgen.intent import NodeIntent
from confgen.loop import Confgen
from confgen.nodestatus import StatusSplitter
from confgen.refusals import SinkRefusals
from confgen.secrets import SecretStore
from routes.addresses import InterfaceAddressWatcher
from routes.bounds import BoundHits
from routes.model import RTPROT_BIRD
from routes.monitor import WorkloadRouteWatcher
from routes.netlink import KernelNetlink
from routes.recursive import NexthopResolver
from routes.table import RouteTable

log = logging.getLogger(__name__)

# How often the kernel watcher compares a dump with what its notifications built: a silently stalled watch is
# replaced within this (plus a 1 s recheck) of the first change it missed. One dump of the main table: a few
# hundred ms of CPU at 100k routes, under 1% at this rhythm.
KERNEL_VERIFY_INTERVAL = 30.0


def api_run_line(
    socket_path: Path,
    *,
    socat: str | None = bridge.INSTALLED,
    python: str = sys.executable,
    script: str = bridge.__file__,
) -> str:
    """The command ExaBGP runs as its API process, connected to ``socket_path``: ``socat`` (by default the
    one installed, looked up and logged here, once per daemon) or, without it, ``python`` running the
    bridge ``script`` (this interpreter and this installation's bridge unless told otherwise)."""
    if socat == bridge.INSTALLED:
        socat = bridge.installed_socat()
        log.info("ExaBGP's API relay: %s", socat or f"the Python bridge ({bridge.RELAY_ENV} or no socat)")
    return bridge.run_line(socket_path, socat=socat, python=python, script=script)


class NodeDaemon:
    def __init__(self, config: NodeConfig, *, bfd_factory: ServiceFactory = engine_factory) -> None:
        self.config = config
        run_dir = config.run_dir
        self.registry = build_registry()
        self.log_level = LogLevel(config.log_level)
        self.build_info = BuildInfo(self.registry)
        # One per registry: the API command builder, the config renderer and the nft writer all report here.
        self.refusals = SinkRefusals(self.registry)
        self.netlink = KernelNetlink()
        self.table = RouteTable(self.netlink, proto=RTPROT_BIRD, registry=self.registry)
        self.bounds = BoundHits(self.registry)  # calico_bgp_bound_hits_total{what}: docs/bounds.md
        self.resolver = NexthopResolver(proto=RTPROT_BIRD, bounds=self.bounds)
        self.channel = ApiChannel(
            run_dir / "api.sock",
            on_line=self._on_line,
            on_connect=self._api_connected,
            on_disconnect=self._api_lost,
            on_hung=self._exabgp_hung,
            registry=self.registry,
            group=config.exabgp_user.gid if config.exabgp_user else None,
        )
        self.speaker = Speaker(
            send=self.channel.send,
            route_table=self.table,
            metrics=SpeakerMetrics(self.registry),
            resolve=self.resolver.resolve,
            limits=PeerLimits(LimitSettings(config.max_prefixes, config.max_as_path_length)),
            refusals=self.refusals,
        )
        # calico_bgp_propagation_*_seconds; p50/p99 of the last minute go to `calico-bgp status`.
        PropagationCollector(self.speaker.propagation, self.registry)
        self.supervisor = ExaBGPSupervisor(
            run_dir / "exabgp.conf",
            run_dir / "exabgp.log",
            environment=exabgp_environment([], 179),
            registry=self.registry,
            on_start=self._exabgp_started,
            on_adjustments=self.build_info.report,
            run_as=config.exabgp_user,
        )
        endpoints = list(config.etcd_endpoints)
        # Liveness: each component reports its signs of life; `calico-bgp health` and the metrics read them.
        self.health = Health(registry=self.registry)
        self.loop_watchdog = LoopWatchdog(self.health, registry=self.registry)
        self.syncer = EtcdSyncer(
            lambda: EtcdClient(endpoints, security=config.etcd_security),
            config.node,
            heartbeat=self.health.register(
                "datastore",
                max_silence=PROBE_INTERVAL + PROBE_TIMEOUT + 5.0,
                check=lambda: datastore_problem(self.syncer),
            ),
            registry=self.registry,
        )
        # CalicoNodeStatus requests are taken out of the syncer's snapshots: confgen never sees them, so the
        # status the reporter writes back cannot cause a render.
        # Through a lambda: the reports are built once confgen, which takes this reporter, exists.
        self.node_status = NodeStatusReporter(
            self.syncer.client_factory,
            config.node,
            lambda classes: self.reports.node_status_inputs(classes),
            registry=self.registry,
        )
        self.confgen = Confgen(
            StatusSplitter(self.syncer, config.node, self.node_status.update),
            config.node,
            ConfigWriter(
                run_dir / "exabgp.conf",
                validate_cmd=exabgp_check.command(),
                **config_file_access(config.exabgp_user),
            ),
            api_run=api_run_line(run_dir / "api.sock"),
            on_intent=self._on_intent,
            reload=self._reload,
            registry=self.registry,
            router_id=router_id_setting(config.router_id, config.node),
            secrets=SecretStore(config.secrets_dir) if config.secrets_dir else None,
            refusals=self.refusals,
        )
        self.gtsm = Gtsm(registry=self.registry, refusals=self.refusals)
        self.watcher = WorkloadRouteWatcher(
            self.netlink,
            # No timer: a report waits only for the watcher to drain what the socket already holds, so a burst
            # still coalesces per read while a single pod route goes out at once (the benchmark: 50 ms of
            # debounce was the whole of a 55 ms single-route latency, 2 ms left 5.5 ms, none leaves 3.6 ms).
            # Each report's work is incremental (deltas), so small reports cost little.
            debounce=0.0,
            on_change=self._workloads_changed,
            observers=[self._kernel_event],
            dump_observers=[self._kernel_dump],
            # A watch that silently stops hearing is found by comparing a dump with its view; each
            # comparison that agrees is the watcher's sign of life.
            verify_interval=KERNEL_VERIFY_INTERVAL,
            heartbeat=self.health.register("kernel-watcher", max_silence=2 * KERNEL_VERIFY_INTERVAL + 10.0),
            registry=self.registry,
        )
        # BFD (docs/bfd.md): sessions for the peers that ask and are directly connected; their state holds
        # and tears down the BGP sessions through the speaker.
        self.bfd = BfdWiring(self.speaker, config.bfd, factory=bfd_factory, metrics=BfdMetrics(self.registry))
        # The import guard's connected subnets, and BFD's: the networks of this node's interface addresses.
        self.addresses = InterfaceAddressWatcher(self.netlink, on_change=self._interface_addresses)
        self.reports = DaemonReports(
            config.node,
            syncer=self.syncer,
            confgen=self.confgen,
            channel=self.channel,
            speaker=self.speaker,
            table=self.table,
            health=self.health,
            watchdog=self.loop_watchdog,
        )
        self.control = ControlServer(
            run_dir / "ctl.sock",
            {
                "status": self.reports.status,
                "routes": self.reports.routes,
                "health": self.reports.health_report,
                "ready": lambda: self.reports.ready().as_json(),
                "live": lambda: self.reports.live().as_json(),
            },
        )
        # ExaBGP: down while it has no API connection (the channel's probe ends the connection of a hung
        # one); any event line from it is a sign of life.
        self._exabgp_alive = self.health.register(
            "exabgp", check=lambda: None if self.channel.connected.is_set() else "no API connection to ExaBGP"
        )
        # Adopted kernel routes are swept on evidence from BGP, never on a clock from our own start.
        self.sweep_gate = SweepGate(config.sweep_hold)
        self.upkeep = KernelUpkeep(
            self.table,
            ready_to_sweep=self._ready_to_sweep,
            opened_by=lambda: self.sweep_gate.opened_by,
            reapply=self.speaker.kernel_changed,
            interval=config.resync_interval,
        )

    # -------------------------------------------------------------- callbacks

    def _exabgp_started(self) -> None:
        # The supervisor runs only after confgen's first render: this ExaBGP has a full config.
        self.reports.exabgp_started()
        self.build_info.exabgp_started()
        self.speaker.exabgp_restarted()
        self.sweep_gate.exabgp_started()

    def _api_connected(self, pid: int | None) -> bool:
        # Only the first bridge of the running ExaBGP (the supervisor restarts ExaBGP on a second one).
        # ExaBGP starts it after installing its signal handlers: reloads may go from now on.
        if not self.supervisor.accept_api(pid):
            return False
        self.reports.api_connected()
        self.speaker.exabgp_up()
        return True

    def _api_lost(self) -> None:
        # Lines were lost both ways: rebuilt from scratch with a new ExaBGP, never patched up.
        self.reports.api_lost()
        self.speaker.exabgp_down("ExaBGP restarting: its API connection was lost")
        self.supervisor.restart("its API connection was lost", "api-lost")

    def _exabgp_hung(self, reason: str) -> None:
        self.speaker.exabgp_down("ExaBGP not responding: restarting it")
        self.supervisor.restart(reason, "hung")

    def _on_line(self, line: str) -> None:
        self._exabgp_alive()
        self.speaker.handle_line(line)

    async def _on_intent(self, intent: NodeIntent) -> None:
        # TTL security first: confgen renders and reloads only after we return, so a session that needs
        # GTSM never comes up unprotected. A failure makes confgen retry (and hold the render back).
        try:
            await self.gtsm.apply(intent)
        except GtsmError as exc:
            log.error("TTL security rules not applied: %s", exc)
            raise
        self.reports.intent = intent
        self.log_level.apply(intent.log_severity)
        self.speaker.set_intent(intent)
        self.bfd.set_intent(intent)
        self.supervisor.set_environment(exabgp_environment(list(intent.listen_addresses), intent.listen_port))

    def _interface_addresses(self, addresses: frozenset[str]) -> None:
        self.speaker.set_interface_addresses(addresses)
        self.bfd.set_interface_addresses(addresses)

    def _workloads_changed(self, changes) -> None:
        # Only the prefixes the burst touched (prefix -> device, None when gone): O(change), not O(workloads).
        # The burst's read time (the watch's clock, monotonic as the speaker's) times its export.
        self.speaker.update_workload_routes(changes, read_at=self.watcher.burst_read_at)

    def _kernel_event(self, event) -> None:
        # Both must see every event. Neither cause needs BGP work: a repair applies what the table holds,
        # a resolution change recomputes the kernel routes from the Loc-RIB (the resolver's contract).
        repair = self.table.observe(event)
        if self.resolver.observe(event):
            self.speaker.nexthops_changed()
        elif repair:
            self.speaker.kernel_changed()

    def _kernel_dump(self, routes) -> None:
        """The watcher (re)read the main table: at start, or after notifications were lost."""
        self.resolver.load(routes)
        self.table.invalidate()
        self.speaker.nexthops_changed()  # the resolver starts over: every next hop in use is asked again

    def _reload(self) -> None:
        self.reports.reloaded()
        self.supervisor.reload()

    # -------------------------------------------------------------- lifecycle

    def _ready_to_sweep(self) -> bool:
        return self.sweep_gate.ready(self.speaker.initial_sync_done())

    def _reread(self) -> None:
        """SIGHUP: compute the configuration again from the datastore view (kept current by the watch) and
        the secret files, read afresh; what changed is rendered and reloaded as for any change."""
        log.info("SIGHUP: re-reading the configuration and the secret files")
        self.confgen.trigger()

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT (returns 0) or until a component task ends (returns 1: a supervisor
        should restart us). Both stop the same way: ExaBGP first, kernel routes left in place."""
        config = self.config
        config.run_dir.mkdir(parents=True, exist_ok=True)
        config.run_dir.chmod(0o700)
        await self.control.start()
        await self.channel.start()
        prepare_run_dir(config.run_dir, config.exabgp_user, config.run_dir / "exabgp.conf")
        endpoints = None
        if config.metrics_port:
            on_loop = LoopCall(asyncio.get_running_loop())
            probes = {
                "/readyz": ("ready", lambda: on_loop(self.reports.ready)),
                "/livez": ("live", lambda: on_loop(self.reports.live)),
            }
            endpoints = EndpointServer(config.metrics_address, config.metrics_port, self.registry, probes)
            endpoints.start()
        build_info = asyncio.create_task(self.build_info.run(), name="build-info")  # returns: not a component
        tasks = [
            asyncio.create_task(self.confgen.run(), name="confgen"),
            asyncio.create_task(self.watcher.run(), name="kernel-watcher"),
            asyncio.create_task(self.addresses.run(), name="address-watcher"),
            asyncio.create_task(self.speaker.run(), name="speaker"),
            asyncio.create_task(self.upkeep.run(), name="route-resync"),
            asyncio.create_task(self.loop_watchdog.run(), name="loop-watchdog"),
            asyncio.create_task(self.channel.run(), name="exabgp-liveness"),
            asyncio.create_task(self.node_status.run(), name="node-status"),
            asyncio.create_task(self.gtsm.watch(), name="gtsm-watch"),
            asyncio.create_task(self.bfd.run(), name="bfd"),
        ]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reread)
        stop_blocked_check = self.loop_watchdog.start_thread()
        first = asyncio.create_task(self.confgen.first_render())
        stopped = asyncio.create_task(stop.wait())
        status = 0
        try:
            done, _ = await asyncio.wait([first, *tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
            if first in done and not stop.is_set() and not done.intersection(tasks):
                log.info("first configuration rendered; starting ExaBGP")
                tasks.append(asyncio.create_task(self.supervisor.run(), name="exabgp"))
                done, _ = await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
            status = _report_ended(done.intersection(tasks))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            first.cancel()
            stopped.cancel()
            log.info("stopping: ExaBGP first, kernel routes stay in place")
            await self.supervisor.stop()
            with contextlib.suppress(Exception):
                await self.gtsm.remove()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            build_info.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await build_info
            if endpoints is not None:
                endpoints.close()
            await self.channel.close()
            await self.control.close()
            stop_blocked_check.set()
        return status


def _report_ended(ended: set[asyncio.Task]) -> int:
    """Every component runs until cancelled: one that returned or raised is a failure of the daemon."""
    for task in ended:
        if task.cancelled():
            log.error("task %s was cancelled", task.get_name())
        elif task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
        else:
            log.error("task %s ended", task.get_name())
    return 1 if ended else 0


def run_node(config: NodeConfig) -> int:
    """Run the daemon; returns the process exit status."""
    return asyncio.run(NodeDaemon(config).run())
