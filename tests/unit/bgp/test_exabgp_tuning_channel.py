"""bgp.exabgp.tuning_channel: which run lines become a direct connection, the fit check and its fallback,
the stand-in process's meaning (end-of-file is an exit, back-pressure waits, failures are EPIPE), and a
real ExaBGP (through ``bgp.exabgp.launch``) connecting to a socket of ours, with the adjustment and without.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp.exabgp import bridge, tuning, tuning_channel
from bgp.exabgp.environment import exabgp_environment
from bgp.exabgp.tuning_channel import DirectProcess, relay_socket

SOCAT = "/usr/bin/socat"
PYTHON = "/usr/bin/python3"

paths = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-", min_size=1, max_size=60).map(
    lambda tail: "/run/calico-bgp/" + tail
)


@given(paths)
def test_both_relay_lines_the_daemon_writes_name_their_socket(path):
    for socat in (SOCAT, None):
        line = bridge.run_line(path, socat=socat, python=PYTHON, script=bridge.__file__)
        assert relay_socket(line.split(" ")) == path


@pytest.mark.parametrize(
    "argv",
    [
        [SOCAT, "-t0", "STDIO", "UNIX-CONNECT:/run/api.sock"],  # other options: not our relay
        [SOCAT, *bridge.SOCAT_OPTIONS, "STDIO", "TCP:127.0.0.1:179"],
        [SOCAT, *bridge.SOCAT_OPTIONS, "STDIO", "UNIX-CONNECT:"],
        [SOCAT, *bridge.SOCAT_OPTIONS, "STDIO", "UNIX-CONNECT:/run/api.sock", "extra"],
        ["/usr/bin/socat-other", *bridge.SOCAT_OPTIONS, "STDIO", "UNIX-CONNECT:/run/api.sock"],
        [PYTHON, "-I", "-S", "/elsewhere/bridge.py", "/run/api.sock"],  # someone else's bridge.py
        [PYTHON, "-I", bridge.__file__, "/run/api.sock"],
        [PYTHON, "-I", "-S", bridge.__file__, ""],
        [PYTHON, "-I", "-S", bridge.__file__, "/run/api.sock", "x"],
        ["/usr/local/bin/healthcheck", "--cmd", "true"],
        [],
        "/usr/bin/socat -t0 -b65536 STDIO UNIX-CONNECT:/run/api.sock",  # a string, not ExaBGP's list
        None,
    ],
)
def test_anything_else_is_run_as_a_process(argv):
    assert relay_socket(argv) is None


def _processes_like_exabgps():
    import exabgp.reactor.api.processes as upstream

    return types.SimpleNamespace(
        **{name: getattr(upstream.Processes, name) for name in tuning_channel.REQUIRED_NAMES}
    )


def test_the_installed_exabgp_fits():
    import exabgp.reactor.api.processes as upstream

    tuning_channel.check_fits(upstream.Processes, upstream)


@pytest.mark.parametrize(
    ("method", "replacement", "why"),
    [
        ("write", lambda self, process, string: self.send(string), "no longer uses"),  # another way to write
        ("received", lambda self: iter(()), "no longer uses"),
        ("_terminate_run", None, "is missing"),
    ],
)
def test_a_processes_class_of_another_shape_does_not_fit(method, replacement, why):
    import exabgp.reactor.api.processes as upstream

    shape = _processes_like_exabgps()
    setattr(shape, method, replacement)
    with pytest.raises(AttributeError, match=why):
        tuning_channel.check_fits(shape, upstream)


def test_a_module_that_does_not_call_subprocess_does_not_fit():
    elsewhere = types.ModuleType("exabgp.elsewhere")
    elsewhere.subprocess = types.SimpleNamespace(Popen=None)  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="standard subprocess"):
        tuning_channel.check_fits(_processes_like_exabgps(), elsewhere)


APPLY = (
    "import json, sys\n"
    "import exabgp.reactor.api.processes as m\n"
    "{prepare}\n"
    "from bgp.exabgp import tuning\n"
    "applied = tuning.apply()\n"
    "print(json.dumps(['api_direct' in applied, type(m.subprocess).__name__]))\n"
)


@pytest.mark.parametrize(
    ("prepare", "env", "expected", "warned"),
    [
        ("", {}, [True, "_Subprocess"], False),
        ("", {tuning.TUNING_ENV: "skip:api_direct"}, [False, "module"], False),
        # A release that reads its helpers another way: skipped with a warning, the relay runs as shipped.
        ("m.Processes.received = lambda self: iter(())", {}, [False, "module"], True),
    ],
)
def test_apply_takes_it_skips_it_when_told_and_when_it_does_not_fit(prepare, env, expected, warned):
    script = APPLY.format(prepare=prepare)
    environ = {k: v for k, v in os.environ.items() if k != tuning.TUNING_ENV} | env
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=environ
    )
    assert json.loads(out.stdout) == expected
    assert ("'api_direct' not applied" in out.stderr) is warned


def test_other_command_lines_still_start_real_processes():
    shim = tuning_channel._Subprocess(subprocess)
    proc = shim.Popen(["/bin/echo", "hello"], stdin=shim.PIPE, stdout=shim.PIPE)
    assert isinstance(proc, subprocess.Popen)
    assert proc.communicate(timeout=10)[0] == b"hello\n"
    assert shim.TimeoutExpired is subprocess.TimeoutExpired  # what ExaBGP catches, passed through


# ---------------------------------------------------------------------- the stand-in process


@pytest.fixture
def listening(tmp_path):
    path = tmp_path / "api.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(10)
    yield path, server
    server.close()


def _peer_pid(conn: socket.socket) -> int:
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]


def test_lines_both_ways_and_the_daemon_closing_reads_as_an_exit(listening):
    path, server = listening
    proc = DirectProcess(["socat"], str(path))
    daemon, _ = server.accept()
    with daemon:
        assert _peer_pid(daemon) == os.getpid() == proc.pid
        proc.stdin.write(b'{"type": "state"}\n')
        proc.stdin.flush()
        assert daemon.recv(100) == b'{"type": "state"}\n'
        daemon.sendall(b"version\n")
        assert os.read(proc.stdout.fileno(), 100) == b"version\n"
        assert proc.poll() is None
        daemon.sendall(b"last line\n")
    # Closed with a line unread: still running until that line is read, then exited (socat's -t0).
    assert proc.poll() is None
    assert os.read(proc.stdout.fileno(), 100) == b"last line\n"
    assert proc.poll() == tuning_channel.EXITED_EOF
    with pytest.raises(OSError) as raised:
        proc.stdin.write(b"to nobody\n")
    assert raised.value.errno == errno.EPIPE  # what ExaBGP's write turns into "process problem"
    assert proc.wait(timeout=2) == tuning_channel.EXITED_EOF


def test_no_daemon_is_a_process_that_exited_at_once(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(tuning_channel, "_log_warning", warnings.append)
    proc = DirectProcess(["socat"], str(tmp_path / "nobody-listens.sock"))
    assert proc.poll() == tuning_channel.EXITED_CONNECT
    assert os.read(proc.stdout.fileno(), 100) == b""  # end-of-file, as the pipe of a dead socat
    assert "failed" in warnings[0]
    proc.wait()


def test_terminate_ends_the_connection_for_the_daemon(listening):
    path, server = listening
    proc = DirectProcess(["socat"], str(path))
    daemon, _ = server.accept()
    with daemon:
        proc.terminate()
        assert proc.poll() == tuning_channel.TERMINATED
        daemon.settimeout(5)
        assert daemon.recv(100) == b""
        assert proc.wait(timeout=2) == tuning_channel.TERMINATED


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_full_socket_waits_for_the_daemon_and_gives_up_only_after_the_stall_deadline(
    listening, monkeypatch
):
    path, server = listening
    proc = DirectProcess(["socat"], str(path))
    daemon, _ = server.accept()
    clock = _Clock()
    waits = []
    reading = [True]

    def wait_writable():  # each wait is one slice of the poll; a reading daemon reads every third one
        waits.append(clock.now)
        clock.now += tuning_channel.WRITE_STALL / 4
        if reading[0] and len(waits) % 3 == 0:
            daemon.setblocking(False)
            while True:
                try:
                    daemon.recv(1 << 20)
                except BlockingIOError:
                    break

    with daemon:
        writer = tuning_channel._Writer(proc._sock, clock)
        monkeypatch.setattr(writer, "_wait_writable", wait_writable)
        # ExaBGP's read side is non-blocking, and so the whole socket: a write meets EAGAIN, never blocks.
        os.set_blocking(proc.stdout.fileno(), False)
        big = b"x" * (1 << 20) + b"\n"
        assert writer.write(big) == len(big)  # progress restarted the deadline: every byte went out
        assert len(waits) >= 3
        waits.clear()
        reading[0] = False
        with pytest.raises(OSError) as raised:  # and now nobody reads
            while True:
                writer.write(big)
        assert raised.value.errno == errno.EPIPE
        assert waits and clock.now - waits[0] >= tuning_channel.WRITE_STALL - tuning_channel.WRITE_STALL / 4
    proc.wait()


# ---------------------------------------------------------------------- a real ExaBGP


CONFIG = """process calico-bgp-api {{
    run {run};
    encoder json;
}}

neighbor 127.0.0.2 {{
    router-id 10.0.0.1;
    local-address 127.0.0.1;
    local-as 65000;
    peer-as 65000;
    passive true;
    api {{
        processes [ calico-bgp-api ];
        neighbor-changes;
    }}
}}
"""


def _exabgp(tmp_path: Path, path: Path, env: dict[str, str], socat: str | None) -> subprocess.Popen:
    run = bridge.run_line(path, socat=socat, python=sys.executable, script=bridge.__file__)
    config = tmp_path / "exabgp.conf"
    config.write_text(CONFIG.format(run=run))
    environ = {k: v for k, v in os.environ.items() if not k.lower().startswith("exabgp")}
    environ.pop(tuning.TUNING_ENV, None)
    environ |= exabgp_environment([], 179) | {"exabgp.tcp.bind": ""} | env
    log = open(tmp_path / "exabgp.log", "wb")  # noqa: SIM115 (the child's, closed with the test's tmp_path)
    return subprocess.Popen(
        [sys.executable, "-m", "bgp.exabgp.launch", "server", str(config)],
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _answer(conn: socket.socket) -> bytes:
    conn.sendall(b"version\n")
    conn.settimeout(10)
    return conn.recv(100)


@pytest.mark.parametrize(
    ("env", "socat", "direct"),
    [
        ({}, bridge.installed_socat(), True),
        ({}, None, True),  # the Python bridge's line is replaced too
        ({tuning.TUNING_ENV: "skip:api_direct"}, bridge.installed_socat(), False),
        ({tuning.TUNING_ENV: "off"}, None, False),
    ],
)
def test_exabgp_connects_itself_and_a_closed_connection_is_a_dead_api_process(
    tmp_path, listening, env, socat, direct
):
    """With the adjustment ExaBGP has no API child and connects from its own pid; without, its child does.
    Either way, the daemon closing the connection makes ExaBGP start its API process again (a new
    connection), up to its respawn limit, after which it stops."""
    path, server = listening
    exabgp = _exabgp(tmp_path, path, env, socat)
    try:
        connections = 0
        server.settimeout(0.5)
        deadline = time.monotonic() + 60
        while exabgp.poll() is None and time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                pid = _peer_pid(conn)
                children = [child.pid for child in psutil.Process(exabgp.pid).children()]
                if direct:
                    assert pid == exabgp.pid and children == []
                else:
                    assert pid in children and pid != exabgp.pid
                assert _answer(conn) == b"exabgp 5.0.15\n"
                connections += 1
        # ExaBGP's respawn limit ended it, as it does when socat keeps exiting: the first start and 5
        # respawns in its window (windows are aligned to the wall clock: 5 more if the run crossed one).
        assert exabgp.poll() is not None
        assert 6 <= connections <= 11
        assert b"Too many death" in (tmp_path / "exabgp.log").read_bytes()
    finally:
        if exabgp.poll() is None:
            exabgp.kill()
            exabgp.wait(timeout=10)


def test_exabgp_stops_cleanly_and_tells_the_daemon(tmp_path, listening):
    path, server = listening
    exabgp = _exabgp(tmp_path, path, {}, bridge.installed_socat())
    try:
        conn, _ = server.accept()
        with conn:
            assert _answer(conn) == b"exabgp 5.0.15\n"
            exabgp.terminate()
            received = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
            events = [json.loads(line) for line in received.splitlines() if line.startswith(b"{")]
            assert (
                events and events[-1]["type"] == "notification" and events[-1]["notification"] == "shutdown"
            )
        assert exabgp.wait(timeout=10) == 0
    finally:
        if exabgp.poll() is None:
            exabgp.kill()
            exabgp.wait(timeout=10)
