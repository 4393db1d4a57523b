"""BFD against real peers: our engine (bgp.bfd.service) in one network namespace, FRR's bfdd or BIRD 2 in
another, over a veth pair; session Up for IPv4 and IPv6, the intervals RFC 5880 says, a Poll/Final on an
interval change, and failure detection when a blackhole (nftables drop, no reset) cuts the link.

Topology (namespace names carry a random suffix; both are deleted in every outcome)::

    us  (our engine, tests/netns/bfd_driver.py)  u0 10.93.0.1/24 fd93::1/64
    them (FRR zebra + bfdd, or BIRD 2)           t0 10.93.0.2/24 fd93::2/64

Intervals: ours 300 ms TX / 300 ms RX x 3, theirs 200 ms x 3. RFC 5880 section 6.8.7: each side transmits
at the larger of its TX and the other's RX, 300 ms both ways; section 6.8.4: each detects after the other's
multiplier times the larger of its RX and the other's TX, 900 ms both ways.

The failover figures (drop to Down) are printed and attached to the test report (``record_property``);
``flock /tmp/bench.lock pytest -s ...`` when they are to be quoted. The assertions on time are loose
(well under any BGP hold time); the figures are for the README.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labs import netns, process, routers

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("bfd_driver.py")
US4, THEM4, US6, THEM6 = "10.93.0.1", "10.93.0.2", "fd93::1", "fd93::2"
OURS = dict(min_tx_us=300_000, min_rx_us=300_000, multiplier=3)
THEIR_MS = 200
DETECTION_US = 900_000
TIMEOUT = 20.0
FIGURE_LIMIT = 3.0  # seconds: a blackhole must be noticed in a few detection times, not a hold time


def wait_until(what: str, check: Callable[[], object], timeout: float = TIMEOUT, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Engine:
    """Our engine in the ``us`` namespace, driven over bfd_driver.py's line protocol."""

    def __init__(self, ns: str, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.stderr = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            netns.exec_argv(ns, [sys.executable, str(DRIVER)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.events: queue.Queue[dict] = queue.Queue()
        self.changes: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next("ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "change":
                self.changes.append(event)
            else:
                self.events.put(event)

    def _next(self, kind: str, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if event["event"] == kind:
                return event

    def _send(self, command: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def configure(self, *peers: dict) -> None:
        self._send({"cmd": "configure", "peers": list(peers)})
        self._next("configured")

    def status(self) -> dict:
        self._send({"cmd": "status"})
        return self._next("status")

    def session(self, peer: str) -> dict:
        return next(s for s in self.status()["sessions"] if s["peer"] == peer)

    def state(self, peer: str) -> str:
        return self.session(peer)["state"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with_stdin = self.proc.stdin
            if with_stdin is not None:
                with_stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own child, by its Popen
                self.proc.wait(timeout=5)
        self.stderr.close()


class Lab:
    def __init__(self, tmp: Path) -> None:
        suffix = secrets.token_hex(3)
        self.us, self.them = f"bfd-us-{suffix}", f"bfd-them-{suffix}"
        self.pathspace = f"{self.them}-frr"
        self.tmp = tmp
        self.engine: Engine | None = None
        self.pids: list[tuple[int, str]] = []  # (pid, marker) of the peer daemons we started

    def build(self) -> None:
        for ns in (self.us, self.them):
            netns.add_netns(ns)
        netns.ip(self.us, "link", "add", "u0", "type", "veth", "peer", "name", "t0", "netns", self.them)
        for ns, dev, v4, v6 in ((self.us, "u0", US4, US6), (self.them, "t0", THEM4, THEM6)):
            netns.ip(ns, "addr", "add", f"{v4}/24", "dev", dev)
            netns.ip(ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            netns.ip(ns, "link", "set", dev, "up")
        self.engine = Engine(self.us, self.tmp / "engine.err")

    def teardown(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        process.stop_all(self.pids, 5.0)
        shutil.rmtree(routers.FRR_RUN / self.pathspace, ignore_errors=True)
        for ns in (self.us, self.them):
            netns.delete_netns(ns)

    # ------------------------------------------------------------------ peers

    def start_frr(self) -> None:
        reason = routers.frr_available()
        if reason or not (routers.FRR_DIR / "bfdd").exists():
            pytest.skip(reason or "FRR's bfdd is not installed")
        user = pwd.getpwnam(routers.FRR_USER)
        run = self.tmp / "frr"
        run.mkdir()
        for directory in [run, *run.parents]:  # the frr user must reach its config and log
            directory.chmod(directory.stat().st_mode | 0o001)
        sockets = routers.FRR_RUN / self.pathspace
        sockets.mkdir(parents=True, exist_ok=True)
        peers = "".join(
            f" peer {peer} local-address {local}\n"
            f"  receive-interval {THEIR_MS}\n  transmit-interval {THEIR_MS}\n  detect-multiplier 3\n !\n"
            for peer, local in ((US4, THEM4), (US6, THEM6))
        )
        config = run / "frr.conf"
        config.write_text(
            f"frr defaults traditional\nhostname them\nlog file {run}/frr.log\n!\nbfd\n{peers}!\n"
        )
        (run / "frr.log").touch()
        for path in (routers.FRR_RUN, sockets, run, config, run / "frr.log"):
            os.chown(path, user.pw_uid, user.pw_gid)
        for daemon in ("zebra", "bfdd"):
            argv = [str(routers.FRR_DIR / daemon), "-N", self.pathspace, "-f", str(config)]
            argv += ["-i", str(sockets / f"{daemon}.pid"), "-u", "frr", "-g", "frr", "-P", "0"]
            self.pids.append((process.spawn(netns.exec_argv(self.them, argv), run / f"{daemon}.out"), daemon))
            wait_until(f"{daemon}'s vty socket", (sockets / f"{daemon}.vty").exists)

    def frr_peers(self) -> dict[str, dict]:
        peers = routers.vtysh_json(self.pathspace, "show bfd peers json")
        return {p["peer"]: p for p in (peers if isinstance(peers, list) else [])}

    def start_bird(self) -> None:
        if not shutil.which("bird") or not shutil.which("birdc"):
            pytest.skip("BIRD 2 is not installed (make interop-deps)")
        run = self.tmp / "bird"
        run.mkdir()
        config = run / "bird.conf"
        config.write_text(
            f'router id {THEM4};\nlog "{run}/bird.log" all;\nprotocol device {{ scan time 1; }}\n'
            "protocol bfd {\n"
            f'  interface "t0" {{ min rx interval {THEIR_MS} ms; min tx interval {THEIR_MS} ms; '
            "multiplier 3; };\n"
            f"  neighbor {US4} local {THEM4};\n  neighbor {US6} local {THEM6};\n}}\n"
        )
        self.bird_socket = run / "bird.ctl"
        argv = ["bird", "-f", "-c", str(config), "-s", str(self.bird_socket)]
        self.pids.append((process.spawn(netns.exec_argv(self.them, argv), run / "bird.out"), str(config)))
        wait_until("BIRD's control socket", self.bird_socket.exists)

    def bird_sessions(self) -> dict[str, str]:
        out = subprocess.run(
            ["birdc", "-s", str(self.bird_socket), "show", "bfd", "sessions"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
        return {m[1]: m[2] for m in re.finditer(r"^([0-9a-f.:]+)\s+\S+\s+(\w+)", out, re.MULTILINE)}

    # ------------------------------------------------------------------ faults

    def blackhole(self, ns: str, *, direction: str = "both") -> None:
        """Drop BFD in ns with nftables: "both" ways, or only "out" (what ns sends)."""
        hooks = ("input", "output") if direction == "both" else ("output",)
        rules = "".join(
            f"  chain {hook} {{ type filter hook {hook} priority -300; policy accept; "
            "udp dport 3784 drop; }\n"
            for hook in hooks
        )
        subprocess.run(
            netns.exec_argv(ns, ["nft", "-f", "-"]),
            input=f"table inet bfd_blackhole {{\n{rules}}}\n",
            text=True,
            check=True,
            capture_output=True,
        )

    def heal(self, ns: str) -> None:
        subprocess.run(netns.exec_argv(ns, ["nft", "delete", "table", "inet", "bfd_blackhole"]), check=True)


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


def ours(peer: str, local: str, **fields) -> dict:
    return {"peer": peer, "local": local, **OURS, **fields}


def figure(record_property, name: str, seconds: float) -> None:
    record_property(name, round(seconds, 3))
    print(f"\n{name}: {seconds:.3f} s")


# ---------------------------------------------------------------------------------------------- FRR


def test_frr_up_both_families_with_negotiated_intervals(lab):
    lab.start_frr()
    assert lab.engine is not None
    lab.engine.configure(ours(THEM4, US4), ours(THEM6, US6))
    for peer in (THEM4, THEM6):
        wait_until(f"our session to {peer} Up", lambda p=peer: lab.engine.state(p) == "Up")
        mine = wait_until("the Poll to fast rates", lambda p=peer: _settled(lab.engine.session(p)))
        assert mine["tx_interval_us"] == 300_000  # max(our 300 TX, their 200 RX)
        assert mine["detection_time_us"] == DETECTION_US  # 3 x max(our 300 RX, their 200 TX)
        assert mine["remote_multiplier"] == 3
    for peer in (US4, US6):
        theirs = wait_until(f"FRR's session to {peer} up", lambda p=peer: _frr_up(lab, p))
        assert theirs["remote-transmit-interval"] == 300  # what we advertise once Up
        assert theirs["remote-receive-interval"] == 300
        assert theirs["remote-detect-multiplier"] == 3
        assert theirs["transmit-interval"] == THEIR_MS and theirs["receive-interval"] == THEIR_MS
        assert theirs["remote-id"] == next(
            s["local_discriminator"] for s in lab.engine.status()["sessions"] if s["peer"] == _other(peer)
        )


def test_frr_interval_change_polls_and_stays_up(lab):
    lab.start_frr()
    assert lab.engine is not None
    lab.engine.configure(ours(THEM4, US4))
    wait_until("Up", lambda: _settled(lab.engine.session(THEM4)))
    wait_until("FRR up", lambda: _frr_up(lab, US4))
    changes = len(lab.engine.changes)
    lab.engine.configure(ours(THEM4, US4, min_tx_us=100_000))
    theirs = wait_until("FRR to see 100 ms", lambda: _frr_up(lab, US4, **{"remote-transmit-interval": 100}))
    mine = wait_until("the Poll to end", lambda: _settled(lab.engine.session(THEM4)))
    assert mine["tx_interval_us"] == 200_000  # max(our 100 TX, their 200 RX)
    assert mine["state"] == "Up" and mine["downs"] == 0
    assert theirs["status"] == "up"
    assert len(lab.engine.changes) == changes  # no state change on either side of the Poll


def test_frr_blackhole_we_detect_in_detection_time(lab, record_property):
    lab.start_frr()
    assert lab.engine is not None
    lab.engine.configure(ours(THEM4, US4))
    wait_until("Up", lambda: _settled(lab.engine.session(THEM4)))
    wait_until("FRR up", lambda: _frr_up(lab, US4))
    lab.blackhole(lab.them)
    dropped_at = time.monotonic()
    down = wait_until("our Down", lambda: _down_change(lab.engine, THEM4, after=dropped_at))
    assert down["status"]["local_diagnostic"] == "Control Detection Time Expired"
    elapsed = down["t"] - dropped_at
    figure(record_property, "bfd_detect_ours_vs_frr_s", elapsed)
    assert elapsed <= FIGURE_LIMIT
    lab.heal(lab.them)
    wait_until("Up again after the blackhole", lambda: lab.engine.state(THEM4) == "Up")
    assert lab.engine.session(THEM4)["downs"] == 1


def test_frr_detects_us_going_silent(lab, record_property):
    lab.start_frr()
    assert lab.engine is not None
    lab.engine.configure(ours(THEM4, US4))
    wait_until("Up", lambda: _settled(lab.engine.session(THEM4)))
    wait_until("FRR up", lambda: _frr_up(lab, US4))
    lab.blackhole(lab.us, direction="out")  # we still hear FRR, it no longer hears us
    silent_at = time.monotonic()
    theirs = wait_until("FRR's Down", lambda: _frr_state(lab, US4, "down"), interval=0.02)
    elapsed = time.monotonic() - silent_at
    figure(record_property, "bfd_detect_frr_vs_us_s", elapsed)
    assert theirs["diagnostic"] == "control detection time expired"
    assert elapsed <= FIGURE_LIMIT
    # FRR now sends Down: we follow, with the neighbour's word for it.
    down = wait_until("our Down", lambda: _down_change(lab.engine, THEM4, after=silent_at))
    assert down["status"]["local_diagnostic"] == "Neighbor Signaled Session Down"


def test_removed_session_tells_frr_admin_down(lab):
    lab.start_frr()
    assert lab.engine is not None
    lab.engine.configure(ours(THEM4, US4))
    wait_until("FRR up", lambda: _frr_up(lab, US4))
    lab.engine.configure()
    theirs = wait_until("FRR's Down", lambda: _frr_state(lab, US4, "down"))
    assert theirs["remote-diagnostic"] == "administratively down"


# ---------------------------------------------------------------------------------------------- BIRD 2


@pytest.mark.parametrize("peer, local", [(THEM4, US4), (THEM6, US6)], ids=["ipv4", "ipv6"])
def test_bird_up(lab, peer, local):
    lab.start_bird()
    assert lab.engine is not None
    lab.engine.configure(ours(peer, local))
    mine = wait_until("the Poll to fast rates", lambda: _settled(lab.engine.session(peer)))
    assert mine["tx_interval_us"] == 300_000 and mine["detection_time_us"] == DETECTION_US
    wait_until("BIRD's session Up", lambda: lab.bird_sessions().get(local) == "Up")


def test_bird_blackhole_we_detect_in_detection_time(lab, record_property):
    lab.start_bird()
    assert lab.engine is not None
    lab.engine.configure(ours(THEM4, US4))
    wait_until("Up", lambda: _settled(lab.engine.session(THEM4)))
    lab.blackhole(lab.them)
    dropped_at = time.monotonic()
    down = wait_until("our Down", lambda: _down_change(lab.engine, THEM4, after=dropped_at))
    assert down["status"]["local_diagnostic"] == "Control Detection Time Expired"
    figure(record_property, "bfd_detect_ours_vs_bird_s", down["t"] - dropped_at)
    assert down["t"] - dropped_at <= FIGURE_LIMIT
    wait_until("BIRD's Down", lambda: lab.bird_sessions().get(US4) == "Down")


# ---------------------------------------------------------------------------------------------- RFC 5881 TTL

PROBE = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(sys.argv[2]))
s.bind((sys.argv[3], 49999))
# Down, detect mult 3, My Discriminator 7, Your Discriminator 0, 1 s intervals
s.sendto(struct.pack("!BBBBIIIII", 0x20, 0x40, 3, 24, 7, 0, 1000000, 1000000, 0), (sys.argv[1], 3784))
"""


def test_packets_below_ttl_255_are_refused(lab):
    assert lab.engine is not None
    lab.engine.configure(ours(THEM4, US4))
    wait_until("the receive socket", lambda: not lab.engine.session(THEM4)["error"] and lab.engine.status())

    def probe(ttl: int) -> None:
        argv = [sys.executable, "-c", PROBE, US4, str(ttl), THEM4]
        subprocess.run(netns.exec_argv(lab.them, argv), check=True, timeout=10)

    probe(254)
    wait_until("the TTL drop", lambda: lab.engine.status()["dropped"].get("ttl") == 1)
    assert lab.engine.state(THEM4) == "Down"
    probe(255)
    wait_until("Init from the TTL 255 packet", lambda: lab.engine.state(THEM4) == "Init")


# ---------------------------------------------------------------------------------------------- helpers


def _other(address: str) -> str:
    return {US4: THEM4, US6: THEM6, THEM4: US4, THEM6: US6}[address]


def _settled(session: dict) -> dict | None:
    """The session once Up at the configured rate (the Poll that follows Up is over)."""
    if session["state"] == "Up" and session["tx_interval_us"] < 1_000_000 and session["detection_time_us"]:
        return session
    return None


def _frr_state(lab: Lab, peer: str, state: str, **fields) -> dict | None:
    found = lab.frr_peers().get(peer)
    if found and found.get("status") == state and all(found.get(k) == v for k, v in fields.items()):
        return found
    return None


def _frr_up(lab: Lab, peer: str, **fields) -> dict | None:
    return _frr_state(lab, peer, "up", **fields)


def _down_change(engine: Engine, peer: str, *, after: float) -> dict | None:
    return next(
        (
            c
            for c in list(engine.changes)
            if c["t"] >= after and c["status"]["peer"] == peer and c["status"]["state"] == "Down"
        ),
        None,
    )


HOLDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 3784))
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_port_in_use_is_retried_and_shown_in_status(lab):
    assert lab.engine is not None
    holder = subprocess.Popen(
        netns.exec_argv(lab.us, [sys.executable, "-c", HOLDER]), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"holding"
        lab.engine.configure(ours(THEM4, US4))
        mine = wait_until("the error in status", lambda: lab.engine.session(THEM4)["error"])
        assert mine == "IPv4 receive socket on port 3784: Address already in use (retrying)"
        assert lab.engine.proc.poll() is None
    finally:
        holder.kill()  # our own child, by its Popen
        holder.wait(timeout=5)
    wait_until("the retry to succeed", lambda: not lab.engine.session(THEM4)["error"])
    lab.start_bird()
    wait_until("Up once the port is free", lambda: lab.engine.state(THEM4) == "Up")
