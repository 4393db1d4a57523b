"""A real Prometheus on a lab (``calico-bgp lab up ... --prometheus``): scraping every node's metrics
endpoint and evaluating monitoring/prometheus-rules.yml, with its HTTP API on the host's loopback.

Stage: optional lab service, started by ``labs.lab.up`` after the daemons and stopped by ``down``.

Owns: the Prometheus process (Debian's ``prometheus`` binary) and the metrics forwarder
(``labs.metrics_proxy``) it scrapes through, their files under ``<lab dir>/prometheus/`` (configuration,
TSDB, ready file) and their PIDs and URL in the state file.

Complicating factors:
- The nodes' endpoints (port 9094) are inside their namespaces and the host cannot route to them, so
  Prometheus scrapes ``127.0.0.1:<port>`` per node, forwarded into the node's namespace. Each target's
  ``instance`` label is the node's name (the rules' annotations and the dashboard name nodes by it).
- The lab's rules are the product's file, unchanged; only the scrape and evaluation intervals are the lab's
  (a few seconds, so a change shows within seconds; an alert's ``for`` still counts in real time).
- The port is picked free on loopback and bound by Prometheus a moment later: another process could take
  it in between, in which case Prometheus exits and the start fails with its log, never silently.
- Debian's Prometheus serves its API only once its TSDB is open: the start waits for ``/-/ready``.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from labs import process
from labs.ops import LabError
from labs.state import LabState

RULES = Path(__file__).resolve().parents[1] / "monitoring" / "prometheus-rules.yml"
JOB = "calico-bgp"  # the job name the rules expect (CalicoBGPMetricsDown)
SCRAPE_INTERVAL = "2s"
EVALUATION_INTERVAL = "2s"
START_TIMEOUT = 30.0
BINARY = "prometheus"


def available() -> str | None:
    """Why Prometheus cannot run here, or None."""
    if not shutil.which(BINARY):
        return "needs Debian's prometheus package (make interop-deps)"
    return None


def config(
    targets: dict[str, int],
    rules: Path = RULES,
    scrape_interval: str = SCRAPE_INTERVAL,
    evaluation_interval: str = EVALUATION_INTERVAL,
) -> str:
    """prometheus.yml for the nodes (node -> its forwarded port on 127.0.0.1)."""
    document = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_timeout": scrape_interval,
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"instance": node}}
                    for node, port in sorted(targets.items())
                ],
            }
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(state: LabState, echo: Callable[[str], None]) -> str:
    """Start the forwarder and Prometheus for the lab's nodes; returns Prometheus' URL."""
    reason = available()
    if reason:
        raise LabError(f"--prometheus: {reason}")
    home = state.dir / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    ports = _start_forwarder(state, home)
    echo(f"prometheus: metrics of {len(ports)} nodes forwarded to 127.0.0.1 (pid {state.metrics_proxy_pid})")
    (home / "prometheus.yml").write_text(config(ports))
    port = free_port()
    argv = [
        BINARY,
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = state.dir / "logs" / "prometheus.log"
    state.prometheus_pid = process.spawn(argv, log)
    state.prometheus_url = f"http://127.0.0.1:{port}"
    state.save()
    _wait_ready(state, log)
    echo(f"prometheus: {state.prometheus_url} (pid {state.prometheus_pid}, rules {RULES.name}, log {log})")
    return state.prometheus_url


def _start_forwarder(state: LabState, home: Path) -> dict[str, int]:
    ready = home / "metrics-proxy.ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "labs.metrics_proxy", "--ready-file", str(ready)]
    argv += [arg for n in state.nodes for arg in ("--node", f"{n.name}={n.netns}")]
    log = state.dir / "logs" / "metrics-proxy.log"
    state.metrics_proxy_pid = process.spawn(argv, log)
    state.save()
    deadline = time.monotonic() + 10.0
    while not ready.exists():
        if not process.alive(state.metrics_proxy_pid) or time.monotonic() > deadline:
            raise LabError(f"metrics forwarder did not come up:\n{process.tail(log)}")
        time.sleep(0.05)
    return json.loads(ready.with_suffix(".ports").read_text())


def _wait_ready(state: LabState, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{state.prometheus_url}/-/ready", timeout=2.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if not process.alive(state.prometheus_pid):
            raise LabError(f"prometheus exited:\n{process.tail(log)}")
        if time.monotonic() > deadline:
            raise LabError(f"prometheus not ready within {START_TIMEOUT:.0f} s:\n{process.tail(log)}")
        time.sleep(0.2)


def stop(state: LabState) -> None:
    """Stop Prometheus and the forwarder (only PIDs whose command line names the lab's directory)."""
    marker = str(state.dir / "prometheus") + "/"
    if state.prometheus_pid:
        process.stop(state.prometheus_pid, marker)
    if state.metrics_proxy_pid:
        process.stop(state.metrics_proxy_pid, marker)


def query(url: str, promql: str, timeout: float = 5.0) -> list[dict]:
    """An instant query through the HTTP API: its result vector, ``[{"metric": {...}, "value": [t, v]}]``."""
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(address, timeout=timeout) as reply:
        body = json.loads(reply.read())
    if body.get("status") != "success":
        raise LabError(f"prometheus query {promql!r}: {body}")
    return body["data"]["result"]
