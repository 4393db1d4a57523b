"""Operations on a running lab: run commands on a node, add and remove pods and block affinities, ping.

Stage: runtime half of the lab API (``labs.lab`` builds and removes labs; tests and the CLI act on them
through these functions, re-exported by ``labs.lab``).

Owns: the environment a command gets on a node (``CALICO_BGP_RUN_DIR`` of that node, the venv's bin dir
first on PATH, so ``calico-bgp status`` just works), pod bookkeeping in the state file, affinity edits in
etcd, and the session wait and ping matrix used at the end of ``up``.

Complicating factors:
- Every call re-reads the state file unless handed a state: the CLI and tests run in other processes than
  the ``up`` that wrote it.
- A pod is recorded before it is created, so ``down`` removes a half-created one.
- While waiting for sessions, a daemon that died is reported at once with the end of its log instead of
  after the full timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bgp.status import DaemonNotRunning, query, render_status
from labs import etcd, etcd_cluster, netns, pods, process, report, routers, topology, tunnel
from labs.state import LabState, NodeState, PodState, RouterState, lab_dir, netns_name

PING_WORKERS = 8
PING_SETTLE = 15.0  # seconds a failing pod pair is retried for (routes still propagating)
PING_RETRY = 0.5


class LabError(RuntimeError):
    """The lab could not be built or operated; the message says what failed and where to look."""


def venv_bin() -> str:
    return os.path.dirname(sys.executable)


def venv_tool(name: str) -> str:
    """A console script next to the running interpreter (the venv), else the one on PATH."""
    path = os.path.join(venv_bin(), name)
    return path if os.access(path, os.X_OK) else shutil.which(name) or path


def load(lab: str) -> LabState:
    state = LabState.load(lab)
    if state is None:
        raise LabError(f"lab {lab!r} is not up (no {lab_dir(lab) / 'state.json'})")
    return state


def node_env(node: NodeState) -> dict[str, str]:
    env = dict(os.environ)
    env["CALICO_BGP_RUN_DIR"] = node.run_dir
    env["PATH"] = venv_bin() + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def exec(lab: str, node: str, argv: Sequence[str]) -> int:
    """Run argv in the node's namespace with the node's environment (its etcd settings too, so the
    resource CLI works there as on the node); output goes to ours. Exit code."""
    state = load(lab)
    target = _node(state, node)
    env = node_env(target) | etcd_cluster.node_env(state)
    return subprocess.run(netns.exec_argv(target.netns, argv), env=env, check=False).returncode


def status(
    state: LabState, node: NodeState, *args: str, timeout: float = 10.0
) -> subprocess.CompletedProcess:
    return netns.run_in(node.netns, ["calico-bgp", "status", *args], env=node_env(node), timeout=timeout)


def status_text(node: NodeState, timeout: float = 15.0) -> str:
    """What ``calico-bgp status`` prints for the node, read from its control socket in this process: a
    CLI start per node costs a Python interpreter each, which a 100-node lab pays on 2 cores."""
    try:
        return render_status(query(Path(node.run_dir) / "ctl.sock", "status", timeout=timeout)).rstrip()
    except DaemonNotRunning as exc:
        return str(exc)
    except (OSError, ValueError) as exc:  # a timeout, a daemon that closed the socket mid-answer
        return f"(calico-bgp status failed: {type(exc).__name__}: {exc})"


def add_pod(
    lab: str, node: str, name: str, ipv4: str, *, state: LabState | None = None, ipv6: str = ""
) -> PodState:
    state = state or load(lab)
    target = _node(state, node)
    if any(p.name == name for p in state.pods):
        raise LabError(f"lab {lab}: pod {name!r} exists")
    pod = PodState(name, node, netns_name(state.name, name), ipv4, pods.cali_ifname(name), ipv6)
    state.pods.append(pod)
    if pod.netns not in state.namespaces:
        state.namespaces.append(pod.netns)
    state.save()
    pods.create_pod(target.netns, pod.netns, name, ipv4, ipv6)
    return pod


def delete_pod(lab: str, name: str) -> None:
    state = load(lab)
    pod = _pod(state, name)
    pods.delete_pod(_node(state, pod.node).netns, pod.netns, pod.name)
    state.pods.remove(pod)
    state.namespaces = [ns for ns in state.namespaces if ns != pod.netns]
    state.save()


def set_affinity(lab: str, node: str, cidr: str) -> None:
    state = load(lab)
    key, value = topology.affinity(node, cidr)
    if key not in state.etcd_keys:
        state.etcd_keys.append(key)
        state.save()
    etcd.put_all(state.etcd_endpoints, [(key, value)], security=etcd_cluster.security(state))


def delete_affinity(lab: str, node: str, cidr: str) -> bool:
    key, _ = topology.affinity(node, cidr)
    state = load(lab)
    return etcd.delete(state.etcd_endpoints, key, security=etcd_cluster.security(state))


def ping(lab: str, from_pod: str, to_ip: str, *, state: LabState | None = None) -> bool:
    pod = _pod(state or load(lab), from_pod)
    try:
        return netns.run_in(pod.netns, ["ping", "-c1", "-W1", "-q", to_ip], timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ping_matrix(
    state: LabState,
    *,
    settle: float = PING_SETTLE,
    ping_pair: Callable[[str, str, str], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[tuple[str, str], bool | None]:
    """Every pod pings every other pod's IPv4 (and IPv6) address; keys are (from pod, to IP). None: not
    provable here, the path crosses a stand-in tunl0 (``labs.tunnel``) in one direction or the other.

    Sessions being Established does not mean routes are in every kernel yet (a peer may hold its first
    UPDATE for a moment), so a pair that fails is pinged again every ``PING_RETRY`` seconds until it answers
    or ``settle`` seconds have passed since the first round: the verdict is about convergence, not about
    how fast the check ran after the sessions came up."""
    nodes = {n.name: n.netns for n in state.nodes}
    stand_ins = {n.netns for n in state.nodes if n.tunnel == tunnel.STAND_IN}
    ping_one = ping_pair or (lambda lab, pod, ip: ping(lab, pod, ip, state=state))
    pairs = [
        (src, dst, ip)
        for src in state.pods
        for dst in state.pods
        if src.name != dst.name
        for ip in (dst.ipv4, dst.ipv6)
        if ip and (ip == dst.ipv4 or src.ipv6)
    ]

    def probe(pair: tuple[PodState, PodState, str]) -> bool | None:
        src, dst, ip = pair
        back = src.ipv4 if ip == dst.ipv4 else src.ipv6
        if stand_ins and tunnel.crosses_stand_in(nodes[src.node], back, nodes[dst.node], ip, stand_ins):
            return None
        return ping_one(state.name, src.name, ip)

    deadline = clock() + settle
    results: dict[tuple[str, str], bool | None] = {}
    todo = pairs
    with ThreadPoolExecutor(PING_WORKERS) as pool:
        while True:
            for (src, _, ip), ok in zip(todo, pool.map(probe, todo), strict=True):
                results[(src.name, ip)] = ok
            todo = [pair for pair in todo if results[(pair[0].name, pair[2])] is False]
            if not todo or clock() >= deadline:
                return {(src.name, ip): results[(src.name, ip)] for src, _, ip in pairs}
            sleep(PING_RETRY)


def wait_sessions(
    state: LabState, expected: Mapping[str, Sequence[str]], timeout: float
) -> tuple[bool, dict[str, str]]:
    """Poll every node's status until all expected peers are Established; (ready, reason per node)."""
    deadline = time.monotonic() + timeout
    reasons = {n.name: "not checked yet" for n in state.nodes}
    pending = {n.name for n in state.nodes}
    while pending:
        for node in state.nodes:
            if node.name not in pending:
                continue
            if node.pid and not process.alive(node.pid):
                reasons[node.name] = (
                    f"daemon (pid {node.pid}) exited; end of {node.log}:\n{process.tail(node.log)}"
                )
                return False, reasons
            # The control socket is a file, reachable from here without entering the node's namespace, and
            # asking it directly saves a CLI start (~1 s under load) per node and pass: 50 nodes matter.
            try:
                out = json.dumps(query(Path(node.run_dir) / "ctl.sock", "status", timeout=5.0))
            except (DaemonNotRunning, OSError, ValueError):
                out = ""
            ok, reasons[node.name] = report.sessions_ready(out, expected.get(node.name, ()))
            if ok:
                pending.discard(node.name)
            if time.monotonic() > deadline:
                break
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return not pending, reasons


def secrets_dir(state: LabState) -> Path:
    """Where the lab's BGP password secrets live, laid out like Kubernetes secret volumes."""
    return state.dir / "secrets"


def set_secret(lab: str, name: str, key: str, value: str) -> Path:
    """Write (or rotate) one secret key, atomically as a secret volume update would; returns its path."""
    path = secrets_dir(load(lab)) / name / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.parent.chmod(0o700)
    tmp = path.with_name(f".{key}.tmp")
    tmp.write_text(value)
    os.replace(tmp, path)
    return path


def wait_router_sessions(router: RouterState, timeout: float) -> tuple[bool, str]:
    """Poll an FRR router until every configured neighbour is Established; (ready, summary)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sessions = routers.bgp_sessions(router.pathspace)
        except (routers.RouterError, subprocess.TimeoutExpired, ValueError) as exc:
            sessions, error = {}, str(exc)
        else:
            error = ""
        down = sorted(a for a, s in sessions.items() if s != "Established")
        if sessions and not down:
            return True, f"{len(sessions)} sessions Established"
        if time.monotonic() > deadline:
            detail = error or ", ".join(f"{a} {sessions[a]}" for a in down) or "no sessions"
            return False, f"not Established: {detail}"
        time.sleep(0.5)


def node_state(state: LabState, name: str) -> NodeState:
    return _node(state, name)


def _node(state: LabState, name: str) -> NodeState:
    try:
        return state.node(name)
    except KeyError as exc:
        raise LabError(str(exc.args[0])) from None


def _pod(state: LabState, name: str) -> PodState:
    try:
        return state.pod(name)
    except KeyError as exc:
        raise LabError(str(exc.args[0])) from None
