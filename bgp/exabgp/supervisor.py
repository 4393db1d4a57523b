"""Runs ExaBGP as a child of the node daemon: start, reload, restart with backoff, stop.

Stage: the BGP engine's process lifecycle (the runit service of calico/node's BIRD).

Owns: the ExaBGP process and its environment. Nothing here knows about routes.

Complicating factors (docs/exabgp-notes.md):
- SIGHUP *stops* ExaBGP. Reload is SIGUSR1: it re-reads the config and resets only neighbours whose settings
  changed; unchanged sessions keep running.
- ExaBGP listens only where ``exabgp.tcp.bind`` says, and would drop to ``nobody`` on its own after binding,
  keeping no capability and changing users under its API process. We turn its own drop off
  (``daemon.user=root``, ``daemon.drop=false``) and drop before it starts instead (``run_as``,
  ``bgp.exabgp.privileges``): the whole process, bridge included, runs unprivileged, with only
  CAP_NET_BIND_SERVICE, which its listener needs for port 179.
- Acks are on by default and deadlock a helper that does not read them; the bridge always reads, but we turn
  them off (``api.ack=false``) because the speaker reconciles by state, not by per-command replies.
- The listening address is an environment setting, not config: a change of node address or listen port needs a
  restart, not a reload (``set_environment`` reports that).
- If the daemon dies (even by SIGKILL), ExaBGP must not linger holding port 179 against the next daemon:
  the child (``bgp.exabgp.launch``) sets PR_SET_PDEATHSIG=SIGTERM, and SIGTERM closes sessions without a
  NOTIFICATION, which is what a graceful-restart peer needs to keep our routes.
- ExaBGP 5.0.15 drops a SIGUSR1 that arrives while any neighbour has updates queued (the signal is cleared
  before the "pending Adj-RIB-Out" check skips it), and dies of a SIGUSR1 that arrives before it installed its
  handler. So a reload is only sent once ExaBGP is ready (its API process connected, which it starts after the
  handlers), and is confirmed from ExaBGP's own log ("performing reload"); unconfirmed, it is sent again.
- ``reactor.speed`` is the poll() timeout in hundredths of a second. poll() wakes on API input and peer
  sockets, so single-route latency does not wait for the tick; the tick costs idle CPU (about 2 % of a core at
  1.0, 6 % at 0.1). ``bgp.exabgp.tuning`` makes the loop skip the tick while it has work, so the tick only
  paces timer checks and we run a long one (``IDLE_TICK_SPEED``, 100 ms).
- A live process is not a working one. ``restart(reason)`` is how the daemon acts on doubt: ExaBGP hung
  (``bgp.exabgp.liveness``), its API connection lost, or a second API connection from the same run (a
  respawned bridge: what ExaBGP heard and said in between is lost). It SIGKILLs ExaBGP (a stopped process
  takes no other signal) and the bridge (ExaBGP puts it in a process group of its own, and a stopped bridge
  would outlive it), and starts a new one at once, without the crash backoff. Peers keep our routes through
  it (graceful restart); the speaker re-announces everything once each session is up again. An ExaBGP that
  has not connected its API process ``api_start_deadline`` seconds after it started is restarted too.
  Restarts are counted by reason in ``calico_bgp_exabgp_restarts_total``.
- The first config of a daemon goes in without a separate check (``confgen.apply``): ExaBGP's start is its
  check. A refusal there ends ExaBGP with the reason in its log only, so we keep the lines that follow its
  "could not load/reload configuration" and, when that run ends before its API connected, log them as an
  error (MD5 keys masked, read from the file), counted as ``config-refused``. The restart waits out the
  backoff as after any exit, but a reload asked for meanwhile (confgen installed a new, checked, file)
  starts ExaBGP at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from bgp.exabgp.exit_watch import exit_watch
from bgp.exabgp.launch import PARENT_ENV, parse_adjustments
from bgp.exabgp.privileges import DROP_ENV, ExaBGPUser
from calico_bgp.backoff import Backoff, Retries
from confgen.redact import config_secrets, redact_config, redact_values

log = logging.getLogger(__name__)


def exabgp_command() -> list[str]:
    """ExaBGP, run through ``bgp.exabgp.launch`` (parent-death signal without ``preexec_fn``)."""
    return [sys.executable, "-m", "bgp.exabgp.launch"]


REFUSAL_MARK = b"could not load/reload configuration"  # ExaBGP's line before the reason, at start or reload
REFUSAL_LINES = 8  # lines of reason kept after the mark (ExaBGP writes 4-5: section, line, blank, keyword)
# ExaBGP's columns before a configuration message (log.short off): time, pid, source.
_LOG_COLUMNS = re.compile(r"^\S+\s+\d+\s+configuration(?:\s|$)")


def refusal_reason(lines: list[bytes], secrets: Iterable[str] = ()) -> str:
    """One line from ExaBGP's log lines after ``REFUSAL_MARK``: each line's text after its time, pid and
    source columns, blank ones left out, joined by "; ", with the MD5 keys ``secrets`` masked."""
    parts = []
    for raw in lines:
        line = raw.decode(errors="replace")
        columns = _LOG_COLUMNS.match(line)
        if text := (line[columns.end() :] if columns else line).strip():
            parts.append(text)
    return redact_values(redact_config("; ".join(parts)), secrets)


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``, None when it is gone."""
    # Imported here: only a relay's connection is asked about (ExaBGP's own direct one never is), and
    # psutil costs every daemon start 10-20 ms of CPU.
    import psutil

    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:  # gone, or a zombie already reaped by the time we read it
        return None


class ExaBGPSupervisor:
    def __init__(
        self,
        config: Path,
        log_file: Path,
        *,
        environment: Mapping[str, str] | None = None,
        on_start: Callable[[], None] | None = None,
        on_adjustments: Callable[[list[str]], None] | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        sleep=asyncio.sleep,
        api_start_deadline: float = 20.0,
        parent_of: Callable[[int], int | None] = parent_pid,
        registry: CollectorRegistry | None = None,
        run_as: ExaBGPUser | None = None,  # None: ExaBGP stays root
    ) -> None:
        self._config = Path(config)
        self._run_as = run_as
        self._log_file = Path(log_file)
        self._environment = dict(environment or {})
        self._on_start = on_start
        self._on_adjustments = on_adjustments  # the child's report of the tuning that applied, each start
        # No jitter: a restart reaches only this node's own ExaBGP, so there is nobody to fall in step with.
        self._retries = Retries(Backoff(first=backoff_initial, cap=backoff_max))
        self._sleep = sleep
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._restart_now = asyncio.Event()
        self._ready = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._reloaded = asyncio.Event()
        self.reload_confirm_timeout = 2.0
        self.api_start_deadline = api_start_deadline
        self._parent_of = parent_of
        self._api_seen = False  # this run of ExaBGP has had its API connection
        self._api_pid: int | None = None
        self._refusal: list[bytes] | None = None  # this run's lines after ExaBGP's REFUSAL_MARK
        self._killed: asyncio.subprocess.Process | None = None  # the run we killed, and why
        self._killed_reason = ""
        self.starts = 0
        self.reloads_sent = 0
        self.restarts: dict[str, int] = {}
        registry = registry if registry is not None else CollectorRegistry()
        self._restarts = Counter(
            "calico_bgp_exabgp_restarts",
            "ExaBGP restarts by reason: exited (crashed or stopped on its own), config-refused (it refused "
            "its configuration at start), hung (no answer to its API probe), api-lost, api-respawned, no-api "
            "(no API connection after start), environment",
            ["reason"],
            registry=registry,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def set_environment(self, environment: Mapping[str, str]) -> bool:
        """Replace the environment; returns True (and restarts ExaBGP) when it changed."""
        environment = dict(environment)
        if environment == self._environment:
            return False
        self._environment = environment
        if self._proc is not None and self._proc.returncode is None:
            log.info("ExaBGP environment changed (listen address or port): restarting it")
            self._killed, self._killed_reason = self._proc, "environment"
            self._proc.send_signal(signal.SIGTERM)
        self._restart_now.set()
        return True

    def accept_api(self, pid: int | None) -> bool:
        """May this API connection (from process ``pid``) be used? Only the first from the running ExaBGP
        itself (its ``api_direct`` adjustment, ``bgp.exabgp.tuning_channel``) or from its own child (the
        relay): a bridge left behind by an earlier ExaBGP is refused, and a second one from this ExaBGP (it
        respawned its API process) restarts ExaBGP instead, since both directions lost lines in between."""
        proc = self._proc
        if proc is None or proc.returncode is not None or proc is self._killed:
            return False
        if pid is not None and pid != proc.pid and self._parent_of(pid) != proc.pid:
            return False
        if self._api_seen:
            self.restart("ExaBGP respawned its API process: lines were lost both ways", "api-respawned")
            return False
        self._api_seen = True
        self._api_pid = pid
        self._ready.set()
        return True

    def restart(self, why: str, reason: str) -> bool:
        """Kill the running ExaBGP and its bridge, and start a new ExaBGP at once (see the module
        docstring). ``reason`` labels the restart metric. False when there was nothing to kill."""
        proc = self._proc
        if self._stopping or proc is None or proc.returncode is not None or proc is self._killed:
            return False
        log.warning("restarting ExaBGP (pid %d): %s", proc.pid, why)
        self._killed, self._killed_reason = proc, reason
        bridge = self._api_pid
        # Checked before ExaBGP dies: after that the bridge is re-parented and its pid proves nothing.
        # A direct connection (the bridge's pid is ExaBGP's own) dies with ExaBGP: nothing more to kill.
        bridge_is_ours = bridge is not None and bridge != proc.pid and self._parent_of(bridge) == proc.pid
        proc.kill()
        if bridge is not None and bridge_is_ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(bridge, signal.SIGKILL)
        self._restart_now.set()
        return True

    def mark_ready(self) -> None:
        """ExaBGP is up far enough to take signals (the daemon calls this when the API bridge connects)."""
        self._ready.set()

    async def run(self) -> None:
        """Keep ExaBGP running until ``stop``; restarts with exponential backoff after a crash."""
        reloader = asyncio.create_task(self._reload_loop())
        try:
            await self._keep_running()
        finally:
            reloader.cancel()

    async def _keep_running(self) -> None:
        self._retries.reset()
        while not self._stopping:
            started = asyncio.get_running_loop().time()
            returncode = await self._run_once()
            if self._stopping:
                break
            if asyncio.get_running_loop().time() - started > 60:
                self._retries.reset()
            killed = self._killed is not None and self._killed is self._proc
            refusal = None if killed or self._api_seen else self._refusal
            reason = self._killed_reason if killed else "exited" if refusal is None else "config-refused"
            self.restarts[reason] = self.restarts.get(reason, 0) + 1
            self._restarts.labels(reason).inc()
            if refusal is not None:
                log.error(
                    "ExaBGP refused its configuration %s and exited: %s (a new one starts it at once)",
                    self._config,
                    refusal_reason(refusal, self._config_secrets()),
                )
            if self._restart_now.is_set():
                self._restart_now.clear()
                continue
            backoff = self._retries.next_delay()
            log.warning("ExaBGP exited with %s; restarting in %.1fs", returncode, backoff)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and a stop would then wait for the next ExaBGP instead.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._restart_now.wait()
            self._restart_now.clear()

    async def _run_once(self) -> int:
        # Not our etcd credentials (ETCD_PASSWORD, the key file's path): ExaBGP never talks to etcd.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.lower().startswith("exabgp") and not k.startswith("ETCD_")
        }
        env.update(self._environment)
        env[PARENT_ENV] = str(os.getpid())
        env.pop(DROP_ENV, None)
        if self._run_as is not None:
            env[DROP_ENV] = self._run_as.drop_setting
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        self._api_seen = False
        self._api_pid = None
        self._refusal = None
        # A new ExaBGP reads the config as it is now, so a reload asked for before this point (the file was
        # written first) is already served; sending it anyway would re-read every neighbour once more.
        self._reload_wanted.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *exabgp_command(),
            "server",
            str(self._config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        self.starts += 1
        if self._stopping:  # stop() ran while we were spawning: it could not see this process
            self._proc.send_signal(signal.SIGTERM)
        log.info("ExaBGP started (pid %d)", self._proc.pid)
        if self._on_start is not None:
            self._on_start()
        proc = self._proc
        deadline = asyncio.create_task(self._api_deadline(proc))
        assert proc.stdout is not None  # spawned with stdout=PIPE
        copy = asyncio.create_task(self._copy_log(proc.stdout))
        try:
            # Not proc.wait(): asyncio completes it only once every pipe is closed, and the bridge inherits
            # ExaBGP's output pipe (its stderr), so a bridge that outlives ExaBGP would hold up the restart.
            async with exit_watch(proc.pid) as ended:
                while not copy.done() and proc.returncode is None:
                    if ended is None:  # no pidfd here: look at the returncode now and then
                        await asyncio.wait({copy}, timeout=0.2)
                    elif ended.done():  # it ended; asyncio's child watcher sets the returncode any moment
                        await asyncio.wait({copy}, timeout=0.01)
                    else:
                        await asyncio.wait({copy, ended})
            if proc.returncode is not None and not copy.done():
                await asyncio.wait({copy}, timeout=1.0)  # the last lines ExaBGP wrote
            return proc.returncode if proc.returncode is not None else await proc.wait()
        finally:
            deadline.cancel()
            copy.cancel()

    async def _api_deadline(self, proc: asyncio.subprocess.Process) -> None:
        await self._sleep(self.api_start_deadline)
        if proc is self._proc and not self._api_seen:
            self.restart(f"no API connection {self.api_start_deadline:.0f}s after start", "no-api")

    async def _copy_log(self, stream: asyncio.StreamReader) -> None:
        """ExaBGP's output goes to its log file; we read it on the way for reload confirmations and for the
        launcher's report of the adjustments that applied (``bgp.exabgp.launch``)."""
        # Root's only: the run directory may be open to ExaBGP's group, and a log is no place to share.
        fd = os.open(self._log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "ab", buffering=0) as out:
            while True:
                line = await stream.readline()
                if not line:
                    return
                out.write(line)
                if self._refusal is not None:
                    if len(self._refusal) < REFUSAL_LINES:
                        self._refusal.append(line)
                elif REFUSAL_MARK in line:
                    self._refusal = []
                if b"performing reload" in line:
                    self._reloaded.set()
                elif self._on_adjustments is not None and (applied := parse_adjustments(line)) is not None:
                    self._on_adjustments(applied)

    def reload(self) -> None:
        """SIGUSR1: re-read the config; only changed neighbours are reset. Sent when ExaBGP is ready and
        repeated until ExaBGP confirms it (see the module docstring). While a crashed ExaBGP waits out its
        backoff, a new file starts it at once."""
        self._reload_wanted.set()
        proc = self._proc
        if proc is not None and proc.returncode is not None and not self._stopping:
            self._restart_now.set()

    def _config_secrets(self) -> set[str]:
        """The MD5 keys in the config file, to mask in what we log of ExaBGP's complaints about it."""
        try:
            return config_secrets(self._config.read_text())
        except (OSError, UnicodeDecodeError):
            return set()

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_wanted.wait()
            await self._ready.wait()
            if not self._reload_wanted.is_set():  # served by a start while we waited for readiness
                continue
            proc = self._proc
            if proc is None or proc.returncode is not None:
                await asyncio.sleep(0.1)
                continue
            self._reload_wanted.clear()
            self._reloaded.clear()
            log.info("reloading ExaBGP (SIGUSR1)")
            proc.send_signal(signal.SIGUSR1)
            self.reloads_sent += 1
            try:
                async with asyncio.timeout(self.reload_confirm_timeout):  # not wait_for: see the restart wait
                    await self._reloaded.wait()
            except TimeoutError:
                if proc.returncode is None and proc is self._proc:
                    log.warning("ExaBGP did not act on the reload (updates still queued?); sending it again")
                    self._reload_wanted.set()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._restart_now.set()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        if not await _exited(proc, timeout):
            log.warning("ExaBGP did not stop within %.0fs; killing it", timeout)
            proc.kill()
            await _exited(proc, timeout)


async def _exited(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    """Wait for the process itself to end (see ``_run_once`` for why not ``proc.wait()``)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while proc.returncode is None and loop.time() < until:
        await asyncio.sleep(0.05)
    return proc.returncode is not None
