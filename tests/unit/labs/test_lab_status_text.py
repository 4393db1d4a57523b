"""`lab up`'s status printout reads each node's control socket in-process, as `calico-bgp status` would."""

from __future__ import annotations

import json
import socket
import threading

from bgp.status import render_status
from labs import ops
from labs.state import NodeState

REPORT = {
    "node": "node1",
    "peers": [
        {
            "address": "10.0.0.12",
            "family": "ipv4",
            "type": "node-to-node mesh",
            "state": "up",
            "since_ts": 1_700_000_000.0,
            "info": "Established",
        }
    ],
    "warnings": [],
}


def node(run_dir) -> NodeState:
    return NodeState("node1", "ns", "10.0.0.11/24", 64512, str(run_dir), str(run_dir / "log"))


def serve_once(path, answer: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                assert conn.recv(100) == b"status\n"
                conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_status_text_is_what_the_cli_prints(tmp_path):
    thread = serve_once(tmp_path / "ctl.sock", json.dumps(REPORT).encode() + b"\n")
    text = ops.status_text(node(tmp_path), timeout=5)
    thread.join(5)
    assert text == render_status(REPORT).rstrip()
    assert "10.0.0.12" in text and "Established" in text


def test_a_node_without_a_daemon_says_so(tmp_path):
    assert "is not running" in ops.status_text(node(tmp_path))


def test_a_daemon_that_hangs_up_mid_answer_is_reported_not_raised(tmp_path):
    thread = serve_once(tmp_path / "ctl.sock", b'{"node": "no')
    text = ops.status_text(node(tmp_path), timeout=5)
    thread.join(5)
    assert text.startswith("(calico-bgp status failed: JSONDecodeError")
