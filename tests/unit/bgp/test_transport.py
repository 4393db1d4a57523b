"""The ExaBGP side of the daemon without ExaBGP: the bridge process, the channel, and the supervisor,
each against a stand-in (a pipe pair, a shell script) so they run anywhere in well under a second."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from bgp.daemon import api_run_line
from bgp.exabgp import bridge as bridge_module
from bgp.exabgp import supervisor as sup
from bgp.exabgp.channel import ApiChannel
from bgp.exabgp.environment import exabgp_environment

SOCAT = bridge_module.installed_socat({"PATH": os.environ.get("PATH", "")})


@pytest.fixture(params=["socat", "python"])
def relay(request) -> str | None:
    """Each API process the daemon may run: socat (where installed) and the Python bridge."""
    if request.param == "socat" and SOCAT is None:
        pytest.skip("socat is not installed (make deps)")
    return SOCAT if request.param == "socat" else None


async def _start_bridge(sock: Path, relay: str | None = None):
    return await asyncio.create_subprocess_exec(
        *api_run_line(sock, socat=relay).split(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize(
    ("path", "socat", "relay"),
    [
        ("/var/run/calico-bgp/api.sock", "/usr/bin/socat", "socat"),
        ("/var/run/calico-bgp/api.sock", None, "python"),
        ("/run/a:b/api.sock", "/usr/bin/socat", "python"),  # ":" separates socat's address fields
        ("/run/a,b/api.sock", "/usr/bin/socat", "python"),  # "," starts socat's address options
        ("/run/a!!b/api.sock", "/usr/bin/socat", "python"),  # "!!" splits a socat address in two
    ],
)
def test_run_line_uses_socat_only_where_the_path_reads_literally(path, socat, relay):
    line = bridge_module.run_line(Path(path), socat=socat, python="/usr/bin/python3", script="/b/bridge.py")
    words = line.split()
    if relay == "socat":
        assert words == ["/usr/bin/socat", *bridge_module.SOCAT_OPTIONS, "STDIO", f"UNIX-CONNECT:{path}"]
    else:
        assert words == ["/usr/bin/python3", "-I", "-S", "/b/bridge.py", path]


@pytest.mark.parametrize(
    ("environ", "found"),
    [({}, True), ({bridge_module.RELAY_ENV: "python"}, False), ({bridge_module.RELAY_ENV: "socat"}, True)],
)
def test_installed_socat_is_looked_up_on_path_unless_told_otherwise(tmp_path, environ, found):
    fake = tmp_path / "socat"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert bridge_module.installed_socat({"PATH": str(tmp_path), **environ}) == (str(fake) if found else None)
    assert bridge_module.installed_socat({"PATH": str(tmp_path / "empty"), **environ}) is None


async def test_relay_is_byte_exact_both_ways_and_exits_when_the_daemon_closes(tmp_path, relay):
    """Lines longer than one read (64 KiB) arrive whole and unchanged in both directions, and the relay exits
    as soon as the daemon closes, though ExaBGP (our stdin) stays open and quiet."""
    received: list[str] = []
    channel = ApiChannel(tmp_path / "api.sock", on_line=received.append)
    await channel.start()
    proc = await _start_bridge(tmp_path / "api.sock", relay)
    try:
        await asyncio.wait_for(channel.connected.wait(), 5)
        # Every ASCII byte after newline and multi-byte UTF-8 (so the channel's decoding is lossless and equal
        # text means equal bytes), in a line of 190 KiB, with short lines around it.
        body = (bytes(range(11, 128)) + "é✓€".encode()) * 1500
        up = [b'{"type": "state"}', body, "é ✓".encode()]
        proc.stdin.write(b"".join(line + b"\n" for line in up))
        await proc.stdin.drain()
        await _until(lambda: len(received) == 3)
        assert received == [line.decode("utf-8", "replace") + "\n" for line in up]
        down = ["show neighbor summary", "x" * 100_000 + " ✓", "announce eor"]
        await channel.send(down)
        expected = "".join(line + "\n" for line in down).encode()
        assert await asyncio.wait_for(proc.stdout.readexactly(len(expected)), 5) == expected
        # The daemon ends the connection (as it does when it restarts ExaBGP): the relay exits at once.
        await channel.close()
        assert await asyncio.wait_for(proc.wait(), 3) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await channel.close()


async def test_socat_relay_fails_at_once_without_a_daemon(tmp_path):
    """No retry (see the bridge's docstring): a relay that cannot connect exits 1 and ExaBGP's respawn limit
    takes over; it must not sit reading nothing."""
    if SOCAT is None:
        pytest.skip("socat is not installed (make deps)")
    proc = await _start_bridge(tmp_path / "nobody.sock", SOCAT)
    assert await asyncio.wait_for(proc.wait(), 5) == 1


async def test_bridge_relays_both_ways_and_reconnects(tmp_path, relay):
    lines: list[str] = []
    connects: list[int | None] = []

    def on_connect(pid):
        connects.append(pid)

    channel = ApiChannel(tmp_path / "api.sock", on_line=lines.append, on_connect=on_connect)
    await channel.start()
    assert stat.S_IMODE(os.stat(tmp_path / "api.sock").st_mode) == 0o600
    # Commands sent before any bridge connects are dropped and counted, never replayed to a later one.
    await channel.send(["neighbor 10.0.0.12 announce route 192.168.9.0/26 next-hop 10.0.0.11"])
    assert channel.dropped == 1
    bridge = await _start_bridge(tmp_path / "api.sock", relay)
    await asyncio.wait_for(channel.connected.wait(), 5)
    await channel.send(["neighbor 10.0.0.12 announce eor ipv4 unicast"])
    assert (
        await asyncio.wait_for(bridge.stdout.readline(), 5)
        == b"neighbor 10.0.0.12 announce eor ipv4 unicast\n"
    )
    bridge.stdin.write(b'{"type": "state"}\n')
    await bridge.stdin.drain()
    for _ in range(100):
        if lines:
            break
        await asyncio.sleep(0.02)
    assert lines == ['{"type": "state"}\n'] and connects == [bridge.pid]  # the bridge's pid, from the socket
    # ExaBGP respawns its API process: the new bridge replaces the old connection.
    second = await _start_bridge(tmp_path / "api.sock", relay)
    await asyncio.wait_for(channel.connected.wait(), 5)
    for _ in range(100):
        if len(connects) == 2:
            break
        await asyncio.sleep(0.02)
    await channel.send(["show adj-rib out json"])
    assert await asyncio.wait_for(second.stdout.readline(), 5) == b"show adj-rib out json\n"
    for proc in (bridge, second):
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 5)
    await channel.close()


async def test_bridge_gives_up_without_a_daemon(tmp_path, monkeypatch):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; import bgp.exabgp.bridge as b; b.RECONNECT_FOR = 0.3; sys.exit(b.main(sys.argv[1:]))",
        str(tmp_path / "nobody.sock"),
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert await asyncio.wait_for(proc.wait(), 10) == 1
    assert b"cannot reach the daemon" in await proc.stderr.read()


async def test_a_refused_connection_gets_nothing_and_is_not_read(tmp_path, relay):
    lines: list[str] = []
    channel = ApiChannel(tmp_path / "api.sock", on_line=lines.append, on_connect=lambda pid: False)
    await channel.start()
    bridge = await _start_bridge(tmp_path / "api.sock", relay)
    bridge.stdin.write(b'{"type": "state"}\n')
    await bridge.stdin.drain()
    # The daemon closed on it: the relay exits. socat's status is 1 when it still had our line to write and
    # met the closed socket; ExaBGP treats any exit of its API process alike.
    returncode = await asyncio.wait_for(bridge.wait(), 10)
    assert returncode == 0 or (relay is not None and returncode == 1)
    await channel.send(["neighbor 10.0.0.12 announce eor ipv4 unicast"])
    assert lines == [] and channel.dropped == 1 and not channel.connected.is_set()
    await channel.close()


FAKE_EXABGP = """#!/bin/sh
# Stands in for exabgp: records its arguments, environment and signals, then waits or exits.
echo "start $* $exabgp_tcp_bind" >> {log}
trap 'echo usr1 >> {log}; [ -e {ignore} ] && rm {ignore} || echo "performing reload of exabgp"' USR1
trap 'echo term >> {log}; exit 0' TERM
if [ -e {crash} ]; then rm {crash}; exit 3; fi
while true; do sleep 0.05; done
"""


@pytest.fixture
def fake_exabgp(tmp_path, monkeypatch):
    log, crash, ignore = tmp_path / "calls.log", tmp_path / "crash-once", tmp_path / "ignore-usr1-once"
    script = tmp_path / "exabgp"
    script.write_text(FAKE_EXABGP.format(log=log, crash=crash, ignore=ignore))
    script.chmod(0o755)
    monkeypatch.setattr(sup, "exabgp_command", lambda: [str(script)])
    return log, crash, ignore


async def _until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_supervisor_reload_restart_and_stop(tmp_path, fake_exabgp):
    log, crash, ignore = fake_exabgp
    crash.touch()
    starts = []
    s = sup.ExaBGPSupervisor(
        tmp_path / "exabgp.conf",
        tmp_path / "exabgp.log",
        environment={"exabgp_tcp_bind": "10.0.0.11"},
        on_start=lambda: starts.append(1),
        backoff_initial=0.05,
    )
    task = asyncio.create_task(s.run())
    try:
        # First start crashes (exit 3); the supervisor starts it again after the backoff.
        await _until(lambda: len(starts) == 2 and s.pid is not None)
        await _until(lambda: log.exists() and log.read_text().count("start server") == 2)
        s.reload()  # not ready yet (no API process connected): held back, not lost
        await asyncio.sleep(0.3)
        assert "usr1" not in log.read_text()
        ignore.touch()  # the first SIGUSR1 is dropped, as ExaBGP does with updates queued
        s.reload_confirm_timeout = 0.3
        s.mark_ready()
        await _until(lambda: log.read_text().count("usr1") == 2)
        assert s.reloads_sent == 2
        await _until(lambda: "performing reload" in (tmp_path / "exabgp.log").read_text())
        # A new listen address needs a restart, not a reload.
        assert s.set_environment({"exabgp_tcp_bind": "10.0.0.99"})
        assert not s.set_environment({"exabgp_tcp_bind": "10.0.0.99"})
        await _until(lambda: "10.0.0.99" in log.read_text())
        await s.stop(timeout=5)
        await asyncio.wait_for(task, 5)
        assert log.read_text().count("term") >= 2 and s.pid is None
    finally:  # never leave the stand-in running, whatever failed
        if s.pid is not None:
            os.kill(s.pid, signal.SIGKILL)


async def test_a_reload_asked_for_before_a_start_is_served_by_that_start(tmp_path, fake_exabgp):
    # confgen writes the file, then asks for a reload; the ExaBGP started after that reads the same file.
    log, _, _ = fake_exabgp
    s = sup.ExaBGPSupervisor(tmp_path / "exabgp.conf", tmp_path / "exabgp.log", environment={})
    s.reload()
    task = asyncio.create_task(s.run())
    try:
        await _until(lambda: s.pid is not None and log.exists())
        s.mark_ready()
        await asyncio.sleep(0.3)
        assert "usr1" not in log.read_text() and s.reloads_sent == 0
        s.reload()  # a change after the start still goes out
        await _until(lambda: "usr1" in log.read_text())
        assert s.reloads_sent == 1
        await s.stop(timeout=5)
        await asyncio.wait_for(task, 5)
    finally:
        if s.pid is not None:
            os.kill(s.pid, signal.SIGKILL)


def test_environment_is_explicit():
    env = exabgp_environment(["10.0.0.11", "fd00::11"], 179)
    assert env["exabgp.tcp.bind"] == "10.0.0.11 fd00::11"
    assert env["exabgp.daemon.user"] == "root" and env["exabgp.api.ack"] == "false"
    from exabgp.environment import parsing

    assert parsing.boolean(env["exabgp.log.statistics"]) is False  # as ExaBGP reads it: no counter lines
    assert signal.SIGUSR1  # reload is SIGUSR1; SIGHUP would stop ExaBGP


async def test_restart_kills_a_stopped_exabgp_and_its_bridge_at_once(tmp_path, fake_exabgp):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    parents: dict[int, int] = {}
    deadline_over = asyncio.Event()

    async def sleep(seconds):  # only the API start deadline sleeps through this
        await deadline_over.wait()

    s = sup.ExaBGPSupervisor(
        tmp_path / "exabgp.conf",
        tmp_path / "exabgp.log",
        backoff_initial=30.0,  # a crash would wait this long; a restart must not
        parent_of=parents.get,
        sleep=sleep,
        registry=registry,
    )
    bridge = await asyncio.create_subprocess_exec("sleep", "60")  # stands in for ExaBGP's API process
    task = asyncio.create_task(s.run())
    try:
        await _until(lambda: s.pid is not None)
        first = s.pid
        assert not s.accept_api(bridge.pid)  # not the running ExaBGP's child: a leftover, refused
        parents[bridge.pid] = first
        assert s.accept_api(bridge.pid)
        os.kill(first, signal.SIGSTOP)  # hung: only SIGKILL moves it now
        assert s.restart("no answer to the API probe", "hung")
        assert not s.restart("the API connection was lost", "api-lost")  # the same outage: once
        await _until(lambda: s.pid not in (None, first), timeout=3.0)
        assert await asyncio.wait_for(bridge.wait(), 3) == -signal.SIGKILL
        assert s.restarts == {"hung": 1}
        assert registry.get_sample_value("calico_bgp_exabgp_restarts_total", {"reason": "hung"}) == 1
        # A second API connection from one ExaBGP (it respawned the bridge): restarted, not used.
        second = s.pid
        parents.update({1: second, 2: second})  # pids 1 and 2 are never ours to kill: parent_of lies
        assert s.accept_api(1)
        parents[1] = 0  # ... so restart() does not take pid 1 for this ExaBGP's bridge
        assert not s.accept_api(2)
        await _until(lambda: s.pid not in (None, second), timeout=3.0)
        assert s.restarts == {"hung": 1, "api-respawned": 1}
        # No API connection before the deadline: restarted.
        deadline_over.set()
        await _until(lambda: s.restarts.get("no-api", 0) >= 1, timeout=3.0)
        await s.stop(timeout=5)
        await asyncio.wait_for(task, 5)
    finally:
        if s.pid is not None:
            os.kill(s.pid, signal.SIGKILL)
        if bridge.returncode is None:
            bridge.kill()


async def test_an_api_connection_from_exabgp_itself_is_accepted_once_and_nobody_elses(tmp_path, fake_exabgp):
    """ExaBGP's api_direct adjustment (bgp.exabgp.tuning_channel): the connection's peer is ExaBGP itself."""
    parents: dict[int, int] = {}
    s = sup.ExaBGPSupervisor(
        tmp_path / "exabgp.conf", tmp_path / "exabgp.log", backoff_initial=30.0, parent_of=parents.get
    )
    task = asyncio.create_task(s.run())
    try:
        await _until(lambda: s.pid is not None)
        first = s.pid
        assert not s.accept_api(os.getpid())  # neither ExaBGP nor its child
        assert s.accept_api(first)
        # A second connection from the same ExaBGP (it reconnected): restarted, not used; and only ExaBGP
        # is killed, not "its bridge" under the same pid a second time.
        assert not s.accept_api(first)
        await _until(lambda: s.pid not in (None, first), timeout=3.0)
        assert s.restarts == {"api-respawned": 1}
        assert not s.accept_api(first)  # the old ExaBGP's pid: refused
        await s.stop(timeout=5)
        await asyncio.wait_for(task, 5)
    finally:
        if s.pid is not None:
            os.kill(s.pid, signal.SIGKILL)
