"""`calico-bgp node run`: the node daemon (calico/node's confd + BIRD, in one asyncio process plus ExaBGP).

Stage: wiring. This is the one place where the pipeline's stages are built and connected — the etcd syncer
feeds confgen; confgen's intent feeds the speaker and the ExaBGP environment, its rendered file feeds ExaBGP
(reload on change); the bridge feeds ExaBGP's events to the speaker; the kernel watcher feeds workload routes
to the speaker; the speaker drives the API commands and the route table.

Owns: the task group, signal handling and shutdown order.

Complicating factors:
- ExaBGP must not start before the first config is rendered and validated (it would run with no neighbours
  and an empty listener), so the supervisor waits for confgen's first render.
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
import time
from dataclasses import dataclass
from pathlib import Path

from bgp import readiness
from bgp.build_info import BuildInfo
from bgp.exabgp import bridge
from bgp.exabgp.channel import ApiChannel
from bgp.exabgp.privileges import ExaBGPUser, config_file_access, prepare_run_dir
from bgp.exabgp.supervisor import ExaBGPSupervisor, exabgp_environment
from bgp.gtsm import Gtsm, GtsmError
from bgp.http_endpoints import EndpointServer, LoopCall
from bgp.limits import DEFAULT_MAX_AS_PATH_LENGTH, DEFAULT_MAX_PREFIXES, LimitSettings, PeerLimits
from bgp.loglevel import LogLevel
from bgp.metrics import SpeakerMetrics, build_registry
from bgp.nodestatus import AgentState, StatusInputs, agent_version
from bgp.nodestatus_writer import NodeStatusReporter
from bgp.speaker import Speaker
from bgp.status import ControlServer, status_report
from bgp.sweep_gate import SweepGate
from bgp.watchdog import Health, LoopWatchdog
from confgen.apply import ConfigWriter
from confgen.calc import router_id_setting
from confgen.datastore.etcd import PROBE_INTERVAL, PROBE_TIMEOUT, EtcdClient, EtcdSyncer
from confgen.datastore.etcd_security import EtcdSecurity
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


@dataclass(frozen=True)
class NodeConfig:
    node: str
    etcd_endpoints: tuple[str, ...]
    run_dir: Path
    metrics_port: int = 9094
    metrics_address: str = "0.0.0.0"
    resync_interval: float = 90.0  # Felix's RouteRefreshInterval
    sweep_hold: float = 120.0  # BIRD's default graceful-restart time; counted from ExaBGP's start
    secrets_dir: Path | None = None  # BGP passwords' secretKeyRef, laid out like a Kubernetes secret volume
    router_id: str | None = None  # CALICO_ROUTER_ID: an IPv4 literal or "hash"
    max_prefixes: int = DEFAULT_MAX_PREFIXES  # per peer; 0 = unlimited (bgp.limits says why this default)
    max_as_path_length: int = DEFAULT_MAX_AS_PATH_LENGTH  # longer AS_PATHs are treated as withdraws
    log_level: int = logging.INFO  # --log-level; a BGPConfiguration logSeverityScreen overrides it live
    exabgp_user: ExaBGPUser | None = None  # ExaBGP drops to this user (bgp.exabgp.privileges); None: root
    etcd_security: EtcdSecurity = EtcdSecurity()  # TLS files and username/password, as calico-node reads them


def api_run_line(socket_path: Path, *, python: str = sys.executable, script: str = bridge.__file__) -> str:
    """The command ExaBGP runs as its API process: ``python`` running the bridge ``script`` (this
    interpreter and this installation's bridge unless told otherwise) connected to ``socket_path``."""
    # ExaBGP splits the run line on spaces and confgen refuses quotes, so paths are used as they are; the
    # renderer rejects a path it cannot place safely with a clear error.
    # -I -S: the bridge needs only the standard library; skipping site and the venv's .pth files saves
    # ~1.5 MB of RSS and some start-up time on every (re)spawn.
    return f"{python} -I -S {script} {socket_path}"


class NodeDaemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        run_dir = config.run_dir
        self.registry = build_registry()
        self.log_level = LogLevel(config.log_level)
        self.build_info = BuildInfo(self.registry)
        self._started = time.monotonic()  # readiness is strict for its first 30 s (bgp.readiness)
        self._api_down_since: float | None = None  # ExaBGP should run but has no API connection
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
        self.supervisor = ExaBGPSupervisor(
            run_dir / "exabgp.conf",
            run_dir / "exabgp.log",
            environment=exabgp_environment([], 179),
            registry=self.registry,
            on_start=self._exabgp_started,
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
                "datastore", max_silence=PROBE_INTERVAL + PROBE_TIMEOUT + 5.0, check=self._datastore_problem
            ),
            registry=self.registry,
        )
        # CalicoNodeStatus requests are taken out of the syncer's snapshots: confgen never sees them, so the
        # status the reporter writes back cannot cause a render.
        self.node_status = NodeStatusReporter(
            self.syncer.client_factory, config.node, self._node_status_inputs, registry=self.registry
        )
        self._agent_times: tuple[float | None, float | None] = (None, None)  # ExaBGP's start, last reload
        self._last_resync = 0.0  # monotonic time of the last kernel read-back; run() starts the count
        self.confgen = Confgen(
            StatusSplitter(self.syncer, config.node, self.node_status.update),
            config.node,
            ConfigWriter(run_dir / "exabgp.conf", **config_file_access(config.exabgp_user)),
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
        # The import guard's connected subnets: the networks of this node's interface addresses.
        self.addresses = InterfaceAddressWatcher(self.netlink, on_change=self.speaker.set_interface_addresses)
        self.control = ControlServer(
            run_dir / "ctl.sock",
            {
                "status": self._status,
                "routes": self._routes,
                "health": self._health,
                "ready": lambda: self._ready().as_json(),
                "live": lambda: self._live().as_json(),
            },
        )
        # ExaBGP: down while it has no API connection (the channel's probe ends the connection of a hung
        # one); any event line from it is a sign of life.
        self._exabgp_alive = self.health.register(
            "exabgp", check=lambda: None if self.channel.connected.is_set() else "no API connection to ExaBGP"
        )
        self._intent: NodeIntent | None = None
        # Adopted kernel routes are swept on evidence from BGP, never on a clock from our own start.
        self.sweep_gate = SweepGate(config.sweep_hold)

    # -------------------------------------------------------------- callbacks

    def _exabgp_started(self) -> None:
        # The supervisor runs only after confgen's first render: this ExaBGP has a full config.
        self._agent_times = (time.time(), None)
        if self._api_down_since is None:
            self._api_down_since = time.monotonic()
        self.speaker.exabgp_restarted()
        self.sweep_gate.exabgp_started()

    def _api_connected(self, pid: int | None) -> bool:
        # Only the first bridge of the running ExaBGP (the supervisor restarts ExaBGP on a second one).
        # ExaBGP starts it after installing its signal handlers: reloads may go from now on.
        if not self.supervisor.accept_api(pid):
            return False
        self._api_down_since = None
        self.speaker.exabgp_up()
        return True

    def _api_lost(self) -> None:
        # Lines were lost both ways: rebuilt from scratch with a new ExaBGP, never patched up.
        self._api_down_since = self._api_down_since or time.monotonic()
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
        self._intent = intent
        self.log_level.apply(intent.log_severity)
        self.speaker.set_intent(intent)
        self.supervisor.set_environment(exabgp_environment(list(intent.listen_addresses), intent.listen_port))

    def _workloads_changed(self, changes) -> None:
        # Only the prefixes the burst touched (prefix -> device, None when gone): O(change), not O(workloads).
        self.speaker.update_workload_routes(changes)

    def _routes(self) -> dict:
        return {"node": self.config.node, "routes": self.speaker.routes_report()}

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
        self._agent_times = (self._agent_times[0], time.time())
        self.supervisor.reload()

    def _node_status_inputs(self, classes: frozenset[str]) -> StatusInputs:
        """The daemon's state for a CalicoNodeStatus (bgp.nodestatus); the Loc-RIB only when asked for."""
        boot, reloaded = self._agent_times
        agent = AgentState(self.channel.connected.is_set(), agent_version(), boot, reloaded)
        routes: tuple = ()
        interfaces: dict[str, str] = {}
        if "Routes" in classes:
            routes = tuple(self.speaker.routes_report())
            for dst, route in getattr(self.table, "desired", {}).items():
                if route.nexthops and route.nexthops[0].ifname:
                    interfaces[dst] = route.nexthops[0].ifname
        peers = tuple(self.speaker.peer_statuses()) if "BGP" in classes else ()
        return StatusInputs(agent, self._intent, peers, routes, interfaces)

    def _ready(self) -> readiness.Verdict:
        """`calico-bgp health --ready` and /readyz (bgp.readiness has the rules)."""
        facts = readiness.ReadyFacts(
            uptime=time.monotonic() - self._started,
            datastore_synced=self.syncer.revision > 0,
            config_rendered=self.confgen.config is not None,
            exabgp_connected=self.channel.connected.is_set(),
            peers=tuple(
                readiness.PeerState(s.address, s.family, s.established) for s in self.speaker.peer_statuses()
            ),
            end_of_rib_pending=not self.speaker.initial_sync_done(),
        )
        return readiness.readiness(facts)

    def _live(self) -> readiness.Verdict:
        """`calico-bgp health --live` and /livez; answered on the event loop, so a blocked one cannot."""
        now = time.monotonic()
        down_since = self._api_down_since
        facts = readiness.LiveFacts(
            components=tuple(
                readiness.ComponentState(c.name, c.state, c.detail) for c in self.health.components()
            ),
            exabgp_wanted=self.confgen.config is not None,
            exabgp_connected=self.channel.connected.is_set(),
            exabgp_disconnected_for=0.0 if down_since is None else now - down_since,
            probe_waiting=self.channel.liveness.waiting(now),
        )
        return readiness.liveness(facts)

    def _datastore_problem(self) -> str | None:
        if self.syncer.in_sync:
            return None
        cause = f": {self.syncer.last_error}" if self.syncer.last_error else ""
        return f"not in sync with etcd (the last good view is kept){cause}"

    def _health(self) -> dict:
        """Answered from the event loop: no answer at all (a timeout) means the daemon is hung."""
        report = self.health.report()
        report["node"] = self.config.node
        dog = self.loop_watchdog
        report["event_loop"] = {"lag_seconds": dog.lag, "max_lag_seconds": dog.max_lag}
        return report

    def _status(self) -> dict:
        warnings = list(self._intent.warnings) if self._intent else ["no configuration rendered yet"]
        if not self.syncer.in_sync:
            warnings.append("datastore unreachable: running on the last good configuration")
        return status_report(self.config.node, self.speaker.peer_statuses(), warnings)

    # -------------------------------------------------------------- lifecycle

    async def _resync_loop(self) -> None:
        """Periodic full read-back of our kernel routes; also ends the start-up sweep hold."""
        while True:
            await asyncio.sleep(1.0)
            try:
                if self.table.holding_deletes and self._ready_to_sweep():
                    log.info("sweeping adopted routes nobody re-announced: %s", self.sweep_gate.opened_by)
                    self.table.hold_deletes(False)
                    self.speaker.kernel_changed()
                # Only the refused destinations are written again; the speaker recomputes nothing.
                await self.table.retry_due()
                if time.monotonic() - self._last_resync >= self.config.resync_interval:
                    self._last_resync = time.monotonic()
                    result = await self.table.resync()
                    if result.repaired:
                        log.warning("route resync repaired %d routes", result.repaired)
            except OSError as exc:
                log.warning("kernel route resync failed: %s", exc)

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
        self._last_resync = time.monotonic()
        await self.control.start()
        await self.channel.start()
        prepare_run_dir(config.run_dir, config.exabgp_user, config.run_dir / "exabgp.conf")
        endpoints = None
        if config.metrics_port:
            on_loop = LoopCall(asyncio.get_running_loop())
            probes = {
                "/readyz": ("ready", lambda: on_loop(self._ready)),
                "/livez": ("live", lambda: on_loop(self._live)),
            }
            endpoints = EndpointServer(config.metrics_address, config.metrics_port, self.registry, probes)
            endpoints.start()
        build_info = asyncio.create_task(self.build_info.look_up(), name="build-info")
        tasks = [
            asyncio.create_task(self.confgen.run(), name="confgen"),
            asyncio.create_task(self.watcher.run(), name="kernel-watcher"),
            asyncio.create_task(self.addresses.run(), name="address-watcher"),
            asyncio.create_task(self.speaker.run(), name="speaker"),
            asyncio.create_task(self._resync_loop(), name="route-resync"),
            asyncio.create_task(self.loop_watchdog.run(), name="loop-watchdog"),
            asyncio.create_task(self.channel.run(), name="exabgp-liveness"),
            asyncio.create_task(self.node_status.run(), name="node-status"),
            asyncio.create_task(self.gtsm.watch(), name="gtsm-watch"),
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
